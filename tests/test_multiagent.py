"""fedenv.multiagent: the PettingZoo ParallelEnv form (one agent per device) of
FedLoRAWireless-v0."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("pettingzoo")

from pettingzoo.test import parallel_api_test, parallel_seed_test  # noqa: E402

from baselines.lyapunov import DEFAULT_V  # noqa: E402
from fedenv.config import PRESETS  # noqa: E402
from fedenv.env import FedLoRAWirelessEnv, observation_bounds  # noqa: E402
from fedenv.multiagent import (  # noqa: E402
    AGENT_FEATURES,
    FedLoRAWirelessParallelEnv,
    agent_observations,
    parallel_env,
)

T = 6


def _actions(env: FedLoRAWirelessParallelEnv, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c = len(env.components)
    return {a: rng.uniform(-1.2, 1.2, c).astype(np.float32) for a in env.agents}


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("reward", ["shared", "per_device"])
def test_pettingzoo_parallel_api_and_seed_tests(preset, reward):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the API test warns about what it tolerates
        parallel_api_test(
            parallel_env(preset=preset, agent_reward=reward, num_rounds=T), num_cycles=3 * T
        )
        parallel_seed_test(lambda: parallel_env(preset=preset, agent_reward=reward, num_rounds=T))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_same_rounds_as_the_single_env(preset):
    """The agents' actions stacked are the single env's action: same rounds, rewards,
    observations."""
    ma = parallel_env(preset=preset, num_rounds=T)
    single = FedLoRAWirelessEnv(preset=preset, num_rounds=T)
    k = ma.num_devices
    assert ma.possible_agents == [f"device_{i}" for i in range(k)]
    obs, infos = ma.reset(seed=7)
    s_obs, s_info = single.reset(seed=7)
    np.testing.assert_array_equal(ma.state(), s_obs)
    rng = np.random.default_rng(0)
    done = False
    while not done:
        assert ma.agents == ma.possible_agents  # all present the whole episode
        for i, agent in enumerate(ma.possible_agents):
            np.testing.assert_array_equal(
                obs[agent], np.concatenate([s_obs[7 * i : 7 * i + 7], s_obs[7 * k :]])
            )
            assert ma.observation_space(agent).contains(obs[agent])
            assert infos[agent]["device"] == i and infos[agent]["round"] == s_info["round"]
            assert infos[agent]["energy_backlog"] == s_info["energy_backlog"][i]
            np.testing.assert_array_equal(
                infos[agent]["label_distribution"], s_info["label_distribution"][i]
            )
        actions = _actions(ma, rng)
        obs, rewards, terms, truncs, infos = ma.step(actions)
        s_obs, s_reward, s_term, s_trunc, s_info = single.step(
            np.stack([actions[a] for a in ma.possible_agents])
        )
        assert rewards == dict.fromkeys(ma.possible_agents, float(s_reward))
        assert set(terms.values()) == {s_term} and set(truncs.values()) == {s_trunc}
        for i, agent in enumerate(ma.possible_agents):
            for key in (
                "energy_j",
                "module",
                "bandwidth_share",
                "success",
                "tx_power_w",
                "sparsity_ratio",
            ):
                assert infos[agent][key] == s_info[key][i], key
            assert infos[agent]["reward_terms"] == s_info["reward_terms"]
        done = s_term or s_trunc
    # truncation exactly at the horizon, then the agents leave
    assert s_info["round"] == T and s_trunc and ma.agents == []
    with pytest.raises(RuntimeError, match="reset"):
        ma.step(_actions(ma, rng))


def test_bandwidth_requests_are_normalised_over_the_scheduled_devices():
    ma = parallel_env(num_rounds=T)
    ma.reset(seed=1)
    requests = np.linspace(-1.0, 1.0, ma.num_devices)
    module_of = np.where(np.arange(ma.num_devices) % 3 == 0, -1.0, 0.9)  # every third device idle
    actions = {
        a: np.array([module_of[i], 0.0, requests[i]], dtype=np.float32)
        for i, a in enumerate(ma.agents)
    }
    _, _, _, _, infos = ma.step(actions)
    w = np.where(module_of > 0, (requests + 1.0) / 2.0, 0.0)
    shares = np.array([infos[a]["bandwidth_share"] for a in ma.possible_agents])
    np.testing.assert_allclose(shares, w / w.sum(), rtol=1e-6)
    assert shares.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("switching", {}),
        ("soft", {}),  # a latency budget: the latency overshoot is shared
        ("unified", {"reward": {"mode": "dpp"}}),
        ("switching", {"budgets": {"energy_budget_j": None}}),
    ],
)
def test_per_device_rewards_sum_to_the_env_reward(preset, overrides):
    ma = parallel_env(preset=preset, agent_reward="per_device", num_rounds=T, **overrides)
    single = FedLoRAWirelessEnv(preset=preset, num_rounds=T, **overrides)
    ma.reset(seed=3)
    _, s_info = single.reset(seed=3)
    c = ma.config
    k = ma.num_devices
    rng = np.random.default_rng(1)
    unequal = []
    while ma.agents:
        z_old = s_info["energy_backlog"]
        actions = _actions(ma, rng)
        _, rewards, _, _, infos = ma.step(actions)
        _, s_reward, _, _, s_info = single.step(np.stack([actions[a] for a in ma.possible_agents]))
        r = np.array([rewards[a] for a in ma.possible_agents])
        assert r.sum() == pytest.approx(float(s_reward), abs=1e-12)
        unequal.append(len(set(r.tolist())) > 1)
        for name, total in s_info["reward_terms"].items():
            parts = np.array([infos[a]["reward_terms"][name] for a in ma.possible_agents])
            assert parts.sum() == pytest.approx(float(total), abs=1e-12), name
        for a in ma.possible_agents:
            assert sum(infos[a]["reward_terms"].values()) == pytest.approx(rewards[a], abs=1e-12)
        # each device's own terms, by hand (docs/model.md §7), plus 1/K of the system-wide rest
        e = s_info["energy_j"]
        terms = s_info["reward_terms"]
        if c.reward.mode == "dpp":
            own = -np.asarray(z_old) * e / c.reward.dpp_scale
            np.testing.assert_allclose(
                [infos[a]["reward_terms"]["energy_drift"] for a in ma.possible_agents],
                own + (terms["energy_drift"] - own.sum()) / k,
                atol=1e-12,
            )
        else:
            own = -c.reward.energy_weight * e / c.energy_ref_j
            np.testing.assert_allclose(
                [infos[a]["reward_terms"]["energy"] for a in ma.possible_agents], own, atol=1e-12
            )
            acc = [infos[a]["reward_terms"]["accuracy"] for a in ma.possible_agents]
            np.testing.assert_allclose(acc, terms["accuracy"] / k, atol=1e-15)
            budget = c.budgets.energy_budget_j
            if budget is not None and c.budgets.latency_budget_s is None:
                over = -c.reward.overshoot_weight * (s_info["energy_backlog"] - z_old) / k / budget
                np.testing.assert_allclose(
                    [infos[a]["reward_terms"]["overshoot"] for a in ma.possible_agents],
                    over,
                    atol=1e-12,
                )
    assert any(unequal)  # not an equal split (dpp: from the second round, once the backlogs differ)


def test_follows_configure_of_the_single_env():
    """config is the single env's: after env.configure the next reset plays the new config and the
    per-device split uses its reward weights; a change of K or paradigm raises at reset."""
    ma = parallel_env(preset="switching", agent_reward="per_device", num_rounds=T)
    ma.reset(seed=0)
    agents, spaces = list(ma.possible_agents), dict(ma.action_spaces)
    new = ma.env.configure(num_rounds=3, reward={"energy_weight": 5.0})
    assert ma.config is new is ma.env.config
    single = FedLoRAWirelessEnv(new)
    ma.reset(seed=4)
    _, s_info = single.reset(seed=4)
    assert ma.possible_agents == agents and ma.action_spaces == spaces
    rng = np.random.default_rng(2)
    rounds = 0
    while ma.agents:
        actions = _actions(ma, rng)
        _, rewards, _, truncations, infos = ma.step(actions)
        _, s_reward, _, s_trunc, s_info = single.step(
            np.stack([actions[a] for a in ma.possible_agents])
        )
        rounds += 1
        assert sum(rewards.values()) == pytest.approx(float(s_reward), abs=1e-12)
        own = (
            -5.0 * s_info["energy_j"] / new.energy_ref_j
        )  # the new weight, not the one at construction
        np.testing.assert_allclose(
            [infos[a]["reward_terms"]["energy"] for a in ma.possible_agents], own, atol=1e-12
        )
        assert all(v == s_trunc for v in truncations.values())
    assert rounds == 3
    for change in ({"devices": {"num_devices": ma.num_devices + 1}}, {"config": "split"}):
        ma = parallel_env(preset="switching", num_rounds=T)
        ma.reset(seed=0)
        ma.env.configure(**change)
        with pytest.raises(RuntimeError, match="build a new parallel env"):
            ma.reset(seed=0)
        assert ma.possible_agents == agents and ma.action_spaces["device_0"].shape == (3,)


def test_bad_actions_raise_and_leave_the_env_unchanged():
    ma = parallel_env(num_rounds=T)
    ma.reset(seed=0)
    rng = np.random.default_rng(0)
    good = _actions(ma, rng)
    state = ma.state()
    missing = dict(good)
    del missing["device_3"]
    with pytest.raises(ValueError, match="missing \\['device_3'\\]"):
        ma.step(missing)
    with pytest.raises(ValueError, match="unknown \\['device_99'\\]"):
        ma.step({**good, "device_99": good["device_0"]})
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        ma.step({**good, "device_2": np.zeros(4, dtype=np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        ma.step({**good, "device_2": np.array([0.0, np.nan, 0.0], dtype=np.float32)})
    with pytest.raises(ValueError, match="mapping"):
        ma.step(np.zeros((ma.num_devices, 3), dtype=np.float32))  # type: ignore[arg-type]
    np.testing.assert_array_equal(ma.state(), state)
    _, _, _, _, infos = ma.step(good)
    assert infos["device_0"]["round"] == 1
    with pytest.raises(ValueError, match="agent_reward must be one of shared, per_device"):
        parallel_env(agent_reward="individual")
    with pytest.raises(KeyError, match="device_0 .. device_9"):
        ma.action_space("agent_0")


def test_spaces_observation_layout_and_state():
    ma = parallel_env(preset="unified", num_rounds=T)
    k = ma.num_devices
    low, high = observation_bounds(k)
    assert len(AGENT_FEATURES) == 11
    for agent in ma.possible_agents:
        space = ma.observation_space(agent)
        assert (
            space is ma.observation_space(agent)
            and space.shape == (11,)
            and space.dtype == np.float32
        )
        np.testing.assert_array_equal(space.low, np.concatenate([low[:7], low[7 * k :]]))
        np.testing.assert_array_equal(space.high, np.concatenate([high[:7], high[7 * k :]]))
        assert ma.action_space(agent).shape == (4,)
    assert ma.observation_space("device_0") is not ma.observation_space(
        "device_1"
    )  # seeded one by one
    with pytest.raises(RuntimeError, match="reset"):
        ma.state()
    ma.reset(seed=0)
    assert ma.state_space.contains(ma.state())
    # agent_observations is vectorised over leading axes
    batch = np.random.default_rng(0).uniform(size=(2, 3, 7 * k + 4)).astype(np.float32)
    rows = agent_observations(batch, k)
    assert rows.shape == (2, 3, k, 11)
    np.testing.assert_array_equal(
        rows[1, 2, 4], np.concatenate([batch[1, 2, 28:35], batch[1, 2, 7 * k :]])
    )
    with pytest.raises(ValueError, match="K=5"):
        agent_observations(batch, 5)


def test_seeding_render_close_and_pickle():
    ma = parallel_env(render_mode="ansi", num_rounds=T, agent_reward="per_device")
    obs_a, _ = ma.reset(seed=11)
    text = ma.render()
    assert isinstance(text, str) and "round 0" in text
    clone = pickle.loads(pickle.dumps(ma))
    rng = np.random.default_rng(5)
    actions = _actions(ma, rng)
    out_a = ma.step(actions)
    out_b = clone.step(actions)
    for x, y in zip(out_a[:4], out_b[:4]):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    obs_b, _ = ma.reset(seed=11)
    for agent in ma.possible_agents:
        np.testing.assert_array_equal(obs_a[agent], obs_b[agent])
    assert parallel_env(render_mode="rgb_array", num_rounds=T).metadata["render_modes"] == [
        "ansi",
        "rgb_array",
    ]
    ma.close()
    clone.close()


# -------------------------------------------------------- agents.train_ippo (parameter-shared IPPO)
def _ippo_parts(config, n_envs=2, **kwargs):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.train_ippo import AgentVecEnv

    venv = AgentVecEnv(config, n_envs, seed=5, **kwargs)
    norm = VecNormalize(venv, gamma=0.99)
    model = PPO("MlpPolicy", norm, n_steps=8, batch_size=40, n_epochs=1, seed=0, device="cpu")
    return venv, norm, model


def test_agent_vec_env_is_k_agents_per_env():
    from fedenv.config import resolve_config

    config = resolve_config("switching", num_rounds=3)
    venv, _, _ = _ippo_parts(config, agent_reward="per_device")
    k = venv.k
    assert venv.num_envs == 2 * k and venv.observation_space.shape == (11,)
    assert venv.action_space.shape == (4,)  # factored: schedule, rank, power, bandwidth
    obs = venv.reset()
    ref = parallel_env(preset="switching", num_rounds=3, agent_reward="per_device")
    ref_obs, _ = ref.reset(seed=5)  # env 0 is seeded seed + 0
    np.testing.assert_array_equal(obs[:k], np.stack([ref_obs[a] for a in ref.possible_agents]))
    rng = np.random.default_rng(0)
    for t in range(3):
        actions = rng.uniform(-1, 1, (venv.num_envs, 4)).astype(np.float32)
        obs, rewards, dones, infos = venv.step(actions)
        joint = venv.adapter(actions[:k])
        ref_obs, ref_rewards, _, _, _ = ref.step(
            {a: joint[j] for j, a in enumerate(ref.possible_agents)}
        )
        np.testing.assert_allclose(
            rewards[:k], [ref_rewards[a] for a in ref.possible_agents], rtol=1e-6
        )
        assert dones.tolist() == [t == 2] * venv.num_envs  # the horizon ends every agent's episode
    assert infos[0]["episode"]["l"] == 3 and "terminal_observation" in infos[k]
    assert obs[0, AGENT_FEATURES.index("round_fraction")] == 0.0  # reset after the horizon
    with pytest.raises(ValueError, match="env or factored"):
        _ippo_parts(config, action_form="residual")


def test_ippo_policy_in_the_single_env_plays_the_multiagent_rounds():
    """IPPOPolicy (the evaluation adapter, single env) and the shared policy acting per agent in
    the multi-agent env give the same episode."""
    pytest.importorskip("stable_baselines3")
    from agents.train_ippo import IPPOPolicy
    from baselines.evaluation import evaluate
    from fedenv.config import resolve_config

    config = resolve_config("switching", num_rounds=4)
    venv, norm, model = _ippo_parts(config)
    norm.obs_rms.update(np.random.default_rng(0).uniform(0, 1, (50, 11)))  # non-trivial statistics
    policy = IPPOPolicy(model, norm, config, "factored")
    ev = evaluate(policy, config, [3])
    ma = parallel_env(config=config)
    obs, _ = ma.reset(seed=3)
    total = 0.0
    while ma.agents:
        x = np.stack([obs[a] for a in ma.possible_agents])
        act, _ = model.policy.predict(norm.normalize_obs(x), deterministic=True)
        joint = policy.actions(act)
        obs, rewards, _, _, _ = ma.step({a: joint[j] for j, a in enumerate(ma.possible_agents)})
        total += rewards["device_0"]
    assert ev.episodes[0]["episode_return"] == pytest.approx(total, rel=1e-9)
    venv.close()


@pytest.mark.slow
def test_train_ippo_writes_a_run_and_compares(tmp_path):
    pytest.importorskip("stable_baselines3")
    from agents import train_ippo

    run = tmp_path / "run"
    small = [
        "--config",
        "switching",
        "--total-timesteps",
        "512",
        "--n-envs",
        "2",
        "--n-steps",
        "64",
        "--batch-size",
        "640",
        "--n-epochs",
        "2",
    ]
    train_ippo.main(
        ["--run-dir", str(run), *small, "--compare", "lyapunov", "--compare-episodes", "2"]
    )
    for name in (
        "args.yaml",
        "env_config.yaml",
        "meta.json",
        "model.zip",
        "vecnormalize.pkl",
        "metrics.json",
        "comparison.md",
        "comparison.json",
    ):
        assert (run / name).is_file(), name
    rows = {
        r["policy"]: r
        for r in __import__("json").loads((run / "comparison.json").read_text())["rows"]
    }
    assert set(rows) == {"ippo:run", f"lyapunov(V={DEFAULT_V:g})"}
    assert all(
        0 < r["final_accuracy"] < 1 and np.isfinite(r["episode_return"]) for r in rows.values()
    )
    with pytest.raises(FileExistsError, match="--compare-only"):
        train_ippo.main(["--run-dir", str(run), *small])
    train_ippo.main(
        ["--run-dir", str(run), "--compare-only", "--compare", "none", "--compare-episodes", "1"]
    )
    assert "ippo:run" in (run / "comparison.md").read_text()


def test_aec_form_passes_the_pettingzoo_api_test():
    from pettingzoo.test import api_test
    from pettingzoo.utils import parallel_to_aec

    api_test(parallel_to_aec(parallel_env(preset="unified", num_rounds=3)), num_cycles=10)
