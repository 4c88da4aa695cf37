"""RLlib's sampling throughput versus the number of env runners: ``python -m fedenv.bench rllib``.

Needs the ``rllib`` extra (``pip install 'fedenv[rllib]'``, its own virtualenv: docs/rllib.md).
The algorithm is built by :func:`agents.train_rllib.build_algorithm`, as in training.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agents.train_rllib import Args, build_algorithm, make_rllib_env, require_ray
from benchmarks.env import steps_per_second
from fedenv.config import resolve_config

__all__ = ["BENCH_SETTINGS", "bench_sampling"]

BENCH_SETTINGS = ((1, 1), (2, 1), (1, 8), (2, 8))  # (env runners, envs per env runner)


def bench_sampling(args: Any) -> dict[str, Any]:
    """RLlib's sampling throughput (env steps/s) versus the number of env runners (1, 2).

    Times RLlib's own sampling call (``synchronous_parallel_sample``, what PPO runs each
    iteration) on FedLoRAWireless-v0 (surrogate backend, default preset, K = 10) on a local Ray
    instance with 2 CPUs: after a warm-up, three samples of ``steps`` env steps per setting, for
    1 and 2 env runners with 1 env each, then with 8 envs each (one batched forward pass per
    step for 8 envs). Next to it, the same env stepped in one process without RLlib. Also
    records the env runners' own CPU time (``time.process_time`` in each runner), so that env
    steps per runner CPU-second, what a runner with a free core sustains, can be read even when
    other processes share the cores (the 1-minute load average is recorded too). Run by
    ``python -m fedenv.bench rllib``; ``--steps`` (at most 4000) sets the sample size.
    """
    try:
        ray = require_ray()
    except ImportError as err:
        if getattr(args, "name", None) == "all":
            print(f"skipped: {err}")
            return {"skipped": str(err)}
        raise
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample

    steps = 1000 if getattr(args, "quick", False) else min(int(getattr(args, "steps", 4000)), 4000)
    repeats = 3
    load_before = os.getloadavg()[0]  # other processes share the CPUs: read the figures with it
    env_config = resolve_config("switching")
    env_only = steps_per_second(make_rllib_env(env_config.to_dict()), steps)
    print(f"env alone, one process (Dict actions)          {env_only:>9,.0f} env steps/s")
    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, address="local"
        )
        started = True
    rows = []
    try:
        for runners, envs in BENCH_SETTINGS:
            algo_args = Args(
                env_runners=runners,
                envs_per_env_runner=envs,
                train_batch_size=steps,
                batch_size=min(250, steps),
            )
            algo = build_algorithm(algo_args, env_config)
            try:
                group = algo.env_runner_group
                synchronous_parallel_sample(
                    worker_set=group, max_env_steps=steps, concat=True, _uses_new_env_runners=True
                )
                rates, cpu_rates = [], []
                for _ in range(repeats):
                    cpu0 = sum(
                        group.foreach_env_runner(
                            lambda _runner: time.process_time(), local_env_runner=False
                        )
                    )
                    t0 = time.perf_counter()
                    episodes = synchronous_parallel_sample(
                        worker_set=group,
                        max_env_steps=steps,
                        concat=True,
                        _uses_new_env_runners=True,
                    )
                    wall = time.perf_counter() - t0
                    cpu = (
                        sum(
                            group.foreach_env_runner(
                                lambda _runner: time.process_time(), local_env_runner=False
                            )
                        )
                        - cpu0
                    )
                    sampled = sum(len(e) for e in episodes)
                    rates.append(sampled / wall)
                    cpu_rates.append(sampled / cpu)
            finally:
                algo.stop()
            mean = sum(rates) / len(rates)
            cpu_mean = sum(cpu_rates) / len(cpu_rates)
            rows.append(
                {
                    "env_runners": runners,
                    "envs_per_env_runner": envs,
                    "env_steps_per_s": mean,
                    "repeats_env_steps_per_s": rates,
                    # the runners' own CPU time: what one free core per runner would sustain
                    "env_steps_per_runner_cpu_s": cpu_mean,
                }
            )
            label = (
                f"RLlib, {runners} env runner{'s' if runners > 1 else ''} x {envs} "
                f"env{'s' if envs > 1 else ''}"
            )
            print(
                f"{label:<47}{mean:>9,.0f} env steps/s  (runs: "
                f"{', '.join(f'{r:,.0f}' for r in rates)}); {cpu_mean:,.0f} per runner "
                "CPU-second"
            )
    finally:
        if started:
            ray.shutdown()

    def rate(runners: int, envs: int) -> float:
        return next(
            float(r["env_steps_per_s"])
            for r in rows
            if r["env_runners"] == runners and r["envs_per_env_runner"] == envs
        )

    out: dict[str, Any] = {
        "ray": ray.__version__,
        "env_steps_per_sample": steps,
        "repeats": repeats,
        "env_only_steps_per_s": env_only,
        "settings": rows,
        "speedup_2_vs_1_runner": rate(2, 1) / rate(1, 1),
        "speedup_2_vs_1_runner_8_envs": rate(2, 8) / rate(1, 8),
        "rllib_1_runner_vs_env_alone": rate(1, 1) / env_only,
        "load_average_1min_before": load_before,
        "load_average_1min_after": os.getloadavg()[0],
    }
    print(
        f"2 vs 1 env runners: x{out['speedup_2_vs_1_runner']:.2f} (1 env each), "
        f"x{out['speedup_2_vs_1_runner_8_envs']:.2f} (8 envs each); "
        f"1 runner x 1 env vs env alone: x{out['rllib_1_runner_vs_env_alone']:.3f}"
    )
    _plot_sampling(out, Path(getattr(args, "out", "results/bench")) / "rllib_sampling.png")
    return out


def _plot_sampling(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no figure)")
        return
    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=120)
    for envs, colour in ((1, "#4C72B0"), (8, "#DD8452")):
        rows = [r for r in result["settings"] if r["envs_per_env_runner"] == envs]
        xs = [r["env_runners"] for r in rows]
        ax.plot(
            xs,
            [r["env_steps_per_s"] for r in rows],
            "o-",
            color=colour,
            label=f"{envs} env{'s' if envs > 1 else ''} per runner",
        )
        for r in rows:
            ax.plot(
                [r["env_runners"]] * len(r["repeats_env_steps_per_s"]),
                r["repeats_env_steps_per_s"],
                ".",
                color=colour,
                ms=4,
                alpha=0.6,
            )
    ax.set_xticks([1, 2])
    ax.set_xlim(0.7, 2.3)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("env runners")
    ax.set_ylabel("env steps / s (RLlib sampling)")
    ax.set_title(
        f"RLlib {result['ray']} PPO sampling, FedLoRAWireless-v0 (K=10)\nenv alone in one "
        f"process: {result['env_only_steps_per_s']:,.0f} steps/s; 2 CPUs, load avg "
        f"{result['load_average_1min_after']:.1f}",
        fontsize=8,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"-> {path}")
