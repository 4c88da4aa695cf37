"""Lyapunov decision-time benchmark: ``python -m fedenv.bench lyapunov``.

Times ``LyapunovPolicy.act`` (the whole per-round solve, from ``info`` to the canonical action)
on the default preset for K = 10 and K = 100 devices over whole episodes, and prints the
median, mean and 95th percentile per round next to the targets (5 ms for K = 10, 50 ms for
K = 100) as ratios measured in this run. The env step is not timed. Wall-clock time is the
figure compared with the targets; the process CPU time and the machine's load average are
printed beside it, because on a shared machine other processes inflate wall-clock time.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from baselines.lyapunov import DEFAULT_V, LyapunovPolicy
from fedenv.config import resolve_config
from fedenv.env import FedLoRAWirelessEnv

__all__ = ["bench_lyapunov", "decision_times"]

TARGETS_MS = {10: 5.0, 100: 50.0}


def decision_times(
    num_devices: int,
    rounds: int,
    *,
    preset: str = "switching",
    tradeoff_v: float = DEFAULT_V,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and process CPU seconds per ``act`` call over ``rounds`` rounds (consecutive
    episodes)."""
    cfg = resolve_config(preset, devices={"num_devices": num_devices})
    env = FedLoRAWirelessEnv(cfg)
    policy = LyapunovPolicy(cfg, tradeoff_v)
    times: list[float] = []
    cpu: list[float] = []
    episode = 0
    policy.reset(seed)
    obs, info = env.reset(seed=seed)
    policy.act(obs, info)  # warm-up (caches, first-call overheads)
    while len(times) < rounds:
        start, start_cpu = time.perf_counter(), time.process_time()
        action = policy.act(obs, info)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            episode += 1
            policy.reset(seed + episode)
            obs, info = env.reset(seed=seed + episode)
    env.close()
    return np.array(times), np.array(cpu)


def bench_lyapunov(args: argparse.Namespace) -> dict[str, Any]:
    """Decision time per round of the Lyapunov policy, K = 10 and K = 100 (default preset)."""
    quick = bool(getattr(args, "quick", False))
    rounds = {10: 30 if quick else 200, 100: 10 if quick else 50}
    out: dict[str, Any] = {
        "preset": "switching",
        "V": DEFAULT_V,
        "targets_ms": TARGETS_MS,
        "results": {},
    }
    for k, n in rounds.items():
        wall, cpu = decision_times(k, n)
        t, c = 1e3 * wall, 1e3 * cpu
        target = TARGETS_MS[k]
        res = {
            "rounds": n,
            "median_ms": float(np.median(t)),
            "mean_ms": float(t.mean()),
            "p95_ms": float(np.percentile(t, 95)),
            "max_ms": float(t.max()),
            "cpu_median_ms": float(np.median(c)),
            "target_ms": target,
            "median_over_target": float(np.median(t) / target),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        }
        out["results"][k] = res
        print(
            f"Lyapunov K={k:<4} median {res['median_ms']:7.2f} ms  mean "
            f"{res['mean_ms']:7.2f} ms  p95 {res['p95_ms']:7.2f} ms"
            f"  (CPU median {res['cpu_median_ms']:6.2f} ms)   target {target:5.1f} ms   "
            f"median/target {res['median_over_target']:.2f}"
            f"   load avg {res['load_average_1min']:.1f} on {os.cpu_count()} CPUs"
        )
    return out
