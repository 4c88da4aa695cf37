"""Configs: defaults mirror default.yaml, every YAML loads, bad keys/values raise pinned
messages."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest
import yaml

import fedenv  # noqa: F401
from fedenv.config import PRESETS, EnvConfig, resolve_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_yaml_equals_the_defaults():
    data = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    assert EnvConfig.from_dict(data) == EnvConfig()
    assert data == EnvConfig().to_dict()


@pytest.mark.parametrize(
    "path", sorted((CONFIGS / "scenarios").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_scenario_yaml_loads(path):
    cfg = EnvConfig.from_yaml(path)
    assert isinstance(cfg, EnvConfig)
    assert EnvConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("preset", list(PRESETS))
def test_dict_round_trip(preset):
    cfg = EnvConfig.from_preset(preset)
    assert EnvConfig.from_dict(cfg.to_dict()) == cfg


def test_yaml_round_trip(tmp_path):
    cfg = EnvConfig.from_preset("soft").replace(devices={"num_devices": 4})
    cfg.to_yaml(tmp_path / "c.yaml")
    assert EnvConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_presets_set_their_paradigm_and_components():
    assert EnvConfig.from_preset("switching").action_components == ("module", "power", "bandwidth")
    assert EnvConfig.from_preset("split").action_components == ("schedule", "bandwidth")
    soft = EnvConfig.from_preset("soft")
    assert soft.action_components == ("ratio", "bandwidth")
    assert soft.uses_latency_queue and not soft.uses_energy_queue
    unified = EnvConfig.from_preset("unified")
    assert unified.uses_latency_queue and unified.uses_energy_queue
    assert EnvConfig() == EnvConfig.from_preset("switching")


def test_unknown_top_level_key_suggests_the_right_one():
    with pytest.raises(
        ValueError,
        match=r"unknown key 'num_round' in EnvConfig config\. Did you mean 'num_rounds'\?",
    ):
        EnvConfig.from_dict({"num_round": 3})


def test_unknown_nested_key_suggests_the_right_one():
    with pytest.raises(
        ValueError,
        match=r"unknown key 'bandwith_hz' in ChannelConfig config\. Did you mean 'bandwidth_hz'\?",
    ):
        resolve_config({"channel": {"bandwith_hz": 1e6}})
    with pytest.raises(ValueError, match=r"Did you mean 'step_size'"):
        resolve_config({"learning": {"surrogate": {"stepsize": 0.1}}})


def test_unknown_key_in_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("devices:\n  num_device: 3\n")
    with pytest.raises(ValueError, match="Did you mean 'num_devices'"):
        EnvConfig.from_yaml(p)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"channel": {"bandwidth_hz": -1.0}},
            r"channel\.bandwidth_hz must be >= 1000\.0, got -1\.0 \(allowed: >= 1000\.0 and "
            r"<= 100000000000\.0\)",
        ),
        (
            {"channel": {"fading_correlation": 1.0}},
            r"channel\.fading_correlation must be < 1, got 1\.0",
        ),
        (
            {"channel": {"min_distance_m": 600.0}},
            r"channel\.min_distance_m must be < 500\.0, got 600\.0",
        ),
        ({"devices": {"num_devices": 0}}, r"devices\.num_devices must be an integer >= 1, got 0"),
        (
            {"devices": {"cpu_freq_max_hz": 1e8}},
            r"devices\.cpu_freq_max_hz must be >= 500000000\.0",
        ),
        ({"model": {"ranks": []}}, r"model\.ranks must be a non-empty list of positive integers"),
        ({"model": {"ranks": [4, 2]}}, r"model\.ranks must be strictly increasing"),
        (
            {"model": {"ranks": [0, 2]}},
            r"model\.ranks must be a non-empty list of positive integers",
        ),
        (
            {"budgets": {"energy_budget_j": 0.0}},
            r"budgets\.energy_budget_j must be >= 1e-09, got 0\.0",
        ),
        (
            {"learning": {"backend": "gpt"}},
            r"learning\.backend must be one of surrogate, lora, got 'gpt'",
        ),
        ({"learning": {"task": "mnli"}}, r"learning\.task must be one of sst2, qnli, got 'mnli'"),
        ({"reward": {"mode": "fancy"}}, r"reward\.mode must be one of accuracy_energy, dpp"),
        ({"num_rounds": 0}, r"env\.num_rounds must be an integer >= 1, got 0"),
        (
            {"fixed_rank": 3},
            r"env\.fixed_rank must be None or one of model\.ranks \[2, 4, 8, 16\], got 3",
        ),
        (
            {"paradigm": "swiching"},
            r"env\.paradigm must be one of switching, split, soft, unified, got 'swiching'",
        ),
        (
            {"channel": {"bandwidth_hz": float("nan")}},
            r"channel\.bandwidth_hz must be a finite number, got nan",
        ),
        (
            {"learning": {"surrogate": {"heterogeneity_penalty": 5.5}}},
            r"learning\.surrogate\.heterogeneity_penalty must be <= 5, got 5\.5",
        ),
    ],
)
def test_out_of_range_values_raise_pinned_messages(override, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(override)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown preset 'sofft'\. Did you mean 'soft'\? Valid presets: switching, split, "
        r"soft, unified\.",
    ):
        gym.make("FedLoRAWireless-v0", preset="sofft")


def test_env_accepts_config_object_mapping_yaml_and_preset(tmp_path):
    cfg = EnvConfig.from_preset("split")
    p = tmp_path / "s.yaml"
    p.write_text("preset: split\ndevices:\n  num_devices: 4\n")
    assert gym.make("FedLoRAWireless-v0", config=cfg).unwrapped.config == cfg
    assert gym.make("FedLoRAWireless-v0", config={"preset": "split"}).unwrapped.config == cfg
    assert gym.make("FedLoRAWireless-v0", preset="split").unwrapped.config == cfg
    env = gym.make("FedLoRAWireless-v0", config=str(p))
    assert (
        env.unwrapped.config.devices.num_devices == 4 and env.unwrapped.config.paradigm == "split"
    )
    env = gym.make("FedLoRAWireless-v0", preset="soft", devices={"num_devices": 3}, task="qnli")
    assert (
        env.unwrapped.config.devices.num_devices == 3
        and env.unwrapped.config.learning.task == "qnli"
    )
    assert env.action_space.shape == (3, 2)


def test_missing_yaml_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EnvConfig.from_yaml("no/such/file.yaml")


def test_configs_are_frozen():
    cfg = EnvConfig()
    with pytest.raises(AttributeError):
        cfg.num_rounds = 3  # type: ignore[misc]


def test_parse_set_builds_nested_overrides_over_a_base():
    from fedenv.config import ConfigError, parse_set

    base = {"learning": {"lora": {"learning_rate": 0.1, "trainer": "batched"}}, "num_rounds": 5}
    got = parse_set(
        [
            "learning.lora.learning_rate=0.3",
            "model.target_modules=[query, key, value]",
            "num_rounds=7",
            "budgets.energy_budget_j=null",
        ],
        base,
    )
    assert got == {
        "learning": {"lora": {"learning_rate": 0.3, "trainer": "batched"}},
        "model": {"target_modules": ["query", "key", "value"]},
        "num_rounds": 7,
        "budgets": {"energy_budget_j": None},
    }
    assert base["learning"]["lora"]["learning_rate"] == 0.1  # the base is not changed
    cfg = resolve_config(**got)
    assert cfg.model.target_modules == ("query", "key", "value") and cfg.num_rounds == 7
    for bad in ["learning.lora.learning_rate", "=3", "learning..lr=1"]:
        with pytest.raises(ConfigError, match="key.path=value"):
            parse_set([bad])
