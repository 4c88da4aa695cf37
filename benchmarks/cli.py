"""One benchmark command for every speed and memory figure of the project.

    python -m fedenv.bench env        single env steps/s vs CartPole-v1, and step cost vs K
    python -m fedenv.bench vector     batched vector env steps/s for N = 1, 64, 1024 (vs
                                      SyncVectorEnv)
    python -m fedenv.bench ppo        SB3 PPO frames/s on this env vs a trivial env (DummyVecEnv and
                                      batched)
    python -m fedenv.bench lyapunov   the Lyapunov policy's decision time per round, K = 10 and 100
    python -m fedenv.bench lora       lora backend: batched vs sequential engine, FLOP/s
                                      utilisation, memory vs K
    python -m fedenv.bench rllib      RLlib sampling env steps/s with 1 and 2 env runners (needs
                                      fedenv[rllib])
    python -m fedenv.bench all        every benchmark above, one after the other

(``python -m benchmarks ...`` is the same command.) Each sub-command prints its figures (ratios
measured in the same run) and writes them as JSON (``--out``, default
``results/bench/<name>.json``). Sub-commands are registered in ``BENCHES`` as
``"module:function"`` strings, imported lazily so that optional extras are needed only by the
benchmarks that use them. A benchmark function takes ``argparse.Namespace`` and returns a
JSON-serialisable dict.
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

__all__ = ["BENCHES", "machine", "main"]

BENCHES: dict[str, str] = {
    "env": "benchmarks.env:bench_env",
    "vector": "benchmarks.env:bench_vector",
    "ppo": "benchmarks.ppo:bench_ppo",
    "lyapunov": "benchmarks.lyapunov:bench_lyapunov",
    "lora": "benchmarks.lora:bench_lora",
    "rllib": "benchmarks.rllib:bench_sampling",
}


def machine() -> dict[str, Any]:
    """The machine a result was measured on (stored with it)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def _resolve(spec: str) -> Callable[[argparse.Namespace], dict[str, Any]]:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fedenv.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=[*BENCHES, "all"], help="which benchmark")
    parser.add_argument(
        "--steps", type=int, default=20000, help="env steps to time (env benchmarks)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="episode length T of the env and vector benchmarks (default: the env's, 20); "
        "the per-episode reset work is spread over T steps",
    )
    parser.add_argument("--out", default="results/bench", help="directory for the JSON results")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timings per measurement; the best is kept (env, vector, ppo)",
    )
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
        result = {
            "benchmark": name,
            "machine": machine(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **result,
        }
        (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
        print(f"-> {out / (name + '.json')}")


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
