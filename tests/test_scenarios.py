"""Registered scenarios (fedenv/scenarios.py): ids, their configs, the YAML copies, the env
contract."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env

import fedenv
from fedenv import FedLoRAWirelessEnv
from fedenv.config import ConfigError, EnvConfig, resolve_config
from fedenv.scenarios import SCENARIOS, named_config, scenario_config
from fedenv.vector import FedLoRAWirelessVectorEnv

ROOT = Path(__file__).resolve().parents[1]


def test_every_scenario_has_an_id_named_like_the_presets() -> None:
    assert fedenv.SCENARIO_IDS == {name: s.env_id for name, s in SCENARIOS.items()}
    assert not set(fedenv.SCENARIO_IDS.values()) & set(fedenv.ENV_IDS.values())
    for env_id in fedenv.SCENARIO_IDS.values():
        assert (
            env_id.startswith("FedLoRAWireless-")
            and env_id.endswith("-v0")
            and env_id in gym.registry
        )
    assert {
        "tight_energy",
        "large_cell",
        "dense_cell",
        "mobile_shadowed",
        "soft_tight_latency",
        "split_tight_energy",
    } <= set(SCENARIOS)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_id_config_and_yaml_copy_agree(name: str) -> None:
    scenario = SCENARIOS[name]
    path = ROOT / "configs" / "scenarios" / f"{name}.yaml"
    assert yaml.safe_load(path.read_text()) == scenario.overrides  # the command lines' copy
    expected = EnvConfig.from_yaml(path)
    assert scenario_config(name) == expected
    env = gym.make(scenario.env_id)
    assert env.unwrapped.config == expected
    # keyword overrides apply on top of the scenario; the registered mapping is never changed
    env = gym.make(scenario.env_id, num_rounds=3, reward={"mode": "accuracy"})
    assert env.unwrapped.config == expected.replace(num_rounds=3, reward={"mode": "accuracy"})
    assert scenario_config(name, num_rounds=3) == resolve_config(str(path), num_rounds=3)
    # a command line's --config may name the scenario or its YAML copy
    assert named_config(name, num_rounds=3) == named_config(str(path), num_rounds=3)
    assert named_config(name) == expected
    assert gym.spec(scenario.env_id).kwargs["config"] == scenario.overrides
    assert f"`{scenario.env_id}`" in (ROOT / "docs" / "presets.md").read_text()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenarios_pass_the_env_checker_and_run_batched(name: str) -> None:
    env = gym.make(SCENARIOS[name].env_id, num_rounds=3).unwrapped
    assert isinstance(env, FedLoRAWirelessEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    envs = gym.make_vec(
        SCENARIOS[name].env_id, num_envs=2, vectorization_mode="vector_entry_point", num_rounds=3
    )
    assert isinstance(envs, FedLoRAWirelessVectorEnv) and envs.config == env.config
    envs.reset(seed=0)
    _, reward, _, _, info = envs.step(envs.action_space.sample())
    assert np.isfinite(reward).all() and info["cost_per_device"].shape == (2, env.num_devices)


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown scenario 'tight'.*tight_energy"):
        scenario_config("tight")


def test_named_config_takes_presets_scenarios_and_files_and_names_them_when_unknown(
    tmp_path: Path,
) -> None:
    assert named_config("split") == resolve_config("split")
    assert named_config("tight_energy", num_rounds=4) == scenario_config("tight_energy").replace(
        num_rounds=4
    )
    path = tmp_path / "mine.yaml"
    path.write_text("preset: soft\nnum_rounds: 7\n")
    assert named_config(str(path)) == resolve_config("soft", num_rounds=7)
    with pytest.raises(
        ConfigError,
        match=r"'tight_energi'\. Did you mean 'tight_energy'\?.*"
        r"Presets: switching, split, soft, unified; scenarios: tight_energy",
    ):
        named_config("tight_energi")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        named_config(str(tmp_path / "missing.yaml"))
