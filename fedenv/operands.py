"""0-d array operands for ufuncs on small arrays.

A ufunc converts a Python float operand to an array on every call; on arrays of K = 10 numbers
that conversion costs as much as the arithmetic (about 0.15 us of 0.35 us). A float64 0-d
array gives the same float64 results without it. Use only with float64 (or integer/bool)
arrays: with a float32 array a float64 0-d array would promote the result to float64.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["const", "put", "ZERO_INT"]

_CACHE: dict[float, NDArray[np.float64]] = {}


def const(value: float) -> NDArray[np.float64]:
    """``value`` as a read-only float64 0-d array (cached by value; -0.0 and 0.0 share one entry,
    so do not rely on the sign of a zero)."""
    out = _CACHE.get(value)
    if out is None:
        if len(_CACHE) > 256:
            _CACHE.clear()
        out = np.array(value, dtype=np.float64)
        out.flags.writeable = False
        _CACHE[value] = out
    return out


#: int64 zero, for comparisons of module indices (``module > 0``).
ZERO_INT = np.array(0, dtype=np.int64)
ZERO_INT.flags.writeable = False


def put(target: NDArray[np.generic], mask: NDArray[np.bool_], value: NDArray[np.generic]) -> None:
    """``target[mask] = value`` in place: ``np.copyto(target, value, where=mask)``, by boolean
    indexing when ``mask`` has the shape of ``target`` (cheaper on small arrays; copyto
    broadcasts the mask otherwise). ``value`` is a 0-d array (see :func:`const`)."""
    if mask.shape == target.shape:
        target[mask] = value
    else:
        np.copyto(target, value, where=mask)
