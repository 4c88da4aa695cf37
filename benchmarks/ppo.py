"""SB3 PPO frames/s on FedLoRAWireless-v0 next to a trivial env: ``python -m fedenv.bench ppo``."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

__all__ = ["bench_ppo"]


class _TrivialEnv:
    """A Gymnasium env with FedLoRAWireless-v0's spaces that does nothing (episodes of T steps)."""

    def __new__(cls, horizon: int) -> Any:
        import gymnasium as gym

        from fedenv.env import FedLoRAWirelessEnv

        ref = FedLoRAWirelessEnv()
        obs_shape = ref.observation_space.shape or ()

        class Trivial(gym.Env):  # type: ignore[type-arg]
            observation_space = ref.observation_space
            action_space = ref.action_space

            def reset(
                self, *, seed: int | None = None, options: dict[str, Any] | None = None
            ) -> Any:
                super().reset(seed=seed)
                self._t = 0
                return np.zeros(obs_shape, dtype=np.float32), {}

            def step(self, action: Any) -> Any:
                self._t += 1
                return np.zeros(obs_shape, dtype=np.float32), 0.0, False, self._t >= horizon, {}

        return Trivial()


def _trivial_vec_env(num_envs: int, horizon: int, spaces: tuple[Any, Any] | None = None) -> Any:
    """A stable-baselines3 VecEnv with the same spaces (default: the env's) and API outputs as
    fedenv.sb3's, doing nothing."""
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv

    from fedenv.env import FedLoRAWirelessEnv

    if spaces is None:
        ref = FedLoRAWirelessEnv()
        spaces = (ref.observation_space, ref.action_space)
    obs_space, act_space = spaces
    obs_shape = obs_space.shape or ()

    class TrivialVecEnv(VecEnv):
        def __init__(self) -> None:
            self.render_mode = None
            super().__init__(num_envs, obs_space, act_space)
            self._t = 0

        def reset(self) -> Any:
            self._t = 0
            return np.zeros((num_envs, *obs_shape), dtype=np.float32)

        def step_async(self, actions: Any) -> None:
            self._actions = np.asarray(actions, dtype=np.float32)

        def step_wait(self) -> Any:
            self._t += 1
            done = self._t >= horizon
            obs = np.zeros((num_envs, *obs_shape), dtype=np.float32)
            infos: list[dict[str, Any]] = [{"TimeLimit.truncated": done} for _ in range(num_envs)]
            if done:
                self._t = 0
                for info in infos:
                    info["terminal_observation"] = obs[0].copy()
            return obs, np.zeros(num_envs, dtype=np.float32), np.full(num_envs, done), infos

        def close(self) -> None:
            pass

        def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
            return [getattr(self, attr_name, None) for _ in range(num_envs)]

        def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
            pass

        def env_method(
            self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any
        ) -> list[Any]:
            return []

        def env_is_wrapped(self, wrapper_class: Any, indices: Any = None) -> list[bool]:
            return [False] * num_envs

    return TrivialVecEnv()


def _timed(venv: Any) -> Any:
    """A VecEnvWrapper accumulating the wall time spent in the env (reset, step) in ``seconds``."""
    from stable_baselines3.common.vec_env import VecEnvWrapper

    class Timed(VecEnvWrapper):
        seconds = 0.0

        def reset(self) -> Any:
            start = time.perf_counter()
            obs = self.venv.reset()
            self.seconds += time.perf_counter() - start
            return obs

        def step_wait(self) -> Any:
            start = time.perf_counter()
            out = self.venv.step_wait()
            self.seconds += time.perf_counter() - start
            return out

    return Timed(venv)


def bench_ppo(args: argparse.Namespace) -> dict[str, Any]:
    """SB3 PPO frames/s on FedLoRAWireless-v0 vs on a trivial env of the same spaces.

    Three pairs, run alternately in one process (best of ``--repeats``): single envs through
    ``DummyVecEnv``; the batched env through :class:`fedenv.sb3.FedLoRAWirelessVecEnv` next to a
    trivial batched VecEnv (issue 6: >= 90% of the trivial env's frames/s); and the training
    envs of ``agents/train_ppo.py`` (``agents.envs.make_vec_env`` with its defaults: the
    batched env with the agent's ``label_mix`` observation and ``factored`` action) next to a
    trivial VecEnv of those spaces (issue 5: the env should cost PPO < 15% of its throughput;
    issue 19: PPO spends at most 8% of its time in the env). PPO
    uses SB3's defaults except n_steps,
    sized so that a rollout holds 2048 frames; torch runs on 1 thread.

    Besides the frames/s of separate runs (sensitive to other load on the machine), the time
    spent inside the env is measured within each run; the ratio to the trivial env is also
    derived from it: (PPO's own time + trivial env time) / (PPO's own time + this env's time),
    all per frame and from the same run, which other processes disturb far less.
    """
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.envs import make_vec_env
    from fedenv.config import resolve_config
    from fedenv.env import FedLoRAWirelessEnv
    from fedenv.sb3 import FedLoRAWirelessVecEnv

    torch.set_num_threads(1)
    num_envs, horizon = 16, 50
    frames = 4096 if args.quick else 16384
    config = resolve_config()
    probe = make_vec_env(config, 1, "batched")
    agent_spaces = (probe.observation_space, probe.action_space)
    makers = {
        "dummy_trivial": lambda: DummyVecEnv(
            [lambda: _TrivialEnv(horizon) for _ in range(num_envs)]
        ),
        "dummy_fedlora": lambda: DummyVecEnv(
            [lambda: FedLoRAWirelessEnv() for _ in range(num_envs)]
        ),
        "batched_trivial": lambda: _trivial_vec_env(num_envs, horizon),
        "batched_fedlora": lambda: FedLoRAWirelessVecEnv(num_envs, seed=0),
        "training_trivial": lambda: _trivial_vec_env(num_envs, horizon, agent_spaces),
        "training_fedlora": lambda: make_vec_env(config, num_envs, "batched", seed=0),
    }
    # warm up torch and every env type (first-call costs are not throughput)
    for make in makers.values():
        PPO("MlpPolicy", make(), n_steps=16, batch_size=64, n_epochs=1, seed=0, device="cpu").learn(
            256
        )
    fps = dict.fromkeys(makers, 0.0)
    env_s = dict.fromkeys(makers, float("inf"))  # env seconds per frame (best run)
    share = dict.fromkeys(makers, 0.0)
    for _ in range(args.repeats):
        for name, make in makers.items():
            venv = _timed(make())
            model = PPO("MlpPolicy", venv, n_steps=2048 // num_envs, seed=0, device="cpu")
            start = time.perf_counter()
            model.learn(frames)
            total = time.perf_counter() - start
            if model.num_timesteps / total > fps[name]:
                fps[name] = model.num_timesteps / total
                env_s[name] = venv.seconds / model.num_timesteps
                share[name] = venv.seconds / total
    derived = {}
    for kind in ("dummy", "batched", "training"):
        ours, trivial = f"{kind}_fedlora", f"{kind}_trivial"
        own = 1.0 / fps[ours] - env_s[ours]  # PPO's own seconds per frame, in our run
        derived[kind] = (own + env_s[trivial]) / (own + env_s[ours])
    dummy_ratio = fps["dummy_fedlora"] / fps["dummy_trivial"]
    batched_ratio = fps["batched_fedlora"] / fps["batched_trivial"]
    training_ratio = fps["training_fedlora"] / fps["training_trivial"]
    for name, value in fps.items():
        print(
            f"PPO {name:<16} {value:>9,.0f} frames/s   env {1e6 * env_s[name]:7.1f} us/frame "
            f"= {share[name]:5.1%} of the run"
        )
    print(
        f"DummyVecEnv: FedLoRAWireless-v0 at {dummy_ratio:.1%} of the trivial env's frames/s "
        f"(from env time: {derived['dummy']:.1%}; env cost {1 - derived['dummy']:.1%})"
    )
    print(
        f"batched:     FedLoRAWirelessVecEnv at {batched_ratio:.1%} of the trivial VecEnv's "
        "frames/s "
        f"(from env time: {derived['batched']:.1%}; target >= 90%)"
    )
    print(
        f"training:    agents' training envs at {training_ratio:.1%} of the trivial VecEnv's "
        "frames/s "
        f"(from env time: {derived['training']:.1%}; env cost {1 - derived['training']:.1%}, "
        f"target < 15%); time in the env {share['training_fedlora']:.1%} of the run "
        "(issue 19's target: <= 8%)"
    )
    return {
        "num_envs": num_envs,
        "frames": frames,
        "ppo": {"n_steps": 2048 // num_envs, "batch_size": 64, "n_epochs": 10, "torch_threads": 1},
        "frames_per_s": fps,
        "env_us_per_frame": {k: 1e6 * v for k, v in env_s.items()},
        "env_share_of_run": share,
        "dummy_ratio": dummy_ratio,
        "dummy_ratio_from_env_time": derived["dummy"],
        "dummy_env_cost": 1 - derived["dummy"],
        "batched_ratio": batched_ratio,
        "batched_ratio_from_env_time": derived["batched"],
        "training_ratio": training_ratio,
        "training_ratio_from_env_time": derived["training"],
        "training_env_cost": 1 - derived["training"],
    }
