"""What a learned agent observes: the env's observation, optionally with the devices' label mix.

The env's observation (7 features per device, 4 globals) carries the channels, resources,
backlogs and learning progress, but not *which labels* each device holds. The Lyapunov policy
reads that from ``info["label_distribution"]`` (the base station knows the label histograms it
partitioned, SPEC §5): it is what decides how biased a round's aggregate is (the surrogate's
non-IID floor), so a policy blind to it cannot balance participation. For equal terms the agents
can observe it too, from the same ``info``:

* ``env``: the env's observation as is, ``(7 K + 4,)``.
* ``label_mix`` (default): per device the 7 env features then the label skew
  ``l_k - p`` (L values: the device's label distribution minus the global one, in [-1, 1]);
  then the 4 globals: ``(K (7 + L) + 4,)``. The label mix is fixed for an episode.
* ``label_mix_time``: ``label_mix`` plus, per device, the time-to-go features
  ``max(0, 1 - (T - t) / h)`` for h in :data:`TIME_HORIZONS` (0 until the last h rounds, then
  rising to 1 - 1/h at the last round): ``(K (7 + L + H) + 4,)``. The env observes the linear
  round fraction t / T only; participation pays most in the last rounds of an episode (the
  non-IID floor of the last participants sets the final accuracy, docs/agents.md), and these
  ramps make that time dependence easy to represent. They are the same for every device (a
  global broadcast to each device's row, so the per-device network and its pooled normaliser
  need no extra global slot).

One :class:`ObservationFeatures` object builds the training wrapper's observations and the
evaluation adapter's from ``(obs, info)``, so training and evaluation cannot disagree.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from fedenv.config import EnvConfig
from fedenv.env import DEVICE_FEATURES, GLOBAL_FEATURES

__all__ = ["OBS_FEATURES", "TIME_HORIZONS", "ObservationFeatures", "AgentObservation"]

OBS_FEATURES = ("env", "label_mix", "label_mix_time")
#: h of the time-to-go ramps of ``label_mix_time``, rounds
TIME_HORIZONS = (3, 10)
_F = len(DEVICE_FEATURES)
_G = len(GLOBAL_FEATURES)


class ObservationFeatures:
    """Layout of the agent's observation for one config and feature set (module docstring)."""

    def __init__(self, config: EnvConfig, kind: str = "label_mix") -> None:
        if kind not in OBS_FEATURES:
            raise ValueError(f"obs_features must be one of {', '.join(OBS_FEATURES)}, got {kind!r}")
        self.kind = kind
        self.num_devices = config.devices.num_devices
        self.num_labels = config.model.num_labels if kind != "env" else 0
        self.num_time = len(TIME_HORIZONS) if kind == "label_mix_time" else 0
        self.num_rounds = config.num_rounds
        self.device_features = _F + self.num_labels + self.num_time
        self.size = self.num_devices * self.device_features + _G

    def observation_space(self, env_space: spaces.Box) -> spaces.Box:
        if self.kind == "env":
            return env_space
        k = self.num_devices
        low = np.asarray(env_space.low, dtype=np.float32)
        high = np.asarray(env_space.high, dtype=np.float32)
        extra_lo = np.concatenate([-np.ones((k, self.num_labels), np.float32), np.zeros((k, self.num_time), np.float32)], axis=1)
        dev_lo = np.concatenate([low[: _F * k].reshape(k, _F), extra_lo], axis=1)
        dev_hi = np.concatenate([high[: _F * k].reshape(k, _F), np.ones((k, self.num_labels + self.num_time), np.float32)], axis=1)
        return spaces.Box(np.concatenate([dev_lo.ravel(), low[_F * k :]]), np.concatenate([dev_hi.ravel(), high[_F * k :]]), dtype=np.float32)

    def __call__(self, obs: NDArray[np.floating[Any]], info: dict[str, Any]) -> NDArray[np.float32]:
        """The agent's observation from the env's ``obs`` and ``info`` of the same reset/step.

        Also batched: ``obs`` of shape (N, 7 K + 4) with the batched ``info`` of
        :class:`fedenv.vector.FedLoRAWirelessVectorEnv` (its state keys) gives (N, size).
        """
        if self.kind == "env":
            return np.asarray(obs, dtype=np.float32)
        k = self.num_devices
        obs = np.asarray(obs, dtype=np.float32)
        lead = obs.shape[:-1]
        glob = np.asarray(info["global_label_distribution"], dtype=np.float32)
        skew = np.asarray(info["label_distribution"], dtype=np.float32) - glob[..., None, :]
        parts = [obs[..., : _F * k].reshape(*lead, k, _F), skew.reshape(*lead, k, self.num_labels)]
        if self.num_time:
            to_go = self.num_rounds - np.asarray(info["round"], dtype=np.float64)
            ramps = np.maximum(0.0, 1.0 - to_go[..., None] / np.asarray(TIME_HORIZONS, dtype=np.float64)).astype(np.float32)
            parts.append(np.broadcast_to(ramps[..., None, :], (*lead, k, self.num_time)))
        dev = np.concatenate(parts, axis=-1)
        return np.concatenate([dev.reshape(*lead, k * self.device_features), obs[..., _F * k :]], axis=-1)


class AgentObservation(gym.Wrapper[NDArray[np.float32], Any, NDArray[np.float32], Any]):
    """Training-side wrapper: the env with the agent's observation (:class:`ObservationFeatures`)."""

    def __init__(self, env: gym.Env[Any, Any], features: ObservationFeatures) -> None:
        super().__init__(env)
        self.features = features
        assert isinstance(env.observation_space, spaces.Box)
        self.observation_space = features.observation_space(env.observation_space)  # type: ignore[assignment]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[NDArray[np.float32], dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self.features(obs, info), info

    def step(self, action: Any) -> tuple[NDArray[np.float32], SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.features(obs, info), reward, terminated, truncated, info
