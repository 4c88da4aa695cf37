"""The project's main job: train the learned agent, compare it with the Lyapunov policy and the
heuristics on the papers' problem (final accuracy within each device's energy budget).

    python -m agents.demo                     # PPO-Lagrangian, short budget (ppo_demo.yaml)
    python -m agents.demo --budget full       # PPO-Lagrangian, full budget (ppo_lagrangian.yaml)
    python -m agents.demo --budget weighted   # PPO on the env's weighted reward (ppo.yaml)
    # PPO on top of Lyapunov, accuracy-constrained (configs/train/ppo_gated.yaml)
    python -m agents.demo --budget gated
    python -m agents.demo --run-dir runs/x --skip-train   # compare an already trained run

Steps: (1) train the agent on the default preset (``switching``) with the per-device network:
by default PPO-Lagrangian (agents/lagrangian.py), which maximises the accuracy gain with every
device's average energy kept within its budget; (2) evaluate it, the Lyapunov drift-plus-penalty
policy and the heuristics on the same held-out test seeds (1000 .. 1019 by default; training
selected its best model on other seeds, 100000 ..) with ``python -m baselines.compare``, which
writes ``results/main/``: ``summary.md`` (the table, printed), ``summary.json``,
``episodes.csv`` (one row per policy and episode), ``accuracy.png``, ``energy.png``,
``backlog.png``; (3) add ``learning_curve.png`` (validation return and final accuracy during
training, with the baselines' on the same validation seeds). The closing lines compare the
agent with the Lyapunov policy on the objective first (final accuracy, paired over the test
seeds, and the episodes within budget), the return second. See docs/agents.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedenv.config import EnvConfig
from fedenv.scenarios import named_config

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {
    "demo": ROOT / "configs/train/ppo_demo.yaml",
    "full": ROOT / "configs/train/ppo_lagrangian.yaml",
    "weighted": ROOT / "configs/train/ppo.yaml",
    "gated": ROOT / "configs/train/ppo_gated.yaml",
}
BASELINES = "lyapunov,max,min_rank,greedy,round_robin,random"


def plot_learning_curves(
    runs: dict[str, Path],
    path: Path,
    references: dict[str, tuple[float, float]],
    title: str = "PPO learning curve, FedLoRAWireless-v0",
) -> None:
    """Validation return (mean +- std over the validation episodes) and validation final accuracy
    vs env steps of one or more runs (label -> run directory), side by side, with the reference
    policies' (return, final accuracy) on the same validation seeds as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for (label, run), color in zip(
        runs.items(), ("tab:red", "tab:orange", "tab:brown", "tab:pink")
    ):
        with (Path(run) / "evaluations.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        steps = np.array([int(r["timesteps"]) for r in rows])
        order = np.argsort(steps, kind="stable")
        mean = np.array([float(r["mean_return"]) for r in rows])[order]
        std = np.array([float(r["std_return"]) for r in rows])[order]
        ax.plot(steps[order], mean, color=color, marker=".", label=label)
        ax.fill_between(steps[order], mean - std, mean + std, color=color, alpha=0.12)
        ax_acc.plot(
            steps[order],
            np.array([float(r["final_accuracy"]) for r in rows])[order],
            color=color,
            marker=".",
            label=label,
        )
    for (name, (ret, acc)), color in zip(
        references.items(), ("tab:blue", "tab:gray", "tab:green", "tab:purple")
    ):
        ax.axhline(ret, color=color, ls="--", lw=1.2, label=name)
        ax_acc.axhline(acc, color=color, ls="--", lw=1.2, label=name)
    ax.set_xlabel("env steps (rounds)")
    ax.set_ylabel("mean episode return (validation seeds)")
    ax_acc.set_xlabel("env steps (rounds)")
    ax_acc.set_ylabel("mean final accuracy (validation seeds)")
    ax.set_title(title)
    ax_acc.set_title("final accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def validation_references(
    config: EnvConfig, specs: list[str], seeds: list[int]
) -> dict[str, tuple[float, float]]:
    """(mean return, mean final accuracy) of baseline policies on the validation seeds the
    learning curve uses."""
    from baselines.evaluation import evaluate
    from baselines.registry import make_policy

    out = {}
    for spec in specs:
        policy = make_policy(spec, config)
        result = evaluate(policy, config, seeds)
        out[policy.name] = (
            float(result.metric("episode_return").mean()),
            float(result.metric("final_accuracy").mean()),
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m agents.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--budget",
        choices=list(BUDGETS),
        default="demo",
        help="training run: demo (PPO-Lagrangian, short), full (PPO-Lagrangian, the documented "
        "full budget), weighted (PPO on the env's weighted reward) or gated (the "
        "accuracy-constrained gated PPO of docs/agents.md)",
    )
    parser.add_argument(
        "--total-timesteps", type=int, default=None, help="override the budget's env steps"
    )
    parser.add_argument(
        "--config",
        default="switching",
        help="env preset, registered scenario or YAML (default: the default preset)",
    )
    parser.add_argument(
        "--run-dir", default=None, help="PPO run directory (default <out>/ppo_<budget>)"
    )
    parser.add_argument(
        "--skip-train", action="store_true", help="compare the trained run in --run-dir as is"
    )
    parser.add_argument(
        "--policies",
        default=BASELINES,
        help=f"baseline policy specs of baselines.compare (default {BASELINES})",
    )
    parser.add_argument(
        "--episodes", type=int, default=20, help="held-out test episodes per policy"
    )
    parser.add_argument("--seed", type=int, default=1000, help="first test seed")
    parser.add_argument("--out", default="results/main", help="output directory")
    parser.add_argument("--no-progress-bar", action="store_true")
    parser.add_argument(
        "--curves",
        nargs="+",
        metavar="LABEL=RUN",
        default=None,
        help="only plot the learning curves of these runs (same validation seeds) to "
        "--curves-out, then exit",
    )
    parser.add_argument(
        "--curves-out", default="results/learning_curves.png", help="output PNG of --curves"
    )
    args = parser.parse_args(argv)
    if args.curves:
        runs = dict(item.split("=", 1) for item in args.curves)
        from agents.runs import RunDir

        first = RunDir(next(iter(runs.values())))
        saved = first.read_args()
        seeds = list(range(saved["eval_seed"], saved["eval_seed"] + saved["eval_episodes"]))
        from baselines.registry import split_specs

        refs = validation_references(first.env_config(), split_specs(args.policies)[:2], seeds)
        plot_learning_curves(
            {k: Path(v) for k, v in runs.items()},
            Path(args.curves_out),
            refs,
            title="Learning curves, FedLoRAWireless-v0",
        )
        print(f"-> {args.curves_out}")
        return

    import torch

    from agents import train_ppo
    from agents.envs import episode_seeds
    from agents.runs import RunDir
    from baselines import compare
    from baselines.registry import split_specs

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = Path(args.out)
    config = named_config(args.config)
    run_dir = Path(args.run_dir) if args.run_dir else out / f"ppo_{args.budget}"
    run = RunDir(run_dir)
    if not args.skip_train:
        if run.model.exists() or run.latest_checkpoint() is not None:
            print(f"[demo] replacing the previous run in {run_dir}", flush=True)
            shutil.rmtree(run_dir)
        train_argv = [
            "--train-config",
            str(BUDGETS[args.budget]),
            "--config",
            args.config,
            "--run-dir",
            str(run_dir),
        ]
        if args.total_timesteps is not None:
            train_argv += ["--total-timesteps", str(args.total_timesteps)]
        if args.no_progress_bar:
            train_argv += ["--no-progress-bar"]
        print(
            f"[demo] 1/3 training PPO: python -m agents.train_ppo {' '.join(train_argv)}",
            flush=True,
        )
        train_ppo.main(train_argv)
    elif not run.model.is_file():
        raise SystemExit(f"error: --skip-train needs a trained run in {run_dir}")
    train_s = time.perf_counter() - t0

    print(
        f"[demo] 2/3 comparing on {args.episodes} held-out test seeds from {args.seed} "
        "(baselines.compare)",
        flush=True,
    )
    compare_argv = [
        "--config", args.config, "--policies", f"ppo:{run_dir},{args.policies}",
        "--episodes", str(args.episodes), "--seed", str(args.seed), "--out", str(out),
        "--no-progress",
    ]  # fmt: skip
    print(f"python -m baselines.compare {' '.join(compare_argv)}", flush=True)
    comparison = compare.main(compare_argv)

    print("[demo] 3/3 learning curve", flush=True)
    train_args = run.read_args()
    val = episode_seeds(train_args["eval_seed"], train_args["eval_episodes"])
    specs = split_specs(args.policies)
    refs = validation_references(
        config, [specs[0], *(s for s in specs[1:] if s.startswith("round_robin"))][:2], val
    )
    plot_learning_curves({"PPO": run_dir}, out / "learning_curve.png", refs)

    metrics = json.loads(run.metrics.read_text()) if run.metrics.is_file() else {}
    by_name = {ev.policy: ev for ev in comparison.evaluations}
    ppo = comparison.evaluations[0]
    lyap = next((ev for name, ev in by_name.items() if name.startswith("lyapunov")), None)
    total = time.perf_counter() - t0
    print()
    print(
        f"PPO trained for {metrics.get('timesteps', 0):,d} env steps "
        f"({metrics.get('wall_s_total', train_s) / 60:.1f} min); whole demo {total / 60:.1f} "
        "min."
    )
    if lyap is not None:
        print(objective_summary(ppo, lyap))
    print(
        f"Results in {out}/: summary.md, summary.json, episodes.csv, accuracy.png, "
        f"energy.png, backlog.png, learning_curve.png; the run in {run_dir}/."
    )
    if args.budget == "demo":
        print(
            "Full training budgets (docs/agents.md): bash scripts/main.sh --budget full  "
            f"({FULL_BUDGET_NOTE}); bash scripts/main.sh --budget weighted  "
            f"({WEIGHTED_BUDGET_NOTE}); bash scripts/main.sh --budget gated  "
            f"({GATED_BUDGET_NOTE})."
        )


def objective_summary(agent: Any, reference: Any, tolerance: float = 0.05) -> str:
    """Two lines: the papers' objective first (final accuracy, paired over the test seeds, and the
    episodes in which every device kept within ``1 + tolerance`` of its budget), the return
    second. ``agent`` and ``reference`` are ``baselines.evaluation.Evaluation`` on the same
    seeds."""
    from baselines.objective import paired_difference

    d_acc, ci = paired_difference(agent, reference)
    acc_a, acc_r = agent.metric("final_accuracy"), reference.metric("final_accuracy")
    n = acc_a.size
    kept_a = int(np.nansum(agent.metric("in_budget")))
    kept_r = int(np.nansum(reference.metric("in_budget")))
    d_ret = agent.metric("episode_return") - reference.metric("episode_return")
    return (
        f"Objective (final accuracy within budget), {agent.policy} vs {reference.policy}, "
        f"paired over {n} test seeds: {acc_a.mean():.4f} vs {acc_r.mean():.4f}, difference "
        f"{d_acc:+.4f} ± {ci:.4f} (95% CI; {agent.policy} higher in "
        f"{int((acc_a > acc_r).sum())}/{n}); every device within {1 + tolerance:.2f} x its "
        f"budget in {kept_a}/{n} episodes vs {kept_r}/{n} (worst device "
        f"{np.nanmax(agent.metric('max_budget_use')):.3f} vs "
        f"{np.nanmax(reference.metric('max_budget_use')):.3f} of its budget).\n"
        f"Return (the env's weighted reward): {d_ret.mean():+.2f} "
        f"({agent.policy} higher in {int((d_ret > 0).sum())}/{n})."
    )


#: Measured wall-clock of the full budgets on the 2-core reference machine (README, "Main job").
FULL_BUDGET_NOTE = (
    "configs/train/ppo_lagrangian.yaml, 600k env steps: about 7 min with the comparison, "
    "every budget kept"
)
WEIGHTED_BUDGET_NOTE = (
    "configs/train/ppo.yaml, 300k env steps: about 5 min with the comparison; the env's weighted "
    "reward, no budget constraint"
)
GATED_BUDGET_NOTE = (
    "configs/train/ppo_gated.yaml, 300k env steps: over an hour here at V = 10 (the Lyapunov "
    "policy decides inside every step); PPO idles devices of the Lyapunov policy's decisions"
)


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
