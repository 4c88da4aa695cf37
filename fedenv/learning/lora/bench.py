"""``python -m fedenv.bench lora``: speed and memory of the lora backend's training engines.

Measured in one run, on SST-2 with MiniLM-L6, K = 10 devices, tau = 5, n_b = 16, ranks cycling
over the module set (2, 4, 8, 16) so the rank masks are exercised:

* seconds of local training per round for the batched engine and for the sequential peft
  reference, from the same global state and the same mini-batches, and their ratio;
* the FLOP/s the batched engine achieves (matmul FLOPs counted by ``torch.utils.flop_counter``
  over one round, divided by its time) as a fraction of the dense fp32 matmul rate
  (a 1024^3 ``torch.mm``) measured in the same run with the same threads;
* peak resident memory of a process that builds the learner and trains one round with every one
  of K = 1 and K = 100 devices scheduled (separate subprocesses), and their ratio;
* the same timings on a GPU when torch sees one, otherwise a line saying none was available.

Targets (issue): batched >= sequential speed on the CPU, >= 5x on a GPU; utilisation >= 40%;
memory(K = 100) < 2 x memory(K = 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

__all__ = ["bench_lora", "matmul_flops_per_s"]

_RANK_CYCLE = (2, 4, 8, 16)


def matmul_flops_per_s(device: str = "cpu", n: int = 1024, repeats: int = 10) -> float:
    """Best-of dense fp32 matmul rate, FLOP/s (2 n^3 per product)."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2.0 * n**3 / best


def _config(num_devices: int, trainer: str, device: str, local_steps: int = 5) -> Any:
    from fedenv.config import EnvConfig

    return EnvConfig.from_dict(
        {
            "devices": {"num_devices": num_devices, "local_steps": local_steps, "batch_size": 16},
            "learning": {"backend": "lora", "task": "sst2", "lora": {"trainer": trainer, "device": device, "eval_samples": 64}},
        }
    )


def _time_engines(device: str, rounds: int) -> dict[str, Any]:
    """Seconds per round of local training, batched vs sequential, same state and batches."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fedenv.learning.lora import LoraLearner
    from fedenv.learning.lora.model import load_model
    from fedenv.learning.lora.training import SequentialTrainer

    k = 10
    learner = LoraLearner(_config(k, "batched", device))
    learner.reset(k, np.random.default_rng(0))
    model, _, _ = load_model(learner.config.learning.lora.model_name_or_path, 2)
    sequential = SequentialTrainer(model, learner.spec, learner.trainer.settings, learner.data.train, learner.trainer.pad_id, learner.device)
    ranks = np.array([_RANK_CYCLE[i % len(_RANK_CYCLE)] for i in range(k)])
    adapter = learner.adapter
    assert adapter is not None

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    for r in range(rounds + 1):  # round 0 warms up both engines
        jobs = learner.local_jobs(np.arange(k), ranks, round_index=r + 1)
        for name, engine in (("batched", learner.trainer), ("sequential", sequential)):
            sync()
            start = time.perf_counter()
            engine.train(adapter, jobs)
            sync()
            if r > 0:
                times[name].append(time.perf_counter() - start)
    jobs = learner.local_jobs(np.arange(k), ranks, round_index=1)
    with FlopCounterMode(display=False) as counter:
        learner.trainer.train(adapter, jobs)
    flops = float(counter.get_total_flops())
    batched = statistics.median(times["batched"])
    sequential_s = statistics.median(times["sequential"])
    return {
        "batched_s_per_round": batched,
        "sequential_s_per_round": sequential_s,
        "speedup": sequential_s / batched,
        "train_flops_per_round": flops,
        "achieved_flops_per_s": flops / batched,
        "rounds_timed": rounds,
        "all_times": times,
    }


def _memory_child(num_devices: int) -> dict[str, Any]:
    """Build the learner, train one round with every device scheduled; peak RSS in MiB."""
    from fedenv.learning.lora import LoraLearner

    learner = LoraLearner(_config(num_devices, "batched", "cpu", local_steps=2))
    learner.reset(num_devices, np.random.default_rng(0))
    loaded = _peak_rss_mib()
    ranks = np.array([_RANK_CYCLE[i % len(_RANK_CYCLE)] for i in range(num_devices)])
    start = time.perf_counter()
    learner.train_round(ranks, np.ones(num_devices), np.ones(num_devices, dtype=bool))
    return {"num_devices": num_devices, "peak_rss_mib": _peak_rss_mib(), "rss_after_load_mib": loaded, "round_s": time.perf_counter() - start}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _memory(num_devices: int) -> dict[str, Any]:
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-m", "fedenv.learning.lora.bench", "--memory-child", str(num_devices)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement for K={num_devices} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_lora(args: argparse.Namespace) -> dict[str, Any]:
    """The lora backend benchmark (module docstring); prints its figures, returns them."""
    import torch

    threads = torch.get_num_threads()
    rounds = 1 if getattr(args, "quick", False) else 3
    peak = matmul_flops_per_s("cpu")
    print(f"CPU: {os.cpu_count()} cores, torch threads {threads}; dense fp32 matmul {peak / 1e9:,.1f} GFLOP/s")
    cpu = _time_engines("cpu", rounds)
    util = cpu["achieved_flops_per_s"] / peak
    print(f"K=10, tau=5, n_b=16, ranks 2/4/8/16, SST-2, MiniLM-L6 (local training per round, median of {rounds}):")
    print(f"  batched     {cpu['batched_s_per_round']:8.2f} s/round")
    print(f"  sequential  {cpu['sequential_s_per_round']:8.2f} s/round   (peft reference)")
    print(f"  speed-up    {cpu['speedup']:8.2f} x   target >= 1 on CPU: {'met' if cpu['speedup'] >= 1 else 'NOT met'}")
    print(
        f"  achieved    {cpu['achieved_flops_per_s'] / 1e9:8.1f} GFLOP/s = {100 * util:.0f}% of the matmul rate"
        f"   target >= 40%: {'met' if util >= 0.4 else 'NOT met'}"
    )
    result: dict[str, Any] = {"torch_threads": threads, "matmul_flops_per_s": peak, "cpu": cpu, "utilisation": util}
    mem1 = _memory(1)
    mem100 = _memory(100)
    ratio = mem100["peak_rss_mib"] / mem1["peak_rss_mib"]
    print(f"  peak RSS    K=1 {mem1['peak_rss_mib']:,.0f} MiB, K=100 {mem100['peak_rss_mib']:,.0f} MiB, ratio {ratio:.2f}   target < 2: {'met' if ratio < 2 else 'NOT met'}")
    print(f"              (after loading model + data: {mem1['rss_after_load_mib']:,.0f} / {mem100['rss_after_load_mib']:,.0f} MiB; one K=100 round, tau=2: {mem100['round_s']:.0f} s)")
    result["memory"] = {"k1": mem1, "k100": mem100, "ratio": ratio}
    if torch.cuda.is_available():
        gpu_peak = matmul_flops_per_s("cuda", n=4096)
        gpu = _time_engines("cuda", rounds)
        print(f"GPU {torch.cuda.get_device_name(0)}: batched {gpu['batched_s_per_round']:.3f} s, sequential {gpu['sequential_s_per_round']:.3f} s, speed-up {gpu['speedup']:.1f} x (target >= 5)")
        result["gpu"] = {**gpu, "name": torch.cuda.get_device_name(0), "matmul_flops_per_s": gpu_peak, "utilisation": gpu["achieved_flops_per_s"] / gpu_peak}
    else:
        print("GPU: no GPU available to torch on this machine; the GPU target (batched >= 5x sequential) was not measured")
        result["gpu"] = None
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="helper of python -m fedenv.bench lora")
    parser.add_argument("--memory-child", type=int, required=True, help="measure peak memory for K devices")
    args = parser.parse_args(argv)
    print(json.dumps(_memory_child(args.memory_child)))


if __name__ == "__main__":
    main()
