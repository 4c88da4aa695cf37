"""The papers' objective: final accuracy with every budget kept, and the rule that ranks on it.

The three papers maximise the fine-tuned model's final accuracy subject to every device's
long-term energy budget (the round latency's for SOFT/TSFA). A policy's result on that problem,
over episodes on common seeds (:mod:`baselines.evaluation`):

* **final accuracy**: the episodes' mean, with a 95% confidence interval (Student t);
* **budget compliance**: the share of episodes in which every budget was kept, i.e. each
  device's average energy per round and the mean round latency at most (1 + 0.05) x their
  budgets (the per-episode ``in_budget`` of :mod:`baselines.evaluation`; 0.05 is
  :data:`BUDGET_TOLERANCE`, issue 18's compliance rule);
* **worst budget use**: the mean over episodes of the largest cost / budget
  (``worst_budget_use``), how far the policy overspends.

A setting (one held-out evaluation during training, one V of the Lyapunov policy) is **in
budget** when its compliance is at least :data:`MIN_COMPLIANCE` (0.95). :func:`constrained_score`
ranks settings: every one in budget above every one out of budget; in budget, by final
accuracy; out of budget (the fallback when none is in), by least overspend, the lowest worst
budget use. A config without any budget has no compliance (NaN): every setting is in budget.

The same rule picks the best model of a PPO-Lagrangian run on its validation seeds
(:class:`agents.callbacks.SelectionRule`) and tunes the Lyapunov policy's V per scenario on
validation seeds (:func:`baselines.suite.tune_v`), so the learned agent and the baseline it is
compared with are chosen alike, and never on the test seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from baselines.evaluation import Evaluation, mean_ci

__all__ = [
    "BUDGET_TOLERANCE",
    "CONSTRAINED_RULE",
    "MIN_COMPLIANCE",
    "constrained_score",
    "in_budget",
    "format_compliance",
    "format_mean_ci",
    "objective_summary",
    "objective_table",
    "paired_difference",
    "paired_summary",
]

#: A budget is kept when the cost is at most (1 + this) x the budget.
BUDGET_TOLERANCE = 0.05
#: A setting is in budget when at least this share of its episodes keeps every budget.
MIN_COMPLIANCE = 0.95
#: The rule of :func:`constrained_score`, in words (stored with the records it ranks).
CONSTRAINED_RULE = (
    "in budget (budget compliance >= {min_compliance:g}: every device's average energy and the "
    "mean latency <= {tolerance_factor:g} x budget in that share of the episodes) first, ranked "
    "by mean final accuracy; if none is in budget, the least overspend (lowest mean worst "
    "cost / budget)"
)

F = NDArray[np.float64]


def in_budget(compliance: float, min_compliance: float = MIN_COMPLIANCE) -> bool:
    """Whether a setting with this budget compliance is in budget (NaN, no budget: it is)."""
    return not math.isfinite(compliance) or compliance >= min_compliance


def constrained_score(
    final_accuracy: float,
    compliance: float,
    worst_budget_use: float,
    min_compliance: float = MIN_COMPLIANCE,
) -> float:
    """The score that ranks settings on the objective (higher is better; module docstring).

    In budget: the final accuracy (in [0, 1]). Out of budget: -1 - worst budget use (below -1,
    so below every setting in budget). An out-of-budget setting whose worst budget use is
    unknown (NaN) ranks last (-inf).
    """
    if in_budget(compliance, min_compliance):
        return float(final_accuracy) if math.isfinite(final_accuracy) else -math.inf
    return -1.0 - float(worst_budget_use) if math.isfinite(worst_budget_use) else -math.inf


def objective_summary(ev: Evaluation) -> dict[str, Any]:
    """A policy's result on the objective: final accuracy (mean, 95% CI), budget compliance,
    worst budget use (mean, 95% CI) and energy per device-round (mean, 95% CI)."""
    out: dict[str, Any] = {"policy": ev.policy, "episodes": len(ev.episodes)}
    for key in ("final_accuracy", "worst_budget_use", "energy_j"):
        out[key], out[f"{key}_ci95"] = mean_ci(ev.metric(key))
    kept = ev.metric("in_budget")
    out["compliance"] = float(kept.mean()) if np.isfinite(kept).all() and kept.size else math.nan
    return out


def paired_difference(
    a: Evaluation | Sequence[float] | F, b: Evaluation | Sequence[float] | F
) -> tuple[float, float]:
    """Mean and 95% CI half-width of the per-seed difference a - b of the final accuracy.

    Raises:
        ValueError: two evaluations on different seeds (the difference would not be paired).
    """
    if isinstance(a, Evaluation) and isinstance(b, Evaluation):
        if a.seeds != b.seeds:
            raise ValueError(
                f"a paired difference needs the same seeds: {a.policy} played "
                f"{a.seeds[:3]}..., {b.policy} {b.seeds[:3]}..."
            )
    x = a.metric("final_accuracy") if isinstance(a, Evaluation) else np.asarray(a, float)
    y = b.metric("final_accuracy") if isinstance(b, Evaluation) else np.asarray(b, float)
    if x.shape != y.shape:
        raise ValueError(f"a paired difference needs as many episodes: {x.size} vs {y.size}")
    return mean_ci(x - y)


def paired_summary(evaluations: Sequence[Evaluation], reference: int = 0) -> list[dict[str, Any]]:
    """One row per evaluation: :func:`objective_summary` and ``diff``, ``diff_ci95``, the paired
    final-accuracy difference from ``evaluations[reference]`` (NaN for that one itself). The
    evaluations must share their seeds."""
    rows = []
    for i, ev in enumerate(evaluations):
        row = objective_summary(ev)
        row["diff"], row["diff_ci95"] = (
            paired_difference(ev, evaluations[reference])
            if i != reference
            else (math.nan, math.nan)
        )
        rows.append(row)
    return rows


def format_mean_ci(mean: float, half: float, fmt: str, signed: bool = False) -> str:
    """``mean ± half`` in format ``fmt`` (``–`` for NaN)."""
    if not math.isfinite(mean):
        return "–"
    sign = "+" if signed else ""
    return f"{mean:{sign}{fmt}} ± {half:{fmt}}"


def format_compliance(x: float) -> str:
    """A budget compliance as a percentage (NaN: no budget)."""
    return "– (no budget)" if not math.isfinite(x) else f"{100 * x:.0f}%"


def objective_table(
    rows: Sequence[dict[str, Any]], setting: str = "scenario", reference: str = "Lyapunov"
) -> str:
    """Rows of :func:`paired_summary` (each with a ``setting``) as a Markdown table, one line per
    (setting, policy); ``reference`` names the policy the differences are paired with."""
    lines = [
        f"| {setting} | policy | final accuracy | budget compliance | worst cost / budget | "
        f"Δ accuracy vs {reference} (paired) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = (
            r["setting"],
            r["policy"],
            format_mean_ci(r["final_accuracy"], r["final_accuracy_ci95"], ".4f"),
            format_compliance(r["compliance"]),
            format_mean_ci(r["worst_budget_use"], r["worst_budget_use_ci95"], ".2f"),
            format_mean_ci(r["diff"], r["diff_ci95"], ".4f", signed=True),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
