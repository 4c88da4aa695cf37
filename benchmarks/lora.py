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
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

__all__ = ["bench_lora", "matmul_flops_per_s"]

_RANK_CYCLE = (2, 4, 8, 16)


def matmul_flops_per_s(device: str = "cpu", n: int = 1024, seconds: float = 2.0) -> float:
    """Dense fp32 matmul rate, FLOP/s (2 n^3 per product), averaged over ``seconds`` of products.

    An average over a window, not a best-of: on a shared machine it sees the same load as the
    training it is compared with.
    """
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)  # warm-up
    count = 0
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        count += 1
    return 2.0 * n**3 * count / (time.perf_counter() - start)


def _config(num_devices: int, trainer: str, device: str, local_steps: int = 5) -> Any:
    from fedenv.config import EnvConfig

    return EnvConfig.from_dict(
        {
            "devices": {"num_devices": num_devices, "local_steps": local_steps, "batch_size": 16},
            "learning": {
                "backend": "lora",
                "task": "sst2",
                "lora": {"trainer": trainer, "device": device, "eval_samples": 64},
            },
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
    model, _, _ = load_model(
        learner.config.learning.lora.model_name_or_path, 2, learner.config.learning.lora.pooling
    )
    sequential = SequentialTrainer(
        model,
        learner.spec,
        learner.trainer.settings,
        learner.data.train,
        learner.trainer.pad_id,
        learner.device,
    )
    ranks = np.array([_RANK_CYCLE[i % len(_RANK_CYCLE)] for i in range(k)])
    adapter = learner.adapter
    assert adapter is not None

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    # Every timed round trains the same devices on the same batches: its FLOPs (the executed
    # matmuls, padding included) are counted once.
    jobs = learner.local_jobs(np.arange(k), ranks, round_index=1)
    with FlopCounterMode(display=False) as counter:
        learner.trainer.train(adapter, jobs)
    flop = float(counter.get_total_flops())
    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    peaks: list[float] = []
    for r in range(rounds + 1):  # round 0 warms up both engines
        # The matmul rate right before each timed round: on a shared machine the utilisation
        # compares two rates measured under the same load.
        peaks.append(matmul_flops_per_s(device, n=1024 if device == "cpu" else 4096))
        for name, engine in (("batched", learner.trainer), ("sequential", sequential)):
            sync()
            start = time.perf_counter()
            engine.train(adapter, jobs)
            sync()
            if r > 0:
                times[name].append(time.perf_counter() - start)
    util = [flop / t / pk for t, pk in zip(times["batched"], peaks[1:], strict=True)]
    batched = statistics.median(times["batched"])
    sequential_s = statistics.median(times["sequential"])
    return {
        "batched_s_per_round": batched,
        "sequential_s_per_round": sequential_s,
        "speedup": sequential_s / batched,
        "train_flops_per_round": flop,
        "achieved_flops_per_s": statistics.median([flop / t for t in times["batched"]]),
        "matmul_flops_per_s": statistics.median(peaks[1:]),
        "utilisation": statistics.median(util),
        "rounds_timed": rounds,
        "all_times": times,
        "all_utilisation": util,
    }


def _memory_child(num_devices: int) -> dict[str, Any]:
    """Build the learner, train one round with every device scheduled; peak RSS in MiB."""
    from fedenv.learning.lora import LoraLearner

    learner = LoraLearner(_config(num_devices, "batched", "cpu", local_steps=2))
    learner.reset(num_devices, np.random.default_rng(0))
    gc.collect()
    before = _current_rss_mib()
    ranks = np.array([_RANK_CYCLE[i % len(_RANK_CYCLE)] for i in range(num_devices)])
    samples: list[float] = [before]
    done = threading.Event()

    def sample() -> None:  # the training round's own peak (ru_maxrss also holds the loading peak)
        while not done.wait(0.005):
            samples.append(_current_rss_mib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    learner.train_round(ranks, np.ones(num_devices), np.ones(num_devices, dtype=bool))
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return {
        "num_devices": num_devices,
        "peak_rss_mib": _peak_rss_mib(),
        "rss_before_round_mib": before,
        "round_peak_rss_mib": max(samples),
        "round_increment_mib": max(samples) - before,
        "round_s": seconds,
    }


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _memory(num_devices: int) -> dict[str, Any]:
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.lora", "--memory-child", str(num_devices)],
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
    load = os.getloadavg()[0]
    print(
        f"CPU: {os.cpu_count()} cores, torch threads {threads}, 1-min load average "
        f"{load:.1f} at start"
    )
    cpu = _time_engines("cpu", rounds)
    util = cpu["utilisation"]
    print(
        "K=10, tau=5, n_b=16, ranks 2/4/8/16, SST-2, MiniLM-L6 (local training per round, "
        f"median of {rounds}):"
    )
    print(f"  batched     {cpu['batched_s_per_round']:8.2f} s/round")
    print(f"  sequential  {cpu['sequential_s_per_round']:8.2f} s/round   (peft reference)")
    print(
        f"  speed-up    {cpu['speedup']:8.2f} x   target >= 1 on CPU: "
        f"{'met' if cpu['speedup'] >= 1 else 'NOT met'}"
    )
    print(
        f"  achieved    {cpu['achieved_flops_per_s'] / 1e9:8.1f} GFLOP/s "
        f"({cpu['train_flops_per_round'] / 1e12:.2f} TFLOP per round) vs dense fp32 "
        f"matmul {cpu['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s = {100 * util:.0f}%   target "
        f">= 40%: {'met' if util >= 0.4 else 'NOT met'}"
    )
    result: dict[str, Any] = {
        "torch_threads": threads,
        "load_average_start": load,
        "cpu": cpu,
        "utilisation": util,
    }
    mem1 = _memory(1)
    mem100 = _memory(100)
    ratio = mem100["peak_rss_mib"] / mem1["peak_rss_mib"]
    round_ratio = mem100["round_peak_rss_mib"] / mem1["round_peak_rss_mib"]
    print(
        f"  peak RSS    K=1 {mem1['peak_rss_mib']:,.0f} MiB, K=100 "
        f"{mem100['peak_rss_mib']:,.0f} MiB, ratio {ratio:.2f}   target < 2: "
        f"{'met' if ratio < 2 else 'NOT met'}"
    )
    print(
        f"  round RSS   during one round (tau=2): K=1 {mem1['round_peak_rss_mib']:,.0f} MiB, "
        f"K=100 {mem100['round_peak_rss_mib']:,.0f} MiB, "
        f"ratio {round_ratio:.2f} (the round adds {mem1['round_increment_mib']:,.0f} / "
        f"{mem100['round_increment_mib']:,.0f} MiB); K=100 round {mem100['round_s']:.0f} s"
    )
    result["memory"] = {"k1": mem1, "k100": mem100, "ratio": ratio, "round_ratio": round_ratio}
    result["load_average_end"] = os.getloadavg()[0]
    print(f"1-min load average {result['load_average_end']:.1f} at the end")
    if torch.cuda.is_available():
        gpu = _time_engines("cuda", rounds)
        print(
            f"GPU {torch.cuda.get_device_name(0)}: batched {gpu['batched_s_per_round']:.3f} "
            f"s, sequential {gpu['sequential_s_per_round']:.3f} s, speed-up "
            f"{gpu['speedup']:.1f} x (target >= 5)"
        )
        result["gpu"] = {**gpu, "name": torch.cuda.get_device_name(0)}
    else:
        print(
            "GPU: no GPU available to torch on this machine; the GPU target (batched >= 5x "
            "sequential) was not measured"
        )
        result["gpu"] = None
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="helper of python -m fedenv.bench lora")
    parser.add_argument(
        "--memory-child", type=int, required=True, help="measure peak memory for K devices"
    )
    args = parser.parse_args(argv)
    print(json.dumps(_memory_child(args.memory_child)))


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
