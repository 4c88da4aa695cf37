"""One benchmark command for every speed and memory figure of the project.

    python -m fedenv.bench env        single env steps/s vs CartPole-v1, and step cost vs K
    python -m fedenv.bench vector     batched vector env steps/s for N = 1, 64, 1024 (vs SyncVectorEnv)
    python -m fedenv.bench ppo        SB3 PPO frames/s on this env vs a trivial env (DummyVecEnv and batched)
    python -m fedenv.bench lora       lora backend: batched vs sequential engine, FLOP/s utilisation, memory vs K
    python -m fedenv.bench rllib      RLlib sampling env steps/s with 1 and 2 env runners (needs fedenv[rllib])
    python -m fedenv.bench all        every benchmark below, one after the other

Each sub-command prints its figures (ratios measured in the same run) and writes them as JSON
(``--out``, default ``results/bench/<name>.json``). Sub-commands are registered in ``BENCHES``
as ``"module:function"`` strings, imported lazily so that optional extras are needed only by
the benchmarks that use them. A benchmark function takes ``argparse.Namespace`` and returns
a JSON-serialisable dict.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BENCHES: dict[str, str] = {
    "env": "fedenv.bench:bench_env",
    "vector": "fedenv.bench:bench_vector",
    "ppo": "fedenv.bench:bench_ppo",
    "lyapunov": "baselines.bench:bench_lyapunov",
    "lora": "fedenv.learning.lora.bench:bench_lora",
    "rllib": "agents.train_rllib:bench_sampling",
}


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def steps_per_second(env: Any, steps: int, seed: int = 0, repeats: int = 1) -> float:
    """Steps/s of a Gymnasium env under random actions drawn before timing (resets included).

    The best of ``repeats`` timings of ``steps`` steps: other processes only ever slow a run down.
    """
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(min(steps, 1000))]
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            _, _, term, trunc, _ = env.step(actions[i % len(actions)])
            if term or trunc:
                env.reset()
        best = max(best, steps / (time.perf_counter() - start))
    return best


def bench_env(args: argparse.Namespace) -> dict[str, Any]:
    """Single-env steps/s of FedLoRAWireless-v0 (K = 10) next to CartPole-v1, and cost vs K.

    Both envs are made with ``gym.make`` (default wrappers) and timed the same way: random
    actions, resets included; the best of ``--repeats`` runs, alternating the two envs.
    """
    import gymnasium as gym

    import fedenv  # noqa: F401

    steps, repeats = args.steps, args.repeats
    cart_env, our_env = gym.make("CartPole-v1"), gym.make("FedLoRAWireless-v0")
    cart = ours = 0.0
    for _ in range(repeats):
        cart = max(cart, steps_per_second(cart_env, steps))
        ours = max(ours, steps_per_second(our_env, steps))
    print(f"CartPole-v1                    {cart:>12,.0f} steps/s")
    print(f"FedLoRAWireless-v0 (K=10)      {ours:>12,.0f} steps/s   {1e6 / ours:6.1f} us/step   ratio {ours / cart:.3f} of CartPole")
    scaling = {}
    for k in (10, 100, 1000):
        env = gym.make("FedLoRAWireless-v0", devices={"num_devices": k})
        sps = steps_per_second(env, max(steps // max(k // 10, 1), 100 if args.quick else 500), repeats=repeats)
        scaling[k] = {"steps_per_s": sps, "us_per_step": 1e6 / sps, "us_per_step_per_device": 1e6 / sps / k}
        print(f"K={k:<5} {sps:>12,.0f} steps/s  {1e6 / sps:>9.1f} us/step  {1e6 / sps / k:>7.2f} us/step/device")
    growth = scaling[1000]["us_per_step"] / scaling[10]["us_per_step"]
    print(f"step cost K=1000 / K=10: {growth:.1f} (linear growth would be 100)")
    return {
        "cartpole_steps_per_s": cart,
        "env_steps_per_s": ours,
        "ratio_to_cartpole": ours / cart,
        "target_steps_per_s": 20000,
        "k_scaling": scaling,
        "cost_ratio_k1000_k10": growth,
    }


def _vector_run(venv: Any, calls: int, seed: int = 0) -> tuple[float, float]:
    """(env steps/s over ``calls`` batched steps, autoresets included; seconds of the slowest call)."""
    venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    shape = venv.action_space.shape
    actions = [rng.uniform(-1.0, 1.0, shape).astype(np.float32) for _ in range(8)]
    slowest = 0.0
    start = time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        venv.step(actions[i % 8])
        slowest = max(slowest, time.perf_counter() - t0)
    return venv.num_envs * calls / (time.perf_counter() - start), slowest


def bench_vector(args: argparse.Namespace) -> dict[str, Any]:
    """Batched vector env steps/s for N = 1, 64, 1024 (K = 10), next to SyncVectorEnv.

    Each N runs whole episodes (the 50-round horizon plus the autoreset step, twice), so the
    per-episode reset work (trace generation, data partition) is included.
    """
    import gymnasium as gym

    import fedenv  # noqa: F401

    sizes = (1, 16, 64) if args.quick else (1, 64, 1024)
    episodes = 1 if args.quick else 2
    rows: dict[int, dict[str, float]] = {}
    for n in sizes:
        venv = gym.make_vec("FedLoRAWireless-v0", num_envs=n, vectorization_mode="vector_entry_point")
        calls = 51 * max(episodes, 1 if n >= 64 else 4)
        best, slowest = 0.0, 0.0
        for _ in range(args.repeats):
            sps, slow = _vector_run(venv, calls)
            if sps > best:
                best, slowest = sps, slow
        rows[n] = {"env_steps_per_s": best, "us_per_env_step": 1e6 / best, "slowest_call_ms": 1e3 * slowest}
        print(f"vector N={n:<5} {best:>12,.0f} env steps/s  {1e6 / best:8.2f} us/env step  (slowest call, with resets: {1e3 * slowest:.1f} ms)")
    n_sync = 16 if args.quick else 64
    sync = gym.make_vec("FedLoRAWireless-v0", num_envs=n_sync, vectorization_mode="sync")
    sync_sps = max(_vector_run(sync, 51)[0] for _ in range(args.repeats))
    print(f"SyncVectorEnv N={n_sync:<3} {sync_sps:>10,.0f} env steps/s   batched is {rows[n_sync]['env_steps_per_s'] / sync_sps:.1f}x faster")
    return {
        "num_devices": 10,
        "vector": {str(n): r for n, r in rows.items()},
        "sync_vector_env": {"num_envs": n_sync, "env_steps_per_s": sync_sps},
        "target_env_steps_per_s_at_1024": 500000,
    }


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

            def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
                super().reset(seed=seed)
                self._t = 0
                return np.zeros(obs_shape, dtype=np.float32), {}

            def step(self, action: Any) -> Any:
                self._t += 1
                return np.zeros(obs_shape, dtype=np.float32), 0.0, False, self._t >= horizon, {}

        return Trivial()


def _trivial_vec_env(num_envs: int, horizon: int, spaces: tuple[Any, Any] | None = None) -> Any:
    """A stable-baselines3 VecEnv with the same spaces (default: the env's) and API outputs as fedenv.sb3's, doing nothing."""
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

        def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
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
    trivial VecEnv of those spaces (issue 5: the env should cost PPO < 15% of its throughput). PPO uses SB3's defaults except n_steps,
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
        "dummy_trivial": lambda: DummyVecEnv([lambda: _TrivialEnv(horizon) for _ in range(num_envs)]),
        "dummy_fedlora": lambda: DummyVecEnv([lambda: FedLoRAWirelessEnv() for _ in range(num_envs)]),
        "batched_trivial": lambda: _trivial_vec_env(num_envs, horizon),
        "batched_fedlora": lambda: FedLoRAWirelessVecEnv(num_envs, seed=0),
        "training_trivial": lambda: _trivial_vec_env(num_envs, horizon, agent_spaces),
        "training_fedlora": lambda: make_vec_env(config, num_envs, "batched", seed=0),
    }
    # warm up torch and every env type (first-call costs are not throughput)
    for make in makers.values():
        PPO("MlpPolicy", make(), n_steps=16, batch_size=64, n_epochs=1, seed=0, device="cpu").learn(256)
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
        print(f"PPO {name:<16} {value:>9,.0f} frames/s   env {1e6 * env_s[name]:7.1f} us/frame = {share[name]:5.1%} of the run")
    print(
        f"DummyVecEnv: FedLoRAWireless-v0 at {dummy_ratio:.1%} of the trivial env's frames/s "
        f"(from env time: {derived['dummy']:.1%}; env cost {1 - derived['dummy']:.1%})"
    )
    print(
        f"batched:     FedLoRAWirelessVecEnv at {batched_ratio:.1%} of the trivial VecEnv's frames/s "
        f"(from env time: {derived['batched']:.1%}; target >= 90%)"
    )
    print(
        f"training:    agents' training envs at {training_ratio:.1%} of the trivial VecEnv's frames/s "
        f"(from env time: {derived['training']:.1%}; env cost {1 - derived['training']:.1%}, target < 15%)"
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


def _resolve(spec: str) -> Callable[[argparse.Namespace], dict[str, Any]]:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedenv.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=[*BENCHES, "all"], help="which benchmark")
    parser.add_argument("--steps", type=int, default=20000, help="env steps to time (env benchmarks)")
    parser.add_argument("--out", default="results/bench", help="directory for the JSON results")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement; the best is kept (env, vector, ppo)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 500)
        args.repeats = 1
    names = list(BENCHES) if args.name == "all" else [args.name]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"== {name}")
        result = _resolve(BENCHES[name])(args)
        result = {"benchmark": name, "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}
        (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
        print(f"-> {out / (name + '.json')}")


if __name__ == "__main__":
    main()
