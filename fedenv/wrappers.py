"""Action and observation adapters for FedLoRAWireless-v0.

Each maps back to the canonical forms of :class:`fedenv.env.FedLoRAWirelessEnv` (an action Box
in [-1, 1] of shape (K, C); a flat observation of 7 K + 4 features):

* :class:`DictAction` — a ``Dict`` action with one ``Box(-1, 1, (K,))`` per component (RLlib).
* :class:`DiscreteAction` — a ``MultiDiscrete`` action over module, schedule and quantised
  power, bandwidth-weight and ratio levels (DQN-style agents, tabular baselines).
* :class:`DictObservation` — ``{"devices": (K, 7), "global": (4,)}`` observations for
  per-device (permutation-equivariant) networks.
* :class:`HorizonIsTermination` — reports the end of the T rounds as a termination, for
  agents that treat the finite horizon as part of the task (SB3, RLlib training envs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from fedenv.env import DEVICE_FEATURES

__all__ = ["DictAction", "DiscreteAction", "DictObservation", "HorizonIsTermination"]


def _canonical(env: gym.Env) -> tuple[int, tuple[str, ...], int]:
    base = env.unwrapped
    codec = getattr(base, "codec", None)
    if codec is None:
        raise TypeError(f"expected a FedLoRAWireless-v0 environment, got {type(base).__name__}")
    return codec.num_devices, codec.components, codec.num_modules


class DictAction(gym.ActionWrapper[NDArray[np.float32], dict[str, NDArray[np.float32]], NDArray[np.floating[Any]]]):
    """Dict action ``{component: Box(-1, 1, (K,))}``; components as in the env's action table.

    Each component is passed on in its own precision (float64 values are not narrowed to
    float32, where a finite 1e39 would become inf): the env clips finite values to [-1, 1] and
    rejects the rest. Anything but a mapping with exactly the component keys, each an array of
    shape (K,) of real numbers, raises ``ValueError`` before the env is touched.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.num_devices, self.components, _ = _canonical(env)
        k = self.num_devices
        self.action_space = spaces.Dict({c: spaces.Box(-1.0, 1.0, shape=(k,), dtype=np.float32) for c in self.components})  # type: ignore[assignment]

    def action(self, action: Mapping[str, Any]) -> NDArray[np.floating[Any]]:
        k, keys = self.num_devices, list(self.components)
        if not isinstance(action, Mapping):
            raise ValueError(
                f"Dict action must be a mapping {{component: array of shape ({k},)}} with the keys {keys}, "
                f"got {type(action).__name__}: {action!r}"
            )
        missing = set(self.components) - set(action)
        extra = set(action) - set(self.components)
        if missing or extra:
            raise ValueError(
                f"Dict action must have exactly the keys {keys}; missing {sorted(missing)}, unexpected {sorted(extra, key=repr)}"
            )
        parts = []
        for c in self.components:
            part = np.asarray(action[c])
            if part.shape != (k,):
                raise ValueError(f"Dict action[{c!r}] must have shape ({k},) (one value per device), got shape {part.shape}")
            if part.dtype.kind not in "iufO":
                raise ValueError(f"Dict action[{c!r}] must hold real numbers in [-1, 1], got dtype {part.dtype}")
            parts.append(part)
        return np.stack(parts, axis=-1)

    def reverse_action(self, action: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        a = np.asarray(action, dtype=np.float32)
        return {c: a[..., i].copy() for i, c in enumerate(self.components)}


class DiscreteAction(gym.ActionWrapper[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32]]):
    """``MultiDiscrete`` of shape (K, C): per device and component, a level index.

    * module: M + 1 levels (0 = not scheduled, j = module j); schedule: 2 levels;
    * power, bandwidth, ratio: ``levels`` evenly spaced values of the canonical [-1, 1]
      (power from p_min to P_max; bandwidth weights from 0 to 1; ratio from rho_min to 1).

    Args:
        env: a FedLoRAWireless-v0 env (possibly wrapped).
        power_levels / bandwidth_levels / ratio_levels: quantisation levels, >= 2.
    """

    def __init__(self, env: gym.Env, power_levels: int = 4, bandwidth_levels: int = 4, ratio_levels: int = 4) -> None:
        super().__init__(env)
        for name, n in (("power_levels", power_levels), ("bandwidth_levels", bandwidth_levels), ("ratio_levels", ratio_levels)):
            if not isinstance(n, int) or n < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {n!r}")
        self.num_devices, self.components, num_modules = _canonical(env)
        sizes = {"module": num_modules + 1, "schedule": 2, "power": power_levels, "bandwidth": bandwidth_levels, "ratio": ratio_levels}
        self.levels = np.array([sizes[c] for c in self.components], dtype=np.int64)
        self.action_space = spaces.MultiDiscrete(np.tile(self.levels, (self.num_devices, 1)))
        # canonical value of every level, per component (module levels are bin centres)
        self._values = []
        for c, n in zip(self.components, self.levels):
            if c == "module":
                self._values.append((np.arange(n) + 0.5) / n * 2.0 - 1.0)
            else:
                self._values.append(np.linspace(-1.0, 1.0, int(n)))

    def action(self, action: NDArray[np.int64]) -> NDArray[np.float32]:
        a = np.asarray(action)
        if a.shape != self.action_space.shape:
            raise ValueError(f"discrete action must have shape {self.action_space.shape}, got {a.shape}")
        if not np.issubdtype(a.dtype, np.integer) or (a < 0).any() or (a >= self.levels).any():
            raise ValueError(f"discrete action levels must be integers in [0, {list(self.levels)}) per component, got {a}")
        out = np.empty(a.shape, dtype=np.float32)
        for i, values in enumerate(self._values):
            out[:, i] = values[a[:, i]]
        return out

    def reverse_action(self, action: NDArray[np.float32]) -> NDArray[np.int64]:
        """Nearest level of each canonical value."""
        a = np.asarray(action, dtype=np.float64)
        out = np.empty(a.shape, dtype=np.int64)
        for i, values in enumerate(self._values):
            out[:, i] = np.abs(a[:, i, None] - values[None, :]).argmin(axis=-1)
        return out


class DictObservation(gym.ObservationWrapper[dict[str, NDArray[np.float32]], Any, Any]):
    """``{"devices": Box((K, 7)), "global": Box((4,))}`` view of the flat observation."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        k, _, _ = _canonical(env)
        self.num_devices = k
        box = env.observation_space
        assert isinstance(box, spaces.Box)
        nd = len(DEVICE_FEATURES)
        self.observation_space = spaces.Dict(  # type: ignore[assignment]
            {
                "devices": spaces.Box(box.low[: nd * k].reshape(k, nd), box.high[: nd * k].reshape(k, nd), dtype=np.float32),
                "global": spaces.Box(box.low[nd * k :], box.high[nd * k :], dtype=np.float32),
            }
        )

    def observation(self, observation: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        nd = len(DEVICE_FEATURES)
        k = self.num_devices
        return {"devices": observation[: nd * k].reshape(k, nd).copy(), "global": observation[nd * k :].copy()}


class HorizonIsTermination(gym.Wrapper[Any, Any, Any, Any]):
    """Reports the end of the finite-horizon task (truncation after T rounds) as a termination.

    The observation carries the round fraction t / T and an episode always ends after T rounds,
    so the horizon is part of the task: a learner must not bootstrap a value past the last
    round. Evaluation is unaffected (returns are the same).
    """

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated or truncated, False, info
