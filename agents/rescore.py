"""Score every saved model of a run on more validation episodes: ``python -m agents.rescore``.

During training the best model is picked on ``eval_episodes`` validation seeds (20 for the
tradeoff form, 10 by default), by the objective's rule. Where the gains are tenths of a point
and one episode's final accuracy spreads over a point or more, 20 episodes pick noisily: a
model that led on them can trail on the test seeds. This command plays every saved model of a
run (``best/``, every intact checkpoint, the final model) on more validation seeds (from the
run's ``eval_seed`` on, never the test seeds) and ranks them by the same rule
(:func:`baselines.objective.constrained_score`: the most accurate in budget)::

    python -m agents.rescore runs/to_mobile_g1 --episodes 100 --reference lyapunov:V=30

It writes ``rescore.csv`` in the run directory: one row per model with its steps, its spec, the
mean final accuracy and its 95% confidence interval, the budget compliance, the worst budget
use, the energy per device-round, the score and whether it was chosen; with ``--reference``,
the paired difference of the final accuracy from that policy on the same seeds (in accuracy
points), which makes the curve over the checkpoints readable through the episodes' spread. It
prints the chosen model's spec, which ``baselines.compare`` and ``baselines.suite`` take as an
agent (``ppo:<run>/checkpoints/ckpt_<steps>_steps.zip``, ``ppo:<run>@final`` or
``ppo:<run>@best``). ``best/`` is left as training saved it. ``rescore.png`` (or ``--figure``)
draws the rows against the steps: the paired difference with its interval when there is a
reference, else the final accuracy; ``best/`` and the chosen model marked.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.evaluate import ALGORITHMS, load_policy
from agents.runs import RunDir, model_steps, write_file
from baselines.evaluation import Evaluation, evaluate
from baselines.objective import constrained_score, objective_summary, paired_difference
from baselines.registry import make_policy

__all__ = ["candidates", "main", "plot_rescore", "rescore"]

#: The columns of rescore.csv, in order.
FIELDS = (
    "steps",
    "spec",
    "final_accuracy",
    "final_accuracy_ci95",
    "compliance",
    "worst_budget_use",
    "energy_j",
    "score",
    "chosen",
    "delta_points",
    "delta_points_ci95",
)


def candidates(run_dir: str | Path, algo: str = "ppo") -> list[tuple[int, str]]:
    """(steps, spec) of every saved model of a run, by steps: each intact checkpoint, then the
    final model, then best/ (a tie in the score goes to the first).

    Raises:
        FileNotFoundError: no run directory, or one with no saved model.
    """
    run = RunDir(run_dir)
    if not run.is_run:
        raise FileNotFoundError(f"{str(run.path)!r} is not a run directory (no args.yaml)")
    found: list[tuple[int, str]] = []
    for steps, model, _ in reversed(list(run.intact_checkpoints())):
        found.append((steps, f"{algo}:{model}"))
    for which, model in (("final", run.model), ("best", run.best_model)):
        if model.is_file():
            found.append((model_steps(model), f"{algo}:{run.path}@{which}"))
    if not found:
        raise FileNotFoundError(
            f"run directory {str(run.path)!r} holds no model (model.zip, best/ or checkpoints/)"
        )
    return found


def rescore(
    run_dir: str | Path,
    episodes: int,
    *,
    algo: str = "ppo",
    first_seed: int | None = None,
    reference: str | None = None,
) -> list[dict[str, Any]]:
    """One row per saved model of the run (:data:`FIELDS`), each model played on the validation
    seeds ``first_seed .. first_seed + episodes - 1`` (default: the run's ``eval_seed``) in the
    run's env config; the row with the highest score has ``chosen`` True."""
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    run = RunDir(run_dir)
    found = candidates(run_dir, algo)
    config = run.env_config()
    if first_seed is None:
        saved = run.read_args().get("eval_seed")
        if saved is None:
            raise ValueError(
                f"{run.args_file} names no eval_seed (the run's first validation seed); pass "
                "the first validation seed (--seed N), off the test seeds"
            )
        first_seed = saved
    start = int(first_seed)
    seeds = list(range(start, start + episodes))
    ref: Evaluation | None = None
    if reference is not None:
        ref = evaluate(make_policy(reference, config), config, seeds)
    rows: list[dict[str, Any]] = []
    for steps, spec in found:
        ev = evaluate(load_policy(spec, config), config, seeds)
        summary = objective_summary(ev)
        row: dict[str, Any] = {"steps": steps, "spec": spec}
        row.update({k: summary[k] for k in FIELDS[2:7]})
        row["score"] = constrained_score(
            summary["final_accuracy"], summary["compliance"], summary["worst_budget_use"]
        )
        if ref is not None:
            delta, half = paired_difference(ev, ref)
            row["delta_points"], row["delta_points_ci95"] = 100 * delta, 100 * half
        rows.append(row)
    best = max(rows, key=lambda r: r["score"])
    for r in rows:
        r["chosen"] = r is best
    return rows


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot_rescore(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Draw the checkpoints' rows against their steps (module docstring) to ``path``."""
    from baselines.compare import _pyplot, _save

    plt = _pyplot()
    paired = all("delta_points" in r for r in rows)
    key = "delta_points" if paired else "final_accuracy"
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    curve = sorted((r for r in rows if not _which(r)), key=lambda r: int(r["steps"]))
    ax.errorbar(
        [r["steps"] for r in curve],
        [r[key] for r in curve],
        yerr=[r[f"{key}_ci95"] for r in curve],
        color="tab:red", marker="o", ms=4, lw=1.2, capsize=2, label="checkpoints",
    )  # fmt: skip
    for r in rows:
        if _which(r):
            final = _which(r) == "final"
            ax.scatter([r["steps"]], [r[key]], marker="s" if final else "D", s=40, zorder=3,
                       color="tab:blue" if final else "tab:green",
                       label=f"{_which(r)} model")  # fmt: skip
        if r["chosen"]:
            ax.scatter([r["steps"]], [r[key]], marker="*", s=220, color="k", zorder=4,
                       label="chosen")  # fmt: skip
    if paired:
        ax.axhline(0.0, color="gray", ls="--", lw=1.0, label="reference")
    ax.set(
        xlabel="env steps",
        ylabel="paired Δ final accuracy (points)" if paired else "final accuracy",
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path, plt)


def _which(row: dict[str, Any]) -> str:
    """The row of the run's best/ ("best") or final model ("final"); "" for a checkpoint."""
    spec = str(row["spec"])
    return spec.rpartition("@")[2] if spec.endswith(("@best", "@final")) else ""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m agents.rescore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", help="run directory")
    parser.add_argument(
        "--episodes", type=int, default=100, help="validation episodes per model (default 100)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="first validation seed (default: the run's eval_seed; keep it off the test seeds)",
    )
    parser.add_argument("--algo", choices=ALGORITHMS, default="ppo", help="the run's algorithm")
    parser.add_argument(
        "--reference",
        default=None,
        help="a policy spec (e.g. lyapunov:V=30) to pair every model with on the same seeds",
    )
    parser.add_argument(
        "--figure", default=None, help="where to draw the figure (default: <run>/rescore.png)"
    )
    args = parser.parse_args(argv)
    rows = rescore(
        args.run, args.episodes, algo=args.algo, first_seed=args.seed, reference=args.reference
    )
    run = RunDir(args.run)
    out = run.path / "rescore.csv"
    write_file(out, _csv(rows))
    for r in rows:
        delta = (
            f"   {r['delta_points']:+.3f} ± {r['delta_points_ci95']:.3f} points"
            if "delta_points" in r
            else ""
        )
        print(
            f"{'*' if r['chosen'] else ' '} {r['steps']:>9,d}  {r['final_accuracy']:.4f} ± "
            f"{r['final_accuracy_ci95']:.4f}  compliance {r['compliance']:.2f}{delta}  "
            f"{r['spec']}"
        )
    figure = plot_rescore(
        rows,
        Path(args.figure) if args.figure else out.with_suffix(".png"),
        f"{run.path.name}: {args.episodes} validation episodes"
        + (f", paired with {args.reference}" if args.reference else ""),
    )
    chosen = next(r for r in rows if r["chosen"])
    print(f"chosen on {args.episodes} validation episodes: {chosen['spec']}\n-> {out}, {figure}")


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
