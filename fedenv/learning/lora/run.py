"""A full federated LoRA run through FedLoRAWireless-v0 under a fixed policy (the issue's "Done
when" run).

    python -m fedenv.learning.lora.run --task sst2 --rounds 30 --devices 10 --alpha 0.5 \\
        --rank 8 --local-steps 10 --batch-size 16 --seed 0 --out results/lora/sst2_k10_r8

Every device trains the module of rank ``--rank`` every round at full power with an equal share
of the band (the switching preset's physics decide which uploads arrive). Per round it logs the
accuracy, loss, arrivals and wall-clock to ``<out>/rounds.jsonl`` and ``<out>/curve.csv``; it
writes the resolved config (``config.yaml``), ``summary.json`` and, with matplotlib, a curve PNG
(``--plot``). ``--save-adapter`` exports the final global adapter in peft format.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "fixed_action", "plot_curves"]


def fixed_action(
    num_devices: int, ranks: tuple[int, ...], rank: int, components: tuple[str, ...]
) -> np.ndarray:
    """The action scheduling every device on ``rank`` at P_max with equal bandwidth weights."""
    if rank not in ranks:
        raise ValueError(f"--rank {rank} is not one of model.ranks {list(ranks)}")
    m = ranks.index(rank) + 1
    values = {
        "module": 2.0 * (m + 0.5) / (len(ranks) + 1) - 1.0,
        "power": 1.0,
        "bandwidth": 1.0,
        "ratio": 1.0,
        "schedule": 1.0,
    }
    return np.tile(np.array([values[c] for c in components], dtype=np.float32), (num_devices, 1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m fedenv.learning.lora.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", default="sst2", choices=["sst2", "qnli"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration of the label partition"
    )
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="client learning rate (default: learning.lora.learning_rate)",
    )
    parser.add_argument(
        "--optimizer",
        default=None,
        choices=["sgd", "adamw"],
        help="client optimiser (default: learning.lora.optimizer)",
    )
    parser.add_argument(
        "--pooling",
        default=None,
        choices=["auto", "mean", "normalized_mean", "model"],
        help="classifier input (default: learning.lora.pooling)",
    )
    parser.add_argument(
        "--server-momentum",
        type=float,
        default=None,
        help="FedAvgM beta (default: learning.lora.server_momentum)",
    )
    parser.add_argument("--aggregation", default="zeropad", choices=["zeropad", "stack", "svd"])
    parser.add_argument("--trainer", default="batched", choices=["batched", "sequential"])
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument(
        "--eval-interval",
        type=int,
        default=1,
        help="evaluate every this many rounds (and after the last)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/lora/run")
    parser.add_argument("--plot", default=None, help="PNG path for the accuracy curve")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY.PATH=VALUE",
        help="any other config override, applied last, e.g. model.target_modules=[query,key,value]",
    )
    parser.add_argument(
        "--save-adapter", action="store_true", help="export the final adapter to <out>/adapter"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import gymnasium as gym

    from fedenv.config import ConfigError, parse_set
    from fedenv.env import FedLoRAWirelessEnv
    from fedenv.learning.lora import LoraLearner

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    overrides: dict[str, Any] = {
        "num_rounds": args.rounds,
        "devices": {
            "num_devices": args.devices,
            "local_steps": args.local_steps,
            "batch_size": args.batch_size,
        },
        "learning": {
            "backend": "lora",
            "task": args.task,
            "dirichlet_alpha": args.alpha,
            "lora": {
                **{
                    key: value
                    for key, value in (
                        ("learning_rate", args.lr),
                        ("optimizer", args.optimizer),
                        ("pooling", args.pooling),
                        ("server_momentum", args.server_momentum),
                    )
                    if value is not None
                },
                "aggregation": args.aggregation,
                "trainer": args.trainer,
                "eval_samples": args.eval_samples,
                "eval_interval": args.eval_interval,
                "num_threads": args.threads,
            },
        },
    }
    try:
        overrides = parse_set(args.set, overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    env = gym.make("FedLoRAWireless-v0", preset="switching", **overrides)
    base = env.unwrapped
    assert isinstance(base, FedLoRAWirelessEnv)
    cfg = base.config
    cfg.to_yaml(out / "config.yaml")
    action = fixed_action(args.devices, tuple(cfg.model.ranks), args.rank, cfg.action_components)
    obs, info = env.reset(seed=args.seed)
    setup_s = time.perf_counter() - start
    rows = [
        {
            "round": 0,
            "accuracy": info["accuracy"],
            "loss": info["loss"],
            "aggregated": 0,
            "wall_s": setup_s,
        }
    ]
    logging.info(
        "round 0: accuracy %.4f loss %.4f (setup %.1f s) %s",
        info["accuracy"],
        info["loss"],
        setup_s,
        info["data_notes"],
    )
    with (out / "rounds.jsonl").open("w") as log:
        log.write(json.dumps(rows[0]) + "\n")
        for t in range(1, args.rounds + 1):
            tick = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(action)
            row = {
                "round": t,
                "accuracy": info["accuracy"],
                "loss": info["loss"],
                "aggregated": int(info["success"].sum()),
                "train_loss": info.get("learner", {}).get("train_loss"),
                "round_s": time.perf_counter() - tick,
                "wall_s": time.perf_counter() - start,
            }
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            logging.info(
                "round %d: accuracy %.4f loss %.4f aggregated %d/%d (%.1f s)",
                t,
                row["accuracy"],
                row["loss"],
                row["aggregated"],
                args.devices,
                row["round_s"],
            )
            if terminated or truncated:
                break
    if args.save_adapter:
        learner = base.learner
        assert isinstance(learner, LoraLearner)
        learner.export_adapter(out / "adapter")
    env.close()
    total = time.perf_counter() - start
    with (out / "curve.csv").open("w") as fh:
        fh.write("round,accuracy,loss,aggregated,wall_s\n")
        for r in rows:
            fh.write(
                f"{r['round']},{r['accuracy']:.4f},{r['loss']:.4f},{r['aggregated']},{r['wall_s']:.1f}\n"
            )
    summary = {
        "command": "python -m fedenv.learning.lora.run "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "final_accuracy": rows[-1]["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in rows),
        "rounds": len(rows) - 1,
        "wall_clock_s": total,
        "setup_s": setup_s,
        "mean_round_s": float(np.mean([r["round_s"] for r in rows[1:]])) if len(rows) > 1 else 0.0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logging.info(
        "final accuracy %.4f, best %.4f, wall-clock %.0f s",
        summary["final_accuracy"],
        summary["best_accuracy"],
        total,
    )
    if args.plot:
        plot_curves(
            {"accuracy": [r["accuracy"] for r in rows]},
            Path(args.plot),
            f"{args.task.upper()} K={args.devices} alpha={args.alpha} rank {args.rank} "
            f"tau={args.local_steps} n_b={args.batch_size}",
        )
    return summary


def plot_curves(
    curves: dict[str, list[float]], path: Path, title: str, floor: float | None = None
) -> None:
    """Accuracy against round for each labelled curve (round 0 first), saved as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed: no plot (pip install 'fedenv[train]')")
        return
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, curve in curves.items():
        ax.plot(range(len(curve)), curve, marker="o", ms=2.5, lw=1, label=label)
    if floor is not None:
        ax.axhline(floor, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("round")
    ax.set_ylabel("eval accuracy")
    ax.set_title(title, fontsize=7)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=7, ncol=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
