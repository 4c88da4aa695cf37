"""Counter-based random streams for the exogenous trace.

Every exogenous random number of an episode (device placement, CPU frequencies, waypoints,
fading innovations, the uniforms that decide packet success) is a pure function of
``(episode key, stream, index)``: a SplitMix64 hash of a counter. Consequences:

* the channel trace cannot depend on the policy (common random numbers by construction);
* a batch of N episodes is generated with one set of array operations, and each episode is
  bit-identical to the one a single environment with the same key generates, which is what
  the batched vector environment relies on;
* the index is row-major in the draw's shape, so a draw whose *leading* axis is the round
  gives round t the same numbers whatever the number of rounds drawn: every per-round draw
  puts the round first (and :func:`normal` its Box-Muller pair last), so the channels of
  round t depend on (key, t, device) only, not on the episode's horizon.

The hash of a counter does not depend on the key, so it is computed once per stream and shape
and cached; a draw then costs one XOR and one SplitMix64 finaliser per number.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["uniform", "normal", "uniforms", "box_muller", "draw_keys", "pcg64_states", "Stream"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S1, _S11, _S30, _S27, _S31 = (
    np.uint64(1),
    np.uint64(11),
    np.uint64(30),
    np.uint64(27),
    np.uint64(31),
)
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


def uniforms(
    keys: NDArray[np.uint64], draws: tuple[tuple[int, tuple[int, ...]], ...]
) -> list[NDArray[np.float64]]:
    """Several streams at once: for each ``(stream, shape)``, uniforms of shape
    ``keys.shape + shape``.

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
    """Standard normals by Box-Muller, shape ``keys.shape + shape``.

    The uniform pair of each normal is the last axis of the draw, ``shape + (2,)``, so the
    normals of a leading index (a round) do not depend on how many follow it.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    return box_muller(uniform(keys, stream, (*shape, 2)), -1)


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


# NumPy's SeedSequence (pool of 4 words; numpy/random/bit_generator.pyx) and PCG64 seeding
# (pcg64_set_seed: PCG's setseq srandom with the 128-bit default multiplier)
_SS_INIT_A, _SS_MULT_A, _SS_INIT_B, _SS_MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_SS_MIX_L, _SS_MIX_R, _SS_SHIFT = np.uint32(0xCA01F9DD), np.uint32(0x4973F715), np.uint32(16)
_PCG_MULT, _MASK128 = 0x2360ED051FC65DA44385DF649FCCF645, (1 << 128) - 1
_LOW32, _S32 = np.uint64(0xFFFFFFFF), np.uint64(32)


def _constants(init: int, mult: int, count: int) -> NDArray[np.uint32]:
    """SeedSequence's hash constants init, init mult, init mult^2, ... (mod 2**32), as a column
    (count, 1) that broadcasts against rows of words."""
    out = [init]
    for _ in range(count - 1):
        out.append((out[-1] * mult) & 0xFFFFFFFF)
    return np.array(out, dtype=np.uint32)[:, None]


#: SeedSequence's hash constants: 16 hashmix calls while mixing the pool (each XORs with one
#: constant and multiplies by the next), 8 while generating the state
_HASH_A = _constants(_SS_INIT_A, _SS_MULT_A, 17)
_HASH_B = _constants(_SS_INIT_B, _SS_MULT_B, 9)
#: the pool words that each word is mixed into, in SeedSequence's order
_OTHER_WORDS = tuple(np.array([i for i in range(4) if i != src]) for src in range(4))
#: the pool word of each of the 8 generated words
_STATE_WORDS = np.array([0, 1, 2, 3, 0, 1, 2, 3])


def _hashmix(value: NDArray[np.uint32], first: int, count: int) -> NDArray[np.uint32]:
    """SeedSequence's hashmix, ``count`` calls from the ``first``-th: row j of the result is call
    first + j on row j of ``value`` (or on ``value`` itself, one row of words)."""
    value = value ^ _HASH_A[first : first + count]
    value *= _HASH_A[first + 1 : first + count + 1]
    return value ^ (value >> _SS_SHIFT)


def pcg64_states(keys: NDArray[np.uint64]) -> list[dict[str, Any]]:
    """The states of ``np.random.default_rng(int(key))`` for keys in [0, 2**64), computed for a
    batch at once: set one as ``bit_generator.state`` to get that generator (about a fifth of the
    cost of seeding: a vector env seeds one generator per episode).

    ``default_rng(key)`` is PCG64 seeded by ``SeedSequence(key)``, whose hashing of the key's
    32-bit words is evaluated here on arrays of words, then PCG64's seeding on Python integers.
    ``tests/test_physics.py`` checks the states against ``default_rng`` (edge keys included).
    """
    keys = np.asarray(keys, dtype=np.uint64).ravel()
    # the entropy words of the key, low first (a key below 2**32 has one word; the pool's
    # hashing of a missing word is that of a 0 word), one row per pool word
    pool = np.zeros((4, keys.size), dtype=np.uint32)
    pool[0] = keys & _LOW32
    pool[1] = keys >> _S32
    # The pool's hashing and mixing. Each hashmix call takes the next constant of one sequence,
    # so the calls that hash independent words are one array operation over a column of
    # consecutive constants: the 4 words first, then for each source word its 3 mixes into the
    # other words (the source does not change while it is mixed into the others).
    pool = _hashmix(pool, 0, 4)
    for src, dst in enumerate(_OTHER_WORDS):
        mixed = _SS_MIX_L * pool[dst] - _SS_MIX_R * _hashmix(pool[src], 4 + 3 * src, 3)
        pool[dst] = mixed ^ (mixed >> _SS_SHIFT)
    # generate_state(4, uint64): 8 words from the pool (word i from pool[i % 4]), hashed with
    # the second constant sequence, paired little-endian
    value = pool[_STATE_WORDS] ^ _HASH_B[:8]
    value *= _HASH_B[1:]
    words = (value ^ (value >> _SS_SHIFT)).astype(np.uint64)
    seeds = (words[0::2] | (words[1::2] << _S32)).tolist()
    states = []
    for s_high, s_low, i_high, i_low in zip(*seeds):
        inc = (((i_high << 64) | i_low) << 1 | 1) & _MASK128
        state = (
            ((inc + ((s_high << 64) | s_low)) & _MASK128) * _PCG_MULT + inc
        ) & _MASK128  # 2 steps from 0
        states.append(
            {
                "bit_generator": "PCG64",
                "state": {"state": state, "inc": inc},
                "has_uint32": 0,
                "uinteger": 0,
            }
        )
    return states
