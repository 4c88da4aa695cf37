"""Env throughput: ``python -m fedenv.bench env`` and ``python -m fedenv.bench vector``.

``env``: single-env steps/s of FedLoRAWireless-v0 next to CartPole-v1 timed the same way, and
the step cost for K = 10, 100, 1000. ``vector``: the batched vector env for N = 1, 64, 1024 next
to ``SyncVectorEnv`` and to CartPole-v1's single-env steps/s timed in the same run (issue 19's
targets are these ratios: at least 0.06 for the single env, at least 2.2 for the vector env at
N = 1024; docs/benchmarks.md). :func:`steps_per_second` is the timing loop (also used by
:mod:`benchmarks.rllib`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

__all__ = [
    "TARGET_RATIOS",
    "bench_env",
    "bench_vector",
    "cartpole_steps_per_second",
    "steps_per_second",
]

#: Issue 19's targets, as ratios to CartPole-v1's single-env steps/s in the same run.
TARGET_RATIOS = {"env": 0.06, "vector_1024": 2.2}


def _rounds(args: argparse.Namespace) -> dict[str, Any]:
    """The env keyword for ``--rounds`` (none: the env's default horizon)."""
    return {} if getattr(args, "rounds", None) is None else {"num_rounds": args.rounds}


def _num_rounds(args: argparse.Namespace) -> int:
    """The episode length the env benchmarks run: ``--rounds``, else the env's default."""
    from fedenv.config import EnvConfig

    return int(_rounds(args).get("num_rounds", EnvConfig().num_rounds))


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


def cartpole_steps_per_second(steps: int) -> float:
    """CartPole-v1 (``gym.make``, default wrappers) under :func:`steps_per_second`: the reference
    that the env benchmarks' ratios divide by."""
    import gymnasium as gym

    return steps_per_second(gym.make("CartPole-v1"), steps)


def bench_env(args: argparse.Namespace) -> dict[str, Any]:
    """Single-env steps/s of FedLoRAWireless-v0 (K = 10) next to CartPole-v1, and cost vs K.

    Both envs are made with ``gym.make`` (default wrappers) and timed the same way: random
    actions, resets included; the best of ``--repeats`` runs, alternating the two envs.
    """
    import gymnasium as gym

    import fedenv  # noqa: F401

    steps, repeats = args.steps, args.repeats
    rounds = _rounds(args)
    our_env = gym.make("FedLoRAWireless-v0", **rounds)
    cart = ours = 0.0
    for _ in range(repeats):
        cart = max(cart, cartpole_steps_per_second(steps))
        ours = max(ours, steps_per_second(our_env, steps))
    print(f"CartPole-v1                    {cart:>12,.0f} steps/s")
    print(
        f"FedLoRAWireless-v0 (K=10)      {ours:>12,.0f} steps/s   {1e6 / ours:6.1f} us/step  "
        f" ratio {ours / cart:.3f} of CartPole (target {TARGET_RATIOS['env']})"
    )
    scaling = {}
    for k in (10, 100, 1000):
        env = gym.make("FedLoRAWireless-v0", devices={"num_devices": k}, **rounds)
        sps = steps_per_second(
            env, max(steps // max(k // 10, 1), 100 if args.quick else 500), repeats=repeats
        )
        scaling[k] = {
            "steps_per_s": sps,
            "us_per_step": 1e6 / sps,
            "us_per_step_per_device": 1e6 / sps / k,
        }
        print(
            f"K={k:<5} {sps:>12,.0f} steps/s  {1e6 / sps:>9.1f} us/step  "
            f"{1e6 / sps / k:>7.2f} us/step/device"
        )
    growth = scaling[1000]["us_per_step"] / scaling[10]["us_per_step"]
    print(f"step cost K=1000 / K=10: {growth:.1f} (linear growth would be 100)")
    return {
        "num_rounds": _num_rounds(args),
        "cartpole_steps_per_s": cart,
        "env_steps_per_s": ours,
        "ratio_to_cartpole": ours / cart,
        "target_ratio_to_cartpole": TARGET_RATIOS["env"],
        "k_scaling": scaling,
        "cost_ratio_k1000_k10": growth,
    }


def _vector_run(venv: Any, calls: int, seed: int = 0) -> tuple[float, float]:
    """(env steps/s over ``calls`` batched steps, autoresets included; seconds of the slowest
    call)."""
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
    """Batched vector env steps/s for N = 1, 64, 1024 (K = 10), next to SyncVectorEnv and to
    CartPole-v1's single-env steps/s.

    Each N runs whole episodes (the default horizon T plus the autoreset step, twice; four
    times for N = 1), so the per-episode reset work (trace generation, data partition) is
    included. CartPole-v1 is timed before each repeat of each N (its best over the run), so
    that the ratios compare figures of one run.
    """
    import gymnasium as gym

    import fedenv  # noqa: F401

    rounds = _rounds(args)
    episode_calls = _num_rounds(args) + 1

    sizes = (1, 16, 64) if args.quick else (1, 64, 1024)
    episodes = 1 if args.quick else 2
    rows: dict[int, dict[str, float]] = {}
    cart = 0.0
    for n in sizes:
        venv = gym.make_vec(
            "FedLoRAWireless-v0", num_envs=n, vectorization_mode="vector_entry_point", **rounds
        )
        calls = episode_calls * max(episodes, 1 if n >= 64 else 4)
        best, slowest = 0.0, 0.0
        for _ in range(args.repeats):
            cart = max(cart, cartpole_steps_per_second(args.steps))
            sps, slow = _vector_run(venv, calls)
            if sps > best:
                best, slowest = sps, slow
        rows[n] = {
            "env_steps_per_s": best,
            "us_per_env_step": 1e6 / best,
            "slowest_call_ms": 1e3 * slowest,
        }
        print(
            f"vector N={n:<5} {best:>12,.0f} env steps/s  {1e6 / best:8.2f} us/env step  "
            f"(slowest call, with resets: {1e3 * slowest:.1f} ms)"
        )
    ratios = {n: row["env_steps_per_s"] / cart for n, row in rows.items()}
    print(
        f"CartPole-v1 (single env)  {cart:>10,.0f} steps/s   vector N={sizes[-1]} is "
        f"{ratios[sizes[-1]]:.2f}x that (target at N=1024: {TARGET_RATIOS['vector_1024']}x)"
    )
    n_sync = 16 if args.quick else 64
    sync = gym.make_vec("FedLoRAWireless-v0", num_envs=n_sync, vectorization_mode="sync", **rounds)
    sync_sps = max(_vector_run(sync, episode_calls)[0] for _ in range(args.repeats))
    print(
        f"SyncVectorEnv N={n_sync:<3} {sync_sps:>10,.0f} env steps/s   batched is "
        f"{rows[n_sync]['env_steps_per_s'] / sync_sps:.1f}x faster"
    )
    return {
        "num_devices": 10,
        "num_rounds": _num_rounds(args),
        "vector": {str(n): r for n, r in rows.items()},
        "sync_vector_env": {"num_envs": n_sync, "env_steps_per_s": sync_sps},
        "cartpole_steps_per_s": cart,
        "ratio_to_cartpole": {str(n): ratio for n, ratio in ratios.items()},
        "target_ratio_to_cartpole_at_1024": TARGET_RATIOS["vector_1024"],
    }
