"""Bad inputs get clear errors (issue 21): config fields, seeds and actions.

Every case here once failed silently (a changed physics), deep inside (AttributeError,
TypeError) or with a misleading message; each now raises where the input enters, naming it.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

from fedenv import FedLoRAWirelessEnv
from fedenv.config import (
    ChannelConfig,
    ConfigError,
    ConfigTypeError,
    EnvConfig,
    LoraBackendConfig,
    ModelConfig,
    Range,
    SurrogateConfig,
    _field_specs,
    _Section,
    resolve_config,
)
from fedenv.vector import FedLoRAWirelessVectorEnv
from fedenv.wrappers import DictAction


def _state(env: FedLoRAWirelessEnv) -> tuple:
    """What a step changes, to check that a rejected input changed nothing."""
    core = env.unwrapped._episodes
    return (
        core.t.copy(),
        core.energy_backlog.copy(),
        core.latency_backlog.copy(),
        core.accuracy.copy(),
        core.last_module.copy(),
        env.np_random.bit_generator.state["state"]["state"],
    )


def _same_state(a: tuple, b: tuple) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


# -------------------------------------------------------------------- seeds
GOOD_SEEDS = [0, 5, np.int64(5), np.uint32(5), np.int8(5), 2**70]
BAD_SEEDS = [
    (True, TypeError, r"seed must be None or an integer >= 0 .*got True of type bool"),
    (np.bool_(False), TypeError, r"seed must be None or an integer >= 0"),
    (2.5, TypeError, r"seed must be None or an integer >= 0 .*got 2\.5 of type float"),
    (2.0, TypeError, r"got 2\.0 of type float"),
    (np.float64(3.0), TypeError, r"of type float64"),
    ("3", TypeError, r"got '3' of type str"),
    (-1, ValueError, r"seed must be an integer >= 0, got -1"),
    (np.int64(-7), ValueError, r"seed must be an integer >= 0, got -7"),
]


@pytest.mark.parametrize("seed", GOOD_SEEDS, ids=repr)
def test_integer_seeds_numpy_included_give_the_same_episode_in_both_envs(seed):
    env = FedLoRAWirelessEnv({"num_rounds": 3})
    _, info = env.reset(seed=seed)
    _, plain = FedLoRAWirelessEnv({"num_rounds": 3}).reset(seed=int(seed))
    np.testing.assert_array_equal(info["channel_gain"], plain["channel_gain"])
    venv = FedLoRAWirelessVectorEnv(2, {"num_rounds": 3})
    _, vinfo = venv.reset(seed=seed)
    np.testing.assert_array_equal(
        vinfo["channel_gain"][0], plain["channel_gain"]
    )  # sub-env 0: seed
    _, one = FedLoRAWirelessEnv({"num_rounds": 3}).reset(seed=int(seed) + 1)
    np.testing.assert_array_equal(
        vinfo["channel_gain"][1], one["channel_gain"]
    )  # sub-env 1: seed + 1


@pytest.mark.parametrize(("seed", "error", "message"), BAD_SEEDS, ids=lambda v: repr(v)[:20])
def test_bad_seeds_are_rejected_the_same_way_by_both_envs(seed, error, message):
    env = FedLoRAWirelessEnv({"num_rounds": 3})
    env.reset(seed=1)
    before = _state(env)
    with pytest.raises(error, match=message):
        env.reset(seed=seed)
    assert _same_state(before, _state(env))  # a rejected seed changes nothing
    venv = FedLoRAWirelessVectorEnv(2, {"num_rounds": 3})
    with pytest.raises(error, match=message):
        venv.reset(seed=seed)


def test_vector_env_takes_a_list_of_seeds_and_names_the_bad_entry():
    venv = FedLoRAWirelessVectorEnv(3, {"num_rounds": 3})
    _, by_int = venv.reset(seed=4)
    for seeds in ([4, 5, 6], (4, 5, 6), np.array([4, 5, 6]), [np.int64(4), 5, np.uint8(6)]):
        _, info = venv.reset(seed=seeds)
        np.testing.assert_array_equal(info["channel_gain"], by_int["channel_gain"])
    venv.reset(seed=[None, 1, None])
    with pytest.raises(TypeError, match=r"seed\[1\] must be None or an integer >= 0 .*got 2\.5"):
        venv.reset(seed=[1, 2.5, 3])
    with pytest.raises(TypeError, match=r"seed\[0\] .*got True"):
        venv.reset(seed=[True, 2, 3])
    with pytest.raises(ValueError, match=r"seed\[2\] must be an integer >= 0, got -3"):
        venv.reset(seed=[1, 2, -3])
    with pytest.raises(ValueError, match="expected 3 seeds, got 2"):
        venv.reset(seed=[1, 2])
    for bad in ({1: 2}, np.array(4), np.zeros((3, 1), dtype=int), object()):
        with pytest.raises(
            TypeError,
            match=r"seed must be None, an integer >= 0 \(sub-env i gets seed \+ i\) or a list of 3 "
            r"seeds",
        ):
            venv.reset(seed=bad)
    _, again = venv.reset(seed=4)  # the rejected seeds changed nothing
    np.testing.assert_array_equal(again["channel_gain"], by_int["channel_gain"])


# ------------------------------------------------------------------ actions
def test_batched_action_to_the_single_env_is_rejected():
    env = FedLoRAWirelessEnv()
    env.reset(seed=0)
    before = _state(env)
    with pytest.raises(
        ValueError,
        match=r"action must have shape \(10, 3\) \(devices x components \['module', 'power', "
        r"'bandwidth'\]\), got \(1, 10, 3\)",
    ):
        env.step(np.zeros((1, 10, 3), np.float32))
    assert _same_state(before, _state(env))


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros((10, 3), complex), r"real numbers .* got complex numbers \(dtype complex128\)"),
        (np.zeros((10, 3), np.complex64) + 0.5j, r"got complex numbers"),
        (np.zeros((10, 3), bool), r"got bools \(dtype bool\)"),
        (np.full((10, 3), "0.5"), r"got strings"),
        ([[None] * 3] * 10, r"got non-numeric objects"),
        (None, r"got non-numeric objects"),
        (np.zeros(30), r"must have shape \(10, 3\).*got \(30,\)"),
        (np.zeros((3, 10)), r"must have shape \(10, 3\).*got \(3, 10\)"),
        (np.full((10, 3), np.nan), r"NaN or infinite"),
        (np.full((10, 3), np.inf, np.float16), r"NaN or infinite"),
    ],
    ids=lambda v: str(getattr(v, "dtype", type(v).__name__))[:16],
)
def test_bad_actions_raise_a_clear_error_and_change_nothing(action, message):
    env = FedLoRAWirelessEnv()
    env.reset(seed=0)
    env.step(np.zeros((10, 3)))
    before = _state(env)
    with pytest.raises(ValueError, match=message):
        env.step(action)
    assert _same_state(before, _state(env))


def _first_step_info(action) -> dict:
    env = FedLoRAWirelessEnv()
    env.reset(seed=0)
    return env.step(action)[4]


def test_finite_out_of_range_actions_are_clipped_in_every_dtype():
    """1e39 is finite in float64 (not in float32): clipped like 7.0, never overflowed to inf."""
    want = _first_step_info(np.ones((10, 3)))
    for action in (
        np.full((10, 3), 1e39),
        np.full((10, 3), 7.0, np.float32),
        np.full((10, 3), np.longdouble(10) ** 400),  # finite beyond float64's range
        [[10**400] * 3] * 10,  # Python ints beyond float64's range
        np.full((10, 3), 5, np.int8),
    ):
        got = _first_step_info(action)
        np.testing.assert_array_equal(got["module"], want["module"])
        np.testing.assert_array_equal(got["tx_power_w"], want["tx_power_w"])


def test_dict_action_rejects_non_dicts_with_the_expected_keys():
    env = DictAction(FedLoRAWirelessEnv())
    env.reset(seed=0)
    before = _state(env.unwrapped)
    keys = r"\['module', 'power', 'bandwidth'\]"
    for bad, name in (
        (np.zeros((10, 3)), "ndarray"),
        ([0.0] * 3, "list"),
        (None, "NoneType"),
        (0.5, "float"),
    ):
        with pytest.raises(
            ValueError,
            match=r"Dict action must be a mapping \{component: array of shape \(10,\)\} with "
            rf"the keys {keys}, got {name}",
        ):
            env.step(bad)
    zeros = {c: np.zeros(10, np.float32) for c in ("module", "power", "bandwidth")}
    with pytest.raises(ValueError, match=r"missing \['power'\], unexpected \['pwr'\]"):
        env.step(
            {"module": zeros["module"], "pwr": zeros["power"], "bandwidth": zeros["bandwidth"]}
        )
    with pytest.raises(
        ValueError,
        match=r"Dict action\['power'\] must have shape \(10,\) \(one value per device\), got shape "
        r"\(1, 10\)",
    ):
        env.step({**zeros, "power": np.zeros((1, 10))})
    with pytest.raises(
        ValueError,
        match=r"Dict action\['bandwidth'\] must hold real numbers in \[-1, 1\], got dtype "
        r"complex128",
    ):
        env.step({**zeros, "bandwidth": np.zeros(10, complex)})
    with pytest.raises(ValueError, match="NaN or infinite"):
        env.step({**zeros, "power": np.full(10, np.nan)})
    assert _same_state(before, _state(env.unwrapped))


def test_dict_action_keeps_float64_precision_so_large_finite_values_clip():
    env = DictAction(FedLoRAWirelessEnv())
    env.reset(seed=0)
    info = env.step(
        {"module": np.full(10, 1e39), "power": np.full(10, 1e39), "bandwidth": np.ones(10)}
    )[4]
    want = _first_step_info(np.ones((10, 3)))
    np.testing.assert_array_equal(info["module"], want["module"])
    np.testing.assert_array_equal(info["tx_power_w"], want["tx_power_w"])


def test_vector_env_rejects_bad_actions_before_any_change():
    venv = FedLoRAWirelessVectorEnv(2)
    venv.reset(seed=0)
    t = venv.episodes.t.copy()
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 10, 3\)"):
        venv.step(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="got complex numbers"):
        venv.step(np.zeros((2, 10, 3), complex))
    np.testing.assert_array_equal(venv.episodes.t, t)


# ------------------------------------------------------------------ configs
# The reviewer's cases, each once silently accepted (a changed physics) or answered with an
# unrelated error; each row: the override, the error type, the pinned message.
BAD_CONFIGS = [
    (
        {"learning": {"iid": "false"}},
        ConfigTypeError,
        r"learning\.iid must be a bool \(true or false\), got 'false' \(str\); a quoted "
        r"string is not a bool",
    ),
    (
        {"model": {"target_modules": "query"}},
        ConfigTypeError,
        r"model\.target_modules must be a list of strings, got 'query' \(str\)",
    ),
    (
        {"model": {"send_head": "no"}},
        ConfigTypeError,
        r"model\.send_head must be a bool \(true or false\), got 'no' \(str\)",
    ),
    (
        {"model": {"send_head": 1}},
        ConfigTypeError,
        r"model\.send_head must be a bool \(true or false\), got 1 \(int\)",
    ),
    (
        {"model": {"target_modules": [1, 2]}},
        ConfigTypeError,
        r"model\.target_modules\[0\] must be a string, got 1 \(int\)",
    ),
    (
        {"model": {"target_modules": ["query", "query"]}},
        ConfigError,
        r"model\.target_modules must be a list of distinct module names",
    ),
    (
        {"model": {"target_modules": []}},
        ConfigError,
        r"model\.target_modules must be a non-empty list of module names",
    ),
    (
        {"model": {"ranks": [2, 4.0]}},
        ConfigTypeError,
        r"model\.ranks\[1\] must be an integer, got 4\.0 \(float\)",
    ),
    (
        {"model": {"ranks": [True, 4]}},
        ConfigTypeError,
        r"model\.ranks\[0\] must be an integer, got True \(bool\)",
    ),
    (
        {"model": {"ranks": "2,4"}},
        ConfigTypeError,
        r"model\.ranks must be a list of integers, got '2,4' \(str\)",
    ),
    (
        {"costs": {"activation_bits": True}},
        ConfigTypeError,
        r"costs\.activation_bits must be an integer >= 1 and <= 64, got True \(bool\)",
    ),
    (
        {"costs": {"activation_bits": 16.0}},
        ConfigTypeError,
        r"costs\.activation_bits must be an integer >= 1 and <= 64, got 16\.0 \(float\)",
    ),
    (
        {"fixed_rank": 8.0},
        ConfigTypeError,
        r"env\.fixed_rank must be None or an integer >= 1 and <= 65536, got 8\.0 \(float\)",
    ),
    (
        {"devices": {"num_devices": 2.5}},
        ConfigTypeError,
        r"devices\.num_devices must be an integer >= 1 and <= 10000, got 2\.5 \(float\)",
    ),
    (
        {"devices": {"num_devices": np.float64(4.0)}},
        ConfigTypeError,
        r"devices\.num_devices must be an integer .* got np\.float64\(4\.0\) \(float64\)",
    ),
    (
        {"devices": {"num_devices": True}},
        ConfigTypeError,
        r"devices\.num_devices must be an integer .* got True \(bool\)",
    ),
    (
        {"channel": {"bandwidth_hz": True}},
        ConfigTypeError,
        r"channel\.bandwidth_hz must be a number >= 1000\.0 and <= 100000000000\.0, got True "
        r"\(bool\)",
    ),
    (
        {"channel": {"bandwidth_hz": 5e6 + 0j}},
        ConfigTypeError,
        r"channel\.bandwidth_hz must be a number .* \(complex\)",
    ),
    (
        {"target_accuracy": np.bool_(True)},
        ConfigTypeError,
        r"env\.target_accuracy must be None or a number > 0 and <= 1, got np\.True_ \(bool\)",
    ),
    (
        {"learning": {"train_samples": 100.0}},
        ConfigTypeError,
        r"learning\.train_samples must be None or an integer >= 1",
    ),
    (
        {"learning": {"task": 3}},
        ConfigTypeError,
        r"learning\.task must be one of sst2, qnli, got 3 \(int\)",
    ),
    (
        {"model": {"name": None}},
        ConfigTypeError,
        r"model\.name must be a string, got None \(NoneType\)",
    ),
    (
        {"learning": {"lora": {"data_dir": 5}}},
        ConfigTypeError,
        r"learning\.lora\.data_dir must be None or a string, got 5 \(int\)",
    ),
    # absurd magnitudes: each once overflowed to inf/NaN
    (
        {"devices": {"effective_capacitance": 1e300}},
        ConfigError,
        r"devices\.effective_capacitance must be <= 1e-20, got 1e\+300 \(allowed: > 0 and <= "
        r"1e-20\)",
    ),
    (
        {"budgets": {"energy_budget_j": 5e-324}},
        ConfigError,
        r"budgets\.energy_budget_j must be >= 1e-09, got 5e-324",
    ),
    ({"reward": {"energy_ref_j": 5e-324}}, ConfigError, r"reward\.energy_ref_j must be >= 1e-09"),
    (
        {"channel": {"cell_radius_m": 1e300}},
        ConfigError,
        r"channel\.cell_radius_m must be <= 100000\.0, got 1e\+300",
    ),
    (
        {"channel": {"min_distance_m": 1e-300}},
        ConfigError,
        r"channel\.min_distance_m must be >= 1\.0",
    ),
    (
        {"channel": {"bandwidth_hz": 1e-300}},
        ConfigError,
        r"channel\.bandwidth_hz must be >= 1000\.0",
    ),
    (
        {"learning": {"surrogate": {"rank_scale": 1e-300}}},
        ConfigError,
        r"learning\.surrogate\.rank_scale must be >= 0\.001",
    ),
    (
        {"devices": {"num_devices": 10**6}},
        ConfigError,
        r"devices\.num_devices must be an integer <= 10000, got 1000000",
    ),
    (
        {"devices": {"num_devices": 100, "batch_size": 1000}},
        ConfigError,
        r"devices\.num_devices x devices\.batch_size must be <= the training samples \(67349",
    ),
    # wrong types of sections
    (
        {"model": 5},
        ConfigTypeError,
        r"env\.model must be a mapping of ModelConfig fields \(or a ModelConfig\), got 5 \(int\)",
    ),
    (
        {"learning": {"surrogate": 5}},
        ConfigTypeError,
        r"learning\.surrogate must be a mapping of SurrogateConfig fields \(or a "
        r"SurrogateConfig\), got 5 \(int\)",
    ),
    (
        {"channel": [1, 2]},
        ConfigTypeError,
        r"env\.channel must be a mapping of ChannelConfig fields",
    ),
    (
        {"devices": {3: 4}},
        ConfigError,
        r"config keys must be strings, got 3 \(int\) in DeviceConfig config",
    ),
]


@pytest.mark.parametrize(("override", "error", "message"), BAD_CONFIGS, ids=lambda v: str(v)[:40])
def test_bad_config_values_raise_pinned_messages(override, error, message):
    with pytest.raises(error, match=message):
        resolve_config(override)
    with pytest.raises(error, match=message):  # every preset, as overrides and directly
        resolve_config(None, "split", **override)
    assert issubclass(error, ValueError)  # every config error is a ValueError


def test_preset_split_with_a_bad_model_names_the_key_not_an_attribute():
    with pytest.raises(
        ConfigTypeError, match=r"env\.model must be a mapping of ModelConfig fields"
    ):
        resolve_config(None, "split", model=5)
    with pytest.raises(ConfigTypeError, match=r"env\.model must be a mapping"):
        FedLoRAWirelessEnv(preset="split", model=5)
    with pytest.raises(
        ConfigTypeError,
        match=r"learning must be a mapping of LearningConfig fields .*got 5 \(int\)",
    ):
        resolve_config(learning=5)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: resolve_config(None, 3),
            ConfigTypeError,
            r"preset must be a preset name \(one of switching, split, soft, unified\), got 3 "
            r"\(int\)",
        ),
        (
            lambda: FedLoRAWirelessEnv(preset=3),
            ConfigTypeError,
            r"preset must be a preset name .*got 3 \(int\)",
        ),
        (
            lambda: resolve_config({"preset": 3}),
            ConfigTypeError,
            r"preset must be a preset name .*got 3 \(int\)",
        ),
        (
            lambda: resolve_config({"preset": ["soft"]}),
            ConfigTypeError,
            r"preset must be a preset name",
        ),
        (
            lambda: EnvConfig.from_preset(None),
            ConfigTypeError,
            r"preset must be a preset name .*got None",
        ),
        (
            lambda: resolve_config(3),
            ConfigTypeError,
            r"config must be an EnvConfig, a mapping, a YAML path or a preset name, got 3 \(int\)",
        ),
        (
            lambda: resolve_config("sofft"),
            ConfigError,
            r"unknown preset 'sofft'\. Did you mean 'soft'\?",
        ),
        (
            lambda: EnvConfig.from_dict([("num_rounds", 3)]),
            ConfigTypeError,
            r"EnvConfig: expected a mapping of fields",
        ),
    ],
    ids=[
        "preset_int",
        "env_preset_int",
        "mapping_preset_int",
        "preset_list",
        "from_preset_none",
        "config_int",
        "typo",
        "from_dict_list",
    ],
)
def test_bad_presets_and_config_forms_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_numpy_scalars_mean_their_python_values():
    cfg = resolve_config(
        {
            "devices": {"num_devices": np.int64(4), "local_steps": np.uint8(2)},
            "channel": {
                "bandwidth_hz": np.float32(5e6),
                "fading_correlation": np.float64(0.5),
                "mobility_speed_m_per_s": np.int32(2),
            },
            "model": {"send_head": np.bool_(True), "ranks": np.array([2, 4])},
            "learning": {"iid": np.True_},
        }
    )
    assert cfg == resolve_config(
        {
            "devices": {"num_devices": 4, "local_steps": 2},
            "channel": {
                "bandwidth_hz": 5e6,
                "fading_correlation": 0.5,
                "mobility_speed_m_per_s": 2.0,
            },
            "model": {"send_head": True, "ranks": [2, 4]},
            "learning": {"iid": True},
        }
    )
    assert type(cfg.devices.num_devices) is int and type(cfg.channel.bandwidth_hz) is float
    assert (
        type(cfg.model.send_head) is bool
        and cfg.model.ranks == (2, 4)
        and type(cfg.model.ranks[0]) is int
    )
    assert type(cfg.channel.mobility_speed_m_per_s) is float  # an int where a float belongs
    FedLoRAWirelessEnv(cfg).reset(seed=0)
    assert EnvConfig.from_dict(cfg.to_dict()) == cfg


def test_the_reviewers_silent_physics_changes_now_raise():
    """iid='false' gave an IID partition; target_modules='query' counted 5 modules (11.8 Mbit
    instead of 4.7)."""
    with pytest.raises(ConfigTypeError):
        resolve_config(learning={"iid": "false"})
    with pytest.raises(ConfigTypeError):
        resolve_config(model={"target_modules": "query"})
    assert resolve_config().model.lora_params_per_rank == 6 * 2 * 2 * 384  # two modules


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigTypeError, match=r"model\.send_head must be a bool"):
        ModelConfig(send_head="no")
    with pytest.raises(ConfigError, match=r"channel\.cell_radius_m must be <= 100000\.0"):
        ChannelConfig(cell_radius_m=1e300)
    assert ModelConfig(target_modules=["query"]).target_modules == (
        "query",
    )  # a list becomes a tuple


def test_every_numeric_field_has_both_bounds_and_every_field_a_checked_type():
    for cls in (
        EnvConfig,
        *(
            spec.kind
            for spec in _field_specs(EnvConfig).values()
            if isinstance(spec.kind, type) and issubclass(spec.kind, _Section)
        ),
    ):
        for section in (cls, SurrogateConfig, LoraBackendConfig):
            for name, spec in _field_specs(section).items():
                if spec.kind in (int, float):
                    ranges = [m for m in spec.meta if isinstance(m, Range)]
                    assert ranges, f"{section.__name__}.{name} has no Range"
                    r = ranges[0]
                    assert (r.ge is not None or r.gt is not None) and (
                        r.le is not None or r.lt is not None
                    ), f"{section.__name__}.{name}: {r}"


# --------------------------------------------------------- configs at the bounds
def _bounds(spec) -> list:
    out = []
    for m in spec.meta:
        if isinstance(m, Range):
            lo = m.ge if m.ge is not None else math.nextafter(m.gt, math.inf)
            hi = m.le if m.le is not None else math.nextafter(m.lt, -math.inf)
            out += [math.ceil(lo), int(hi)] if spec.kind is int else [lo, hi]
    return out


def _numeric_fields(cls, prefix=()):
    for name, spec in _field_specs(cls).items():
        if isinstance(spec.kind, type) and issubclass(spec.kind, _Section):
            yield from _numeric_fields(spec.kind, (*prefix, name))
        elif spec.kind in (int, float):
            yield (*prefix, name), spec


def _nested(path, value) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value


#: the fields a bound conflicts with (a field between two others), moved along
_COMPANIONS = {
    ("channel", "cell_radius_m", "low"): {"channel": {"min_distance_m": 1.0}},
    ("channel", "min_distance_m", "high"): {"channel": {"cell_radius_m": 100e3}},
    ("channel", "max_tx_power_w", "low"): {"channel": {"min_tx_power_w": 1e-9}},
    ("channel", "min_tx_power_w", "high"): {"channel": {"max_tx_power_w": 100.0}},
    ("devices", "num_devices", "high"): {"devices": {"batch_size": 1}},
    ("devices", "batch_size", "high"): {"learning": {"train_samples": 10**10}},
    ("devices", "cpu_freq_min_hz", "high"): {"devices": {"cpu_freq_max_hz": 1e11}},
    ("devices", "cpu_freq_max_hz", "low"): {"devices": {"cpu_freq_min_hz": 1e6}},
    ("learning", "train_samples", "low"): {"devices": {"num_devices": 1, "batch_size": 1}},
    ("learning", "surrogate", "initial_accuracy", "high"): {
        "learning": {"surrogate": {"max_accuracy": 1.0}}
    },
    ("learning", "surrogate", "max_accuracy", "low"): {
        "learning": {"surrogate": {"initial_accuracy": 0.0}}
    },
    ("learning", "surrogate", "initial_loss", "low"): {
        "learning": {"surrogate": {"min_loss": 0.0}}
    },
    ("learning", "surrogate", "min_loss", "high"): {
        "learning": {"surrogate": {"initial_loss": 100.0}}
    },
}
#: the horizon: a length, not a magnitude (memory grows with it, nothing overflows); the fixed
#: rank: one of model.ranks, tried at both ends of those
_SKIP = {("num_rounds",), ("fixed_rank",)}


def _bound_configs(preset: str):
    for path, spec in _numeric_fields(EnvConfig):
        if path in _SKIP:
            continue
        for side, value in zip(("low", "high"), _bounds(spec)):
            override = _merge(_COMPANIONS.get((*path, side), {}), _nested(path, value))
            yield (
                f"{'.'.join(path)}={value!r}",
                resolve_config(override, preset),
            )  # raises if a companion is missing


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def _finite_episode(cfg: EnvConfig, steps: int = 3) -> None:
    env = FedLoRAWirelessEnv(cfg)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    shape = env.action_space.shape
    for action in (np.ones(shape), -np.ones(shape), np.random.default_rng(0).uniform(-1, 1, shape))[
        :steps
    ]:
        obs, reward, terminated, truncated, info = env.step(action)
        assert math.isfinite(reward) and all(
            math.isfinite(v) for v in info["reward_terms"].values()
        )
        assert env.observation_space.contains(obs) and np.isfinite(obs).all()
        if terminated or truncated:
            break


@pytest.mark.parametrize("preset", ["unified", "split"])
def test_every_field_at_its_bounds_gives_finite_rewards_and_observations(preset):
    """One field at a time at its lower and upper bound (unified has every action component and
    both queues; split the activation costs): nothing overflows, no NumPy warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, cfg in _bound_configs(preset):
            try:
                _finite_episode(cfg, steps=2)
            except Exception as exc:  # name the field in the failure
                raise AssertionError(f"{preset}, {name}: {exc!r}") from exc


def test_all_fields_at_once_at_their_upper_and_lower_bounds():
    for side in ("low", "high"):
        override: dict = {}
        for path, spec in _numeric_fields(EnvConfig):
            if path in _SKIP:
                continue
            value = dict(zip(("low", "high"), _bounds(spec)))[side]
            node = override
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        c, d, s = override["channel"], override["devices"], override["learning"]["surrogate"]
        if side == "low":  # the fields bounded by others
            c["cell_radius_m"] = math.nextafter(1.0, 2.0)
            c["max_tx_power_w"] = 1e-9
            d["cpu_freq_max_hz"] = 1e6
            s["max_accuracy"] = 0.0
            s["initial_loss"] = 1e-6
            override["learning"]["train_samples"] = 1
            override["devices"]["num_devices"] = 1
        else:
            c["min_distance_m"] = 1.0
            c["min_tx_power_w"] = 1e-9
            d["cpu_freq_min_hz"] = 1e6
            d["num_devices"], d["batch_size"] = 100, 100_000  # K x n_b <= train_samples (10^10)
            s["initial_accuracy"], s["min_loss"] = 0.5, 0.35
        override["model"]["ranks"] = [1] if side == "low" else [1, 65536]
        override["fixed_rank"] = 1 if side == "low" else 65536
        for preset in ("unified", "split"):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                cfg = resolve_config(override, preset)
                _finite_episode(cfg)
                venv = FedLoRAWirelessVectorEnv(2, cfg)
                venv.reset(seed=0)
                _, reward, _, _, _ = venv.step(np.ones(venv.action_space.shape))
                assert np.isfinite(reward).all()


# ------------------------------------------------------------------ YAML files
def test_yaml_exponent_without_a_dot_explains_pyyaml(tmp_path):
    p = tmp_path / "radio.yaml"
    p.write_text("channel:\n  bandwidth_hz: 1e6\n")
    with pytest.raises(
        ConfigTypeError,
        match=rf"{re.escape(str(p))}: channel\.bandwidth_hz must be a number .*got '1e6' \(str\); "
        r"PyYAML \(YAML 1\.1\) reads numbers like 1e6 as strings "
        r"\(a float needs a dot and a signed exponent, as in 1\.0e\+6\): write 1000000\.0",
    ):
        EnvConfig.from_yaml(p)
    p.write_text(
        "devices:\n  cpu_freq_min_hz: 1.0e9\n"
    )  # a dot without a signed exponent: a string too
    with pytest.raises(
        ConfigTypeError, match=r"got '1\.0e9' \(str\); PyYAML .* write 1000000000\.0"
    ):
        EnvConfig.from_yaml(p)
    p.write_text(
        "channel:\n  bandwidth_hz: 1.0e+6\n  waterfall_threshold: 2.3e-2\n"
    )  # the forms PyYAML reads as floats
    assert EnvConfig.from_yaml(p).channel.bandwidth_hz == 1e6
    p.write_text("devices:\n  num_devices: '10'\n")
    with pytest.raises(
        ConfigTypeError,
        match=r"got '10' \(str\); a quoted string is not a number: write 10 without quotes",
    ):
        EnvConfig.from_yaml(p)


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad_types.yaml"
    p.write_text("preset: split\nmodel: 5\n")
    with pytest.raises(
        ConfigTypeError,
        match=rf"{re.escape(str(p))}: env\.model must be a mapping of ModelConfig fields",
    ):
        FedLoRAWirelessEnv(config=str(p))
    p.write_text("learning:\n  iid: 'false'\n")
    with pytest.raises(
        ConfigTypeError, match=rf"{re.escape(str(p))}: learning\.iid must be a bool"
    ):
        EnvConfig.from_yaml(p)
    p.write_text("preset: 3\n")
    with pytest.raises(
        ConfigTypeError, match=rf"{re.escape(str(p))}: preset must be a preset name"
    ):
        EnvConfig.from_yaml(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(
        ConfigTypeError, match=r"expected a mapping of config keys at the top level, got list"
    ):
        EnvConfig.from_yaml(p)
    p.write_text("")  # an empty file is the default config
    assert EnvConfig.from_yaml(p) == EnvConfig()


def test_malformed_yaml_names_the_file_line_and_problem(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("devices:\n  num_devices: 4\n channel: [1,\n")
    with pytest.raises(
        ConfigError,
        match=rf"{re.escape(str(p))}:3:2: malformed YAML: while parsing a block mapping; expected "
        r"<block end>",
    ):
        EnvConfig.from_yaml(p)
    p.write_text("channel:\n  bandwidth_hz: [1, 2\n")
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(p))}:3:1: malformed YAML: .*expected ',' or '\]'"
    ):
        resolve_config(str(p))


def test_a_path_with_an_unknown_extension_is_not_an_unknown_preset(tmp_path):
    p = tmp_path / "my.cfg"
    p.write_text("num_rounds: 3\n")
    for config in (str(p), p, "configs/default.json", "default.yml.bak"):
        with pytest.raises(
            ConfigError,
            match=r"config file '.*' has the extension '\.(cfg|json|bak)': expected a \.yaml or "
            r"\.yml file",
        ):
            resolve_config(config)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_config("no/such/file.yml")
    with pytest.raises(ConfigError, match=r"unknown preset 'sofft'"):
        resolve_config("sofft")
