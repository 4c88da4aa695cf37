"""The canonical action mapping, the round physics and the wrappers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import fedenv  # noqa: F401
from fedenv.actions import ActionCodec, Decision
from fedenv.config import PRESETS, EnvConfig
from fedenv.env import FedLoRAWirelessEnv
from fedenv.round import episode_tables, play_round
from fedenv.wrappers import DictAction, DictObservation, DiscreteAction


def test_module_bins_cover_the_interval():
    codec = ActionCodec(EnvConfig())
    a = np.zeros(codec.shape)
    a[:, 0] = np.linspace(-1, 1, 10)
    m = codec.decode(a).module
    assert m[0] == 0 and m[-1] == 4
    assert list(np.unique(m)) == [0, 1, 2, 3, 4]


def test_power_and_bandwidth_mapping():
    codec = ActionCodec(EnvConfig())
    a = np.ones(codec.shape)
    a[:, 1] = -1.0
    a[:2, 2] = [-1.0, 0.0]  # weights 0 and 0.5, others 1
    d = codec.decode(a)
    np.testing.assert_allclose(d.power_w, 1e-3)
    np.testing.assert_allclose(d.share, np.r_[0.0, 0.5, np.ones(8)] / 8.5)
    a[:, 2] = -1.0
    np.testing.assert_allclose(codec.decode(a).share, 0.1)  # all weights 0: equal shares


def test_idle_devices_get_no_band():
    codec = ActionCodec(EnvConfig())
    a = np.ones(codec.shape)
    a[:3, 0] = -1.0
    d = codec.decode(a)
    assert (d.share[:3] == 0).all() and d.share.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_encode_decode_round_trip(preset):
    codec = ActionCodec(EnvConfig.from_preset(preset))
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, codec.shape)
    d = codec.decode(a)
    d2 = codec.decode(codec.encode(d).astype(np.float64))
    np.testing.assert_array_equal(d.module, d2.module)
    np.testing.assert_allclose(d.power_w, d2.power_w, rtol=1e-6)
    np.testing.assert_allclose(d.share, d2.share, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d.ratio, d2.ratio, rtol=1e-6)


def test_split_and_soft_use_the_structural_rank():
    split = ActionCodec(EnvConfig.from_preset("split"))
    a = np.ones(split.shape)
    a[0, 0] = -1.0
    d = split.decode(a)
    assert d.module[0] == 0 and (split.ranks(d.module[1:]) == 8).all()
    soft = ActionCodec(EnvConfig.from_preset("soft"))
    d = soft.decode(-np.ones(soft.shape))
    assert (soft.ranks(d.module) == 16).all() and np.allclose(d.ratio, 0.05)


@pytest.mark.parametrize("preset", PRESETS)
def test_decode_clips_like_validate(preset):
    """decode clips out-of-range actions itself: decode(check(a)) is decode(validate(a)) bit for
    bit,
    for float32 and float64 actions, single and batched, at and beyond the interval's ends."""
    codec = ActionCodec(EnvConfig.from_preset(preset))
    rng = np.random.default_rng(3)
    edges = np.array([-3.0, -1.0 - 1e-7, -1.0, -1e-30, 0.0, 1e-30, 1.0, 1.0 + 1e-7, 3.0])
    for lead in ((), (4,), (2, 3)):
        a = (
            rng.choice(edges, size=lead + codec.shape)
            if lead != (4,)
            else rng.uniform(-1.5, 1.5, lead + codec.shape)
        )
        for action in (a, a.astype(np.float32), a.tolist()):
            fast, ref = (
                codec.decode(codec.check(action, lead)),
                codec.decode(codec.validate(action, lead)),
            )
            for name in ("module", "power_w", "share", "ratio"):
                got, want = getattr(fast, name), getattr(ref, name)
                assert got.dtype == want.dtype and got.shape == lead + (codec.num_devices,)
                np.testing.assert_array_equal(got, want, err_msg=name)
            assert (
                np.isclose(np.asarray(ref.share).sum(axis=-1), 1.0).all()
                or not (ref.module > 0).all()
            )
    clipped = codec.validate(np.full(codec.shape, 7.0, dtype=np.float32))
    assert clipped.dtype == np.float64 and (clipped == 1.0).all()


def test_decode_returns_fresh_arrays_for_missing_components():
    """Components a paradigm lacks (soft: module and power) are fresh arrays each call: an info
    dict never shares them with the next step's."""
    codec = ActionCodec(EnvConfig.from_preset("soft"))
    a = np.zeros(codec.shape, dtype=np.float32)
    d1, d2 = codec.decode(a), codec.decode(a)
    assert d1.module is not d2.module and d1.power_w is not d2.power_w
    d1.module[0] = 0
    d1.power_w[0] = 0.0
    assert (codec.decode(a).module == d2.module).all() and codec.decode(a).power_w[0] == d2.power_w[
        0
    ] > 0.0


def test_bad_actions_raise_and_leave_env_usable():
    env = FedLoRAWirelessEnv()
    env.reset(seed=0)
    good = np.zeros(env.action_space.shape, dtype=np.float32)
    bad = good.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        env.step(bad)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        env.step(bad)
    with pytest.raises(ValueError, match=r"action must have shape \(10, 3\)"):
        env.step(np.zeros((10, 2)))
    with pytest.raises(
        ValueError, match=r"action must hold real numbers .* got strings \(dtype <U1\)"
    ):
        env.step(np.full((10, 3), "a"))
    obs, r, term, trunc, info = env.step(good)
    assert info["round"] == 1  # the bad calls changed nothing
    with pytest.raises(gym.error.ResetNeeded):
        FedLoRAWirelessEnv().step(good)


def test_play_round_deadline_and_success():
    cfg = EnvConfig().replace(devices={"num_devices": 3})
    codec = ActionCodec(cfg)
    cpu = np.array([1e9, 1e9, 0.5e9])
    tables = episode_tables(cfg, cpu, cfg.model.lora_params_per_rank, cfg.model.head_params)
    d = Decision(
        module=np.array([4, 4, 0]),
        power_w=np.full(3, 0.2),
        share=np.array([0.5, 0.5, 0.0]),
        ratio=np.ones(3),
    )
    gain = np.array([1e-11, 1e-22, 1e-11])  # device 1 is in a deep fade
    phys = play_round(d, gain, tables, cfg, success_uniform=np.full(3, 0.5))
    assert phys.success.tolist() == [True, False, False]
    assert phys.on_time.tolist() == [True, False, False]  # the faded device is a straggler
    assert phys.latency_s[1] == cfg.costs.round_deadline_s
    assert phys.energy_j[2] == 0.0 and phys.rank.tolist() == [16, 16, 0]
    # the straggler still spent energy until the deadline
    e_cmp = tables.compute_energy_j[1, 4]
    t_cmp = tables.compute_time_s[1, 4]
    assert phys.energy_j[1] == pytest.approx(e_cmp + 0.2 * (cfg.costs.round_deadline_s - t_cmp))
    assert phys.round_latency_s == cfg.costs.round_deadline_s
    assert codec.num_devices == 3


def test_play_round_computation_past_the_deadline_is_never_on_time():
    """Even on a perfect channel: no upload time is left, so nothing is sent or spent on the
    uplink."""
    cfg = EnvConfig().replace(devices={"num_devices": 2})
    tables = episode_tables(
        cfg, np.array([1e9, 1e3]), cfg.model.lora_params_per_rank, cfg.model.head_params
    )
    assert tables.compute_time_s[1, 1] > cfg.costs.round_deadline_s > tables.compute_time_s[0, 1]
    d = Decision(
        module=np.array([1, 1]),
        power_w=np.full(2, 0.2),
        share=np.array([0.5, 0.5]),
        ratio=np.ones(2),
    )
    phys = play_round(d, np.full(2, 1e-3), tables, cfg, success_uniform=np.full(2, 0.99))
    assert phys.on_time.tolist() == [True, False] and phys.success.tolist() == [True, False]
    assert phys.latency_s[1] == cfg.costs.round_deadline_s
    assert phys.energy_j[1] == tables.compute_energy_j[1, 1]  # computation only
    assert phys.success_prob.tolist() == [1.0 - phys.packet_error[0], 0.0]


# ------------------------------------------------------------------ wrappers
@pytest.mark.parametrize("preset", list(PRESETS))
def test_dict_action_wrapper_maps_to_canonical(preset):
    env = DictAction(gym.make("FedLoRAWireless-v0", preset=preset))
    env.reset(seed=0)
    a = env.action_space.sample()
    canon = env.action(a)
    assert canon.shape == env.unwrapped.action_space.shape
    back = env.reverse_action(canon)
    for key in a:
        np.testing.assert_array_equal(back[key], a[key])
    env.step(a)
    with pytest.raises(ValueError, match="exactly the keys"):
        env.step({"power": a[next(iter(a))]})


@pytest.mark.parametrize("preset", list(PRESETS))
def test_discrete_action_wrapper_maps_to_canonical(preset):
    env = DiscreteAction(gym.make("FedLoRAWireless-v0", preset=preset), power_levels=3)
    env.reset(seed=0)
    a = env.action_space.sample()
    canon = env.action(a)
    assert env.unwrapped.action_space.contains(canon)
    np.testing.assert_array_equal(env.reverse_action(canon), a)
    env.step(a)
    with pytest.raises(ValueError):
        env.step(np.full(env.action_space.shape, 99))


def test_discrete_module_levels_decode_to_each_module():
    env = DiscreteAction(gym.make("FedLoRAWireless-v0"))
    assert env.action_space.shape == (10 * 3,)  # 1-D: SB3 trains on it
    a = np.zeros((10, 3), dtype=np.int64)
    a[:5, 0] = np.arange(5)
    module = env.unwrapped.codec.decode(env.action(a.reshape(-1)).astype(np.float64)).module
    assert module[:5].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(
        env.action(a), env.action(a.reshape(-1))
    )  # (K, C) is accepted too


def test_dict_observation_wrapper():
    env = DictObservation(gym.make("FedLoRAWireless-v0"))
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["devices"].shape == (10, 7) and obs["global"].shape == (4,)
    with pytest.raises(ValueError):
        DiscreteAction(gym.make("FedLoRAWireless-v0"), power_levels=1)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_idle_devices_transmit_no_power_and_their_power_changes_nothing(preset):
    """Decoded idle devices have power 0 (info's tx_power_w); the round's physics does not depend
    on an idle device's power."""
    import dataclasses

    from fedenv.round import episode_tables, play_round

    cfg = EnvConfig.from_preset(preset)
    codec = ActionCodec(cfg)
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, codec.shape)
    if "module" in codec.index:
        a[:4, codec.index["module"]] = -1.0
    elif "schedule" in codec.index:
        a[:4, codec.index["schedule"]] = -1.0
    d = codec.decode(a)
    idle = d.module == 0
    assert (d.power_w[idle] == 0.0).all() and (d.power_w[~idle] >= cfg.channel.min_tx_power_w).all()
    assert idle.any() or preset == "soft"  # (soft schedules every device)
    tables = episode_tables(
        cfg,
        np.full(codec.num_devices, 1.5e9),
        float(cfg.model.lora_params_per_rank),
        int(cfg.model.head_params),
    )
    gain = rng.uniform(1e-13, 1e-10, codec.num_devices)
    u = rng.uniform(size=codec.num_devices)
    powered = dataclasses.replace(d, power_w=np.where(idle, cfg.channel.max_tx_power_w, d.power_w))
    a_phys, b_phys = play_round(d, gain, tables, cfg, u), play_round(powered, gain, tables, cfg, u)
    for field in (
        "rate_bps",
        "packet_error",
        "upload_time_s",
        "latency_s",
        "energy_j",
        "on_time",
        "success",
        "round_latency_s",
    ):
        np.testing.assert_array_equal(getattr(a_phys, field), getattr(b_phys, field))
