"""Env contract: Gymnasium and SB3 checkers, determinism, common random numbers, spaces, reward."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import fedenv
from fedenv import FedLoRAWirelessEnv
from fedenv.config import PRESETS

PRESET_NAMES = list(PRESETS)


def rollout(env: gym.Env, seed: int, policy_seed: int, steps: int | None = None):
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(policy_seed)
    out = [obs]
    rewards, infos = [], [info]
    n = 0
    while True:
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        out.append(obs)
        rewards.append(r)
        infos.append(info)
        n += 1
        if term or trunc or (steps is not None and n >= steps):
            return np.array(out), np.array(rewards), infos


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_gymnasium_check_env_passes_without_warnings(preset):
    env = gym.make("FedLoRAWireless-v0", preset=preset, render_mode="ansi").unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=False)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_sb3_check_env_passes_without_warnings(preset):
    sb3_env_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    env = FedLoRAWirelessEnv(preset=preset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_env_checker.check_env(env, warn=True)


def test_registered_and_reachable_by_module_path():
    assert fedenv.ENV_ID in gym.registry
    env = gym.make("fedenv:FedLoRAWireless-v0")
    assert isinstance(env.unwrapped, FedLoRAWirelessEnv)
    # importing again does not re-register (idempotent)
    import importlib

    importlib.reload(fedenv)
    assert gym.spec("FedLoRAWireless-v0").entry_point == "fedenv.env:FedLoRAWirelessEnv"


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_same_seed_gives_identical_trajectories(preset):
    a = rollout(FedLoRAWirelessEnv(preset=preset), seed=3, policy_seed=7)
    b = rollout(FedLoRAWirelessEnv(preset=preset), seed=3, policy_seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_different_seeds_differ():
    a = rollout(FedLoRAWirelessEnv(), seed=1, policy_seed=0, steps=3)
    b = rollout(FedLoRAWirelessEnv(), seed=2, policy_seed=0, steps=3)
    assert not np.array_equal(a[0], b[0])


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_channel_trace_does_not_depend_on_the_policy(preset):
    cfg = {"channel": {"mobility_speed_m_per_s": 5.0, "shadowing_std_db": 4.0}}
    _, _, infos_a = rollout(FedLoRAWirelessEnv(cfg, preset=preset), seed=5, policy_seed=1)
    _, _, infos_b = rollout(FedLoRAWirelessEnv(cfg, preset=preset), seed=5, policy_seed=2)
    assert any(
        not np.array_equal(x["module"], y["module"])
        or not np.array_equal(x["bandwidth_share"], y["bandwidth_share"])
        for x, y in zip(infos_a[1:], infos_b[1:])
    )
    for x, y in zip(infos_a, infos_b):
        np.testing.assert_array_equal(x["channel_gain"], y["channel_gain"])
        np.testing.assert_array_equal(x["distance_m"], y["distance_m"])
        np.testing.assert_array_equal(x["cpu_freq_hz"], y["cpu_freq_hz"])


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_observations_in_space_finite_and_reward_is_sum_of_terms(preset):
    env = FedLoRAWirelessEnv(preset=preset)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    rng = np.random.default_rng(0)
    for _ in range(env.config.num_rounds):
        a = rng.uniform(-3, 3, env.action_space.shape)  # out of range: clipped
        obs, r, term, trunc, info = env.step(a)
        assert env.observation_space.contains(obs) and np.isfinite(obs).all()
        assert type(r) is float and np.isfinite(r)
        assert r == pytest.approx(sum(info["reward_terms"].values()), abs=1e-12)
        if term or trunc:
            break


def test_truncation_exactly_at_horizon():
    env = FedLoRAWirelessEnv({"num_rounds": 7})
    env.reset(seed=0)
    flags = []
    for _ in range(7):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        flags.append((term, trunc))
    assert flags[:-1] == [(False, False)] * 6
    assert flags[-1] == (False, True)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(env.action_space.sample())


def test_termination_at_target_accuracy():
    env = FedLoRAWirelessEnv({"target_accuracy": 0.6})
    env.reset(seed=0)
    full = np.ones(env.action_space.shape, dtype=np.float32)
    rounds = 0
    while True:
        _, _, term, trunc, info = env.step(full)
        rounds += 1
        if term or trunc:
            break
    assert term and not trunc and info["accuracy"] >= 0.6 and rounds < 50


def test_pickle_round_trip_mid_episode():
    env = FedLoRAWirelessEnv()
    env.reset(seed=4)
    a = np.zeros(env.action_space.shape, dtype=np.float32)
    env.step(a)
    clone = pickle.loads(pickle.dumps(env))
    o1, r1, *_ = env.step(a)
    o2, r2, *_ = clone.step(a)
    np.testing.assert_array_equal(o1, o2)
    assert r1 == r2


def test_sync_vector_env_runs():
    venv = gym.make_vec("FedLoRAWireless-v0", num_envs=3, vectorization_mode="sync")
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, *venv.single_observation_space.shape)
    for _ in range(3):
        obs, r, term, trunc, _ = venv.step(venv.action_space.sample())
    assert r.shape == (3,)


def test_kept_observations_and_infos_never_change():
    """Observations and info arrays are handed out without copies (rows of per-episode arrays,
    read-only trace rows): what a user kept stays as it was, through later steps and resets."""
    import copy

    env = FedLoRAWirelessEnv({"num_rounds": 5})
    kept, snapshots = [], []
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        obs, info = env.reset(seed=seed)
        kept.append((obs, info))
        snapshots.append(copy.deepcopy((obs, info)))
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
            kept.append((obs, info))
            snapshots.append(copy.deepcopy((obs, info)))
            done = term or trunc
    for (obs, info), (obs0, info0) in zip(kept, snapshots):
        np.testing.assert_array_equal(obs, obs0)
        for key, value in info0.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(info[key], value)
    # the trace rows in info are read-only views: writing raises instead of changing the env
    with pytest.raises(ValueError, match="read-only"):
        kept[-1][1]["channel_gain"][0] = 1.0


def test_traces_made_ahead_are_the_traces_of_their_episodes():
    """reset() without a seed uses traces generated ahead in a batch: each episode's channels are
    generate_trace of its own key, and np_random moves exactly as without them (2 keys per
    reset), through a draw from np_random between resets and a reseed."""
    from gymnasium.utils import seeding

    from fedenv.trace import generate_trace

    env = FedLoRAWirelessEnv({"num_rounds": 3})
    expected_rng, _ = seeding.np_random(9)
    resets = 0
    for episode in range(20):
        if episode == 12:
            env.reset(seed=4)
            expected_rng, _ = seeding.np_random(4)
            resets = 1
        else:
            if episode == 6:
                env.np_random.random()  # a draw between resets: the traces made ahead miss
                expected_rng.random()
            _, info = env.reset(seed=9 if episode == 0 else None)
            resets += 1
        want = generate_trace(np.array([env.trace_key], dtype=np.uint64), env.config)
        np.testing.assert_array_equal(env._trace.gain, want.gain)
        np.testing.assert_array_equal(env._trace.success_uniform, want.success_uniform)
        np.testing.assert_array_equal(env._trace.position_m, want.position_m)
        expected = np.random.Generator(type(expected_rng.bit_generator)())
        expected.bit_generator.state = expected_rng.bit_generator.state
        expected.bit_generator.advance(2 * resets) if hasattr(
            expected.bit_generator, "advance"
        ) else None
        assert env.np_random.bit_generator.state == expected.bit_generator.state
    assert env._traces_ahead  # (the batch path was taken)


# ------------------------------------------------------------------ config
def test_config_is_read_only_and_names_the_fix():
    env = gym.make("FedLoRAWireless-v0")
    before = env.unwrapped.config
    with pytest.raises(AttributeError, match=r"read-only.*configure\("):
        env.unwrapped.config = before.replace(num_rounds=20)
    assert env.unwrapped.config is before


def test_configure_num_rounds_takes_effect_at_the_next_reset():
    env = FedLoRAWirelessEnv()
    env.reset(seed=0)
    a = np.zeros(env.action_space.shape, dtype=np.float32)
    env.step(a)
    assert env.configure(num_rounds=20) is env.config and env.config.num_rounds == 20
    with pytest.raises(gym.error.ResetNeeded):  # the episode in progress ended
        env.step(a)
    obs, _ = env.reset(seed=0)
    for t in range(1, 21):
        obs, _, term, trunc, info = env.step(a)
        assert env.observation_space.contains(obs) and info["round"] == t
    assert (
        trunc and not term and obs[7 * env.num_devices] == 1.0
    )  # round fraction t / T with the new T
    with pytest.raises(gym.error.ResetNeeded):
        env.step(a)


def test_configure_num_devices_rebuilds_spaces_codec_and_learner():
    env = FedLoRAWirelessEnv()
    learner = env.learner
    env.configure(devices={"num_devices": 4})
    assert env.learner is not learner and env.num_devices == 4
    assert env.action_space.shape == (4, 3) and env.observation_space.shape == (7 * 4 + 4,)
    obs, info = env.reset(seed=1)
    assert obs.shape == (32,) and info["label_distribution"].shape[0] == 4
    obs, r, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and np.isfinite(r)
    fresh = rollout(FedLoRAWirelessEnv(devices={"num_devices": 4}), seed=1, policy_seed=0, steps=4)
    again = rollout(env, seed=1, policy_seed=0, steps=4)
    np.testing.assert_array_equal(fresh[0], again[0])  # the same env as one built with that config
    np.testing.assert_array_equal(fresh[1], again[1])


def test_configure_reward_weights_change_the_reward():
    env = FedLoRAWirelessEnv()
    w = env.config.reward
    base = rollout(env, seed=2, policy_seed=3, steps=5)
    env.configure(reward={"energy_weight": 3.0, "accuracy_weight": 0.5})
    changed = rollout(env, seed=2, policy_seed=3, steps=5)
    for old, new in zip(base[2][1:], changed[2][1:]):  # same channels and decisions, new weights
        assert new["reward_terms"]["energy"] == pytest.approx(
            old["reward_terms"]["energy"] * 3.0 / w.energy_weight, rel=1e-12
        )
        assert new["reward_terms"]["accuracy"] == pytest.approx(
            old["reward_terms"]["accuracy"] * 0.5 / w.accuracy_weight, rel=1e-12
        )
    np.testing.assert_array_equal(
        changed[1], [sum(info["reward_terms"].values()) for info in changed[2][1:]]
    )
    np.testing.assert_array_equal(
        rollout(FedLoRAWirelessEnv(reward={"energy_weight": 3.0, "accuracy_weight": 0.5}), 2, 3, 5)[
            1
        ],
        changed[1],
    )


def test_a_bad_configure_raises_and_changes_nothing():
    env = FedLoRAWirelessEnv()
    env.reset(seed=0)
    config, learner = env.config, env.learner
    with pytest.raises(ValueError, match="num_roundz"):
        env.configure(num_roundz=20)
    with pytest.raises(ValueError):
        env.configure(num_rounds=0)
    assert env.config is config and env.learner is learner
    _, _, _, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert info["round"] == 1  # the episode goes on


def test_configure_from_a_new_config_or_preset():
    env = FedLoRAWirelessEnv()
    env.configure(preset="split", num_rounds=8)
    assert env.config == fedenv.resolve_config(
        "split", num_rounds=8
    ) and env.action_space.shape == (10, 2)
    env.configure(config=fedenv.resolve_config("soft"))
    assert env.config.paradigm == "soft"
    clone = pickle.loads(pickle.dumps(env))
    assert clone.config == env.config


def test_public_state_for_renderers():
    env = FedLoRAWirelessEnv()
    assert env.last_info is None
    _, info = env.reset(seed=0)
    assert env.last_info["round"] == 0 and env.last_info["accuracy"] == info["accuracy"]
    with pytest.raises(TypeError):
        env.last_info["round"] = 3  # type: ignore[index]
    pos = env.device_positions_m
    assert pos.shape == (10, 2) and not pos.flags.writeable
    np.testing.assert_allclose(np.hypot(pos[:, 0], pos[:, 1]), info["distance_m"])
    _, _, _, _, info = env.step(env.action_space.sample())
    assert env.last_info["round"] == 1 and "success" in env.last_info


# ------------------------------------------------------------------ lora data, offline
def _no_local_data(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "FEDENV_DATA_DIR",
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


def test_lora_data_fails_fast_when_the_hub_is_unreachable(monkeypatch: pytest.MonkeyPatch):
    """No data_dir, no FEDENV_DATA_DIR, not offline and the hub's host refuses: an error at once
    naming FEDENV_DATA_DIR, not the datasets library's half a minute of retries."""
    import time

    pytest.importorskip("datasets")
    import datasets.config
    import huggingface_hub.constants

    from fedenv.learning.lora import data

    _no_local_data(monkeypatch)
    # datasets reads both at import, HF_DATASETS_OFFLINE from HF_HUB_OFFLINE too (CI sets it)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(
        huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9"
    )  # (discard port: refused)
    start = time.perf_counter()
    with pytest.raises(
        FileNotFoundError,
        match=r"FEDENV_DATA_DIR is not set.*unreachable: no connection to 127.0.0.1:9.*Set "
        r"learning.lora.data_dir or FEDENV_DATA_DIR.*HF_HUB_OFFLINE=1",
    ):
        data._raw_splits("sst2", None, 10)
    assert time.perf_counter() - start < data.HUB_PROBE_TIMEOUT_S + 1.0


def test_lora_data_offline_reads_only_the_cache_and_fails_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path
):
    import time

    pytest.importorskip("datasets")
    import datasets.config

    from fedenv.learning.lora import data

    _no_local_data(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # (an empty cache)
    start = time.perf_counter()
    with pytest.raises(
        FileNotFoundError, match=r"offline mode.*Set learning.lora.data_dir or FEDENV_DATA_DIR"
    ):
        data._raw_splits("sst2", None, 10)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_costs_are_the_energies_with_the_budgets_as_limits(preset):
    """info["cost"] (safe-RL convention): per-device energies, their sum, the budgets as limits."""
    from fedenv.vector import FedLoRAWirelessVectorEnv

    env = FedLoRAWirelessEnv(preset=preset, num_rounds=4)
    cfg = env.config
    _, _, infos = rollout(env, seed=5, policy_seed=1)
    energy_budget, latency_budget = cfg.budgets.energy_budget_j, cfg.budgets.latency_budget_s
    for info in infos[1:]:
        costs = info["cost_per_device"]
        assert costs.dtype == np.float64 and costs.shape == (cfg.devices.num_devices,)
        np.testing.assert_array_equal(costs, info["energy_j"])
        assert type(info["cost"]) is float and info["cost"] == pytest.approx(costs.sum(), rel=1e-12)
        limit = info["cost_limit_per_device"]
        assert limit.dtype == np.float64 and limit.shape == costs.shape
        assert (limit == (np.inf if energy_budget is None else energy_budget)).all()
        if latency_budget is None:
            assert "cost_latency" not in info and "cost_limit_latency" not in info
        else:
            assert (
                info["cost_latency"] == info["round_latency_s"]
                and info["cost_limit_latency"] == latency_budget
            )
    assert "cost" not in infos[0]  # a reset plays no round
    # the vector env reports the same costs, batched
    venv = FedLoRAWirelessVectorEnv(2, preset=preset, num_rounds=4)
    venv.reset(seed=5)
    _, _, _, _, vinfo = venv.step(venv.action_space.sample())
    np.testing.assert_array_equal(vinfo["cost_per_device"], vinfo["energy_j"])
    np.testing.assert_allclose(vinfo["cost"], vinfo["energy_j"].sum(axis=1), rtol=1e-12)
    assert vinfo["cost_limit_per_device"].shape == vinfo["energy_j"].shape
    assert ("cost_latency" in vinfo) == (latency_budget is not None)
    if latency_budget is not None:
        np.testing.assert_array_equal(vinfo["cost_latency"], vinfo["round_latency_s"])
        np.testing.assert_array_equal(vinfo["cost_limit_latency"], [latency_budget] * 2)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_accuracy_reward_mode_is_the_accuracy_gain_alone(preset):
    env = FedLoRAWirelessEnv(
        preset=preset, num_rounds=5, reward={"mode": "accuracy", "accuracy_weight": 2.0}
    )
    default = FedLoRAWirelessEnv(preset=preset, num_rounds=5)
    assert default.config.reward.mode == "accuracy_energy"
    _, rewards, infos = rollout(env, seed=3, policy_seed=2)
    _, d_rewards, d_infos = rollout(default, seed=3, policy_seed=2)
    accuracy = [info["accuracy"] for info in infos]
    assert accuracy == [info["accuracy"] for info in d_infos]  # the same episode
    for t, info in enumerate(infos[1:]):
        assert set(info["reward_terms"]) == {"accuracy"}
        assert rewards[t] == pytest.approx(2.0 * 100.0 * (accuracy[t + 1] - accuracy[t]), abs=1e-12)
        assert d_infos[t + 1]["reward_terms"]["accuracy"] == pytest.approx(
            rewards[t] / 2.0, abs=1e-12
        )
    assert sum(rewards) == pytest.approx(200.0 * (accuracy[-1] - accuracy[0]), abs=1e-9)
    with pytest.raises(
        fedenv.config.ConfigError,
        match=r"reward\.mode must be one of accuracy_energy, dpp, accuracy",
    ):
        FedLoRAWirelessEnv(reward={"mode": "accuracy_gain"})
