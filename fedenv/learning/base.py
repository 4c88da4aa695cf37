"""The learner interfaces (docs/model.md §5).

The env's core advances N episodes at once (:mod:`fedenv.episodes`) and calls a
:class:`BatchLearner`: arrays with a leading episode axis. The surrogate is one natively
(:class:`~fedenv.learning.surrogate.SurrogateLearner`). The real LoRA backend fine-tunes one
model, so it is a :class:`Learner` of one episode, arrays of K devices; :class:`OneEpisode`
presents it to the core as a batch of N = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DevicePartition",
    "RoundReport",
    "Learner",
    "EpisodeStart",
    "BatchReport",
    "BatchLearner",
    "OneEpisode",
]


@dataclass(frozen=True)
class DevicePartition:
    """How the training data is spread over the K devices (known to the BS)."""

    data_sizes: NDArray[np.float64]
    """Samples per device, shape (K,)."""
    label_distribution: NDArray[np.float64]
    """Per-device label mix, shape (K, C), rows sum to 1."""
    global_label_distribution: NDArray[np.float64]
    """Label mix of the whole training set, shape (C,)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Backend remarks reported in ``info`` (e.g. how a missing train split was replaced)."""

    @property
    def data_share(self) -> NDArray[np.float64]:
        return self.data_sizes / self.data_sizes.sum()


@dataclass(frozen=True)
class RoundReport:
    """What the learner reports after a round."""

    accuracy: float
    """Held-out accuracy of the global model, in [0, 1]."""
    loss: float
    """Held-out loss of the global model."""
    gap: float
    """Normalised loss gap (1 = initial model, 0 = converged): the learning penalty Phi."""
    evaluated: bool = True
    """False when the evaluation was skipped this round (accuracy and loss are held)."""
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Learner(Protocol):
    """One federated learning process driven round by round by the environment.

    ``ranks[k] == 0`` means device k was not scheduled; ``success[k]`` says whether its upload
    arrived intact and on time, so only those devices' updates are aggregated.
    """

    params_per_rank: float
    """Uploaded parameters per LoRA rank component (the payload model uses it)."""
    head_params: int
    """Parameters of the task head."""

    def reset(self, num_devices: int, rng: np.random.Generator) -> DevicePartition:
        """Start a new federated run from the pre-trained model; partition the data."""
        ...

    def initial_report(self) -> RoundReport:
        """Accuracy and loss of the model before the first round."""
        ...

    def train_round(
        self, ranks: NDArray[np.int64], ratios: NDArray[np.float64], success: NDArray[np.bool_]
    ) -> RoundReport:
        """Run one round: local training on scheduled devices, aggregation of the successful
        ones."""
        ...

    def close(self) -> None:
        """Release resources (models, threads)."""
        ...


@dataclass(frozen=True)
class EpisodeStart:
    """What a :class:`BatchLearner` reports for the M episodes it starts (arrays (M, ...))."""

    data_sizes: NDArray[np.float64]
    """Samples per device, (M, K)."""
    label_distribution: NDArray[np.float64]
    """Per-device label mix, (M, K, C)."""
    global_label_distribution: NDArray[np.float64]
    """Label mix of the whole training set, (M, C)."""
    data_share: NDArray[np.float64]
    """n_k / sum n, (M, K)."""
    accuracy: NDArray[np.float64]
    """Accuracy of the initial model, (M,)."""
    loss: NDArray[np.float64]
    """Loss of the initial model, (M,)."""
    gap: NDArray[np.float64]
    """Loss gap of the initial model, (M,)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Backend remarks (``info["data_notes"]``), the same for every episode started."""


@dataclass(frozen=True)
class BatchReport:
    """What a :class:`BatchLearner` reports after a round of its N episodes (arrays (N,))."""

    accuracy: NDArray[np.float64]
    loss: NDArray[np.float64]
    gap: NDArray[np.float64]
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend extras of a one-episode learner (``info["learner"]``); empty for none."""


@runtime_checkable
class BatchLearner(Protocol):
    """The federated learning processes of N episodes, driven round by round by the env's core.

    The arrays a learner returns are never written afterwards (the env hands them out in
    ``info``).
    """

    params_per_rank: float
    head_params: int

    def start(self, index: NDArray[np.intp], keys: NDArray[np.uint64]) -> EpisodeStart:
        """Start the episodes at rows ``index`` from the pre-trained model, each with its
        learning key (its draws come from ``np.random.default_rng(key)``)."""
        ...

    def train_round(
        self, ranks: NDArray[np.int64], ratios: NDArray[np.float64], success: NDArray[np.bool_]
    ) -> BatchReport:
        """One round of every episode, arrays (N, K)."""
        ...

    def close(self) -> None: ...


class OneEpisode:
    """A one-episode :class:`Learner` (the lora backend) as a :class:`BatchLearner` of N = 1."""

    def __init__(self, learner: Learner, num_devices: int) -> None:
        self.learner = learner
        self.num_devices = num_devices
        self.params_per_rank = learner.params_per_rank
        self.head_params = learner.head_params

    def start(self, index: NDArray[np.intp], keys: NDArray[np.uint64]) -> EpisodeStart:
        if index.tolist() != [0]:
            raise ValueError(f"a one-episode learner starts episode 0 only, got rows {index}")
        p = self.learner.reset(self.num_devices, np.random.default_rng(int(keys[0])))
        report = self.learner.initial_report()
        return EpisodeStart(
            data_sizes=p.data_sizes[None],
            label_distribution=p.label_distribution[None],
            global_label_distribution=p.global_label_distribution[None],
            data_share=p.data_share[None],
            accuracy=np.array([report.accuracy]),
            loss=np.array([report.loss]),
            gap=np.array([report.gap]),
            notes=dict(p.notes),
        )

    def train_round(
        self, ranks: NDArray[np.int64], ratios: NDArray[np.float64], success: NDArray[np.bool_]
    ) -> BatchReport:
        report = self.learner.train_round(ranks[0], ratios[0], success[0])
        return BatchReport(
            accuracy=np.array([report.accuracy]),
            loss=np.array([report.loss]),
            gap=np.array([report.gap]),
            extra=report.extra,
        )

    def close(self) -> None:
        self.learner.close()
