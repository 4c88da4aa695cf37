"""Compare policies on common seeds: ``python -m baselines.compare``.

Example (the default preset, 20 held-out seeds)::

    python -m baselines.compare --config switching --policies lyapunov,max,greedy,random \\
        --episodes 20 --seed 1000 --out results/default --sweep-V 1,3,10,30,100,300,1000

Every policy plays the seeds ``seed .. seed + episodes - 1`` (the same channel traces and data
partitions for all). Written to ``--out``:

* ``config.yaml``   the fully resolved env config;
* ``episodes.csv``  one row per (policy, seed) with every metric of
  :data:`baselines.evaluation.EPISODE_METRICS`;
* ``rounds.csv``  one row per (policy, round): the means over the episodes of the round's
  accuracy (after it), devices scheduled, energy per device and label skew of the arrivals
  (over the episodes in which an update arrived; empty if none did);
* ``summary.md`` / ``summary.json``  the objective first (final accuracy, budget compliance,
  worst cost / budget and the final accuracy's paired difference from the first Lyapunov
  policy listed, else from the first policy, :func:`baselines.objective.paired_summary`), then
  every metric's mean and 95% confidence interval per policy;
* ``accuracy.png``, ``energy.png``, ``backlog.png``  accuracy per round, cumulative energy
  per device against the budget, and the virtual queues (mean and 95% CI over seeds);
* with ``--sweep-V``: ``sweep_V.csv`` / ``sweep_V.md`` and ``tradeoff.png`` (final accuracy
  against energy per device over V, and episode return against V) for the Lyapunov policy.

Policy specs: ``lyapunov[:V=..]``, ``max``, ``min_rank``, ``fixed_rank[:rank=..]``,
``greedy[:fraction=..]``, ``round_robin[:fraction=..]``, ``random``, and the kinds other
packages add through the ``fedenv.policies`` entry points (:mod:`baselines.registry`): learned
agents as ``ppo:<run dir>``, ``sac:<run dir>``, ``recurrentppo:<run dir>``, ``ippo:<run dir>``,
the calibration's ``explore``. ``--config`` takes a preset
name or a YAML file; ``--backend lora`` runs the real fine-tuning (slow on CPU, same command).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from baselines.evaluation import (
    EPISODE_METRICS,
    Comparison,
    Evaluation,
    evaluate,
    evaluate_policies,
    format_table,
    mean_ci,
    summarize,
)
from baselines.lyapunov import LyapunovPolicy, check_tradeoff, tsfa_offline_rank
from baselines.objective import objective_table, paired_summary
from baselines.registry import make_policy, split_specs
from fedenv.config import EnvConfig
from fedenv.scenarios import named_config

__all__ = ["main", "build_config", "run_sweep", "plot_comparison", "plot_sweep"]

DEFAULT_SWEEP = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def build_config(args: argparse.Namespace) -> EnvConfig:
    """The env config from ``--config`` plus the command-line overrides."""
    overrides: dict[str, Any] = {}
    if args.rounds is not None:
        overrides["num_rounds"] = args.rounds
    if args.devices is not None:
        overrides["devices"] = {"num_devices": args.devices}
    if args.backend is not None:
        overrides["learning"] = {"backend": args.backend}
    cfg = named_config(args.config, **overrides)
    if args.tsfa_rank:
        rank, table = tsfa_offline_rank(
            cfg, args.tsfa_v if args.tsfa_v is not None else _first_lyapunov_v(args.policies)
        )
        print("TSFA offline rank (mean final gap, mean latency over calibration episodes):")
        for r, v in table.items():
            print(
                f"  rank {r:>3}: gap {v['final_gap']:.4f}  latency {v['mean_latency_s']:.3f} "
                f"s{'  <- chosen' if r == rank else ''}"
            )
        cfg = cfg.replace(fixed_rank=rank)
    return cfg


def _first_lyapunov_v(specs: list[str]) -> float:
    from baselines.lyapunov import DEFAULT_V
    from baselines.registry import parse_spec

    for spec in specs:
        name, params = parse_spec(spec)
        if name == "lyapunov":
            return float(params.get("V", DEFAULT_V))
    return DEFAULT_V


def _parse_sweep(text: str | None) -> list[float]:
    if text is None:
        return []
    if text == "default":
        return list(DEFAULT_SWEEP)
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            values.append(check_tradeoff(float(item)))
        except ValueError as exc:
            raise SystemExit(f"--sweep-V: {exc} (in {text!r})") from None
    if not values:
        raise SystemExit("--sweep-V needs a comma-separated list of V > 0, e.g. 1,10,100")
    return values


def run_sweep(
    config: EnvConfig,
    values: Sequence[float],
    seeds: list[int],
    *,
    budget_tolerance: float = 0.05,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Lyapunov policy for each V on the same seeds: mean and 95% CI of the main metrics."""
    rows = []
    bar = None
    if progress:
        from baselines.evaluation import _progress_bar

        bar = _progress_bar(len(values) * len(seeds))
    try:
        for v in values:
            policy = LyapunovPolicy(config, v)
            if bar is not None and hasattr(bar, "set_description"):
                bar.set_description(policy.name)
            ev = evaluate(policy, config, seeds, budget_tolerance=budget_tolerance, progress=bar)
            row: dict[str, Any] = {"V": v}
            for key in (
                "final_accuracy",
                "mean_accuracy",
                "energy_j",
                "devices_within_budget",
                "max_budget_use",
                "latency_s",
                "latency_budget_use",
                "worst_budget_use",
                "in_budget",
                "episode_return",
                "final_energy_backlog_j",
                "final_latency_backlog_s",
                "decision_ms",
            ):
                row[key], row[f"{key}_ci95"] = mean_ci(ev.metric(key))
            rows.append(row)
    finally:
        if bar is not None:
            bar.close()
    return rows


def sweep_table(rows: list[dict[str, Any]]) -> str:
    keys = [
        ("final_accuracy", "final accuracy", ".4f"),
        ("mean_accuracy", "mean accuracy", ".4f"),
        ("energy_j", "energy / device / round (J)", ".4f"),
        ("devices_within_budget", "devices within budget", ".3f"),
        ("max_budget_use", "max device energy / budget", ".3f"),
        ("latency_budget_use", "latency / budget", ".3f"),
        ("in_budget", "episodes within budget", ".3f"),
        ("final_energy_backlog_j", "final backlog Z (J)", ".3f"),
        ("final_latency_backlog_s", "final backlog Y (s)", ".3f"),
        ("episode_return", "episode return", ".2f"),
    ]
    keys = [k for k in keys if any(math.isfinite(r[k[0]]) for r in rows)]
    lines = ["| V | " + " | ".join(t for _, t, _ in keys) + " |", "|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(
            f"| {r['V']:g} | "
            + " | ".join(f"{r[k]:{f}} ± {r[k + '_ci95']:{f}}" for k, _, f in keys)
            + " |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------- plots
def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            f"plots need matplotlib: pip install 'fedenv[train]' (or pass --no-plots) ({exc})"
        ) from exc
    return plt


def _per_round(data: np.ndarray) -> list[tuple[float, float]]:
    """Mean over episodes (axis 0) and its 95% CI half-width, per round (NaNs left out)."""
    return [mean_ci(data[:, j]) for j in range(data.shape[1])]


def _band(ax: Any, x: np.ndarray, data: np.ndarray, label: str) -> None:
    """Mean over episodes (axis 0) with a 95% CI band."""
    stats = _per_round(data)
    mean = np.array([s[0] for s in stats])
    half = np.array([s[1] for s in stats])
    line = ax.plot(x, mean, label=label)[0]
    ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2, linewidth=0)


def plot_comparison(comparison: Comparison, out: Path, title: str = "") -> list[Path]:
    """accuracy.png, energy.png and backlog.png for every policy of the comparison."""
    plt = _pyplot()
    cfg = comparison.config
    files = []
    rounds = np.arange(cfg.num_rounds + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for ev in comparison.evaluations:
        _band(ax, rounds, ev.traces["accuracy"], ev.policy)
    ax.set(
        xlabel="round",
        ylabel="held-out accuracy",
        title=title or "accuracy per round (mean, 95% CI)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "accuracy.png", plt))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for ev in comparison.evaluations:
        cum = np.nancumsum(ev.traces["energy_j"], axis=1).mean(axis=2)  # (E, T) per device
        _band(ax, rounds[1:], cum, ev.policy)
    budget = cfg.budgets.energy_budget_j
    if budget is not None:
        ax.plot(rounds, budget * rounds, "k--", linewidth=1, label="budget t x E_bar")
    ax.set(
        xlabel="round",
        ylabel="cumulative energy per device (J)",
        title="cumulative energy per device (mean, 95% CI)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "energy.png", plt))

    panels = [("energy_backlog", "mean energy backlog Z (J)")] if cfg.uses_energy_queue else []
    if cfg.uses_latency_queue:
        panels.append(("latency_backlog", "latency backlog Y (s)"))
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
        for ax, (key, label) in zip(axes[0], panels):
            for ev in comparison.evaluations:
                data = ev.traces[key]
                _band(ax, rounds, data.mean(axis=2) if data.ndim == 3 else data, ev.policy)
            ax.set(xlabel="round", ylabel=label, title=f"{label} (mean, 95% CI)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        files.append(_save(fig, out / "backlog.png", plt))
    return files


def plot_sweep(rows: list[dict[str, Any]], config: EnvConfig, out: Path) -> Path:
    """tradeoff.png: final accuracy vs energy per device over V, and episode return vs V."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.0, 4.2))
    x = np.array([r["energy_j"] for r in rows])
    y = np.array([r["final_accuracy"] for r in rows])
    ax1.errorbar(
        x,
        y,
        xerr=[r["energy_j_ci95"] for r in rows],
        yerr=[r["final_accuracy_ci95"] for r in rows],
        marker="o",
        capsize=3,
    )
    for r in rows:
        ax1.annotate(
            f"V={r['V']:g}",
            (r["energy_j"], r["final_accuracy"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
    if config.budgets.energy_budget_j is not None:
        ax1.axvline(
            config.budgets.energy_budget_j,
            color="k",
            linestyle="--",
            linewidth=1,
            label="energy budget",
        )
        ax1.legend(fontsize=8)
    ax1.set(
        xlabel="energy per device per round (J)",
        ylabel="final accuracy",
        title="Lyapunov trade-off over V",
    )
    ax1.grid(alpha=0.3)
    v = np.array([r["V"] for r in rows])
    ax2.errorbar(
        v,
        [r["episode_return"] for r in rows],
        yerr=[r["episode_return_ci95"] for r in rows],
        marker="o",
        capsize=3,
    )
    ax2.set(
        xscale="log",
        xlabel="V",
        ylabel="episode return",
        title="episode return vs V (mean, 95% CI)",
    )
    ax2.grid(alpha=0.3, which="both")
    return _save(fig, out / "tradeoff.png", plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- I/O
def write_episodes_csv(evaluations: list[Evaluation], path: Path) -> None:
    keys = ["policy", "seed", "rounds", *(k for k, _, _ in EPISODE_METRICS)]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for ev in evaluations:
            for rec in ev.episodes:
                writer.writerow({k: rec[k] for k in keys})


#: Columns of ``rounds.csv``: (column, trace of :class:`Evaluation`).
ROUND_COLUMNS = (
    ("accuracy", "accuracy"),
    ("scheduled", "scheduled"),
    ("energy_j_per_device", "energy_j"),
    ("label_skew", "label_skew"),
)


def write_rounds_csv(evaluations: list[Evaluation], path: Path) -> None:
    """Per (policy, round t = 1..T): each trace's mean over the episodes (NaNs left out)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["policy", "round", *(c for c, _ in ROUND_COLUMNS)])
        for ev in evaluations:
            columns = []
            for _, key in ROUND_COLUMNS:
                trace = ev.traces[key]
                if key == "accuracy":
                    trace = trace[:, 1:]  # index 0 is before the first round
                elif trace.ndim == 3:
                    trace = trace.mean(axis=2)  # per device -> mean over devices
                means = (mean for mean, _ in _per_round(trace))
                columns.append(["" if math.isnan(mean) else mean for mean in means])
            for t, row in enumerate(zip(*columns)):
                writer.writerow([ev.policy, t + 1, *row])


def _command_line(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return "python -m baselines.compare " + " ".join(_quote(a) for a in args)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def main(argv: Sequence[str] | None = None) -> Comparison:
    parser = argparse.ArgumentParser(
        prog="python -m baselines.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default="switching",
        help="preset (switching, split, soft, unified), registered scenario (tight_energy, ...) "
        "or YAML file",
    )
    parser.add_argument(
        "--policies",
        action="append",
        default=None,
        help="comma-separated policy specs (repeatable); default: lyapunov,max,greedy,random",
    )
    parser.add_argument("--episodes", type=int, default=20, help="episodes (seeds) per policy")
    parser.add_argument(
        "--seed",
        type=int,
        default=1000,
        help="first episode seed; seeds are seed .. seed + episodes - 1",
    )
    parser.add_argument(
        "--out", default=None, help="output directory (default: results/compare_<config name>)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="override num_rounds")
    parser.add_argument("--devices", type=int, default=None, help="override devices.num_devices")
    parser.add_argument(
        "--backend", choices=("surrogate", "lora"), default=None, help="override learning.backend"
    )
    parser.add_argument(
        "--sweep-V",
        dest="sweep_v",
        nargs="?",
        const="default",
        default=None,
        help="also sweep the Lyapunov V (comma-separated; no value = 1,3,10,30,100,300,1000)",
    )
    parser.add_argument(
        "--budget-tolerance",
        type=float,
        default=0.05,
        help="a device is within budget if its average energy <= (1 + tol) x budget",
    )
    parser.add_argument(
        "--tsfa-rank",
        action="store_true",
        help="set fixed_rank to TSFA's offline choice (soft paradigm) for every policy",
    )
    parser.add_argument(
        "--tsfa-v",
        type=float,
        default=None,
        help="V of the online stage in the TSFA offline rank search",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    specs = [
        s for text in (args.policies or ["lyapunov,max,greedy,random"]) for s in split_specs(text)
    ]
    if not specs:
        parser.error("--policies is empty")
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    args.policies = specs
    sweep = _parse_sweep(args.sweep_v)
    try:
        cfg = build_config(args)
        policies = [make_policy(s, cfg) for s in specs]
    except (ValueError, FileNotFoundError, ImportError) as exc:
        parser.exit(2, f"error: {exc}\n")
    name = (
        Path(args.config).stem if str(args.config).endswith((".yaml", ".yml")) else str(args.config)
    )
    out = Path(args.out) if args.out else Path("results") / f"compare_{name}"
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    command = _command_line(argv)

    comparison = evaluate_policies(
        policies,
        cfg,
        episodes=args.episodes,
        seed=args.seed,
        budget_tolerance=args.budget_tolerance,
        progress=not args.no_progress,
    )
    write_episodes_csv(comparison.evaluations, out / "episodes.csv")
    write_rounds_csv(comparison.evaluations, out / "rounds.csv")
    table = format_table(comparison)
    # the papers' objective first: final accuracy with every budget kept, paired with the
    # first Lyapunov policy listed (else the first policy)
    names = [ev.policy for ev in comparison.evaluations]
    ref = next((i for i, n in enumerate(names) if n.startswith("lyapunov")), 0)
    objective = [{"setting": name, **row} for row in paired_summary(comparison.evaluations, ref)]
    objective_text = (
        f"The objective: final accuracy with every budget kept, each policy paired with "
        f"{names[ref]} on the same seeds (Δ: mean ± 95% CI of the per-seed difference; an "
        f"interval above 0 is strictly more accurate).\n\n"
        + objective_table(objective, "config", names[ref])
    )
    header = (
        f"Comparison on `{name}` ({cfg.paradigm}, K = {cfg.devices.num_devices}, T = "
        f"{cfg.num_rounds}, "
        f"backend {cfg.learning.backend}), seeds {comparison.seeds[0]}..{comparison.seeds[-1]}; "
        f"mean ± 95% CI over {args.episodes} episodes; within budget = average energy <= "
        f"{1 + args.budget_tolerance:g} x budget.\n\n`{command}`\n\n"
    )
    (out / "summary.md").write_text(header + objective_text + "\n\n" + table + "\n")
    (out / "summary.json").write_text(
        json.dumps(
            {
                "command": command,
                "seeds": comparison.seeds,
                "objective": objective,
                "policies": summarize(comparison),
            },
            indent=2,
            default=float,
        )
    )
    print(header + objective_text + "\n\n" + table)
    if not args.no_plots:
        files = plot_comparison(comparison, out)
        print("plots: " + ", ".join(str(f) for f in files))
    if sweep:
        rows = run_sweep(
            cfg,
            sweep,
            comparison.seeds,
            budget_tolerance=args.budget_tolerance,
            progress=not args.no_progress,
        )
        with (out / "sweep_V.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        text = sweep_table(rows)
        (out / "sweep_V.md").write_text(f"Lyapunov V sweep, same seeds.\n\n`{command}`\n\n{text}\n")
        print("\nV sweep:\n" + text)
        if not args.no_plots:
            print(f"plot: {plot_sweep(rows, cfg, out)}")
    print(f"-> {out}")
    return comparison


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
