"""What a learned agent observes: the env's observation, optionally with the devices' label mix.

The feature sets and their layout live in :mod:`fedenv.wrappers` (one copy for the env package
and the agents): :class:`~fedenv.wrappers.ObservationFeatures` (``env``, ``label_mix``,
``label_mix_time`` and ``label_mix_budget``, the agents' default) and the wrapper
:class:`~fedenv.wrappers.LabelSkewObservation`. The env's observation carries the channels,
resources, backlogs and learning progress, but not *which labels* each device holds; the
Lyapunov policy reads them from ``info`` (docs/model.md §5.1), and ``label_mix`` gives them to
the agent from the same ``info``: per device the label skew ``l_k - p``; ``label_mix_time`` adds
time-to-go ramps for the last rounds; ``label_mix_budget`` adds what is left of each device's
episode energy budget, which the Lyapunov policy's budget guard also reads (docs/agents.md).

One :class:`ObservationFeatures` object builds the training wrapper's observations, the batched
training env's and the evaluation adapter's from ``(obs, info)``, so training and evaluation
cannot disagree. The names below are the ones ``agents`` has always exported.
"""

from __future__ import annotations

from fedenv.wrappers import OBS_FEATURES, TIME_HORIZONS, ObservationFeatures
from fedenv.wrappers import LabelSkewObservation as AgentObservation

__all__ = ["OBS_FEATURES", "TIME_HORIZONS", "ObservationFeatures", "AgentObservation"]
