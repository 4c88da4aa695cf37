"""Virtual queues for long-term budgets (docs/model.md §4).

A long-term constraint (1/T) sum_t x(t) <= b is enforced by the virtual queue
Q(t+1) = max(Q(t) + x(t) - b, 0): if Q(T)/T -> 0 the constraint holds on average.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedenv.operands import const

__all__ = ["update_queue", "drift_plus_penalty"]

_ZERO = const(0.0)


def update_queue(backlog: ArrayLike, arrival: ArrayLike, budget: ArrayLike) -> NDArray[np.float64]:
    """Q(t+1) = max(Q(t) + x(t) - b, 0), element-wise (energy queues Z_k, latency queue Y).

    Numbers in, a number out (a float64 NumPy scalar): one queue (Y) costs scalar arithmetic,
    not four operations on 0-d arrays.
    """
    if (
        isinstance(backlog, (float, np.floating))
        and isinstance(arrival, (float, np.floating))
        and isinstance(budget, (float, np.floating))
    ):
        q = np.float64(backlog) + arrival - budget
        return np.float64(0.0) if q < 0.0 else q  # (NaN propagates, as with np.maximum)
    if isinstance(budget, (float, int)):
        budget = const(float(budget))  # (a 0-d operand: no conversion per call)
    q = np.add(backlog, arrival)
    if isinstance(q, np.ndarray) and q.ndim and np.ndim(budget) == 0:
        np.subtract(q, budget, out=q)  # (in place: q is new)
        return np.maximum(q, _ZERO, out=q)
    return np.maximum(np.subtract(q, budget), _ZERO)


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
