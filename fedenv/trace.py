"""The exogenous trace of an episode: what the environment does regardless of the policy.

Device placement and movement, per-episode CPU frequencies and shadowing, the fading of every
round, and the uniforms that decide whether an upload survives its packet error rate. All are
drawn from counter-based streams keyed by the episode key (:mod:`fedenv.streams`), for a batch
of episodes at once; each episode's trace is identical to the one generated alone.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """Device positions, shape (N, T + 1, K, 2), metres, BS at the origin."""
    distance_m: NDArray[np.float64]
    """Distance to the BS, shape (N, T + 1, K)."""
    gain: NDArray[np.float64]
    """Linear channel power gain h, shape (N, T + 1, K)."""
    cpu_freq_hz: NDArray[np.float64]
    """CPU frequency, shape (N, K), fixed for the episode."""
    success_uniform: NDArray[np.float64]
    """u ~ U(0, 1) per round and device, shape (N, T + 1, K); an upload survives iff u >= q."""


def generate_trace(keys: NDArray[np.uint64], config: EnvConfig) -> Trace:
    """Draw the exogenous trace of N episodes, one per key (SPEC §2-3)."""
    keys = np.atleast_1d(np.asarray(keys, dtype=np.uint64))
    ch = config.channel
    dev = config.devices
    k = dev.num_devices
    rows = config.num_rounds + 1
    start_u = streams.uniform(keys, Stream.POSITION, (2, k))
    start = channel.place_devices(start_u[:, 0], start_u[:, 1], ch)
    if ch.mobility_speed_m_per_s > 0.0:
        wp_u = streams.uniform(keys, Stream.WAYPOINT, (2, rows, k))
        waypoints = channel.place_devices(wp_u[:, 0], wp_u[:, 1], ch)
        position = channel.random_waypoint(start, waypoints, ch.mobility_speed_m_per_s, ch.round_interval_s)
        # Waypoints lie in the annulus, but a straight walk between two of them may cut
        # through the inner disc; keep the path-loss model inside its validity range.
        distance = np.maximum(np.linalg.norm(position, axis=-1), ch.min_distance_m)
    else:
        position = np.broadcast_to(start[:, None], (keys.size, rows, k, 2)).copy()
        distance = np.broadcast_to(np.linalg.norm(start, axis=-1)[:, None], (keys.size, rows, k)).copy()
    if ch.shadowing_std_db > 0.0:
        shadowing = ch.shadowing_std_db * streams.normal(keys, Stream.SHADOWING, (1, k))
    else:
        shadowing = np.zeros((keys.size, 1, k))
    z = streams.normal(keys, Stream.FADING, (2, rows, k)) * np.sqrt(0.5)
    w = z[:, 0] + 1j * z[:, 1]  # CN(0, 1)
    fading = channel.gauss_markov_fading(w[:, 0], w[:, 1:], ch.fading_correlation)
    gain = channel.channel_gain(distance, np.abs(fading) ** 2, shadowing, ch)
    cpu = dev.cpu_freq_min_hz + (dev.cpu_freq_max_hz - dev.cpu_freq_min_hz) * streams.uniform(keys, Stream.CPU, (k,))
    return Trace(
        position_m=position,
        distance_m=distance,
        gain=gain,
        cpu_freq_hz=cpu,
        success_uniform=streams.uniform(keys, Stream.SUCCESS, (rows, k)),
    )
