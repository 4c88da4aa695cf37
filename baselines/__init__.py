"""Baseline policies for FedLoRAWireless-v0 and the comparison harness.

* :class:`Policy` the protocol every policy implements (learned agents too);
* :mod:`baselines.lyapunov` the drift-plus-penalty online policy for every paradigm;
* :mod:`baselines.heuristics` random, max, min_rank, fixed_rank, greedy, round_robin;
* :mod:`baselines.registry` policy specs (``"lyapunov:V=30"``) -> policies; learned agents
  (``ppo:<run dir>``) come through the ``fedenv.policies`` entry points, not an import of
  ``agents``;
* :mod:`baselines.evaluation` the one evaluation loop, on common seeds;
* ``python -m baselines.compare`` the comparison CLI (tables, CSV, plots, V sweep).
"""

from baselines.policy import Policy

__all__ = ["Policy"]
