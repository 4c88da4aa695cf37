"""Training environments for the agents: vectorised FedLoRAWireless-v0 for SB3.

``make_vec_env(config, n_envs, kind, seed)`` builds ``n_envs`` copies of the env, each with
the agent's observation and action form (:mod:`agents.features`, :mod:`agents.actions`), in a
``DummyVecEnv`` (one process; best when the env step is cheaper than inter-process traffic, as
with the surrogate backend) or a ``SubprocVecEnv`` (one process per env; for the lora backend).
The batched ``fedenv.sb3.FedLoRAWirelessVecEnv`` is not used here: its infos carry neither the
reward terms (logged by :class:`agents.callbacks.EnvMetricsCallback`) nor the label mix of an
episode started by its same-step reset (needed by the ``label_mix`` observation).

The horizon is part of the task (the observation carries the round fraction t / T and the
episode ends after T rounds), so the training envs report the horizon as a termination: SB3
must not bootstrap a value beyond the last round. Evaluation is unaffected (it reads returns).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from agents.actions import ActionAdapter, AgentAction
from agents.features import AgentObservation, ObservationFeatures
from fedenv.config import EnvConfig
from fedenv.env import FedLoRAWirelessEnv
from fedenv.wrappers import HorizonIsTermination

__all__ = ["VEC_ENV_KINDS", "HorizonIsTermination", "make_env", "make_vec_env"]

VEC_ENV_KINDS = ("dummy", "subproc")


def make_env(config: EnvConfig, obs_features: str = "label_mix", action_form: str = "factored") -> Callable[[], gym.Env[Any, Any]]:
    """A thunk building one monitored training env (picklable for subprocess vector envs)."""

    def thunk() -> gym.Env[Any, Any]:
        env: gym.Env[Any, Any] = AgentObservation(Monitor(FedLoRAWirelessEnv(config)), ObservationFeatures(config, obs_features))
        env = AgentAction(env, ActionAdapter(config, action_form))
        return HorizonIsTermination(env)

    return thunk


def make_vec_env(config: EnvConfig, n_envs: int, kind: str = "dummy", seed: int = 0, obs_features: str = "label_mix", action_form: str = "factored") -> VecEnv:
    """``n_envs`` training envs with the agent's observation and action form; env i starts from ``reset(seed=seed + i)``."""
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if kind not in VEC_ENV_KINDS:
        raise ValueError(f"vec_env must be one of {', '.join(VEC_ENV_KINDS)}, got {kind!r}")
    venv: VecEnv
    if kind == "subproc" and n_envs > 1:
        venv = SubprocVecEnv([make_env(config, obs_features, action_form) for _ in range(n_envs)], start_method="forkserver")
    else:
        venv = DummyVecEnv([make_env(config, obs_features, action_form) for _ in range(n_envs)])
    venv.seed(int(seed))
    return venv


def episode_seeds(first: int, count: int) -> list[int]:
    """The held-out evaluation seeds first, first + 1, ... (the baselines use the same rule)."""
    return list(np.arange(first, first + count, dtype=np.int64).tolist())
