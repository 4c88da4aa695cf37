"""agents.train_rllib: RLlib PPO on FedLoRAWireless-v0 (Ray optional: the `rllib` extra).

The fast tests need no Ray. The slow test trains on a local Ray instance; it runs where Ray
RLlib is installed (``bash scripts/setup_rllib.sh`` builds .venv-rllib for it) and is skipped,
with the reason, elsewhere.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from gymnasium import spaces

from agents import train_rllib
from agents.train_rllib import (
    Args,
    check_reachable,
    latest_checkpoint,
    make_rllib_env,
    prepare_run,
    require_ray,
)
from fedenv.config import EnvConfig, resolve_config


def unused_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ bad input, no Ray needed
def test_missing_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ImportError, match=r"pip install 'fedenv\[rllib\]'"):
        require_ray()
    with pytest.raises(ImportError, match=r"pip install 'fedenv\[rllib\]'"):
        train_rllib.main(["--run-dir", str(tmp_path / "run"), "--iterations", "1"])
    assert not (tmp_path / "run").exists()


def test_unreachable_address_fails_fast_with_a_clear_message():
    address = f"127.0.0.1:{unused_local_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match="no Ray cluster answers") as err:
        check_reachable(address, timeout_s=2.0)
    assert time.perf_counter() - t0 < 10.0
    assert address in str(err.value) and "ray start --head" in str(err.value)


@pytest.mark.parametrize("address", ["nonsense", "host:", ":6379", "host:99999"])
def test_malformed_address_is_rejected(address):
    with pytest.raises(ValueError, match="HOST:PORT"):
        check_reachable(address, timeout_s=1.0)


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"batch_size": 500, "train_batch_size": 200}, "--batch-size"),
        ({"env_runners": -1}, "--env-runners"),
        ({"checkpoint_every": -2}, "--checkpoint-every"),
        ({"activation": "gelu"}, "--activation"),
        ({"connect_timeout_s": 0.0}, "--connect-timeout-s"),
    ],
)
def test_bad_arguments_name_the_flag(change, flag, tmp_path):
    args = replace(Args(run_dir=str(tmp_path / "run")), **change)
    with pytest.raises(ValueError, match=flag):
        prepare_run(args, set(change))


def test_resume_needs_a_run_and_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        prepare_run(Args(run_dir=str(tmp_path), resume=True), {"resume", "run_dir"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.yaml").write_text(yaml.safe_dump({"seed": 3}))
    (run / "meta.json").write_text(json.dumps({"algo": "rllib_ppo"}))
    resolve_config("switching").to_yaml(run / "env_config.yaml")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        prepare_run(Args(run_dir=str(run), resume=True), {"resume", "run_dir"})
    with pytest.raises(FileExistsError, match="--resume"):
        prepare_run(Args(run_dir=str(run)), {"run_dir"})


def test_latest_checkpoint_skips_partial_ones(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for name, complete in [
        ("iter_000002", True),
        ("iter_000010", True),
        ("iter_000011", False),
        ("iter_000012.tmp", True),
    ]:
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        if complete:
            (tmp_path / "checkpoints" / name / "rllib_checkpoint.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == (10, tmp_path / "checkpoints" / "iter_000010")


def test_rllib_env_from_env_config_mapping():
    """RLlib's env_config (a mapping that may name a preset) builds the Dict-action env."""
    env = make_rllib_env({"preset": "soft", "num_rounds": 3})
    base = env.unwrapped
    assert base.config == resolve_config("soft", num_rounds=3)
    assert isinstance(env.action_space, spaces.Dict)
    assert set(env.action_space) == set(base.codec.components)
    assert all(s.shape == (base.num_devices,) for s in env.action_space.values())
    # the full resolved config (what agents.train_rllib ships to the env runners) round-trips
    assert make_rllib_env(resolve_config("unified").to_dict()).unwrapped.config == resolve_config(
        "unified"
    )
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    flags = []
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and np.isfinite(reward)
        flags.append((terminated, truncated))
    # the horizon ends the task: a termination for RLlib, no value bootstrapped beyond it
    assert flags == [(False, False), (False, False), (True, False)]


# ------------------------------------------------------------------- training on local Ray
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip(
        "ray",
        reason="Ray RLlib is not installed in this interpreter (pip install 'fedenv[rllib]'; CI: "
        "scripts/setup_rllib.sh)",
    )
    pytest.importorskip(
        "ray.rllib", reason="Ray is installed without RLlib (pip install 'fedenv[rllib]')"
    )
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, address="local")
    yield ray
    ray.shutdown()


def _module_state(module) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in module.get_state().items()}


@pytest.mark.slow
def test_one_iteration_two_env_runners_checkpoint_and_resume(local_ray, tmp_path):
    run = tmp_path / "run"
    small = ["--train-batch-size", "200", "--batch-size", "100", "--n-epochs", "1", "--seed", "0"]
    first = train_rllib.main(
        [
            "--run-dir",
            str(run),
            "--env-runners",
            "2",
            "--iterations",
            "1",
            "--checkpoint-every",
            "1",
            *small,
        ]
    )
    assert first["iterations"] == 1 and first["start_iteration"] == 0
    rows = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1]
    assert rows[0]["env_steps"] >= 200 and rows[0]["episode_len_mean"] == EnvConfig().num_rounds
    assert np.isfinite(rows[0]["episode_return_mean"]) and 0 < rows[0]["final_accuracy"] < 1
    newest = latest_checkpoint(run)
    assert newest is not None and newest[0] == 1
    for name in ("args.yaml", "env_config.yaml", "meta.json", "metrics.json"):
        assert (run / name).is_file()

    # restore: a fresh algorithm (same seed, untrained) takes the checkpoint's weights and iteration
    from ray.rllib.core.rl_module.rl_module import RLModule

    saved = _module_state(
        RLModule.from_checkpoint(
            newest[1] / "learner_group" / "learner" / "rl_module" / "default_policy"
        )
    )
    args = replace(Args(train_batch_size=200, batch_size=100, n_epochs=1), env_runners=0)
    algo = train_rllib.build_algorithm(args, resolve_config(run / "env_config.yaml"))
    try:
        fresh = _module_state(algo.get_module())
        assert fresh.keys() <= saved.keys() and any("pi." in k for k in fresh)
        assert not all(np.array_equal(fresh[k], saved[k]) for k in fresh)
        algo.restore_from_path(str(newest[1].resolve()))
        assert algo.iteration == 1
        restored = _module_state(algo.get_module())
        assert all(np.array_equal(restored[k], saved[k]) for k in restored)
    finally:
        algo.stop()

    # resume: the saved arguments (two env runners, small batches) continue to iteration 2
    second = train_rllib.main(["--run-dir", str(run), "--resume", "--iterations", "2"])
    assert (
        second["start_iteration"] == 1 and second["iterations"] == 2 and second["env_runners"] == 2
    )
    rows = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert (
        rows[1]["env_steps"] == rows[0]["env_steps"] + rows[1]["env_steps_this_iter"]
    )  # counters restored too
    assert latest_checkpoint(run)[0] == 2
    meta = json.loads((run / "meta.json").read_text())
    assert [s["resumed_from_iteration"] for s in meta["sessions"]] == [None, 1]
    assert Path(second["checkpoint"]).name == "iter_000002"

    # same seed, same run: a second fresh run reproduces the first iteration exactly
    again = tmp_path / "again"
    train_rllib.main(["--run-dir", str(again), "--env-runners", "2", "--iterations", "1", *small])
    row = json.loads((again / "progress.jsonl").read_text().splitlines()[0])
    for key in ("episode_return_mean", "final_accuracy", "policy_loss", "vf_loss"):
        assert row[key] == rows[0][key], key


# ------------------------------------------- the multi-agent env through RLlib's PettingZoo wrapper
def _rllib_parallel_env(env_config: dict) -> object:
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    from fedenv.multiagent import parallel_env

    return ParallelPettingZooEnv(parallel_env(**env_config))


def test_multiagent_env_through_parallel_pettingzoo_env():
    """fedenv.multiagent reaches RLlib as a MultiAgentEnv (ParallelPettingZooEnv): one agent per
    device."""
    pytest.importorskip(
        "pettingzoo", reason="PettingZoo is not installed (pip install 'fedenv[pettingzoo]')"
    )
    pytest.importorskip(
        "ray.rllib",
        reason="Ray RLlib is not installed in this interpreter (pip install 'fedenv[rllib]')",
    )
    env = _rllib_parallel_env({"preset": "unified", "num_rounds": 3, "agent_reward": "per_device"})
    agents = [f"device_{k}" for k in range(10)]
    assert sorted(env.possible_agents) == sorted(agents)
    assert set(env.observation_space) == set(agents) and set(env.action_space) == set(agents)
    assert all(
        env.action_space[a].shape == (4,) and env.observation_space[a].shape == (11,)
        for a in agents
    )
    obs, infos = env.reset(seed=0)
    assert set(obs) == set(agents) and set(infos) == set(agents)
    env.action_space.seed(0)
    ends = []
    for _ in range(3):
        obs, rewards, terminateds, truncateds, infos = env.step(env.action_space.sample())
        assert all(env.observation_space[a].contains(obs[a]) for a in agents)
        assert set(rewards) == set(agents) and all(np.isfinite(r) for r in rewards.values())
        assert all(
            sum(infos[a]["reward_terms"].values()) == pytest.approx(rewards[a], abs=1e-12)
            for a in agents
        )
        ends.append((terminateds["__all__"], truncateds["__all__"]))
    # every agent stays for the whole episode and is truncated at the horizon
    assert ends == [(False, False), (False, False), (False, True)]
    env.close()


@pytest.mark.slow
def test_multiagent_one_ppo_iteration_with_a_shared_policy(local_ray):
    """RLlib PPO, one policy shared by every device's agent, trains one iteration on the multi-agent
    env."""
    pytest.importorskip(
        "pettingzoo", reason="PettingZoo is not installed (pip install 'fedenv[pettingzoo]')"
    )
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    register_env("fedlora_wireless_parallel", _rllib_parallel_env)
    config = (
        PPOConfig()
        .environment(
            "fedlora_wireless_parallel", env_config={"preset": "switching", "num_rounds": 10}
        )
        .multi_agent(
            policies={"shared"}, policy_mapping_fn=lambda agent_id, *args, **kwargs: "shared"
        )
        .env_runners(num_env_runners=0, rollout_fragment_length="auto")
        .learners(num_learners=0)
        .training(
            train_batch_size_per_learner=400,
            minibatch_size=200,
            num_epochs=1,
            vf_clip_param=float("inf"),
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[32, 32]))
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        result = algo.train()
        learner = result["learners"]["shared"]
        assert np.isfinite(learner["policy_loss"]) and np.isfinite(learner["vf_loss"])
        runners = result["env_runners"]
        assert runners["num_env_steps_sampled"] >= 400 and runners["episode_len_mean"] == 10
        # every round gives the shared policy one step per device
        assert (
            runners["num_module_steps_sampled"]["shared"] == 10 * runners["num_env_steps_sampled"]
        )
        assert list(algo.get_module("shared").get_state())  # one module for every agent
    finally:
        algo.stop()
