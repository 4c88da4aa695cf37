"""Observation and reward normalisation saved with every trained model (SB3 ``VecNormalize``).

The env's observations are already scaled to documented bounds, but their running statistics
still differ a lot between features (the backlog rarely leaves 0, the channel quality spans
several units), and PPO's value target is the return, so both are normalised as SB3 does.

For the per-device network the statistics are pooled over devices: :class:`DevicePooledStats`
keeps one mean and variance per device *feature* (F) and per global (4), not per observation
index (F K + 4). Normalisation then commutes with relabelling the devices (the network stays
permutation-equivariant), and the saved normaliser serves any K like the network does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.policies import NUM_DEVICE_FEATURES, NUM_GLOBAL_FEATURES, num_devices_of

__all__ = ["DevicePooledStats", "make_normalizer", "load_normalizer", "resize_normalizer"]


class DevicePooledStats(RunningMeanStd):
    """Running mean/variance per device feature and per global, shown tiled over K devices.

    Duck-types SB3's ``RunningMeanStd``: ``mean`` and ``var`` have the flat observation's
    shape (F K + 4,) and ``update`` takes a batch of flat observations.
    """

    def __init__(
        self, num_devices: int, device_features: int = NUM_DEVICE_FEATURES, epsilon: float = 1e-4
    ) -> None:
        self.num_devices = int(num_devices)
        self.device_features = int(device_features)
        self.device = RunningMeanStd(epsilon=epsilon, shape=(self.device_features,))
        self.glob = RunningMeanStd(epsilon=epsilon, shape=(NUM_GLOBAL_FEATURES,))

    # mean, var and count are computed from the pooled statistics. RunningMeanStd's are plain
    # attributes, so each property has a setter, which refuses: the pooled statistics change
    # through update and combine only (as before, when assigning raised AttributeError too).
    @property
    def mean(self) -> NDArray[np.float64]:
        return np.concatenate([np.tile(self.device.mean, self.num_devices), self.glob.mean])

    @mean.setter
    def mean(self, value: NDArray[np.float64]) -> None:
        self._read_only("mean")

    @property
    def var(self) -> NDArray[np.float64]:
        return np.concatenate([np.tile(self.device.var, self.num_devices), self.glob.var])

    @var.setter
    def var(self, value: NDArray[np.float64]) -> None:
        self._read_only("var")

    @property
    def count(self) -> float:
        return float(self.glob.count)

    @count.setter
    def count(self, value: float) -> None:
        self._read_only("count")

    def _read_only(self, name: str) -> None:
        raise AttributeError(
            f"DevicePooledStats.{name} is computed from the statistics pooled over devices "
            "(.device, .glob); "
            "change them with update() or combine()"
        )

    def update(self, arr: NDArray[np.floating[Any]]) -> None:
        k, f = self.num_devices, self.device_features
        arr = np.asarray(arr).reshape(-1, f * k + NUM_GLOBAL_FEATURES)
        self.device.update(arr[:, : f * k].reshape(-1, f))
        self.glob.update(arr[:, f * k :])

    def combine(self, other: RunningMeanStd) -> None:
        if not isinstance(other, DevicePooledStats):
            raise TypeError("can only combine pooled statistics with pooled statistics")
        self.device.combine(other.device)
        self.glob.combine(other.glob)

    def copy(self) -> DevicePooledStats:
        return self.resized(self.num_devices)

    def resized(self, num_devices: int) -> DevicePooledStats:
        """The same statistics for another number of devices."""
        new = DevicePooledStats(num_devices, self.device_features)
        new.device, new.glob = self.device.copy(), self.glob.copy()
        return new


def make_normalizer(
    venv: VecEnv,
    *,
    per_device: bool,
    device_features: int = NUM_DEVICE_FEATURES,
    gamma: float,
    norm_obs: bool = True,
    norm_reward: bool = True,
    clip_obs: float = 10.0,
    clip_reward: float = 10.0,
) -> VecNormalize:
    """Wrap ``venv`` in ``VecNormalize``; with ``per_device`` the statistics are pooled over
    devices."""
    vn = VecNormalize(
        venv,
        norm_obs=norm_obs,
        norm_reward=norm_reward,
        clip_obs=clip_obs,
        clip_reward=clip_reward,
        gamma=gamma,
    )
    if per_device and norm_obs:
        # mypy infers obs_rms's type from VecNormalize's Dict-observation branch; a Box
        # observation holds one RunningMeanStd (SB3's own assignment carries the same ignore).
        vn.obs_rms = DevicePooledStats(
            num_devices_of(venv.observation_space, device_features), device_features
        )  # type: ignore[assignment]
    return vn


def load_normalizer(path: str, venv: VecEnv) -> VecNormalize:
    """Load a saved normaliser onto ``venv`` (same observation shape) to resume training."""
    return VecNormalize.load(path, venv)


def resize_normalizer(stats: RunningMeanStd, num_devices: int) -> RunningMeanStd:
    """Statistics for another K: pooled ones are retiled, per-index ones cannot be and raise."""
    if isinstance(stats, DevicePooledStats):
        return stats.resized(num_devices)
    raise ValueError(
        "this model's observation statistics are per observation index (trained with policy=mlp), "
        "so it serves only the number of devices it was trained on; train with --policy per_device "
        "for a model that serves any K"
    )
