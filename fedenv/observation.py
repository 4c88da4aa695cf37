"""The observation: its features, their bounds, and how they are computed from the state.

A flat float32 vector of 7 features per device (device-major), then 4 global features, each
normalised to finite bounds (the table in :class:`fedenv.env.FedLoRAWirelessEnv`'s docstring).
The features that do not depend on the policy (channel, distance, CPU, data share, round) are
tabulated for a whole episode at reset (:func:`observation_template`); a step writes the others
(:func:`write_observation`). Vectorised over a leading episode axis.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedenv.config import EnvConfig

__all__ = [
    "DEVICE_FEATURES",
    "GLOBAL_FEATURES",
    "BOUNDS",
    "observation_bounds",
    "observation_template",
    "write_observation",
]

#: Per-device observation features, in order (see the env's docstring for units and bounds).
DEVICE_FEATURES = (
    "channel_quality",
    "distance",
    "cpu_frequency",
    "data_share",
    "energy_backlog",
    "last_module",
    "last_success",
)
#: Global observation features, after the K x 7 device block.
GLOBAL_FEATURES = ("round_fraction", "accuracy", "loss", "latency_backlog")

#: (low, high) of every feature.
BOUNDS = {
    "channel_quality": (-4.0, 4.0),
    "distance": (0.0, 1.0),
    "cpu_frequency": (0.0, 1.0),
    "data_share": (0.0, 1.0),
    "energy_backlog": (0.0, 10.0),
    "last_module": (0.0, 1.0),
    "last_success": (0.0, 1.0),
    "round_fraction": (0.0, 1.0),
    "accuracy": (0.0, 1.0),
    "loss": (0.0, 5.0),
    "latency_backlog": (0.0, 10.0),
}

#: The channel quality is the full-band SNR at P_max in dB over this scale.
_CHANNEL_DB_SCALE = 20.0
#: Backlogs are observed in units of this many budgets.
_BACKLOG_SCALE = 10.0


def observation_bounds(num_devices: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Low and high bounds of the flat observation for K devices."""
    dev_lo = np.array([BOUNDS[f][0] for f in DEVICE_FEATURES], dtype=np.float32)
    dev_hi = np.array([BOUNDS[f][1] for f in DEVICE_FEATURES], dtype=np.float32)
    glo_lo = np.array([BOUNDS[f][0] for f in GLOBAL_FEATURES], dtype=np.float32)
    glo_hi = np.array([BOUNDS[f][1] for f in GLOBAL_FEATURES], dtype=np.float32)
    low = np.concatenate([np.tile(dev_lo, num_devices), glo_lo])
    high = np.concatenate([np.tile(dev_hi, num_devices), glo_hi])
    return low, high


def observation_template(
    config: EnvConfig,
    gain: NDArray[np.float64],
    distance_m: NDArray[np.float64],
    cpu_freq_hz: NDArray[np.float64],
    data_share: NDArray[np.float64],
) -> NDArray[np.float32]:
    """The policy-independent part of every observation of an episode.

    Args:
        gain, distance_m: the trace, shape (..., T + 1, K).
        cpu_freq_hz, data_share: shape (..., K).

    Returns:
        float32 array of shape (..., T + 1, 7 K + 4): row t is the observation of round t with
        channel quality, distance, CPU frequency, data share and the round fraction filled in,
        and the policy-dependent features 0 (see :func:`write_observation`).
    """
    k = config.devices.num_devices
    ch = config.channel
    rows = config.num_rounds + 1
    lead = np.shape(cpu_freq_hz)[:-1]
    obs = np.zeros(lead + (rows, 7 * k + 4), dtype=np.float32)
    snr_ref = ch.max_tx_power_w / (ch.bandwidth_hz * ch.noise_psd_w_per_hz)
    quality = np.log10(snr_ref * gain)
    quality *= 10.0
    quality /= _CHANNEL_DB_SCALE
    obs[..., 0 : 7 * k : 7] = np.minimum(np.maximum(quality, -4.0, out=quality), 4.0, out=quality)
    distance = np.divide(distance_m, ch.cell_radius_m)
    obs[..., 1 : 7 * k : 7] = np.minimum(np.maximum(distance, 0.0, out=distance), 1.0, out=distance)
    obs[..., 2 : 7 * k : 7] = (np.asarray(cpu_freq_hz) / config.devices.cpu_freq_max_hz)[
        ..., None, :
    ]
    obs[..., 3 : 7 * k : 7] = np.asarray(data_share)[..., None, :]
    obs[..., 7 * k] = np.arange(rows) / config.num_rounds
    return obs


def write_observation(
    obs: NDArray[np.float32],
    config: EnvConfig,
    *,
    energy_backlog: ArrayLike,
    last_module: NDArray[np.int64],
    last_success: NDArray[np.bool_],
    accuracy: ArrayLike,
    loss: ArrayLike,
    latency_backlog: ArrayLike,
) -> NDArray[np.float32]:
    """Fill the policy-dependent features into ``obs`` (rows of :func:`observation_template`).

    ``obs`` (..., 7 K + 4), per-device arguments (..., K), the others (...). Features are clipped
    to their documented bounds; a backlog without its budget is observed as 0.
    """
    k7 = 7 * config.devices.num_devices
    energy_budget = config.budgets.energy_budget_j
    latency_budget = config.budgets.latency_budget_s
    if energy_budget is not None:
        # in float64, then one conversion (the same float32 values: rounding is monotonic and
        # the bound is a float32)
        z = np.divide(energy_backlog, _BACKLOG_SCALE * energy_budget)
        obs[..., 4:k7:7] = np.minimum(z, BOUNDS["energy_backlog"][1], out=z)
    obs[..., 5:k7:7] = np.divide(last_module, config.model.num_modules)
    obs[..., 6:k7:7] = last_success
    obs[..., k7 + 1] = accuracy
    low, high = BOUNDS["loss"]
    loss = np.divide(loss, config.learning.surrogate.initial_loss)
    obs[..., k7 + 2] = np.minimum(np.maximum(loss, low), high)
    if latency_budget is not None:
        low, high = BOUNDS["latency_backlog"]
        y = np.divide(latency_backlog, _BACKLOG_SCALE * latency_budget)
        obs[..., k7 + 3] = np.minimum(np.maximum(y, low), high)
    return obs
