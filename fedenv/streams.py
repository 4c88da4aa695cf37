"""Counter-based random streams for the exogenous trace.

Every exogenous random number of an episode (device placement, CPU frequencies, waypoints,
fading innovations, the uniforms that decide packet success) is a pure function of
``(episode key, stream, index)``: a SplitMix64 hash of a counter. Consequences:

* the channel trace cannot depend on the policy (common random numbers by construction);
* a batch of N episodes is generated with one set of array operations, and each episode is
  bit-identical to the one a single environment with the same key generates, which is what
  the batched vector environment relies on.

The hash of a counter does not depend on the key, so it is computed once per stream and shape
and cached; a draw then costs one XOR and one SplitMix64 finaliser per number.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

__all__ = ["uniform", "normal", "uniforms", "box_muller", "draw_keys", "Stream"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S1, _S11, _S30, _S27, _S31 = np.uint64(1), np.uint64(11), np.uint64(30), np.uint64(27), np.uint64(31)
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
    """SplitMix64 finaliser, in place on ``x`` (a fresh array owned by the caller)."""
    tmp = np.right_shift(x, _S30)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, _M1, out=x)
    np.right_shift(x, _S27, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, _M2, out=x)
    np.right_shift(x, _S31, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    return x


@lru_cache(maxsize=64)
def _counter_hash(draws: tuple[tuple[int, tuple[int, ...]], ...]) -> NDArray[np.uint64]:
    """splitmix(counter * golden) of the counters of each (stream, shape), concatenated, flat."""
    parts = []
    for stream, shape in draws:
        count = math.prod(shape)
        parts.append(np.arange(count, dtype=np.uint64) + np.uint64(stream << 40))
    out = _splitmix(np.concatenate(parts) * _GOLDEN)
    out.flags.writeable = False
    return out


def uniforms(keys: NDArray[np.uint64], draws: tuple[tuple[int, tuple[int, ...]], ...]) -> list[NDArray[np.float64]]:
    """Several streams at once: for each ``(stream, shape)``, uniforms of shape ``keys.shape + shape``.

    Equal to ``[uniform(keys, stream, shape) for stream, shape in draws]`` (one hashing pass).
    """
    keys = np.asarray(keys, dtype=np.uint64)
    draws = tuple((int(stream), tuple(int(n) for n in shape)) for stream, shape in draws)
    hashed = _counter_hash(draws)
    base = _splitmix(keys.reshape(keys.shape + (1,)) * _GOLDEN + _GOLDEN)
    bits = _splitmix(np.bitwise_xor(base, hashed))
    u = np.right_shift(bits, _S11, out=bits).astype(np.float64)
    u += 0.5
    u *= _TO_UNIT
    out, start = [], 0
    for _, shape in draws:
        count = math.prod(shape)
        out.append(u[..., start : start + count].reshape(keys.shape + shape))
        start += count
    return out


def uniform(keys: NDArray[np.uint64], stream: int, shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Uniforms in the open interval (0, 1), shape ``keys.shape + shape``."""
    return uniforms(keys, ((stream, shape),))[0]


def box_muller(u: NDArray[np.float64], axis: int) -> NDArray[np.float64]:
    """Standard normals sqrt(-2 ln u1) cos(2 pi u2) from the two halves (u1, u2) of ``axis``."""
    u1, u2 = np.take(u, 0, axis=axis), np.take(u, 1, axis=axis)
    # evaluated in place, with the same rounding steps as the expression above
    np.log(u1, out=u1)
    u1 *= -2.0
    np.sqrt(u1, out=u1)
    u2 *= 2.0 * np.pi
    np.cos(u2, out=u2)
    u1 *= u2
    return u1


def normal(keys: NDArray[np.uint64], stream: int, shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Standard normals by Box-Muller, shape ``keys.shape + shape``."""
    keys = np.asarray(keys, dtype=np.uint64)
    return box_muller(uniform(keys, stream, (2, *shape)), keys.ndim)


#: bit generators whose raw outputs are 64-bit (MT19937's are 32-bit)
_RAW64 = (np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64)


def draw_keys(rng: np.random.Generator, count: int) -> NDArray[np.uint64]:
    """``count`` keys in [0, 2**63) from a generator: ``rng.integers(0, 2**63, size=count,
    dtype=np.uint64)``.

    With a 64-bit bit generator (Gymnasium's is PCG64) they are its next raw outputs shifted
    right by one, which is what ``integers`` computes (Lemire's method on a power-of-two range
    takes one raw output per key and never rejects; ``tests/test_physics.py`` checks the
    equality and the state left behind) at a tenth of its cost: a vector env draws keys for
    thousands of episodes per reset.
    """
    bits = rng.bit_generator
    if type(bits) in _RAW64:
        return bits.random_raw(count) >> _S1
    return rng.integers(0, 2**63, size=count, dtype=np.uint64)
