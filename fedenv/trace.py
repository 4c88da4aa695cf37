"""The exogenous trace of an episode: what the environment does regardless of the policy.

Device placement and movement, per-episode CPU frequencies and shadowing, the fading of every
round, and the uniforms that decide whether an upload survives its packet error rate. All are
drawn from counter-based streams keyed by the episode key (:mod:`fedenv.streams`), for a batch
of episodes at once; each episode's trace is identical to the one generated alone, and its
round t is the same for every horizon (``num_rounds``) the config sets: the same seed gives the
same channels in the rounds two horizons share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

from fedenv import channel, streams
from fedenv.config import EnvConfig
from fedenv.streams import Stream

__all__ = ["Trace", "generate_trace"]


@dataclass(frozen=True)
class Trace:
    """Exogenous trace for a batch of episodes (leading axis N) over rounds 0..T (T + 1 rows).

    Row T is the state seen after the last round (for the final observation).
    """

    position_m: NDArray[np.float64]
    """Device positions, shape (N, T + 1, K, 2), metres, BS at the origin (without mobility a
    read-only view of one position per device, the same in every round)."""
    distance_m: NDArray[np.float64]
    """Distance to the BS, shape (N, T + 1, K) (without mobility a read-only view, like
    ``position_m``)."""
    gain: NDArray[np.float64]
    """Linear channel power gain h, shape (N, T + 1, K)."""
    cpu_freq_hz: NDArray[np.float64]
    """CPU frequency, shape (N, K), fixed for the episode."""
    success_uniform: NDArray[np.float64]
    """u ~ U(0, 1) per round and device, shape (N, T + 1, K); an upload survives iff u >= q."""

    def episode(self, i: int) -> Trace:
        """Episode ``i`` as a batch of one (views of this trace's arrays)."""
        return Trace(**{f.name: getattr(self, f.name)[i : i + 1] for f in fields(Trace)})


#: Episodes generated per block: keeps the temporaries of the counter hash and Box-Muller in the
#: CPU cache (the result does not depend on it; every episode depends on its own key only).
_BLOCK = 32


def generate_trace(keys: NDArray[np.uint64], config: EnvConfig) -> Trace:
    """Draw the exogenous trace of N episodes, one per key (docs/model.md §9, §2)."""
    keys = np.atleast_1d(np.asarray(keys, dtype=np.uint64))
    if keys.ndim != 1:
        raise ValueError(f"keys must be a 1-D array of episode keys, got shape {keys.shape}")
    n = keys.size
    first = _generate(keys[:_BLOCK], config)
    if n <= _BLOCK:
        return _as_trace(first, config)
    # one output array per field, filled block by block (no concatenation copies)
    out = {name: np.empty((n,) + a.shape[1:], dtype=a.dtype) for name, a in first.items()}
    for i in range(0, n, _BLOCK):
        part = first if i == 0 else _generate(keys[i : i + _BLOCK], config)
        for name, array in part.items():
            out[name][i : i + _BLOCK] = array
    return _as_trace(out, config)


#: The fields with a row per round (axis 1).
_PER_ROUND = ("position_m", "distance_m", "gain", "success_uniform")


def _as_trace(arrays: dict[str, NDArray[np.float64]], config: EnvConfig) -> Trace:
    """The :class:`Trace` of the generated fields. A per-round field generated with one row
    (the position and distance of devices that do not move) is seen in every round, as a
    read-only broadcast view: it is neither computed nor stored once per round."""
    rows = config.num_rounds + 1
    return Trace(
        **{
            name: (
                np.broadcast_to(a, (a.shape[0], rows) + a.shape[2:])
                if name in _PER_ROUND and a.shape[1] == 1
                else a
            )
            for name, a in arrays.items()
        }
    )


def _generate(keys: NDArray[np.uint64], config: EnvConfig) -> dict[str, NDArray[np.float64]]:
    """The fields of :class:`Trace` for a block of episodes (see :func:`_as_trace`)."""
    ch = config.channel
    dev = config.devices
    k = dev.num_devices
    rows = config.num_rounds + 1
    n = keys.size
    mobile = ch.mobility_speed_m_per_s > 0.0
    shadowed = ch.shadowing_std_db > 0.0
    # The round is the leading axis of every per-round draw: an element's counter is then the
    # same whatever the number of rounds drawn, and round t's channel depends on (key, t,
    # device) only, not on num_rounds (normals: the Box-Muller pair last, as streams.normal).
    draws = [
        (Stream.POSITION, (2, k)),
        (Stream.CPU, (k,)),
        (Stream.FADING, (rows, 2, k, 2)),
        (Stream.SUCCESS, (rows, k)),
    ]
    if mobile:
        draws.append((Stream.WAYPOINT, (rows, 2, k)))
    if shadowed:
        draws.append((Stream.SHADOWING, (1, k, 2)))
    # one hashing pass for every stream (each equals streams.uniform(keys, stream, shape))
    u = streams.uniforms(keys, tuple(draws))
    start_u, cpu_u, fading_u, success_u = u[:4]
    start = channel.place_devices(start_u[:, 0], start_u[:, 1], ch)
    if mobile:
        wp_u = u[4]
        waypoints = channel.place_devices(wp_u[:, :, 0], wp_u[:, :, 1], ch)
        position = channel.random_waypoint(
            start, waypoints, ch.mobility_speed_m_per_s, ch.round_interval_s
        )
        # Waypoints lie in the annulus, but a straight walk between two of them may cut
        # through the inner disc; keep the path-loss model inside its validity range.
        distance = np.maximum(np.linalg.norm(position, axis=-1), ch.min_distance_m)
    else:
        # one row: _as_trace shows it in every round
        position = start[:, None]
        # |start|, as np.linalg.norm(start, axis=-1) computes it (without its Python overhead)
        distance = np.sqrt(np.add.reduce(start * start, axis=-1))[:, None]
    if shadowed:
        shadowing = ch.shadowing_std_db * streams.box_muller(
            u[-1], -1
        )  # streams.normal(keys, SHADOWING, (1, k))
    else:
        shadowing = np.zeros((n, 1, k))
    z = streams.box_muller(fading_u, -1)  # streams.normal(keys, Stream.FADING, (rows, 2, k))
    z *= math.sqrt(0.5)
    w = z[:, :, 0] + 1j * z[:, :, 1]  # CN(0, 1), shape (n, rows, k)
    fading = channel.gauss_markov_fading(w[:, 0], w[:, 1:], ch.fading_correlation)
    # (without mobility the distance has one row: its path loss is evaluated once per device, the
    # same numbers as on every round's copy)
    gain = channel.channel_gain(distance, np.abs(fading) ** 2, shadowing, ch)
    cpu = dev.cpu_freq_min_hz + (dev.cpu_freq_max_hz - dev.cpu_freq_min_hz) * cpu_u
    return {
        "position_m": position,
        "distance_m": distance,
        "gain": gain,
        "cpu_freq_hz": cpu,
        "success_uniform": success_u,
    }
