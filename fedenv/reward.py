"""The reward: named terms of a round (docs/model.md §7); the reward is their sum.

Three modes (``config.reward.mode``):

- ``accuracy_energy`` (default): ``accuracy`` w_acc 100 (acc_t - acc_{t-1}), ``energy``
  -w_E sum_k E_k / E_ref, and ``overshoot`` -w_Q (mean_k (Z_k(t+1) - Z_k(t)) / E_bar +
  (Y(t+1) - Y(t)) / T_bar), the growth of the budget-normalised backlogs.
- ``accuracy``: the accuracy term alone (the budgets are left to a constrained learner, which
  reads the costs in ``info``).
- ``dpp``: the Lyapunov drift-plus-penalty, ``penalty`` -V Phi / scale, ``energy_drift``
  -sum_k Z_k E_k / scale and ``latency_drift`` -Y T / scale.

Vectorised over leading axes (devices last).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fedenv.config import EnvConfig

__all__ = ["reward_terms"]


def reward_terms(
    config: EnvConfig,
    *,
    energy_j: ArrayLike,
    round_latency_s: ArrayLike,
    gap: ArrayLike,
    accuracy: ArrayLike,
    last_accuracy: ArrayLike,
    energy_backlog: ArrayLike,
    next_energy_backlog: ArrayLike,
    latency_backlog: ArrayLike,
    next_latency_backlog: ArrayLike,
) -> dict[str, Any]:
    """The named reward terms of a round (module docstring).

    Args:
        config: the env config (reward weights and mode, budgets).
        energy_j: E_k of the round, J, (..., K).
        round_latency_s: T(t), s, (...).
        gap: the loss gap Phi after the round, (...).
        accuracy, last_accuracy: the accuracy after and before the round, (...).
        energy_backlog, next_energy_backlog: Z_k before and after the round, J, (..., K).
        latency_backlog, next_latency_backlog: Y before and after the round, s, (...).
    """
    rw = config.reward
    if rw.mode == "accuracy":
        return {"accuracy": rw.accuracy_weight * 100.0 * np.subtract(accuracy, last_accuracy)}
    if rw.mode == "dpp":
        scale = rw.dpp_scale
        return {
            "penalty": np.multiply(-rw.dpp_tradeoff_v, gap) / scale,
            "energy_drift": -np.add.reduce(np.multiply(energy_backlog, energy_j), axis=-1) / scale,
            "latency_drift": -np.multiply(latency_backlog, round_latency_s) / scale,
        }
    energy_budget = config.budgets.energy_budget_j
    latency_budget = config.budgets.latency_budget_s
    overshoot: Any = np.zeros(np.shape(round_latency_s))
    if energy_budget is not None:
        # the mean over devices, as sum / K (what ndarray.mean computes)
        growth = np.subtract(next_energy_backlog, energy_backlog)
        overshoot = (
            overshoot + np.add.reduce(growth, axis=-1) / config.devices.num_devices / energy_budget
        )
    if latency_budget is not None:
        overshoot = overshoot + np.subtract(next_latency_backlog, latency_backlog) / latency_budget
    return {
        "accuracy": rw.accuracy_weight * 100.0 * np.subtract(accuracy, last_accuracy),
        "energy": -rw.energy_weight * np.add.reduce(energy_j, axis=-1) / config.energy_ref_j,
        "overshoot": -rw.overshoot_weight * overshoot,
    }
