"""How much final accuracy is there to gain over the tuned Lyapunov policy within the budget?

    python -m baselines.headroom --docs docs/suite.md
    python -m baselines.headroom --scenarios tight_energy,split_tight_energy --out results/headroom

A learned agent is worth publishing against the Lyapunov policy if it ends *strictly* more
accurate while keeping every budget (docs/suite.md). This command measures how much room a
policy has to do so. For the default preset and every scenario
(``--scenarios`` picks presets and scenarios of :data:`fedenv.scenarios.SCENARIOS`; ``all``:
every scenario) it tunes the Lyapunov policy's V on the validation seeds as the suite does
(:func:`baselines.suite.tuned_v`), then plays on the test seeds, paired with it:

* **V schedules** (:class:`ScheduledV`): the same drift-plus-penalty solve with V moving
  geometrically over the episode, from V*/10 to 10 V*, from V*/100 to 100 V* (learning weighs
  more in the last rounds, which decide the final accuracy) and from 10 V* to V*/10;
* **fixed energy prices** (:class:`PricedEnergy`, scenarios with an energy budget): the round's
  problem with a constant price per joule in place of the virtual queues, under the same budget
  guard; price 0 trains for accuracy alone until a device's budget runs out;
* ``max``, every device at full effort: the accuracy a policy reaches with no budget.

Each variant plans over the episode differently from the queues (which only price what was
already overspent), and each keeps every budget (the guard). The best variant's paired gain on
the test seeds is an *optimistic* estimate of the headroom, since it is picked on those seeds
among several; a gain whose confidence interval holds zero even then says that the in-budget
accuracy is flat near the Lyapunov policy's operating point, and that the paired 95% interval
over 20 seeds cannot resolve a policy that beats it. The *honest* estimate is the variant
picked on the validation seeds by the suite's rule (the most accurate in budget,
:func:`baselines.objective.constrained_score`), and only if it scores above the tuned Lyapunov
policy there: its row is marked "picked on validation" (``picked`` in the CSV), and when no
variant scores above the Lyapunov policy on validation, the Lyapunov policy's row is.

Written to ``--out`` (default ``results/headroom``): ``headroom.csv``, ``tuning.csv``,
``validation.csv`` (the variants on the validation seeds) and ``headroom.md`` (the command,
date and commit, the table, the tuning); ``--docs FILE`` also
replaces the part of FILE between ``<!-- headroom:begin -->`` and ``<!-- headroom:end -->``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from baselines.lyapunov import LyapunovPolicy, check_tradeoff
from baselines.objective import BUDGET_TOLERANCE, constrained_score
from baselines.pareto import parse_seeds
from baselines.registry import make_policy, split_specs
from baselines.suite import (
    DEFAULT_V_GRID,
    add_objective_arguments,
    command_line,
    paired_rows,
    parse_scenarios,
    parse_v_values,
    replace_block,
    tuned_v,
    write_csv,
    write_report,
)
from fedenv.config import EnvConfig
from fedenv.scenarios import SCENARIOS, named_config

__all__ = [
    "BEGIN",
    "DEFAULT_SETTINGS",
    "END",
    "PICKED",
    "PRICES",
    "SCHEDULES",
    "PricedEnergy",
    "ScheduledV",
    "headroom_rows",
    "main",
]

#: (start, end) of the V schedules, as factors of the tuned V.
SCHEDULES: tuple[tuple[float, float], ...] = ((0.1, 10.0), (0.01, 100.0), (10.0, 0.1))
#: The fixed energy prices (gap units per J, at V = 1).
PRICES: tuple[float, ...] = (0.0, 0.003, 0.01, 0.03)
#: What the command probes by default: the default preset, then every registered scenario.
DEFAULT_SETTINGS: tuple[str, ...] = ("switching", *SCENARIOS)
#: The markers of the generated part of a docs page.
BEGIN, END = "<!-- headroom:begin -->", "<!-- headroom:end -->"
#: What marks the policy picked on the validation seeds in the table.
PICKED = " (picked on validation)"


class ScheduledV(LyapunovPolicy):
    """The Lyapunov policy with V moving geometrically from ``v_start`` in the first round to
    ``v_end`` in the last (round t of T: V_t = v_start (v_end / v_start)^(t / (T - 1))).

    Other keyword arguments are :class:`LyapunovPolicy`'s (the budget guard stays on).
    """

    def __init__(self, config: EnvConfig, v_start: float, v_end: float, **kwargs: Any) -> None:
        super().__init__(config, v_start, **kwargs)
        self.v_start, self.v_end = check_tradeoff(v_start), check_tradeoff(v_end)
        self.name = f"lyapunov(V={self.v_start:g}->{self.v_end:g})"

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        progress = int(info["round"]) / max(self.config.num_rounds - 1, 1)
        self.tradeoff_v = self.v_start * (self.v_end / self.v_start) ** progress
        return super().act(obs, info)


class PricedEnergy(LyapunovPolicy):
    """The Lyapunov policy's round problem with a fixed energy price in place of its queues:
    minimise Phi(a) + price * sum_k E_k(a) (V = 1) every round, under the same budget guard.

    A static Lagrangian relaxation of the long-term energy budget: the queues price only what a
    device has overspent so far, the price every joule alike. Needs an energy budget.

    Raises:
        ValueError: a negative or non-finite price, or a config without an energy budget.
    """

    def __init__(self, config: EnvConfig, price: float, **kwargs: Any) -> None:
        if not config.uses_energy_queue:
            raise ValueError(
                "PricedEnergy prices the energy budget, and this config has none "
                "(budgets.energy_budget_j is null)"
            )
        if isinstance(price, bool) or not (isinstance(price, (int, float)) and price >= 0):
            raise ValueError(f"price must be a number >= 0 (gap per J), got {price!r}")
        if not math.isfinite(price):
            raise ValueError(f"price must be finite, got {price!r}")
        super().__init__(config, 1.0, **kwargs)
        self.price = float(price)
        self.name = f"priced(c={self.price:g})"

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        queues = np.asarray(info["energy_backlog"], dtype=np.float64)
        return super().act(obs, {**info, "energy_backlog": np.full_like(queues, self.price)})


def variants(config: EnvConfig, v: float) -> list[LyapunovPolicy]:
    """The V schedules around ``v`` and (with an energy budget) the fixed prices."""
    out: list[LyapunovPolicy] = [ScheduledV(config, a * v, b * v) for a, b in SCHEDULES]
    if config.uses_energy_queue:
        out += [PricedEnergy(config, c) for c in PRICES]
    return out


def headroom_rows(
    label: str,
    config: EnvConfig,
    seeds: list[int],
    val_seeds: list[int],
    *,
    v_values: Sequence[float] = DEFAULT_V_GRID,
    references: Sequence[str] = ("max",),
    budget_tolerance: float = BUDGET_TOLERANCE,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """One config: the tuned Lyapunov policy, its variants and ``references`` on the test
    seeds, each with its paired final-accuracy difference from the tuned Lyapunov policy, and
    the pick on the validation seeds.

    Returns:
        (rows, tuning, validation): ``rows`` and ``tuning`` in the form of
        :func:`baselines.suite.objective_rows` (``kind`` is lyapunov, variant or reference;
        ``picked`` marks the policy picked on validation, also in its name); ``validation``:
        the tuned Lyapunov policy and its variants on the validation seeds (``score``:
        :func:`~baselines.objective.constrained_score`, ``picked``).
    """
    v, tuning = tuned_v(label, config, seeds, val_seeds, v_values, budget_tolerance)
    planners: list[tuple[str, Any]] = [
        ("lyapunov", LyapunovPolicy(config, v)),
        *(("variant", p) for p in variants(config, v)),
    ]
    validation = paired_rows(label, config, planners, val_seeds, budget_tolerance)
    for r in validation:
        r["score"] = constrained_score(r["final_accuracy"], r["compliance"], r["worst_budget_use"])
    # the first of the best: the tuned Lyapunov policy itself unless a variant scores above it
    picked = max(range(len(validation)), key=lambda i: validation[i]["score"])
    references_ = [("reference", make_policy(spec, config)) for spec in references]
    rows = paired_rows(label, config, [*planners, *references_], seeds, budget_tolerance)
    for table in (rows, validation):
        for i, r in enumerate(table):
            r["picked"] = i == picked
    rows[picked]["policy"] += PICKED
    return rows, tuning, validation


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m baselines.headroom",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated scenarios or presets; all = every scenario (default: the "
        f"default preset and every scenario, {', '.join(DEFAULT_SETTINGS)})",
    )
    add_objective_arguments(parser, "max")
    parser.add_argument("--out", default="results/headroom", help="output directory")
    parser.add_argument(
        "--docs", default=None, help="a Markdown page whose headroom block to replace"
    )
    args = parser.parse_args(argv)
    try:
        names = (
            list(DEFAULT_SETTINGS)
            if args.scenarios is None
            else parse_scenarios(args.scenarios, presets=True)
        )
        seeds, val_seeds = parse_seeds(args.seeds), parse_seeds(args.val_seeds)
        v_values = parse_v_values(args.v)
        if args.docs and not Path(args.docs).is_file():
            raise FileNotFoundError(f"--docs {args.docs}: no such file")
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    rows: list[dict[str, Any]] = []
    tuning: list[dict[str, Any]] = []
    validation: list[dict[str, Any]] = []
    for name in names:
        print(f"[headroom] {name} ...", file=sys.stderr, flush=True)
        r, t, val = headroom_rows(
            name,
            named_config(name),
            seeds,
            val_seeds,
            v_values=v_values,
            references=split_specs(args.policies),
        )
        rows += r
        tuning += t
        validation += val
    text = write_report(
        rows,
        tuning,
        Path(args.out),
        "headroom",
        command=command_line("python -m baselines.headroom", argv),
        notes=(
            f"Test seeds {args.seeds} (n = {len(seeds)}); V tuned on the validation seeds "
            f"{args.val_seeds}; the variants around the tuned V* and the fixed prices play the "
            "validation seeds and the test seeds. The one picked on the validation seeds by the "
            "same rule (or the tuned Lyapunov policy, if none scores above it there) is marked "
            "*picked on validation*: its Δ is the honest estimate of the headroom; the best Δ "
            "on the test seeds is an optimistic one."
        ),
    )
    write_csv(validation, Path(args.out) / "validation.csv")
    print(text)
    if args.docs:
        replace_block(Path(args.docs), text, BEGIN, END)
        print(f"updated {args.docs}")
    return rows


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
