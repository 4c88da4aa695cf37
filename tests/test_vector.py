"""The batched vector env (fedenv.vector) against N single envs, and the fast paths it shares."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

import fedenv
from fedenv import FedLoRAWirelessEnv, channel, costs, streams
from fedenv.actions import ActionCodec, Decision
from fedenv.config import PRESETS, EnvConfig, resolve_config
from fedenv.learning.surrogate import round_progress
from fedenv.round import episode_tables, play_round
from fedenv.trace import generate_trace
from fedenv.vector import FedLoRAWirelessVectorEnv

# Extra scenarios on top of the presets: every optional branch of the physics and the reward.
SCENARIOS = {
    "mobile_shadowed_dpp": (
        "switching",
        {
            "channel": {"mobility_speed_m_per_s": 5.0, "shadowing_std_db": 4.0},
            "reward": {"mode": "dpp"},
        },
    ),
    "noisy_target": (
        "unified",
        {
            "learning": {"surrogate": {"eval_noise_std": 0.02}},
            "target_accuracy": 0.6,
            "model": {"send_head": True},
        },
    ),
    "iid_uncorrelated": (
        "split",
        {"channel": {"fading_correlation": 0.0}, "learning": {"iid": True}},
    ),
}


def _actions(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    a = rng.uniform(-1.3, 1.3, (n, *shape))
    a[rng.random(n) < 0.15, :, -1] = -1.0  # all bandwidth weights 0: equal shares
    a[rng.random(n) < 0.1, :, 0] = -1.0  # nobody scheduled (module/schedule paradigms)
    return a.astype(np.float32)


def _assert_info_rows(vinfo: dict, sinfo: dict, i: int, where: str) -> None:
    for key, value in sinfo.items():
        assert vinfo[f"_{key}"][i], f"{where}: info[{key!r}] missing for sub-env {i}"
        if isinstance(value, dict):
            _assert_info_rows(vinfo[key], value, i, f"{where}.{key}")
            continue
        got = vinfo[key][i]
        if isinstance(value, str):
            assert got == value, (where, key)
        else:
            np.testing.assert_array_equal(
                got, value, err_msg=f"{where}: info[{key!r}] of sub-env {i}"
            )
            assert np.asarray(got).dtype == np.asarray(value).dtype, (where, key)
    # keys the single env did not report are masked out
    for key in vinfo:
        if not key.startswith("_") and key not in sinfo:
            assert not vinfo[f"_{key}"][i], f"{where}: info[{key!r}] present for sub-env {i}"


def _compare(
    preset: str, overrides: dict, num_envs: int = 3, steps: int = 40, seed: int = 5
) -> None:
    cfg = EnvConfig.from_preset(preset).replace(**{"num_rounds": 9, **overrides})
    venv = FedLoRAWirelessVectorEnv(num_envs, cfg)
    singles = [FedLoRAWirelessEnv(cfg) for _ in range(num_envs)]
    vobs, vinfo = venv.reset(seed=seed)
    done = [False] * num_envs
    for i, env in enumerate(singles):
        obs, info = env.reset(seed=seed + i)
        np.testing.assert_array_equal(vobs[i], obs)
        _assert_info_rows(vinfo, info, i, "reset")
    rng = np.random.default_rng(seed)
    resets = 0
    for step in range(steps):
        actions = _actions(rng, num_envs, venv.single_action_space.shape)
        vobs, vrew, vterm, vtrunc, vinfo = venv.step(actions)
        for i, env in enumerate(singles):
            if done[i]:  # NEXT_STEP autoreset: this step resets the sub-env
                obs, info = env.reset()
                rew, term, trunc = 0.0, False, False
                resets += 1
            else:
                obs, rew, term, trunc, info = env.step(actions[i])
            done[i] = term or trunc
            where = f"{preset} step {step} env {i}"
            np.testing.assert_array_equal(vobs[i], obs, err_msg=where)
            assert vrew[i] == rew and vterm[i] == term and vtrunc[i] == trunc, where
            _assert_info_rows(vinfo, info, i, where)
    assert resets >= num_envs  # the trajectories crossed at least one autoreset per sub-env


@pytest.mark.parametrize("preset", list(PRESETS))
def test_vector_env_equals_single_envs(preset):
    _compare(preset, {})


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_vector_env_equals_single_envs_in_every_branch(name):
    preset, overrides = SCENARIOS[name]
    _compare(preset, overrides)


def test_make_vec_entry_point_and_metadata():
    venv = gym.make_vec(
        "FedLoRAWireless-v0", num_envs=4, vectorization_mode="vector_entry_point", preset="soft"
    )
    assert isinstance(venv.unwrapped, FedLoRAWirelessVectorEnv)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (4, *venv.single_observation_space.shape) and obs.dtype == np.float32
    assert venv.observation_space.contains(obs)
    obs, rew, term, trunc, _ = venv.step(venv.action_space.sample())
    assert rew.shape == term.shape == trunc.shape == (4,) and rew.dtype == np.float64
    assert venv.observation_space.contains(obs)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_registered_id_takes_a_full_config_through_the_vector_entry_point(preset):
    """make_vec reaches FedLoRAWirelessVectorEnv with the id's preset: the config resolves as in
    gym.make."""
    env_id = fedenv.ENV_IDS[preset]
    config = resolve_config(preset, num_rounds=5, reward={"energy_weight": 2.0})
    for given in (config, config.to_dict(), {"num_rounds": 5, "reward": {"energy_weight": 2.0}}):
        venv = gym.make_vec(
            env_id, num_envs=2, vectorization_mode="vector_entry_point", config=given
        )
        assert isinstance(venv.unwrapped, FedLoRAWirelessVectorEnv)
        assert venv.unwrapped.config == config == gym.make(env_id, config=given).unwrapped.config
        obs, _ = venv.reset(seed=0)
        assert venv.observation_space.contains(obs)
        venv.close()
    other = resolve_config("soft" if preset != "soft" else "split")
    if env_id == fedenv.ENV_ID:  # the default id takes a config of any paradigm
        assert (
            gym.make_vec(
                env_id, num_envs=2, vectorization_mode="vector_entry_point", config=other
            ).unwrapped.config
            == other
        )
    else:  # a variant id refuses another paradigm, as its single env does
        with pytest.raises(ValueError, match="paradigm"):
            gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", config=other)


def test_vector_env_matches_sync_vector_env_including_info_layout():
    kw = {"preset": "switching", "num_rounds": 4}
    fast = gym.make_vec(
        "FedLoRAWireless-v0", num_envs=2, vectorization_mode="vector_entry_point", **kw
    )
    sync = gym.make_vec("FedLoRAWireless-v0", num_envs=2, vectorization_mode="sync", **kw)
    (fo, fi), (so, si) = fast.reset(seed=3), sync.reset(seed=3)
    np.testing.assert_array_equal(fo, so)
    assert set(fi) == set(si)
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = _actions(rng, 2, fast.single_action_space.shape)
        f, s = fast.step(a), sync.step(a)
        for x, y in zip(f[:4], s[:4]):
            np.testing.assert_array_equal(x, y)
        assert set(f[4]) == set(s[4])
        assert set(f[4].get("reward_terms", {})) == set(s[4].get("reward_terms", {}))


def test_reset_mask_resets_only_the_masked_sub_envs():
    venv = FedLoRAWirelessVectorEnv(3, {"num_rounds": 6})
    venv.reset(seed=1)
    a = np.zeros(venv.action_space.shape, dtype=np.float32)
    for _ in range(3):
        venv.step(a)
    obs, info = venv.reset(options={"reset_mask": np.array([False, True, False])})
    np.testing.assert_array_equal(info["_round"], [False, True, False])
    assert info["round"][1] == 0
    np.testing.assert_array_equal(venv.episodes.t, [3, 0, 3])
    single = FedLoRAWirelessEnv({"num_rounds": 6})
    single.reset(seed=1)
    for _ in range(3):
        expected, *_ = single.step(a[0])
    np.testing.assert_array_equal(obs[0], expected)  # untouched sub-envs keep their observation


def test_bad_input_raises_clear_errors_and_leaves_the_env_usable():
    venv = FedLoRAWirelessVectorEnv(2)
    with pytest.raises(gym.error.ResetNeeded):
        venv.step(np.zeros(venv.action_space.shape, dtype=np.float32))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros((3, *venv.single_action_space.shape), dtype=np.float32))
    bad = np.zeros(venv.action_space.shape, dtype=np.float32)
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        venv.step(bad)
    np.testing.assert_array_equal(venv.episodes.t, [0, 0])
    venv.step(np.zeros(venv.action_space.shape, dtype=np.float32))
    with pytest.raises(ValueError, match="surrogate backend only"):
        FedLoRAWirelessVectorEnv(2, backend="lora")
    with pytest.raises(ValueError, match="num_envs"):
        FedLoRAWirelessVectorEnv(0)
    with pytest.raises(ValueError, match="one seed per sub-env"):
        venv.reset(seed=[1, 2, 3])


def test_vector_env_pickles_mid_episode():
    venv = FedLoRAWirelessVectorEnv(2)
    venv.reset(seed=2)
    a = np.zeros(venv.action_space.shape, dtype=np.float32)
    venv.step(a)
    clone = pickle.loads(pickle.dumps(venv))
    np.testing.assert_array_equal(venv.step(a)[0], clone.step(a)[0])


# ------------------------------------------------- fast paths == general paths
def test_fading_scan_equals_the_recursion_loop():
    rng = np.random.default_rng(0)
    for rounds in (1, 2, 20, 300):
        w = rng.normal(size=(3, rounds, 7)) + 1j * rng.normal(size=(3, rounds, 7))
        for rho in (0.0, 0.5, 0.95, 0.999):
            g = channel.gauss_markov_fading(w[:, 0], w[:, 1:], rho)
            loop = np.empty_like(w)
            loop[:, 0] = w[:, 0]
            for t in range(rounds - 1):
                loop[:, t + 1] = rho * loop[:, t] + np.sqrt(1 - rho * rho) * w[:, t + 1]
            np.testing.assert_allclose(g, loop, rtol=1e-13, atol=1e-13)
    # batched episodes equal episodes computed alone, bit for bit
    np.testing.assert_array_equal(
        channel.gauss_markov_fading(w[1:2, 0], w[1:2, 1:], 0.7),
        channel.gauss_markov_fading(w[:, 0], w[:, 1:], 0.7)[1:2],
    )


def test_multi_stream_draw_equals_single_stream_draws():
    keys = np.array([1, 2**63 + 5], dtype=np.uint64)
    draws = (
        (streams.Stream.POSITION, (2, 5)),
        (streams.Stream.FADING, (4, 2, 5, 2)),
        (streams.Stream.SUCCESS, (4, 5)),
    )
    for got, (stream, shape) in zip(streams.uniforms(keys, draws), draws):
        np.testing.assert_array_equal(got, streams.uniform(keys, stream, shape))


def test_trace_in_blocks_equals_trace_per_episode():
    cfg = EnvConfig().replace(num_rounds=5, channel={"mobility_speed_m_per_s": 2.0})
    keys = np.arange(150, dtype=np.uint64) * 7919
    batch = generate_trace(keys, cfg)  # more episodes than one block
    one = generate_trace(keys[137:138], cfg)
    np.testing.assert_array_equal(batch.gain[137], one.gain[0])
    np.testing.assert_array_equal(batch.success_uniform[137], one.success_uniform[0])


@pytest.mark.parametrize("preset", list(PRESETS))
def test_physics_batched_equals_per_episode_bitwise(preset):
    """The batched physics (vector env) and the single-episode calls (single env) agree exactly."""
    cfg = EnvConfig.from_preset(preset)
    codec = ActionCodec(cfg)
    rng = np.random.default_rng(1)
    n, k = 6, cfg.devices.num_devices
    cpu = rng.uniform(0.5e9, 2e9, (n, k))
    tables = episode_tables(cfg, cpu, cfg.model.lora_params_per_rank, cfg.model.head_params)
    gain, u = 10 ** rng.uniform(-13, -8, (n, k)), rng.uniform(size=(n, k))
    dec = codec.decode(codec.validate(_actions(rng, n, codec.shape), (n,)))
    batch = play_round(dec, gain, tables, cfg, u)
    share = rng.dirichlet(np.ones(k), n)
    labels = rng.dirichlet(np.ones(2), (n, k))
    prog, floor = round_progress(
        share,
        batch.success,
        batch.rank,
        dec.ratio,
        labels,
        np.array([0.4, 0.6]),
        cfg.learning.surrogate,
    )
    for i in range(n):
        one_tables = episode_tables(
            cfg, cpu[i], cfg.model.lora_params_per_rank, cfg.model.head_params
        )
        one_dec = Decision(dec.module[i], dec.power_w[i], dec.share[i], dec.ratio[i])
        one = play_round(one_dec, gain[i], one_tables, cfg, u[i])
        for field in (
            "rate_bps",
            "packet_error",
            "upload_time_s",
            "latency_s",
            "energy_j",
            "payload_bits",
            "success",
            "success_prob",
        ):
            np.testing.assert_array_equal(
                getattr(one, field), getattr(batch, field)[i], err_msg=field
            )
        assert one.round_latency_s == batch.round_latency_s[i]
        p, f = round_progress(
            share[i],
            one.success,
            one.rank,
            one_dec.ratio,
            labels[i],
            np.array([0.4, 0.6]),
            cfg.learning.surrogate,
        )
        assert p == prog[i] and f == floor[i]


def test_upload_and_link_edge_cases():
    t, e, ok = costs.upload([1e6, 0.0, 1e6], [0.0, 0.0, 2e6], 0.1, [5.0, 5.0, -1.0])
    assert np.isinf(t[0]) and t[1] == 0.0 and t[2] == 0.5
    np.testing.assert_array_equal(e, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(ok, [False, True, False])
    rate, per = channel.link(
        np.array([0.1, 0.1, 0.1]),
        np.array([1e-10, 0.0, 1e-10]),
        np.array([0.5, 0.5, 0.0]),
        EnvConfig().channel,
    )
    np.testing.assert_array_equal(
        rate,
        channel.uplink_rate(
            [0.1, 0.1, 0.1], [1e-10, 0.0, 1e-10], [0.5, 0.5, 0.0], EnvConfig().channel
        ),
    )
    assert rate[1] == 0.0 and rate[2] == 0.0 and per[1] == 1.0 and per[2] == 0.0


# ------------------------------------------------------------ SB3 adapter
def test_sb3_adapter_equals_dummy_vec_env_over_single_envs():
    vec_env = pytest.importorskip("stable_baselines3.common.vec_env")
    from fedenv.sb3 import FedLoRAWirelessVecEnv

    cfg = {"num_rounds": 5, "target_accuracy": 0.62}
    fast = FedLoRAWirelessVecEnv(3, cfg, preset="unified")
    ref = vec_env.DummyVecEnv([lambda: FedLoRAWirelessEnv(cfg, preset="unified") for _ in range(3)])
    fast.seed(7)
    ref.seed(7)
    np.testing.assert_array_equal(fast.reset(), ref.reset())
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(17):
        a = _actions(rng, 3, fast.action_space.shape)
        (fo, fr, fd, fi), (ro, rr, rd, ri) = fast.step(a), ref.step(a)
        np.testing.assert_array_equal(fo, ro)
        np.testing.assert_array_equal(fr, rr)
        np.testing.assert_array_equal(fd, rd)
        for x, y in zip(fi, ri):
            assert x["TimeLimit.truncated"] == y["TimeLimit.truncated"]
            assert ("terminal_observation" in x) == ("terminal_observation" in y)
            if "terminal_observation" in x:
                np.testing.assert_array_equal(x["terminal_observation"], y["terminal_observation"])
                ends += 1
    assert ends >= 6


@pytest.mark.slow
def test_sb3_ppo_trains_on_the_batched_env():
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.vec_env import VecMonitor

    from fedenv.sb3 import FedLoRAWirelessVecEnv

    venv = VecMonitor(FedLoRAWirelessVecEnv(4, {"num_rounds": 8}, info_keys=("accuracy",), seed=0))
    model = sb3.PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(128)
    assert model.num_timesteps >= 128
    obs = venv.reset()
    _, _, _, infos = venv.step(np.stack([model.predict(o, deterministic=True)[0] for o in obs]))
    assert all(0.0 <= info["accuracy"] <= 1.0 for info in infos)
