"""One benchmark command for every speed and memory figure of the project.

    python -m fedenv.bench env        single env steps/s vs CartPole-v1, and step cost vs K
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
}


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def steps_per_second(env: Any, steps: int, seed: int = 0) -> float:
    """Steps/s of a Gymnasium env under random actions drawn before timing (resets included)."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(min(steps, 1000))]
    start = time.perf_counter()
    for i in range(steps):
        _, _, term, trunc, _ = env.step(actions[i % len(actions)])
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - start)


def bench_env(args: argparse.Namespace) -> dict[str, Any]:
    """Single-env steps/s of FedLoRAWireless-v0 (K = 10) next to CartPole-v1, and cost vs K."""
    import gymnasium as gym

    import fedenv  # noqa: F401

    steps = args.steps
    cart = steps_per_second(gym.make("CartPole-v1"), steps)
    ours = steps_per_second(gym.make("FedLoRAWireless-v0"), steps)
    print(f"CartPole-v1                    {cart:>12,.0f} steps/s")
    print(f"FedLoRAWireless-v0 (K=10)      {ours:>12,.0f} steps/s   ratio {ours / cart:.3f} of CartPole")
    scaling = {}
    for k in (10, 100, 1000):
        env = gym.make("FedLoRAWireless-v0", devices={"num_devices": k})
        sps = steps_per_second(env, max(steps // max(k // 10, 1), 500))
        scaling[k] = {"steps_per_s": sps, "us_per_step": 1e6 / sps}
        print(f"K={k:<5} {sps:>12,.0f} steps/s  {1e6 / sps:>9.1f} us/step  {1e6 / sps / k:>7.2f} us/step/device")
    return {"cartpole_steps_per_s": cart, "env_steps_per_s": ours, "ratio_to_cartpole": ours / cart, "k_scaling": scaling}


def _resolve(spec: str) -> Callable[[argparse.Namespace], dict[str, Any]]:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedenv.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=[*BENCHES, "all"], help="which benchmark")
    parser.add_argument("--steps", type=int, default=20000, help="env steps to time (env benchmarks)")
    parser.add_argument("--out", default="results/bench", help="directory for the JSON results")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 2000)
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
