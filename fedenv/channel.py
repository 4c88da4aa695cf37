"""Wireless model (docs/model.md §2): placement, path loss, fading, mobility, uplink rate, packet
error.

Pure functions over arrays, vectorised over devices and any leading batch axes; linear SI
units inside (W, Hz, m, linear power gains), dB only in the path loss and at the edges.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedenv.config import ChannelConfig

__all__ = [
    "place_devices",
    "path_loss_db",
    "channel_gain",
    "gauss_markov_fading",
    "random_waypoint",
    "uplink_rate",
    "packet_error_rate",
    "snr",
    "link",
]

F = NDArray[np.float64]
_INV_LN2 = 1.0 / np.log(2.0)


def place_devices(u_radius: ArrayLike, u_angle: ArrayLike, cfg: ChannelConfig) -> F:
    """Positions (x, y) in metres, uniform over the annulus [d_min, R_cell] around the BS.

    Uniform by area: d = sqrt(u (R^2 - d_min^2) + d_min^2), angle = 2 pi u'. The last axis of
    the result holds (x, y).
    """
    r2_lo, r2_hi = cfg.min_distance_m**2, cfg.cell_radius_m**2
    d = np.sqrt(np.asarray(u_radius) * (r2_hi - r2_lo) + r2_lo)
    phi = 2.0 * np.pi * np.asarray(u_angle)
    out = np.empty(
        (d.shape if d.shape == phi.shape else np.broadcast_shapes(d.shape, phi.shape)) + (2,)
    )
    np.multiply(d, np.cos(phi), out=out[..., 0])
    np.multiply(d, np.sin(phi), out=out[..., 1])
    return out


def path_loss_db(distance_m: ArrayLike, cfg: ChannelConfig) -> F:
    """3GPP macro path loss PL(d) = 128.1 + 37.6 log10(d / 1 km) dB (docs/model.md §2.3)."""
    return cfg.pathloss_at_1km_db + cfg.pathloss_slope_db_per_decade * np.log10(
        np.asarray(distance_m) / 1000.0
    )


def channel_gain(
    distance_m: ArrayLike, fading_power: ArrayLike, shadowing_db: ArrayLike, cfg: ChannelConfig
) -> F:
    """Linear uplink power gain h = 10^(-(PL(d) + shadowing)/10) |g|^2 (docs/model.md §2.3,
    §2.4)."""
    loss_db = path_loss_db(distance_m, cfg) + np.asarray(shadowing_db)
    return np.power(10.0, -loss_db / 10.0) * np.asarray(fading_power)


def gauss_markov_fading(
    initial: NDArray[np.complex128], innovations: NDArray[np.complex128], rho: float
) -> NDArray[np.complex128]:
    """Gauss-Markov Rayleigh fading g(t+1) = rho g(t) + sqrt(1 - rho^2) w(t) (docs/model.md §2.4).

    Args:
        initial: g(0) ~ CN(0, 1), shape (..., K).
        innovations: w(1..T-1) ~ CN(0, 1), shape (..., T-1, K).
        rho: correlation between rounds, 0 <= rho < 1 (0 = i.i.d. block fading).

    Returns:
        g(0..T-1), shape (..., T, K); |g|^2 ~ Exp(1) at every round.
    """
    initial = np.asarray(initial, dtype=np.complex128)
    innovations = np.asarray(innovations, dtype=np.complex128)
    lead = initial.shape[:-1]
    if innovations.shape[:-2] != lead:
        lead = np.broadcast_shapes(lead, innovations.shape[:-2])
    steps, k = innovations.shape[-2], initial.shape[-1]
    g = np.empty(lead + (steps + 1, k), dtype=np.complex128)
    g[..., 0, :] = initial
    np.multiply(innovations, math.sqrt(1.0 - rho * rho), out=g[..., 1:, :])
    # The recursion g(t) = rho g(t-1) + x(t) as a parallel prefix scan over rounds (log2 T
    # array operations instead of T): after the pass with offset d, g(t) holds
    # sum_{j < 2d} rho^j x(t - j).
    offset, power = 1, rho
    while offset <= steps and power != 0.0:
        g[..., offset:, :] += power * g[..., :-offset, :]
        offset, power = 2 * offset, power * power
    return g


def random_waypoint(
    start: F,
    waypoints: F,
    speed_m_per_s: float,
    interval_s: float,
) -> F:
    """Random-waypoint mobility, sampled once per round (docs/model.md §2.2).

    Each device walks at constant speed towards its current waypoint; on reaching it, it takes
    the next one from ``waypoints`` (pre-drawn uniformly in the cell, one candidate per round
    and device, so that the trace is a pure function of the episode key).

    Args:
        start: positions at round 0, shape (..., K, 2).
        waypoints: candidate waypoints, shape (..., T, K, 2); waypoint t is taken at the t-th
            arrival of that device.
        speed_m_per_s: walking speed.
        interval_s: time between rounds.

    Returns:
        positions for rounds 0..T-1, shape (..., T, K, 2).
    """
    steps = waypoints.shape[-3]
    pos = np.empty(start.shape[:-2] + (steps,) + start.shape[-2:], dtype=np.float64)
    pos[..., 0, :, :] = start
    target_idx = np.zeros(start.shape[:-1], dtype=np.int64)
    current = start.copy()
    reach = speed_m_per_s * interval_s
    for t in range(1, steps):
        target = np.take_along_axis(waypoints, target_idx[..., None, :, None], axis=-3)[
            ..., 0, :, :
        ]
        delta = target - current
        dist = np.linalg.norm(delta, axis=-1)
        arrived = dist <= reach
        frac = np.where(arrived, 1.0, reach / np.maximum(dist, 1e-12))
        current = current + delta * frac[..., None]
        target_idx = np.where(arrived, np.minimum(target_idx + 1, steps - 1), target_idx)
        pos[..., t, :, :] = current
    return pos


def snr(power_w: ArrayLike, gain: ArrayLike, share: ArrayLike, cfg: ChannelConfig) -> F:
    """Receive SNR p h / (beta B N0) on an FDMA share beta of the band."""
    noise = np.asarray(share) * (cfg.bandwidth_hz * cfg.noise_psd_w_per_hz)
    return np.asarray(power_w) * np.asarray(gain) / noise


def uplink_rate(power_w: ArrayLike, gain: ArrayLike, share: ArrayLike, cfg: ChannelConfig) -> F:
    """Shannon rate R = beta B log2(1 + p h / (beta B N0)) in bit/s, FDMA, no interference
    (docs/model.md §2.5).

    A share below 1e-12 of the band (a zero share included) gives a zero rate: the limit of the
    formula as beta -> 0, and no floating-point overflow on the way there.
    """
    return link(power_w, gain, share, cfg)[0]


def packet_error_rate(
    power_w: ArrayLike, gain: ArrayLike, share: ArrayLike, cfg: ChannelConfig
) -> F:
    """Waterfall packet error q = 1 - exp(-m beta B N0 / (p h)) (Chen et al., TWC 2021;
    docs/model.md §2.6).

    A zero received power (no channel) loses every packet.
    """
    return link(power_w, gain, share, cfg)[1]


def link(power_w: ArrayLike, gain: ArrayLike, share: ArrayLike, cfg: ChannelConfig) -> tuple[F, F]:
    """(:func:`uplink_rate`, :func:`packet_error_rate`) at once, sharing p h and beta B N0."""
    share = np.asarray(share, dtype=np.float64)
    received = np.multiply(power_w, gain)
    noise = share * (cfg.bandwidth_hz * cfg.noise_psd_w_per_hz)
    # The divisions may meet zeros (no share, no received power); np.where then puts in the
    # limit values.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # log1p keeps full precision at low SNR, where log2(1 + x) rounds x away
        rate = np.log1p(np.divide(received, noise)) * share * (cfg.bandwidth_hz * _INV_LN2)
        q = -np.expm1(noise * -cfg.waterfall_threshold / received)
    # a share of at most 1e-12 of the band (or none) carries nothing; no received power loses
    # the packet
    return np.where(share > 1e-12, rate, 0.0), np.where(received > 0.0, q, 1.0)
