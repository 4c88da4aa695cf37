"""Learning curves of a constrained run from its evaluation records.

    python -m agents.curves runs/lag_tight                        # -> runs/lag_tight/curves.png
    python -m agents.curves runs/lag_tight --references lyapunov,max --out docs/figures/x.png

Three panels against env steps, all read from the run's ``evaluations.csv`` (one row per
held-out evaluation on the validation seeds, :class:`agents.callbacks.HeldOutEvalCallback`):

1. **final accuracy** (mean over the validation episodes); evaluations in budget (compliance
   >= 0.95) filled, the others hollow, the best model (the selection rule's choice) starred;
   ``--references`` adds baseline policies' mean final accuracy on the same validation seeds
   in the run's env config (dashed lines);
2. **budget use per device**: each device slot's average energy per round / its budget
   (``budget_use_<k>``, thin lines), the mean over episodes of the worst cost / budget (thick)
   and the latency's (``latency_budget_use``) where budgeted, against 1 and the 1.05 tolerance;
3. **multipliers**: every Lagrange multiplier at the evaluation (``lambda_<name>``).

A run written before these columns existed has only the accuracy panel filled.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agents.callbacks import read_evaluations
from agents.runs import RunDir
from baselines.objective import BUDGET_TOLERANCE

__all__ = ["Curves", "curves", "main", "plot_curves"]

F = NDArray[np.float64]
_DEVICE = re.compile(r"budget_use_(\d+)")


@dataclass
class Curves:
    """A run's evaluation records as arrays over evaluations, in step order."""

    steps: NDArray[np.int64]
    final_accuracy: F
    feasible: NDArray[np.bool_]
    """In budget by the run's selection rule (all True without the column)."""
    best: int | None
    """Index of the evaluation best/ holds (the last flagged best), None if none is."""
    budget_use: F
    """(evaluations, K): each device slot's budget use, by slot index (K = 0 without a budget)."""
    worst_budget_use: F
    latency_budget_use: F | None
    multipliers: dict[str, F]
    """``lambda_<name>`` -> values, in the order the run recorded them."""


def curves(rows: Sequence[dict[str, float]]) -> Curves:
    """Arrays from evaluations.csv rows (:func:`agents.callbacks.read_evaluations`).

    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError("no evaluations recorded")
    rows = sorted(rows, key=lambda r: r["timesteps"])
    nan = float("nan")

    def column(key: str) -> F:
        return np.array([float(r.get(key, nan)) for r in rows])

    keys = list(dict.fromkeys(k for r in rows for k in r))
    slots = sorted(int(m.group(1)) for k in keys if (m := _DEVICE.fullmatch(k)))
    flagged = [i for i, r in enumerate(rows) if r.get("best") == 1]
    feasible = column("feasible")
    return Curves(
        steps=np.array([int(r["timesteps"]) for r in rows], dtype=np.int64),
        final_accuracy=column("final_accuracy"),
        feasible=np.where(np.isnan(feasible), True, feasible > 0.5),
        best=flagged[-1] if flagged else None,
        budget_use=np.stack([column(f"budget_use_{k}") for k in slots], axis=1)
        if slots
        else np.zeros((len(rows), 0)),
        worst_budget_use=column("worst_budget_use"),
        latency_budget_use=column("latency_budget_use") if "latency_budget_use" in keys else None,
        multipliers={k[len("lambda_") :]: column(k) for k in keys if k.startswith("lambda_")},
    )


def plot_curves(
    c: Curves, path: Path, references: dict[str, float] | None = None, title: str = ""
) -> Path:
    """Draw the three panels (module docstring) to ``path``."""
    from baselines.compare import _pyplot, _save

    plt = _pyplot()
    fig, (ax_acc, ax_use, ax_lam) = plt.subplots(1, 3, figsize=(16.0, 4.4))
    ax_acc.plot(c.steps, c.final_accuracy, color="tab:red", lw=1.2, label="agent")
    ax_acc.scatter(
        c.steps[c.feasible], c.final_accuracy[c.feasible], color="tab:red", s=18, label="in budget"
    )
    ax_acc.scatter(
        c.steps[~c.feasible],
        c.final_accuracy[~c.feasible],
        facecolors="none",
        edgecolors="tab:red",
        s=18,
        label="out of budget",
    )
    if c.best is not None:
        ax_acc.scatter(
            [c.steps[c.best]], [c.final_accuracy[c.best]], marker="*", s=160, color="k",
            zorder=3, label="best model",
        )  # fmt: skip
    for (name, acc), color in zip((references or {}).items(), plt.cm.tab10.colors):
        ax_acc.axhline(acc, color=color, ls="--", lw=1.0, label=name)
    # the y range holds every curve and reference with a margin (a reference at the top of the
    # autoscaled range would hide under the frame)
    shown = np.concatenate([c.final_accuracy, list((references or {}).values())])
    shown = shown[np.isfinite(shown)]
    if shown.size:
        pad = 0.05 * max(float(np.ptp(shown)), 1e-3)
        ax_acc.set_ylim(float(shown.min()) - pad, float(shown.max()) + pad)
    ax_acc.set(xlabel="env steps", ylabel="final accuracy (validation seeds)", title="accuracy")
    ax_acc.legend(fontsize=7)

    for k in range(c.budget_use.shape[1]):
        ax_use.plot(c.steps, c.budget_use[:, k], lw=0.7, alpha=0.6)
    if np.isfinite(c.worst_budget_use).any():
        ax_use.plot(c.steps, c.worst_budget_use, color="k", lw=2.0, label="worst cost / budget")
    if c.latency_budget_use is not None:
        ax_use.plot(c.steps, c.latency_budget_use, color="tab:purple", lw=1.5, label="latency")
    ax_use.axhline(1.0, color="gray", ls="--", lw=1.0, label="budget")
    ax_use.axhline(1.0 + BUDGET_TOLERANCE, color="gray", ls=":", lw=1.0, label="1.05 x budget")
    ax_use.set(
        xlabel="env steps",
        ylabel="average cost / budget",
        title="budget use per device (thin: each slot)",
    )
    ax_use.legend(fontsize=7)

    for name, values in c.multipliers.items():
        ax_lam.plot(c.steps, values, lw=1.0, label=name if len(c.multipliers) <= 11 else None)
    if not c.multipliers:
        ax_lam.text(0.5, 0.5, "no multipliers recorded", ha="center", transform=ax_lam.transAxes)
    ax_lam.set(xlabel="env steps", ylabel="λ", title="Lagrange multipliers")
    if c.multipliers and len(c.multipliers) <= 11:
        ax_lam.legend(fontsize=6, ncol=2)
    for ax in (ax_acc, ax_use, ax_lam):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path, plt)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m agents.curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", help="run directory")
    parser.add_argument("--out", default=None, help="PNG file (default <run>/curves.png)")
    parser.add_argument(
        "--references",
        default="",
        help="baseline policy specs to draw on the validation seeds (e.g. lyapunov,max)",
    )
    args = parser.parse_args(argv)
    run = RunDir(args.run)
    c = curves(read_evaluations(run.evaluations))
    refs: dict[str, float] = {}
    if args.references:
        from agents.demo import validation_references
        from agents.envs import episode_seeds
        from baselines.registry import split_specs

        saved = run.read_args()
        seeds = episode_seeds(int(saved["eval_seed"]), int(saved["eval_episodes"]))
        refs = {
            name: acc
            for name, (_, acc) in validation_references(
                run.env_config(), split_specs(args.references), seeds
            ).items()
        }
    out = plot_curves(c, Path(args.out or run.path / "curves.png"), refs, title=run.path.name)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
