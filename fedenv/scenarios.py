"""Registered scenarios: presets with a few keys changed where the decisions matter.

Each scenario is a partial override of a preset (as the YAML files of ``configs/scenarios/``,
which hold the same mappings for the command lines: tests/test_scenarios.py keeps them equal)
and has its own Gymnasium id, named like the preset ids of :data:`fedenv.ENV_IDS`::

    import gymnasium as gym
    import fedenv

    env = gym.make("FedLoRAWireless-TightEnergy-v0")  # fedenv.SCENARIO_IDS["tight_energy"]
    env = gym.make("FedLoRAWireless-LargeCell-v0", num_rounds=20)  # keyword overrides apply on top
    envs = gym.make_vec("FedLoRAWireless-DenseCell-v0", num_envs=8,
    vectorization_mode="vector_entry_point")

They are defined here, in the installed package (``configs/`` is not installed). A scenario id
passes its override as ``config``; keyword overrides apply on top of it, while a ``config=``
given to ``gym.make`` replaces it (pass ``scenario_config(name, ...)`` to start from it).
What makes each hard: :data:`SCENARIOS` and docs/presets.md.
"""

from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass
from typing import Any

from fedenv.config import PRESETS, ConfigError, EnvConfig, names_a_file, resolve_config

__all__ = ["SCENARIOS", "SCENARIO_IDS", "Scenario", "named_config", "scenario_config"]


@dataclass(frozen=True)
class Scenario:
    """A registered scenario."""

    name: str
    """Its name, also the stem of its ``configs/scenarios/<name>.yaml``."""
    env_id: str
    """Its Gymnasium id."""
    overrides: dict[str, Any]
    """The partial override: ``preset`` plus the changed keys (copied on every use)."""
    hard: str
    """What makes the decisions matter in it (one line)."""

    def mapping(self) -> dict[str, Any]:
        """A fresh copy of the override (an env config mapping)."""
        return copy.deepcopy(self.overrides)


_SCENARIOS = (
    Scenario(
        "tight_energy",
        "FedLoRAWireless-TightEnergy-v0",
        {"preset": "switching", "budgets": {"energy_budget_j": 0.0625}},
        "half the default energy budget (0.0625 J): the all-max policy's worst device spends 8 x "
        "it, and the rank and power choices decide the accuracy reached within it",
    ),
    Scenario(
        "large_cell",
        "FedLoRAWireless-LargeCell-v0",
        {"preset": "switching", "channel": {"cell_radius_m": 1000.0, "shadowing_std_db": 8.0}},
        "a 1 km cell with 8 dB shadowing: one cell-edge upload costs up to 14 rounds of a "
        "device's budget, so who uploads when decides",
    ),
    Scenario(
        "dense_cell",
        "FedLoRAWireless-DenseCell-v0",
        {
            "preset": "switching",
            "devices": {"num_devices": 50},
            "channel": {"cell_radius_m": 250.0},
        },
        "50 devices share the band: the bandwidth split and who trains decide who meets the "
        "deadline",
    ),
    Scenario(
        "mobile_shadowed",
        "FedLoRAWireless-MobileShadowed-v0",
        {
            "preset": "switching",
            "channel": {
                "mobility_speed_m_per_s": 1.5,
                "shadowing_std_db": 8.0,
                "fading_correlation": 0.3,
            },
        },
        "moving devices, shadowing and fast fading: the channel seen now predicts the next "
        "rounds less",
    ),
    Scenario(
        "soft_tight_latency",
        "FedLoRAWireless-SoftTightLatency-v0",
        {"preset": "soft", "budgets": {"latency_budget_s": 2.5}},
        "soft with a 2.5 s latency budget, just above the slowest devices' compute time: the "
        "sparsification ratio and the band split trade accuracy against the round latency",
    ),
    Scenario(
        "split_tight_energy",
        "FedLoRAWireless-SplitTightEnergy-v0",
        {"preset": "split", "budgets": {"energy_budget_j": 0.0625}},
        "split with half the default energy budget (0.0625 J): scheduling every device spends "
        "12 x it on the worst device, so who trains each round decides",
    ),
)

#: The registered scenarios by name.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in _SCENARIOS}
#: The registered id of each scenario.
SCENARIO_IDS: dict[str, str] = {s.name: s.env_id for s in _SCENARIOS}


def scenario_config(name: str, **overrides: Any) -> EnvConfig:
    """The resolved config of a scenario, with keyword overrides on top (as ``gym.make`` takes
    them).

    Raises:
        KeyError: an unknown scenario (the message lists them).
    """
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; the scenarios are {', '.join(SCENARIOS)}")
    return resolve_config(SCENARIOS[name].mapping(), **overrides)


def named_config(
    name: str | os.PathLike[str] | EnvConfig | None = None, **overrides: Any
) -> EnvConfig:
    """The config that a command line's ``--config`` names: a preset (``switching``), a
    registered scenario (``tight_energy``) or a YAML file, with keyword overrides on top.

    Raises:
        ConfigError: a name that is neither a preset, a scenario nor a YAML path (the message
            lists both and the closest name), or any error of :func:`resolve_config`.
        FileNotFoundError: the YAML file does not exist.
    """
    if not isinstance(name, str):
        return resolve_config(name, **overrides)
    if name in SCENARIOS:
        return scenario_config(name, **overrides)
    if not names_a_file(name) and name not in PRESETS:
        close = difflib.get_close_matches(name, [*PRESETS, *SCENARIOS], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown preset or scenario {name!r}.{hint} Presets: {', '.join(PRESETS)}; "
            f"scenarios: {', '.join(SCENARIOS)}; or the path of a YAML file."
        )
    return resolve_config(name, **overrides)
