"""Accuracy against energy: the Lyapunov V sweep and learned agents per budget, on common seeds.

    python -m baselines.pareto --preset switching --seeds 1000-1019 \\
        --V 0.01,0.03,0.1,0.3,1,3 --agents ppo:runs/lag_e0.125 ppo:runs/lag_e0.25 ppo:runs/lag_e0.5
        \\
        --out results/pareto_switching

Each point is one policy on the same seeds (the same channel traces and data partitions,
:mod:`baselines.evaluation`): the Lyapunov policy for every V of ``--V`` on the preset, and every
learned agent of ``--agents`` (``<algo>:<run dir>[@best|@final]``, one run per energy budget or
energy weight) on the env config it was trained with (its ``env_config.yaml``: the preset with
its own budget or weight; other differences are warned about). ``--budget-scales 0.8,0.9,1``
runs the V sweep under each multiple of the preset's energy budget too (the Lyapunov policy's
budget guard then keeps the lower budget): the Lyapunov policy's own front over V *and* budget,
the reference for agents trained at lowered budgets. Written to ``--out``:

* ``pareto.csv`` / ``pareto.md``: per point the method, its parameter, the energy budget, and
  the mean and 95% confidence interval (Student t over episodes) of the final accuracy, energy
  per device-round, devices within 1.05 x budget, max device energy / budget and return, and
  whether it is on the front (no other point at least as accurate with at most its energy, on
  the means), and the most accurate learned agent that dominates it; ``pareto.md`` ends with
  how many points of the V sweep the agents dominate, at the preset's budget and among those
  that spend at least as much as the cheapest agent;
* ``pareto.png``: final accuracy against energy per device-round with both intervals (one
  Lyapunov line per budget);
* ``config.yaml``: the preset's resolved config.

``--preset`` takes a preset (switching, split, soft, unified), a registered scenario
(``tight_energy``, ...; :mod:`fedenv.scenarios`) or a YAML file.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baselines.compare import DEFAULT_SWEEP, _parse_sweep, _pyplot, _save, run_sweep
from baselines.evaluation import evaluate, mean_ci
from baselines.registry import make_policy, pruned_inner
from fedenv.config import EnvConfig
from fedenv.scenarios import named_config

__all__ = [
    "METRICS",
    "agent_point",
    "dominance_summary",
    "main",
    "mark_dominated_by_agents",
    "mark_front",
    "parse_scales",
    "parse_seeds",
    "plot_pareto",
    "point_label",
    "run_pareto",
    "scaled_budget",
    "write_table",
]

#: (key, column title, format) of every point.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("final_accuracy", "final accuracy", ".4f"),
    ("energy_j", "energy / device / round (J)", ".4f"),
    ("devices_within_budget", "devices within budget", ".3f"),
    ("max_budget_use", "max device energy / budget", ".3f"),
    ("latency_budget_use", "latency / budget", ".3f"),
    ("episode_return", "episode return", ".2f"),
)


def parse_seeds(text: str) -> list[int]:
    """``1000-1019`` (inclusive) or ``1000,1005,1010``."""
    try:
        if "-" in text.strip().lstrip("-"):
            first, last = (int(x) for x in text.split("-", 1))
            if last < first:
                raise ValueError(f"empty range {text!r}")
            return list(range(first, last + 1))
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(
            "--seeds: expected FIRST-LAST or a comma-separated list of integers, got "
            f"{text!r} ({exc})"
        ) from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds: expected integers >= 0, got {text!r}")
    return seeds


def parse_scales(text: str) -> list[float]:
    """``0.8,0.9,1``: budget multiples, each a finite number > 0."""
    try:
        scales = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        scales = []
    if not scales or not all(math.isfinite(x) and x > 0.0 for x in scales):
        raise ValueError(
            f"--budget-scales: expected a comma-separated list of numbers > 0, e.g. 0.8,0.9,1, "
            f"got {text!r}"
        )
    return scales


def _run_dir(spec: str) -> Path:
    """The run directory of an agent spec: ``<algo>:<run dir>[@best|@final]``, or the run that
    a model file was saved in (``model.zip``, ``best/model.zip``,
    ``checkpoints/ckpt_<steps>_steps.zip``: the nearest folder above it with an
    ``env_config.yaml``); ``prune:<spec>``'s is ``<spec>``'s."""
    while (inner := pruned_inner(spec)) is not None:
        spec = inner
    _, _, rest = spec.partition(":")
    path = Path(rest.rsplit("@", 1)[0] if "@" in Path(rest).name else rest)
    if path.is_dir() or path.suffix != ".zip":
        return path
    return next(
        (d for d in (path.parent, path.parent.parent) if (d / "env_config.yaml").is_file()),
        path.parent,
    )


def agent_config(spec: str, base: EnvConfig) -> EnvConfig:
    """The env config a run was trained with (its ``env_config.yaml``; the preset's if it has none).

    A config that differs from the preset in more than its budgets and reward is used, with a
    warning: the point then answers another problem.
    """
    path = _run_dir(spec) / "env_config.yaml"
    if not path.is_file():
        return base
    config = EnvConfig.from_yaml(path)
    if config.replace(budgets=base.budgets.to_dict(), reward=base.reward.to_dict()) != base:
        warnings.warn(
            f"{spec}: trained on an env config that differs from the preset's in more than "
            f"the budgets and the reward ({path})",
            UserWarning,
            stacklevel=2,
        )
    return config


def _point(
    method: str, parameter: str, value: Any, config: EnvConfig, stats: dict[str, Any]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "method": method,
        "parameter": parameter,
        "value": value,
        "energy_budget_j": config.budgets.energy_budget_j,
    }
    for key, _, _ in METRICS:
        row[key], row[f"{key}_ci95"] = stats[key], stats[f"{key}_ci95"]
    return row


def agent_point(
    spec: str, base: EnvConfig, seeds: list[int], budget_tolerance: float = 0.05
) -> dict[str, Any]:
    """One learned agent on the seeds, in the env config it was trained with."""
    config = agent_config(spec, base)
    ev = evaluate(make_policy(spec, config), config, seeds, budget_tolerance=budget_tolerance)
    stats: dict[str, Any] = {}
    for key, _, _ in METRICS:
        stats[key], stats[f"{key}_ci95"] = mean_ci(ev.metric(key))
    method, _, run = spec.rpartition(":")  # (prune:ppo, run dir) for prune:ppo:<run dir>
    return _point(method, "run", run, config, stats)


def scaled_budget(config: EnvConfig, scale: float) -> EnvConfig:
    """The config with its energy budget multiplied by ``scale`` (the same config for 1)."""
    if scale == 1.0:
        return config
    budget = config.budgets.energy_budget_j
    if budget is None:
        raise ValueError(
            "--budget-scales: the preset has no energy budget to scale; leave the option out"
        )
    return config.replace(budgets={**config.budgets.to_dict(), "energy_budget_j": budget * scale})


def run_pareto(
    config: EnvConfig,
    v_values: Sequence[float],
    agents: Sequence[str],
    seeds: list[int],
    *,
    budget_scales: Sequence[float] = (1.0,),
    budget_tolerance: float = 0.05,
) -> list[dict[str, Any]]:
    """Every point: the Lyapunov policy per V under each scaled energy budget (its budget guard
    then keeps the scaled budget), then every agent, each marked by :func:`mark_front`."""
    rows = []
    for scaled in [scaled_budget(config, scale) for scale in budget_scales]:  # checked first
        rows += [
            _point("lyapunov", "V", r["V"], scaled, r)
            for r in run_sweep(scaled, v_values, seeds, budget_tolerance=budget_tolerance)
        ]
    rows += [agent_point(spec, config, seeds, budget_tolerance) for spec in agents]
    return mark_dominated_by_agents(mark_front(rows))


def mark_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set each row's ``on_front``: no other row is at least as accurate with at most its energy,
    and better in one of them (on the means)."""
    for r in rows:
        r["on_front"] = not any(_dominates(q, r) for q in rows)
    return rows


def mark_dominated_by_agents(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set each Lyapunov row's ``dominated_by``: the label (:func:`point_label`) of the most
    accurate learned agent that dominates it (on the means), else ``""`` (``""`` for agents)."""
    agents = [q for q in rows if q["method"] != "lyapunov"]
    for r in rows:
        by = [q for q in agents if _dominates(q, r)] if r["method"] == "lyapunov" else []
        r["dominated_by"] = point_label(max(by, key=lambda q: q["final_accuracy"])) if by else ""
    return rows


def dominance_summary(rows: list[dict[str, Any]], budget: float | None) -> str:
    """How many Lyapunov points the agents dominate: those at the preset's energy ``budget``
    (the V-front of the preset), and those that spend at least as much as the cheapest agent
    (the V sweep under every scaled budget: below that energy no agent was measured). Needs
    :func:`mark_dominated_by_agents`; empty without agents."""
    agents = [r for r in rows if r["method"] != "lyapunov"]
    sweep = [r for r in rows if r["method"] == "lyapunov"]
    if not agents or not sweep:
        return ""
    cheapest = min(r["energy_j"] for r in agents)

    def count(points: list[dict[str, Any]]) -> str:
        return f"{sum(bool(r['dominated_by']) for r in points)} of {len(points)}"

    at_budget = [r for r in sweep if r["energy_budget_j"] == budget]
    above = [r for r in sweep if r["energy_j"] >= cheapest]
    parts = []
    if at_budget:
        shown = "none" if budget is None else f"{budget:g} J"
        parts.append(f"of the V sweep at the preset's energy budget ({shown}), {count(at_budget)}")
    parts.append(
        f"of the Lyapunov points that spend at least as much as the cheapest agent "
        f"({cheapest:.4f} J per device-round), {count(above)}"
    )
    return "Dominated by an agent (on the means): " + "; ".join(parts) + "."


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether point ``a`` is at least as accurate as ``b`` with at most its energy, and better
    in one of them (on the means)."""
    acc_a, acc_b, e_a, e_b = a["final_accuracy"], b["final_accuracy"], a["energy_j"], b["energy_j"]
    return acc_a >= acc_b and e_a <= e_b and (acc_a > acc_b or e_a < e_b)


def write_table(
    rows: list[dict[str, Any]], out: Path, command: str = "", budget: float | None = None
) -> tuple[Path, Path]:
    """pareto.csv and pareto.md (with :func:`dominance_summary` for the preset's ``budget``)."""
    out.mkdir(parents=True, exist_ok=True)
    fields = [
        "method",
        "parameter",
        "value",
        "energy_budget_j",
        *(k for key, _, _ in METRICS for k in (key, f"{key}_ci95")),
        "on_front",
        "dominated_by",
    ]
    with (out / "pareto.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    keys = [m for m in METRICS if any(math.isfinite(r[m[0]]) for r in rows)]
    lines = [
        "| method | parameter | energy budget (J) | "
        + " | ".join(t for _, t, _ in keys)
        + " | on the front | dominated by an agent |",
        "|---|---|---|" + "---|" * (len(keys) + 2),
    ]
    for r in rows:
        shown = "none" if r["energy_budget_j"] is None else f"{r['energy_budget_j']:g}"
        value = f"{r['value']:g}" if isinstance(r["value"], float) else str(r["value"])
        lines.append(
            f"| {r['method']} | {r['parameter']}={value} | {shown} | "
            + " | ".join(f"{r[k]:{f}} ± {r[k + '_ci95']:{f}}" for k, _, f in keys)
            + f" | {'yes' if r['on_front'] else 'no'} | {r['dominated_by'] or '–'} |"
        )
    header = (
        "Final accuracy against energy per device-round, mean ± 95% CI over the same seeds. "
        "On the front: no other point is at least as accurate with at most its energy (on the "
        "means); dominated by an agent: the most accurate learned agent that is.\n\n"
    )
    summary = dominance_summary(rows, budget)
    (out / "pareto.md").write_text(
        header
        + (f"`{command}`\n\n" if command else "")
        + "\n".join(lines)
        + "\n"
        + (f"\n{summary}\n" if summary else "")
    )
    return out / "pareto.csv", out / "pareto.md"


def point_label(row: dict[str, Any]) -> str:
    """A point's label in the plot: ``V=10`` for the Lyapunov policy, the run's name and the
    energy budget it was trained for (``to_tight, Ē=0.0625``) for an agent, so that agents
    trained at the same budget are told apart."""
    if row["method"] == "lyapunov":
        return f"V={row['value']:g}"
    budget = row["energy_budget_j"]
    name = _run_dir(f"{row['method']}:{row['value']}").name  # the spec agent_point split
    if pruned_inner(str(row["method"])) is not None:
        name = f"prune:{name}"
    return f"{name}, Ē={'none' if budget is None else f'{budget:g}'}"


def plot_pareto(rows: list[dict[str, Any]], config: EnvConfig, out: Path) -> Path:
    """pareto.png: final accuracy against energy per device-round, 95% CIs on both.

    One line of Lyapunov points per energy budget swept, in V order, coloured by the budget
    (darker is larger), with each point's V written beside it on the line of the preset's
    budget (on every line when there is one); the agents as stars (then other markers) in the
    colour of the budget they were trained for where there are several budgets, in colours of
    their own otherwise, named in the legend.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    preset_budget = config.budgets.energy_budget_j
    lyapunov = [r for r in rows if r["method"] == "lyapunov"]
    agents = [r for r in rows if r["method"] != "lyapunov"]
    budgets = sorted({r["energy_budget_j"] for r in rows if r["energy_budget_j"] is not None})
    cmap = plt.get_cmap("viridis")

    def colour(budget: float | None) -> Any:
        if budget is None or len(budgets) < 2:
            return cmap(0.35)
        return cmap(0.85 * (1.0 - budgets.index(budget) / (len(budgets) - 1)))

    def errorbar(pts: list[dict[str, Any]], **style: Any) -> None:
        ax.errorbar(
            [r["energy_j"] for r in pts],
            [r["final_accuracy"] for r in pts],
            xerr=[r["energy_j_ci95"] for r in pts],
            yerr=[r["final_accuracy_ci95"] for r in pts],
            capsize=2,
            elinewidth=0.8,
            **style,
        )

    lines = sorted({r["energy_budget_j"] for r in lyapunov}, key=lambda b: (b is None, b or 0.0))
    for budget in lines:
        pts = sorted(
            (r for r in lyapunov if r["energy_budget_j"] == budget), key=lambda r: float(r["value"])
        )
        label = "Lyapunov, V sweep" + ("" if budget is None else f", Ē={budget:g}")
        errorbar(pts, marker="o", markersize=4, linestyle="-", color=colour(budget), label=label)
        if len(lines) == 1 or budget == preset_budget:
            for r in pts:
                ax.annotate(
                    point_label(r),
                    (r["energy_j"], r["final_accuracy"]),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
    # an agent takes the colour of its budget's line where there are several lines, else one of
    # its own; agents that share a colour are told apart by their markers
    contrast = iter(["tab:orange", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"])
    shared: dict[Any, int] = {}
    for r in agents:
        budget = r["energy_budget_j"]
        key = budget if len(lines) > 1 and budget in lines else None
        own = colour(budget) if key is not None else next(contrast, "tab:gray")
        n = shared[key] = shared.get(key, -1) + 1
        errorbar(
            [r],
            marker="*PXDv^"[n % 6],
            markersize=13 if n == 0 else 9,
            markeredgecolor="k",
            linestyle="none",
            color=own,
            label=point_label(r),
        )
    if preset_budget is not None:
        ax.axvline(
            preset_budget,
            color="k",
            linestyle="--",
            linewidth=1,
            label="the preset's energy budget",
        )
    ax.set(
        xlabel="energy per device per round (J)",
        ylabel="final accuracy",
        title="accuracy against energy (mean, 95% CI)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "pareto.png", plt)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset",
        default="switching",
        help="preset, registered scenario (fedenv.scenarios) or YAML file",
    )
    parser.add_argument(
        "--seeds",
        default="1000-1019",
        help="episode seeds: FIRST-LAST or a comma-separated list (default 1000-1019)",
    )
    parser.add_argument(
        "--V",
        dest="v",
        default=",".join(f"{v:g}" for v in DEFAULT_SWEEP),
        help="the Lyapunov V values (comma-separated)",
    )
    parser.add_argument(
        "--agents",
        nargs="*",
        default=[],
        help="learned agents, one run per budget: <algo>:<run dir>[@best|@final]",
    )
    parser.add_argument(
        "--budget-scales",
        default="1",
        help="the V sweep under each of these multiples of the preset's energy budget "
        "(comma-separated, e.g. 0.8,0.9,1; default 1): the Lyapunov policy's own "
        "accuracy-energy front over V and budget",
    )
    parser.add_argument(
        "--budget-tolerance",
        type=float,
        default=0.05,
        help="a device is within budget if its average energy <= (1 + tol) x budget",
    )
    parser.add_argument(
        "--out", default=None, help="output directory (default results/pareto_<preset>)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip pareto.png")
    args = parser.parse_args(argv)
    config = named_config(args.preset)
    seeds = parse_seeds(args.seeds)
    v_values = _parse_sweep(args.v)
    budget_scales = parse_scales(args.budget_scales)
    out = Path(args.out or f"results/pareto_{Path(args.preset).stem}")
    out.mkdir(parents=True, exist_ok=True)
    config.to_yaml(out / "config.yaml")
    rows = run_pareto(
        config,
        v_values,
        args.agents,
        seeds,
        budget_scales=budget_scales,
        budget_tolerance=args.budget_tolerance,
    )
    command = "python -m baselines.pareto " + " ".join(sys.argv[1:] if argv is None else argv)
    csv_path, md_path = write_table(rows, out, command, config.budgets.energy_budget_j)
    print((out / "pareto.md").read_text())
    print(f"wrote {csv_path}, {md_path}")
    if not args.no_plots:
        print(f"plot: {plot_pareto(rows, config, out)}")
    return rows


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
