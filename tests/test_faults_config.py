"""Bad inputs get clear errors (issue 21): config fields, seeds and actions.

Every case here once failed silently (a changed physics), deep inside (AttributeError,
TypeError) or with a misleading message; each now raises where the input enters, naming it.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedenv import FedLoRAWirelessEnv
from fedenv.vector import FedLoRAWirelessVectorEnv
from fedenv.wrappers import DictAction


def _state(env: FedLoRAWirelessEnv) -> tuple:
    """What a step changes, to check that a rejected input changed nothing."""
    return (
        env._t,
        env._energy_backlog.copy(),
        env._latency_backlog,
        env._accuracy,
        env._last_module.copy(),
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
    np.testing.assert_array_equal(vinfo["channel_gain"][0], plain["channel_gain"])  # sub-env 0: seed
    _, one = FedLoRAWirelessEnv({"num_rounds": 3}).reset(seed=int(seed) + 1)
    np.testing.assert_array_equal(vinfo["channel_gain"][1], one["channel_gain"])  # sub-env 1: seed + 1


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
        with pytest.raises(TypeError, match=r"seed must be None, an integer >= 0 \(sub-env i gets seed \+ i\) or a list of 3 seeds"):
            venv.reset(seed=bad)
    _, again = venv.reset(seed=4)  # the rejected seeds changed nothing
    np.testing.assert_array_equal(again["channel_gain"], by_int["channel_gain"])


# ------------------------------------------------------------------ actions
def test_batched_action_to_the_single_env_is_rejected():
    env = FedLoRAWirelessEnv()
    env.reset(seed=0)
    before = _state(env)
    with pytest.raises(ValueError, match=r"action must have shape \(10, 3\) \(devices x components \['module', 'power', 'bandwidth'\]\), got \(1, 10, 3\)"):
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
    for bad, name in ((np.zeros((10, 3)), "ndarray"), ([0.0] * 3, "list"), (None, "NoneType"), (0.5, "float")):
        with pytest.raises(ValueError, match=rf"Dict action must be a mapping \{{component: array of shape \(10,\)\}} with the keys {keys}, got {name}"):
            env.step(bad)
    zeros = {c: np.zeros(10, np.float32) for c in ("module", "power", "bandwidth")}
    with pytest.raises(ValueError, match=r"missing \['power'\], unexpected \['pwr'\]"):
        env.step({"module": zeros["module"], "pwr": zeros["power"], "bandwidth": zeros["bandwidth"]})
    with pytest.raises(ValueError, match=r"Dict action\['power'\] must have shape \(10,\) \(one value per device\), got shape \(1, 10\)"):
        env.step({**zeros, "power": np.zeros((1, 10))})
    with pytest.raises(ValueError, match=r"Dict action\['bandwidth'\] must hold real numbers in \[-1, 1\], got dtype complex128"):
        env.step({**zeros, "bandwidth": np.zeros(10, complex)})
    with pytest.raises(ValueError, match="NaN or infinite"):
        env.step({**zeros, "power": np.full(10, np.nan)})
    assert _same_state(before, _state(env.unwrapped))


def test_dict_action_keeps_float64_precision_so_large_finite_values_clip():
    env = DictAction(FedLoRAWirelessEnv())
    env.reset(seed=0)
    info = env.step({"module": np.full(10, 1e39), "power": np.full(10, 1e39), "bandwidth": np.ones(10)})[4]
    want = _first_step_info(np.ones((10, 3)))
    np.testing.assert_array_equal(info["module"], want["module"])
    np.testing.assert_array_equal(info["tx_power_w"], want["tx_power_w"])


def test_vector_env_rejects_bad_actions_before_any_change():
    venv = FedLoRAWirelessVectorEnv(2)
    venv.reset(seed=0)
    t = venv._t.copy()
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 10, 3\)"):
        venv.step(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="got complex numbers"):
        venv.step(np.zeros((2, 10, 3), complex))
    np.testing.assert_array_equal(venv._t, t)
