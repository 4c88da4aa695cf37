"""Virtual queues for long-term budgets (docs/model.md §4).

A long-term constraint (1/T) sum_t x(t) <= b is enforced by the virtual queue
Q(t+1) = max(Q(t) + x(t) - b, 0): if Q(T)/T -> 0 the constraint holds on average.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedenv.config import EnvConfig

__all__ = ["update_queue", "update_backlogs", "energy_budget_left", "drift_plus_penalty"]


def update_queue(backlog: ArrayLike, arrival: ArrayLike, budget: ArrayLike) -> NDArray[np.float64]:
    """Q(t+1) = max(Q(t) + x(t) - b, 0), element-wise (energy queues Z_k, latency queue Y)."""
    return np.maximum(np.add(backlog, arrival) - budget, 0.0)


def update_backlogs(
    config: EnvConfig,
    *,
    energy_backlog: NDArray[np.float64],
    latency_backlog: NDArray[np.float64],
    energy_j: NDArray[np.float64],
    round_latency_s: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The env's virtual queues after a round: Z_k for the energy budget (..., K), Y for the
    latency budget (...). A queue without its budget stays at 0. Returns new arrays."""
    energy_budget = config.budgets.energy_budget_j
    latency_budget = config.budgets.latency_budget_s
    z = (
        energy_backlog.copy()
        if energy_budget is None
        else update_queue(energy_backlog, energy_j, energy_budget)
    )
    y = (
        latency_backlog.copy()
        if latency_budget is None
        else update_queue(latency_backlog, round_latency_s, latency_budget)
    )
    return z, y


def energy_budget_left(config: EnvConfig, energy_spent_j: ArrayLike) -> NDArray[np.float64] | None:
    """What each device's episode budget T E_bar has left after spending ``energy_spent_j``
    (``info["energy_spent_j"]``), J, negative once overspent; None without an energy budget.

    The quantity the Lyapunov policy's budget guard and the agents' budget features read."""
    budget = config.budgets.energy_budget_j
    if budget is None:
        return None
    return config.num_rounds * budget - np.asarray(energy_spent_j, dtype=np.float64)


def drift_plus_penalty(
    tradeoff_v: float,
    penalty: ArrayLike,
    energy_backlog: ArrayLike,
    energy_j: ArrayLike,
    latency_backlog: ArrayLike = 0.0,
    latency_s: ArrayLike = 0.0,
) -> NDArray[np.float64]:
    """Per-round drift-plus-penalty objective V Phi + sum_k Z_k E_k + Y T (docs/model.md §4, §8).

    The last axis of ``energy_backlog * energy_j`` is summed over devices.
    """
    z_e = np.sum(np.asarray(energy_backlog) * np.asarray(energy_j), axis=-1)
    return (
        tradeoff_v * np.asarray(penalty) + z_e + np.asarray(latency_backlog) * np.asarray(latency_s)
    )
