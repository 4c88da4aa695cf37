"""stable-baselines3 adapter: the batched vector env as an SB3 ``VecEnv``.

:class:`FedLoRAWirelessVecEnv` runs N sub-envs of :class:`fedenv.vector.FedLoRAWirelessVectorEnv`
with one set of array operations and speaks SB3's VecEnv API: ``step`` returns
``(obs, rewards, dones, infos)`` with ``dones = terminated | truncated``, finished sub-envs are
reset in the same step (their last observation is in ``infos[i]["terminal_observation"]``),
and ``infos[i]["TimeLimit.truncated"]`` tells a truncation from a termination: the same
observations, rewards and dones as ``DummyVecEnv`` over N single envs seeded alike::

    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor
    from fedenv.sb3 import FedLoRAWirelessVecEnv

    venv = VecMonitor(FedLoRAWirelessVecEnv(num_envs=16, preset="switching"))
    PPO("MlpPolicy", venv, n_steps=64, seed=0).learn(100_000)

To keep the learner's throughput, ``infos`` holds only what SB3 uses (the two keys above);
``info_keys`` copies chosen entries of the env's ``info`` (e.g. ``("accuracy",)``)
into every sub-env's dict. This module imports stable_baselines3 (the ``train`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from fedenv.config import EnvConfig
from fedenv.vector import FedLoRAWirelessVectorEnv

__all__ = ["FedLoRAWirelessVecEnv"]


class FedLoRAWirelessVecEnv(VecEnv):
    """N FedLoRAWireless-v0 sub-envs (surrogate backend) as one stable-baselines3 ``VecEnv``.

    Args:
        num_envs: number of sub-environments.
        config, preset, **overrides: as for :class:`fedenv.env.FedLoRAWirelessEnv`.
        info_keys: entries of the env's batched ``info`` copied into each sub-env's info dict.
        seed: seed of the first reset (sub-env i gets seed + i); None draws one.
    """

    def __init__(
        self,
        num_envs: int = 1,
        config: EnvConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        preset: str | None = None,
        info_keys: Sequence[str] = (),
        seed: int | None = None,
        **overrides: Any,
    ) -> None:
        self.venv = FedLoRAWirelessVectorEnv(num_envs, config, preset, **overrides)
        self.render_mode = None
        self.info_keys = tuple(info_keys)
        super().__init__(
            num_envs, self.venv.single_observation_space, self.venv.single_action_space
        )
        if seed is not None:
            self.seed(seed)
        self._actions: NDArray[np.float32] | None = None

    @property
    def config(self) -> EnvConfig:
        return self.venv.config

    # ---------------------------------------------------------------- VecEnv API
    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        obs, info = self.venv.reset(seed=seeds)
        self.reset_infos = [self._pick(info, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32).reshape(self.venv.action_space.shape)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async() before step_wait()")
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        # as DummyVecEnv: every info says whether its episode ended by the time limit
        time_limit = (truncated & ~terminated).tolist()
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": flag} for flag in time_limit]
        if self.info_keys:
            for i, extra in enumerate(infos):
                extra.update(self._pick(info, i))
        if dones.any():
            for j in np.flatnonzero(dones):
                infos[j]["terminal_observation"] = obs[j].copy()
            obs = self.venv.restart(dones)
        return obs, rewards.astype(np.float32), dones, infos

    def _pick(self, info: dict[str, Any], i: int) -> dict[str, Any]:
        return {key: info[key][i] for key in self.info_keys if key in info and info["_" + key][i]}

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "render_mode":
            return [None for _ in self._get_indices(indices)]
        value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(
            "the sub-envs of FedLoRAWirelessVecEnv share one batched state; cannot set "
            f"{attr_name!r} per sub-env"
        )

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        raise AttributeError(
            f"FedLoRAWirelessVecEnv has no per-sub-env objects to call {method_name!r} on; use "
            "DummyVecEnv over single envs for that"
        )

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
