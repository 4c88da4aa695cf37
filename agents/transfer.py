"""Zero-shot transfer: a per-device network trained at one K, evaluated at other K.

    python -m agents.transfer --run runs/lag_k10 --devices 20 50 --seeds 1000-1019

The per-device network (``--policy per_device``, :mod:`agents.policies`) shares one actor and
one critic across the devices, so a model trained with K devices acts for any K without
retraining (:func:`agents.evaluate.load_policy` resizes it and its normaliser). This command
scores it on the papers' objective at the training K and at every ``--devices`` K, in the run's
own env config with only ``devices.num_devices`` changed (the budgets per device unchanged):
the same evaluation as the suite (:func:`baselines.suite.objective_rows`), i.e. the Lyapunov
policy with V tuned at that K on the validation seeds, ``max`` (``--policies``) and the agent on
the test seeds, with final accuracy, budget compliance (every device within 1.05 x its budget)
and the paired accuracy difference from the Lyapunov policy.

Written to ``--out`` (default ``results/transfer_<run name>``): ``transfer.csv``,
``tuning.csv`` and ``transfer.md`` (the tables, the command, the date).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.evaluate import load_policy, parse_spec
from baselines.pareto import parse_seeds
from baselines.registry import split_specs
from baselines.suite import (
    DEFAULT_V_GRID,
    add_objective_arguments,
    command_line,
    objective_rows,
    parse_v_values,
    write_report,
)

__all__ = ["main", "transfer_rows"]


def transfer_rows(
    spec: str,
    devices: Sequence[int],
    seeds: list[int],
    val_seeds: list[int],
    *,
    v_values: Sequence[float] = DEFAULT_V_GRID,
    policies: Sequence[str] = ("max",),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The agent of ``spec`` (``<algo>:<run dir>[@which]``) and the references at its training
    K and at every K of ``devices`` (rows and V tuning as :func:`baselines.suite.objective_rows`,
    ``setting`` = ``K=<k>``, the training K marked ``(trained)``).

    Raises:
        ValueError: a spec without a run directory (its env config is needed) or a K < 1.
    """
    files = parse_spec(spec)
    if files.run is None:
        raise ValueError(f"{spec}: transfer needs a run directory (its env config)")
    trained = files.run.env_config()
    k0 = trained.devices.num_devices
    bad = [k for k in devices if k < 1]
    if bad:
        raise ValueError(f"--devices must be >= 1, got {bad}")
    configs = {k: trained.replace(devices={"num_devices": int(k)}) for k in [k0, *devices]}
    rows: list[dict[str, Any]] = []
    tuning: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        # evaluating at another K than trained is the point: not worth a warning
        warnings.filterwarnings("ignore", message=".*trained on a different env config")
        for config in configs.values():
            load_policy(spec, config)  # an MLP fails here, before any evaluation
        for k, config in configs.items():
            label = f"K={k}" + (" (trained)" if k == k0 else "")
            r, t = objective_rows(
                label, config, seeds, val_seeds, v_values=v_values, heuristics=policies,
                agents=[spec],
            )  # fmt: skip
            rows += r
            tuning += t
    return rows, tuning


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m agents.transfer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run", required=True, help="run directory, optionally with @best/@final/@latest"
    )
    parser.add_argument(
        "--algo", default="ppo", help="the run's algorithm (ppo, sac, recurrentppo)"
    )
    parser.add_argument(
        "--devices", type=int, nargs="+", default=[20, 50], help="the K to evaluate at"
    )
    add_objective_arguments(parser, "max")  # --seeds, --val-seeds, --V, --policies
    parser.add_argument("--out", default=None, help="output directory")
    args = parser.parse_args(argv)
    spec = f"{args.algo}:{args.run}"
    try:
        rows, tuning = transfer_rows(
            spec,
            args.devices,
            parse_seeds(args.seeds),
            parse_seeds(args.val_seeds),
            v_values=parse_v_values(args.v),
            policies=split_specs(args.policies),
        )
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    name = Path(args.run.rsplit("@", 1)[0]).resolve().name
    out = Path(args.out or f"results/transfer_{name}")
    text = write_report(
        rows,
        tuning,
        out,
        "transfer",
        command=command_line("python -m agents.transfer", argv),
        notes=f"Zero-shot transfer of {spec}. Test seeds {args.seeds}; V tuned at each K on the "
        f"validation seeds {args.val_seeds}.",
        setting="devices",
    )
    print(text)
    print(f"wrote transfer.csv, tuning.csv and transfer.md to {out}")
    return rows


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
