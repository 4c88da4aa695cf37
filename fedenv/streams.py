"""Counter-based random streams for the exogenous trace.

Every exogenous random number of an episode (device placement, CPU frequencies, waypoints,
fading innovations, the uniforms that decide packet success) is a pure function of
``(episode key, stream, index)``: a SplitMix64 hash of a counter. Consequences:

* the channel trace cannot depend on the policy (common random numbers by construction);
* a batch of N episodes is generated with one set of array operations, and each episode is
  bit-identical to the one a single environment with the same key generates, which is what
  the batched vector environment relies on.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["uniform", "normal", "Stream"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_TO_UNIT = 2.0**-53


class Stream:
    """Stream identifiers (any distinct integers below 2**16)."""

    POSITION = 1
    CPU = 2
    SHADOWING = 3
    FADING = 4
    SUCCESS = 5
    WAYPOINT = 6
    EVAL_NOISE = 7


def _splitmix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def _bits(keys: NDArray[np.uint64], stream: int, shape: tuple[int, ...]) -> NDArray[np.uint64]:
    keys = np.asarray(keys, dtype=np.uint64)
    count = int(np.prod(shape, dtype=np.int64))
    counter = np.arange(count, dtype=np.uint64).reshape(shape) + np.uint64(stream << 40)
    with np.errstate(over="ignore"):
        base = _splitmix(keys.reshape(keys.shape + (1,) * len(shape)) * _GOLDEN + _GOLDEN)
        return _splitmix(base ^ _splitmix(counter * _GOLDEN))


def uniform(keys: NDArray[np.uint64], stream: int, shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Uniforms in the open interval (0, 1), shape ``keys.shape + shape``."""
    return ((_bits(keys, stream, shape) >> np.uint64(11)).astype(np.float64) + 0.5) * _TO_UNIT


def normal(keys: NDArray[np.uint64], stream: int, shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Standard normals by Box-Muller, shape ``keys.shape + shape``."""
    keys = np.asarray(keys, dtype=np.uint64)
    u = uniform(keys, stream, (2, *shape))
    u1, u2 = np.take(u, 0, axis=keys.ndim), np.take(u, 1, axis=keys.ndim)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
