"""``python -m fedenv.bench <name>``: the project's benchmark command, kept here as its documented
name.

The benchmarks themselves live in the top-level ``benchmarks`` package (:mod:`benchmarks.cli`,
``python -m benchmarks`` is the same command), because they time every layer: the env, the
baselines' Lyapunov policy, the agents' training envs, RLlib. ``fedenv`` imports neither
``baselines`` nor ``agents`` (nor ``benchmarks``), so this module finds the command through the
entry point ``bench`` of the group ``fedenv.commands`` (pyproject.toml) of the installed package.
See docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

__all__ = ["COMMANDS", "main"]

#: The entry-point group of commands that ``fedenv`` exposes but implements in a higher layer.
COMMANDS = "fedenv.commands"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark command (``benchmarks.cli.main``) with ``argv`` (default: the command
    line)."""
    found = entry_points(group=COMMANDS, name="bench")
    if not found:
        raise SystemExit(
            "python -m fedenv.bench: the benchmark command is the entry point 'bench' of the group "
            f"{COMMANDS!r}, which this fedenv install does not have; reinstall from the "
            "source checkout "
            "(pip install -e .) or run python -m benchmarks there"
        )
    command = next(iter(found)).load()
    command(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
