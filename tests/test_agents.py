"""Learned agents: training runs, resume, the policy adapter, the per-device network, arguments."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("stable_baselines3")

import gymnasium as gym  # noqa: E402
import torch as th  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402

import fedenv  # noqa: E402,F401
from agents import train_ppo  # noqa: E402
from agents.actions import ActionAdapter  # noqa: E402
from agents.envs import HorizonIsTermination, make_vec_env  # noqa: E402
from agents.evaluate import load_policy, parse_spec  # noqa: E402
from agents.features import AgentObservation, ObservationFeatures  # noqa: E402
from agents.normalization import DevicePooledStats  # noqa: E402
from agents.policies import (  # noqa: E402
    PerDeviceActorCriticPolicy,
    PerDeviceAttentionPolicy,
    PerDeviceAutoregressivePolicy,
    resize_policy,
)
from agents.runs import RunDir, parse_args  # noqa: E402
from baselines.evaluation import evaluate  # noqa: E402
from fedenv.actions import ActionCodec  # noqa: E402
from fedenv.config import resolve_config  # noqa: E402
from fedenv.env import FedLoRAWirelessEnv  # noqa: E402
from fedenv.wrappers import BudgetShield  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: A tiny but complete training run: 2 envs x 64 steps per update, 4 updates.
TINY = [
    "--total-timesteps", "512", "--n-envs", "2", "--n-steps", "64", "--batch-size", "64",
    "--n-epochs", "1", "--eval-freq", "256", "--eval-episodes", "1", "--checkpoint-freq", "256",
    "--net-arch", "16", "--no-progress-bar", "--no-tensorboard", "--seed", "3",
]  # fmt: skip


def _train(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "agents.train_ppo", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("agents") / "ppo_tiny"
    _train(*TINY, "--run-dir", str(run))
    return run


def test_training_writes_a_loadable_run_directory(tiny_run: Path) -> None:
    run = RunDir(tiny_run)
    for path in (
        run.model,
        run.normalizer,
        run.best_model,
        run.best_normalizer,
        run.evaluations,
        run.metrics,
        tiny_run / "args.yaml",
        tiny_run / "meta.json",
    ):
        assert path.is_file(), path
    meta = json.loads((tiny_run / "meta.json").read_text())
    assert meta["algo"] == "ppo" and meta["seed"] == 3
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", meta["commit"])
    assert run.env_config() == resolve_config("switching")
    assert run.read_args()["total_timesteps"] == 512
    assert json.loads(run.metrics.read_text())["timesteps"] == 512
    assert [steps for steps, _, _ in [run.latest_checkpoint()]] == [512]
    rows = run.evaluations.read_text().strip().splitlines()
    assert rows[0].startswith("timesteps,") and [int(r.split(",")[0]) for r in rows[1:]] == [
        0,
        256,
        512,
    ]
    for which in ("best", "final", "latest"):
        policy = load_policy(f"ppo:{tiny_run}@{which}", "switching")
        assert policy.name == "ppo:ppo_tiny" + ("" if which == "best" else f"@{which}")


def test_rescore_scores_every_saved_model_on_the_validation_seeds(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m agents.rescore`` plays every checkpoint, the final model and best/ on the
    run's validation seeds (from its eval_seed), pairs each with the reference, chooses the
    highest score and writes rescore.csv beside the run's other files."""
    import csv
    import shutil

    from agents import rescore
    from baselines.objective import paired_difference
    from baselines.registry import make_policy

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rescore.main([str(run), "--episodes", "2", "--reference", "lyapunov:V=10"])
    rows = list(csv.DictReader((run / "rescore.csv").open()))
    assert [(int(r["steps"]), r["spec"]) for r in rows[:3]] == [
        (256, f"ppo:{run}/checkpoints/ckpt_256_steps.zip"),
        (512, f"ppo:{run}/checkpoints/ckpt_512_steps.zip"),
        (512, f"ppo:{run}@final"),
    ]
    assert rows[3]["spec"] == f"ppo:{run}@best" and int(rows[3]["steps"]) in (0, 256, 512)
    assert len(rows) == 4
    scores = [float(r["score"]) for r in rows]
    assert [r["chosen"] for r in rows] == [str(i == scores.index(max(scores))) for i in range(4)]
    assert "chosen on 2 validation episodes: " + rows[scores.index(max(scores))]["spec"] in (
        capsys.readouterr().out
    )
    # each row is that model played on the seeds eval_seed, eval_seed + 1 of the run's config
    cfg = RunDir(run).env_config()
    seeds = [RunDir(run).read_args()["eval_seed"] + i for i in range(2)]
    agent = evaluate(load_policy(f"ppo:{run}/checkpoints/ckpt_256_steps.zip", cfg), cfg, seeds)
    reference = evaluate(make_policy("lyapunov:V=10", cfg), cfg, seeds)
    assert float(rows[0]["final_accuracy"]) == pytest.approx(
        agent.metric("final_accuracy").mean(), abs=1e-12
    )
    assert float(rows[0]["delta_points"]) == pytest.approx(
        100 * paired_difference(agent, reference)[0], abs=1e-9
    )
    assert (run / "rescore.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        rescore.candidates(tmp_path)
    # a run whose args.yaml lacks eval_seed asks for --seed (and takes it)
    from agents.runs import _checked_yaml, write_file

    saved = RunDir(run).read_args()
    del saved["eval_seed"]
    write_file(run / "args.yaml", _checked_yaml(saved))
    with pytest.raises(ValueError, match=r"names no eval_seed .*--seed N"):
        rescore.rescore(run, 1)
    assert len(rescore.rescore(run, 1, first_seed=seeds[0])) == 4


def test_resume_continues_from_the_latest_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "resumed"
    shutil.copytree(tiny_run, run_dir)
    # Forget the end of training (final model and checkpoint): the newest model is then step 256.
    for p in [
        *run_dir.glob("checkpoints/*512*"),
        run_dir / "model.zip",
        run_dir / "vecnormalize.pkl",
    ]:
        p.unlink()
    # a run from before the budget shield became the default (no ``shield`` key) resumes without
    from agents.runs import _checked_yaml, write_file

    saved = RunDir(run_dir).read_args()
    assert saved.pop("shield") is True  # the default
    assert saved.pop("prune") == "deploy"  # the default; a run from before it resumes without
    write_file(run_dir / "args.yaml", _checked_yaml(saved))
    proc = _train(
        "--run-dir", str(run_dir), "--resume", "--total-timesteps", "768", "--no-progress-bar"
    )
    assert "continuing from step 256" in proc.stdout
    run = RunDir(run_dir)
    assert json.loads(run.metrics.read_text())["timesteps"] == 768
    assert run.latest_checkpoint()[0] == 768  # type: ignore[index]
    steps = [int(r.split(",")[0]) for r in run.evaluations.read_text().strip().splitlines()[1:]]
    assert steps == [
        0,
        256,
        512,
        768,
    ]  # the first session's 0, 256 (its 512 was after the resume point), then 512, 768
    assert run.read_args()["total_timesteps"] == 768 and run.read_args()["n_envs"] == 2
    assert run.read_args()["shield"] is False and run.read_args()["prune"] == "never"
    assert len(json.loads((run_dir / "meta.json").read_text())["sessions"]) == 2
    from stable_baselines3 import PPO

    assert PPO.load(run.model).num_timesteps == 768


def test_trained_policy_acts_validly_and_evaluates_deterministically(tiny_run: Path) -> None:
    cfg = resolve_config("switching")
    policy = load_policy(f"ppo:{tiny_run}", cfg)
    env = FedLoRAWirelessEnv(cfg)
    obs, info = env.reset(seed=5)
    policy.reset(5)
    for _ in range(5):
        action = policy.act(obs, info)
        assert action.shape == env.action_space.shape and action.dtype == np.float32
        assert env.action_space.contains(action)
        obs, _, _, _, info = env.step(action)
    first = evaluate(policy, cfg, [1000, 1001]).metric("episode_return")
    again = evaluate(load_policy(f"ppo:{tiny_run}", cfg), cfg, [1000, 1001]).metric(
        "episode_return"
    )
    np.testing.assert_array_equal(first, again)
    assert first[0] != first[1]  # different seeds, different episodes


def test_a_run_trained_with_the_shield_evaluates_with_it(tiny_run: Path, tmp_path: Path) -> None:
    """The run's saved ``shield`` (the default) puts the budget shield in its evaluation adapter:
    on a budget a quarter of the default's, the same model overspends without it and never with
    it."""
    import shutil

    from agents.runs import _checked_yaml, write_file

    cfg = resolve_config("switching", budgets={"energy_budget_j": 0.03125})
    assert RunDir(tiny_run).read_args()["shield"] is True
    run = tmp_path / "unshielded"
    shutil.copytree(tiny_run, run)
    write_file(run / "args.yaml", _checked_yaml({**RunDir(run).read_args(), "shield": False}))
    seeds = [1000, 1001, 1002]
    with pytest.warns(UserWarning, match="different env config"):
        bare, shielded = load_policy(f"ppo:{run}", cfg), load_policy(f"ppo:{tiny_run}", cfg)
    assert bare.actions.shield is None and shielded.actions.shield is not None
    assert evaluate(bare, cfg, seeds).metric("in_budget").mean() < 1.0
    np.testing.assert_array_equal(evaluate(shielded, cfg, seeds).metric("in_budget"), 1.0)


def test_a_run_saved_with_the_pruner_evaluates_with_it(tiny_run: Path, tmp_path: Path) -> None:
    """The run's saved ``prune`` (``deploy``, the default, or ``always``) puts the arrival pruner
    in its evaluation adapter, after the shield; ``never``, or a run that saved none (from before
    the pruner), evaluates without it."""
    import shutil

    from agents.runs import _checked_yaml, write_file

    cfg = resolve_config("switching")
    saved = RunDir(tiny_run).read_args()
    assert saved["prune"] == "deploy"  # the default
    runs = {}
    for name, args in (
        ("always", {**saved, "prune": "always"}),
        ("never", {**saved, "prune": "never"}),
        ("older", {k: v for k, v in saved.items() if k != "prune"}),
        ("misspelled", {**saved, "prune": "deployed"}),
    ):
        runs[name] = tmp_path / name
        shutil.copytree(tiny_run, runs[name])
        write_file(runs[name] / "args.yaml", _checked_yaml(args))
    pruned = load_policy(f"ppo:{tiny_run}", cfg)
    assert pruned.actions.pruner is not None and pruned.actions.shield is not None
    assert load_policy(f"ppo:{runs['always']}", cfg).actions.pruner is not None
    assert load_policy(f"ppo:{runs['never']}", cfg).actions.pruner is None
    bare = load_policy(f"ppo:{runs['older']}", cfg)
    assert bare.actions.pruner is None
    # a hand-edited args.yaml gets an error naming the file and the modes, not a silent mode
    with pytest.raises(ValueError, match=r"args.yaml's prune must be one of never, deploy, always"):
        load_policy(f"ppo:{runs['misspelled']}", cfg)
    # the pruned policy plays its own decision with the harmful arrivals idled
    env = FedLoRAWirelessEnv(cfg)
    obs, info = env.reset(seed=7)
    pruned.reset(7)
    bare.reset(7)
    idled = 0
    for _ in range(cfg.num_rounds):
        mine, unpruned = pruned.act(obs, info), bare.act(obs, info)
        np.testing.assert_array_equal(mine, pruned.actions.pruner(unpruned, info))
        idled += int(np.any(mine != unpruned))
        obs, _, _, _, info = env.step(mine)
    assert idled > 0


def test_a_tradeoff_run_keeps_its_lyapunov_v_and_every_budget(tmp_path: Path) -> None:
    """``--action-form tradeoff --base-v V`` trains on top of the Lyapunov policy at V, saves V
    with the run, and evaluates on top of the same V; the Lyapunov policy's budget guard keeps
    every budget in training (the multiplier never rises) and in evaluation."""
    run = tmp_path / "tradeoff"
    _train(
        *TINY,
        "--run-dir", str(run), "--train-config", str(ROOT / "configs/train/ppo_tradeoff.yaml"),
        "--base-v", "3", "--total-timesteps", "256", "--eval-freq", "128", "--vec-env", "dummy",
    )  # fmt: skip
    args = RunDir(run).read_args()
    assert args["action_form"] == "tradeoff" and args["base_v"] == 3.0
    assert json.loads((run / "lagrangian.json").read_text())["lambda"] == [0.0]
    cfg = resolve_config("switching")
    policy = load_policy(f"ppo:{run}", cfg)
    assert policy.actions.kind == "tradeoff" and policy.actions.shield is None
    assert policy.actions._base_policy.tradeoff_v == 3.0
    np.testing.assert_array_equal(evaluate(policy, cfg, [1000, 1001]).metric("in_budget"), 1.0)
    # a model file of the run (as when checkpoints are re-scored) is read with the run's V too
    for model in (run / "best" / "model.zip", run / "model.zip"):
        from_file = load_policy(f"ppo:{model}", cfg)
        assert from_file.actions.kind == "tradeoff"
        assert from_file.actions._base_policy.tradeoff_v == 3.0


def test_use_sde_trains_with_state_dependent_noise_and_needs_the_mlp_policy(
    tmp_path: Path,
) -> None:
    """``--use-sde`` reaches PPO (saved with the model: the policy draws its noise from a matrix
    redrawn every --sde-sample-freq steps, so actions under one draw are a function of the
    state), and the per-device policy, which has no such noise, is refused before a run
    directory is made."""
    run = tmp_path / "sde"
    _train(
        *TINY, "--run-dir", str(run), "--policy", "mlp", "--use-sde", "--sde-sample-freq", "8",
        "--total-timesteps", "256", "--eval-freq", "128", "--vec-env", "dummy",
    )  # fmt: skip
    model = PPO.load(RunDir(run).model, device="cpu")
    assert model.use_sde and model.sde_sample_freq == 8 and model.policy.use_sde
    x = th.zeros((1, *model.observation_space.shape))
    model.policy.reset_noise(1)
    with th.no_grad():
        a1, a2 = model.policy(x)[0], model.policy(x)[0]
        model.policy.reset_noise(1)
        a3 = model.policy(x)[0]
    th.testing.assert_close(a1, a2)
    assert not th.allclose(a1, a3)
    cfg = resolve_config("switching")
    assert evaluate(load_policy(f"ppo:{run}", cfg), cfg, [1000]).metric("final_accuracy").size == 1

    bad = tmp_path / "sde_per_device"
    with pytest.raises(ValueError, match="--use-sde needs --policy mlp"):
        train_ppo.main([*TINY, "--run-dir", str(bad), "--use-sde"])
    assert not bad.exists()


@pytest.mark.parametrize("kind", [PerDeviceActorCriticPolicy, PerDeviceAttentionPolicy])
def test_per_device_policy_is_permutation_equivariant_and_serves_any_k(kind: type) -> None:
    cfg = resolve_config("switching")
    features = ObservationFeatures(cfg, "label_mix")
    env = AgentObservation(FedLoRAWirelessEnv(cfg), features)
    policy = kind(
        env.observation_space,
        ActionAdapter(cfg).space,
        lambda _: 1e-3,
        net_arch=[16, 16],
        device_features=features.device_features,
    )
    th.manual_seed(0)
    for p in policy.parameters():  # a random network, far from its near-zero initial output layer
        th.nn.init.normal_(p, std=0.5)
    obs, _ = env.reset(seed=0)
    k, f = cfg.devices.num_devices, features.device_features
    perm = np.random.default_rng(0).permutation(k)
    dev = obs[: k * f].reshape(k, f)
    permuted = np.concatenate([dev[perm].ravel(), obs[k * f :]])
    a, _ = policy.predict(obs, deterministic=True)
    b, _ = policy.predict(permuted, deterministic=True)
    assert np.abs(a).max() > 0.05
    np.testing.assert_allclose(b, a[perm], atol=1e-5)
    v = policy.predict_values(th.as_tensor(obs)[None])
    v_perm = policy.predict_values(th.as_tensor(permuted)[None])
    np.testing.assert_allclose(v.detach().numpy(), v_perm.detach().numpy(), atol=1e-5)
    # The same weights for K = 3: shapes do not depend on K.
    cfg3 = cfg.replace(devices={"num_devices": 3})
    env3 = AgentObservation(FedLoRAWirelessEnv(cfg3), ObservationFeatures(cfg3, "label_mix"))
    small = resize_policy(policy, env3.observation_space, ActionAdapter(cfg3).space)
    obs3, _ = env3.reset(seed=1)
    act3, _ = small.predict(obs3, deterministic=True)
    assert act3.shape == (3, 4) and type(small) is kind
    for name, tensor in small.state_dict().items():
        assert tensor.shape == policy.state_dict()[name].shape, name


def test_autoregressive_policy_conditions_each_device_on_the_devices_before_it() -> None:
    """Device k's mean reads the actions drawn for devices 0..k-1 and no others; a drawn action
    scores the same log-probability one device at a time (sampling) as all at once (PPO's
    update), and the deterministic action is the fixed point of the conditional means."""
    th.manual_seed(0)
    policy = PerDeviceAutoregressivePolicy(
        gym.spaces.Box(-5.0, 5.0, (7 * 4 + 4,), np.float32),
        gym.spaces.Box(-1.0, 1.0, (4, 3), np.float32),
        lambda _: 1e-3,
        net_arch=[16, 16],
    )
    for p in policy.parameters():  # a random network, far from its near-zero initial output layer
        th.nn.init.normal_(p, std=0.5)
    x = th.randn(6, 7 * 4 + 4)
    with th.no_grad():
        actions, _, log_prob = policy(x)
        flat = actions.reshape(6, -1)
        _, scored, entropy = policy.evaluate_actions(x, flat)
        th.testing.assert_close(scored, log_prob)
        assert entropy.shape == (6,)
        dist = policy.get_distribution(x)
        base = dist.conditional_mean(flat).reshape(6, 4, 3)
        moved = flat.reshape(6, 4, 3).clone()
        moved[:, 1] = -moved[:, 1]  # device 1's action changes
        after = dist.conditional_mean(moved.reshape(6, -1)).reshape(6, 4, 3)
        th.testing.assert_close(after[:, :2], base[:, :2])  # devices 0 and 1: unchanged
        assert (after[:, 2:] - base[:, 2:]).abs().amin() > 0  # devices 2 and 3 read it
        mode = dist.mode()
        th.testing.assert_close(dist.conditional_mean(mode), mode)
        np.testing.assert_allclose(
            policy.predict(x.numpy(), deterministic=True)[0], mode.clamp(-1, 1).reshape(6, 4, 3)
        )
    # the same weights serve another K
    small = resize_policy(policy, gym.spaces.Box(-5.0, 5.0, (7 * 2 + 4,), np.float32),
                          gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32))  # fmt: skip
    assert type(small) is PerDeviceAutoregressivePolicy
    assert small.predict(np.zeros(18, np.float32), deterministic=True)[0].shape == (2, 3)


def test_autoregressive_policy_imitates_a_joint_choice_that_independent_devices_cannot() -> None:
    """A demonstrator whose devices alternate (device k does the opposite of device k-1, device
    0 at random) in one state: fitted by behaviour cloning, the autoregressive policy reproduces
    it; the per-device one, whose devices are independent given the observation, can only
    learn the mean."""
    from agents.bc import clone, imitated_means

    rng = np.random.default_rng(0)
    x = np.repeat(rng.standard_normal((1, 7 * 4 + 4)).astype(np.float32), 512, axis=0)
    first = rng.choice([-0.8, 0.8], size=(512, 1, 1))
    target = np.concatenate([first * (-1) ** k for k in range(4)], axis=1)
    target = np.repeat(target, 3, axis=2).reshape(512, -1).astype(np.float32)
    errors = {}
    for kind in (PerDeviceActorCriticPolicy, PerDeviceAutoregressivePolicy):
        th.manual_seed(0)
        obs = gym.spaces.Box(-5.0, 5.0, (7 * 4 + 4,), np.float32)
        policy = kind(obs, gym.spaces.Box(-1.0, 1.0, (4, 3), np.float32), lambda _: 1e-3)
        clone(policy, x, target, epochs=50, batch_size=64)
        with th.no_grad():
            mean = imitated_means(policy, th.as_tensor(x), th.as_tensor(target))
        err = (mean.numpy() - target) ** 2
        errors[kind.__name__] = float(err.reshape(512, 4, 3)[:, 1:].mean())  # devices 1-3
    assert errors["PerDeviceActorCriticPolicy"] > 0.6, errors  # the target's variance: 0.64
    assert errors["PerDeviceAutoregressivePolicy"] < 0.05, errors


def test_attention_pooling_gives_each_device_its_own_context() -> None:
    """Mean pooling gives every device the same summary of the others; attention gives each
    device its own weighting of them (a query per device), permuted with the devices."""
    from agents.policies import PerDeviceTrunk

    th.manual_seed(0)
    h = th.randn(2, 5, 16)
    perm = th.tensor([3, 0, 4, 1, 2])
    for pooling in ("mean", "attention"):
        net = PerDeviceTrunk([16, 16], th.nn.Tanh, 3, pooling)
        context = net._context(h, 1)
        assert context.shape == h.shape
        same = th.allclose(context, context[:, :1].expand_as(context))
        assert same == (pooling == "mean"), pooling
        th.testing.assert_close(net._context(h[:, perm], 1), context[:, perm])
    with pytest.raises(ValueError, match="pooling must be one of mean, attention"):
        PerDeviceTrunk([16], th.nn.Tanh, 3, "max")


def test_factored_action_separates_schedule_and_rank() -> None:
    cfg = resolve_config("switching")
    adapter, codec = ActionAdapter(cfg, "factored"), ActionCodec(cfg)
    assert adapter.shape == (10, 4) and ActionAdapter(cfg, "env").shape == (10, 3)
    a = np.zeros((10, 4), dtype=np.float32)
    a[:, 0] = np.linspace(-1, 1, 10)  # schedule: the first five devices idle
    a[:, 1] = np.array(
        [-1, -0.6, -0.1, 0.4, 1.0] * 2
    )  # rank slot 0, 0, 1, 2, 3 (ranks 2, 2, 4, 8, 16)
    a[:, 2], a[:, 3] = 0.3, -0.7
    env_action = adapter(a)
    decision = codec.decode(codec.validate(env_action))
    np.testing.assert_array_equal(decision.module, [0, 0, 0, 0, 0, 1, 1, 2, 3, 4])
    np.testing.assert_allclose(env_action[:, 1:], a[:, 2:])
    split = resolve_config("split")
    assert (
        ActionAdapter(split, "factored").shape == ActionCodec(split).shape
    )  # no module component: unchanged
    with pytest.raises(ValueError, match="action_form must be one of"):
        ActionAdapter(cfg, "joint")


def test_pooled_normaliser_statistics_are_per_feature() -> None:
    rng = np.random.default_rng(0)
    k, f = 4, 9
    stats = DevicePooledStats(k, f)
    batch = rng.normal(size=(50, k * f + 4))
    stats.update(batch)
    dev = batch[:, : k * f].reshape(-1, f)
    np.testing.assert_allclose(stats.mean[:f], dev.mean(axis=0), rtol=1e-3)
    np.testing.assert_allclose(stats.mean[f : 2 * f], dev.mean(axis=0), rtol=1e-3)
    np.testing.assert_allclose(stats.var[-4:], batch[:, -4:].var(axis=0), rtol=1e-3)
    bigger = stats.resized(7)
    assert bigger.mean.shape == (7 * f + 4,)
    np.testing.assert_array_equal(bigger.mean[:f], stats.mean[:f])


def test_agent_observation_adds_label_skew_within_bounds() -> None:
    cfg = resolve_config("switching")
    features = ObservationFeatures(cfg, "label_mix")
    env = AgentObservation(FedLoRAWirelessEnv(cfg), features)
    obs, info = env.reset(seed=2)
    assert env.observation_space.contains(obs)
    k, f = cfg.devices.num_devices, features.device_features
    skew = obs[: k * f].reshape(k, f)[:, 7:]
    np.testing.assert_allclose(
        skew, info["label_distribution"] - info["global_label_distribution"], atol=1e-6
    )
    obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert ObservationFeatures(cfg, "env")(obs[:74], info).shape == (74,)
    with pytest.raises(ValueError, match="obs_features must be one of"):
        ObservationFeatures(cfg, "labels")


def test_horizon_is_reported_as_termination_for_training() -> None:
    env = HorizonIsTermination(gym.make("FedLoRAWireless-v0", num_rounds=3))
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (True, False)]
    venv = make_vec_env(resolve_config("switching"), 2, "dummy", seed=0)
    assert (
        venv.num_envs == 2
        and venv.observation_space.shape == (94,)
        and venv.action_space.shape == (10, 4)
    )


@pytest.mark.parametrize("preset", ["switching", "split", "soft", "unified"])
def test_batched_training_env_equals_single_envs_in_dummy_vec_env(preset: str) -> None:
    from types import SimpleNamespace

    from stable_baselines3.common.logger import Logger

    from agents.callbacks import EnvMetricsCallback

    cfg = resolve_config(preset, num_rounds=6)
    within: dict[bool, list[float]] = {False: [], True: []}
    for features, form, shield, prune in (
        ("label_mix_time", "factored", False, False),
        ("label_mix_budget", "factored", True, False),
        ("label_mix_budget", "factored", True, True),
        ("env", "env", False, True),
    ):
        kw = {"obs_features": features, "action_form": form, "shield": shield, "prune": prune}
        dummy = make_vec_env(cfg, 3, "dummy", seed=11, **kw)
        batched = make_vec_env(cfg, 3, "batched", seed=11, **kw)
        assert make_vec_env(cfg, 1, "auto", **kw).unwrapped.__class__.__name__ == (
            "BatchedAgentVecEnv"
        )
        assert (batched.observation_space, batched.action_space) == (
            dummy.observation_space,
            dummy.action_space,
        )
        np.testing.assert_array_equal(dummy.reset(), batched.reset())
        loggers = [Logger(None, []), Logger(None, [])]
        callbacks = [
            EnvMetricsCallback(cfg.budgets.energy_budget_j),
            EnvMetricsCallback(cfg.budgets.energy_budget_j),
        ]
        for cb, lg in zip(callbacks, loggers):
            cb.model = SimpleNamespace(logger=lg)
        rng = np.random.default_rng(0)
        ended = 0
        for _ in range(14):  # two episodes per env and a restart
            act = rng.uniform(-1.2, 1.2, (3, *dummy.action_space.shape)).astype(np.float32)
            out_d, out_b = dummy.step(act), batched.step(act)
            for x, y in zip(out_d[:3], out_b[:3]):
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)
            for cb, (_, _, dones, infos) in zip(callbacks, (out_d, out_b)):
                cb.locals = {"infos": infos, "dones": dones}
                cb._on_step()
            for x, y in zip(out_d[3], out_b[3]):
                assert x["TimeLimit.truncated"] is y["TimeLimit.truncated"] is False
                assert x["reward_terms"] == y["reward_terms"]
                if "terminal_observation" in x:
                    ended += 1
                    np.testing.assert_array_equal(
                        x["terminal_observation"], y["terminal_observation"]
                    )
                    assert x["accuracy"] == y["accuracy"] and x["episode"]["l"] == y["episode"]["l"]
                    assert y["episode_metrics"]["return"] == pytest.approx(
                        x["episode"]["r"], abs=1e-4
                    )
                    within[shield].append(y["episode_metrics"].get("within_budget", 0.0))
        assert ended == 6, (features, form, shield, prune)
        # the same episode metrics reach TensorBoard from both paths
        assert loggers[0].name_to_value == pytest.approx(loggers[1].name_to_value)
        assert {
            "episode/return",
            "episode/final_accuracy",
            "episode/reward_energy",
            "episode/scheduled_per_round",
        } <= set(loggers[1].name_to_value)
    # these random actions overspend; with the shield (where it can idle) every episode keeps
    # every device's budget
    assert min(within[False]) == 0.0
    assert min(within[True]) == (1.0 if BudgetShield(cfg).active else 0.0)  # soft: no budget
    with pytest.raises(ValueError, match="use --vec-env dummy"):
        make_vec_env(
            cfg if cfg.paradigm != "soft" else resolve_config("switching"),
            2,
            "batched",
            action_form="residual",
        )


def test_training_on_the_batched_env_equals_training_on_dummy_vec_env(
    tiny_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "dummy"
    _train(*TINY, "--run-dir", str(run), "--vec-env", "dummy")
    assert RunDir(tiny_run).read_args()["vec_env"] == "auto"  # the default: batched here
    strip = [lambda line: line.split(",", 2)[0] + "," + line.split(",", 2)[2]]  # drop wall_s
    rows = [
        [strip[0](line) for line in (r / "evaluations.csv").read_text().splitlines()]
        for r in (tiny_run, run)
    ]
    assert rows[0] == rows[1]
    from stable_baselines3 import PPO

    a, b = PPO.load(RunDir(tiny_run).model), PPO.load(RunDir(run).model)
    for (name, x), (_, y) in zip(a.policy.state_dict().items(), b.policy.state_dict().items()):
        assert th.equal(x, y), name


def test_train_config_yaml_matches_the_defaults_and_flags_override_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tuned = yaml.safe_load((ROOT / "configs/train/ppo_lagrangian.yaml").read_text())
    defaults, _ = parse_args(train_ppo.Args, [])
    assert defaults.objective == "lagrangian"  # PPO-Lagrangian is the default learned agent
    for key, value in tuned.items():
        assert getattr(defaults, key) == value, key
    weighted = yaml.safe_load((ROOT / "configs/train/ppo.yaml").read_text())
    assert weighted.pop("objective") == "weighted"
    # the weighted run keeps the features and the budget its published figures were measured with
    assert weighted.pop("obs_features") == "label_mix"
    assert weighted.pop("total_timesteps") == 300_000
    assert weighted.pop("shield") is False
    assert weighted.pop("prune") == "never"
    assert weighted == {
        key: value for key, value in tuned.items() if key in weighted
    }  # the same tuned values
    args, given = parse_args(
        train_ppo.Args, ["--train-config", str(ROOT / "configs/train/ppo.yaml"), "--n-envs", "3"]
    )
    assert args.n_envs == 3 and "n_envs" in given
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_env: 4\n")
    with pytest.raises(ValueError, match="unknown key 'n_env'.*Did you mean 'n_envs'"):
        parse_args(train_ppo.Args, ["--train-config", str(bad)])
    bad.write_text("n_envs: four\n")
    with pytest.raises(ValueError, match="n_envs must be int"):
        parse_args(train_ppo.Args, ["--train-config", str(bad)])
    bad.write_text("gamma: high\n")  # (a string for a float field, not let through)
    with pytest.raises(ValueError, match="gamma must be float, got 'high'"):
        parse_args(train_ppo.Args, ["--train-config", str(bad)])
    # a value out of its field's range stops before anything runs, from a file or a flag
    bad.write_text("gamma: 1.5\n")
    with pytest.raises(ValueError, match=r"gamma in .*bad\.yaml must be >= 0 and <= 1, got 1\.5"):
        parse_args(train_ppo.Args, ["--train-config", str(bad)])
    for flag, value, message in (
        ("--total-timesteps", "-5", "must be >= 1, got -5"),
        ("--learning-rate", "0", "must be > 0, got 0.0"),
        ("--gamma", "nan", "must be >= 0 and <= 1, got nan"),
        ("--eval-freq", "-1", "must be >= 0, got -1"),
    ):
        with pytest.raises(SystemExit):
            parse_args(train_ppo.Args, [flag, value])
        assert re.search(f"argument {flag}: {message}", capsys.readouterr().err)
    assert parse_args(train_ppo.Args, ["--gamma", "1", "--eval-freq", "0"])[0].gamma == 1.0
    for path in sorted((ROOT / "configs/train").glob("*.yaml")):
        cls = (
            train_ppo.Args
            if path.stem.startswith("ppo")
            else __import__("agents.train_sac", fromlist=["Args"]).Args
        )
        parse_args(cls, ["--train-config", str(path)])


def test_agent_spec_errors_are_clear(tmp_path: Path, tiny_run: Path) -> None:
    with pytest.raises(ValueError, match="expected <algo>:<run dir>"):
        parse_spec("dqn:runs/x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_spec(f"ppo:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="holds no best model"):
        parse_spec(f"ppo:{tmp_path}@best")
    with (
        pytest.raises(ValueError, match="action components"),
        pytest.warns(UserWarning, match="different env config"),
    ):
        load_policy(f"ppo:{tiny_run}", "split")


def test_best_model_selection_with_an_accuracy_condition(tmp_path: Path) -> None:
    from agents.callbacks import selection_score

    assert selection_score(30.0, 0.80, None) == 30.0
    assert selection_score(29.0, 0.859, 0.859) > selection_score(
        33.0, 0.858, 0.859
    )  # feasible first
    assert selection_score(31.0, 0.86, 0.859) > selection_score(
        30.0, 0.87, 0.859
    )  # then the return
    assert selection_score(33.0, 0.5, 0.859) > selection_score(
        32.0, 0.5, 0.859
    )  # none feasible: the return
    # --select-accuracy replaces --accuracy-target as the condition (here no evaluation meets it)
    run = tmp_path / "select"
    _train(
        *TINY,
        "--total-timesteps",
        "256",
        "--objective",
        "weighted",
        "--accuracy-target",
        "0.5",
        "--select-accuracy",
        "0.99",
        "--run-dir",
        str(run),
    )
    state = json.loads((run / "eval_state.json").read_text())
    assert state["best_score"] < -1e5 and state["last"]["final_accuracy"] < 0.99


def test_accuracy_constraint_adds_the_multiplied_accuracy_term_and_ascends() -> None:
    from agents.constraints import AccuracyConstraint

    cfg = resolve_config("switching", num_rounds=2)
    venv = AccuracyConstraint(make_vec_env(cfg, 2, "dummy", seed=0), target=0.9, lr=0.1, lam=0.5)
    venv.reset()
    actions = np.ones((2, *venv.action_space.shape), dtype=np.float32)
    _, reward, _, infos = venv.step(actions)
    for r, info in zip(reward, infos):
        terms = info["reward_terms"]
        assert r == pytest.approx(sum(terms.values()) + 0.5 * terms["accuracy"], rel=1e-6)
    _, _, dones, infos = venv.step(actions)
    assert dones.all()
    finals = np.mean([info["accuracy"] for info in infos])
    stats = venv.update()
    assert stats["lambda"] == pytest.approx(0.5 + 0.1 * 100 * (0.9 - finals))
    assert venv.update() == {}  # no new episodes, no step
    with pytest.raises(ValueError, match="accuracy_target must be in"):
        AccuracyConstraint(make_vec_env(cfg, 1), target=1.5, lr=0.1)


@pytest.mark.slow
def test_sac_trains_resumes_and_loads(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = tmp_path / "sac"
    common = ["--n-envs", "2", "--learning-starts", "100", "--batch-size", "32", "--net-arch", "16",
              "--eval-episodes", "1", "--checkpoint-freq", "200", "--eval-freq", "200",
              "--no-progress-bar", "--no-tensorboard"]  # fmt: skip
    for extra in (
        ["--total-timesteps", "400", "--run-dir", str(run), "--shield"],
        ["--total-timesteps", "600", "--run-dir", str(run), "--resume"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "agents.train_sac", *common, *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "continuing from step 400" in proc.stdout and "replay buffer restored" in proc.stdout
    assert json.loads(RunDir(run).metrics.read_text())["timesteps"] == 600
    assert (
        len(list((run / "checkpoints").glob("ckpt_replay_buffer_*"))) == 1
    )  # only the newest is kept
    cfg = resolve_config("switching")
    # the shield chosen for the run is saved, kept on resume and applied in evaluation
    assert RunDir(run).read_args()["shield"] is True
    assert load_policy(f"sac:{run}", cfg).actions.shield is not None
    first = evaluate(load_policy(f"sac:{run}", cfg), cfg, [1000]).metric("episode_return")
    again = evaluate(load_policy(f"sac:{run}", cfg), cfg, [1000]).metric("episode_return")
    np.testing.assert_array_equal(first, again)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = tmp_path / "main"
    argv = [
        "--total-timesteps",
        "1024",
        "--episodes",
        "2",
        "--out",
        str(out),
        "--policies",
        "lyapunov,max",
        "--no-progress-bar",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "agents.demo", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (
        "summary.md",
        "summary.json",
        "episodes.csv",
        "accuracy.png",
        "learning_curve.png",
    ):
        assert (out / name).is_file(), name
    assert "| ppo:ppo_demo |" in proc.stdout
    assert "Objective (final accuracy within budget), ppo:ppo_demo vs lyapunov" in proc.stdout


def test_time_to_go_features_ramp_up_over_the_last_rounds() -> None:
    cfg = resolve_config("switching", num_rounds=12)
    features = ObservationFeatures(cfg, "label_mix_time")
    env = gym.make("FedLoRAWireless-v0", config=cfg)
    space = features.observation_space(env.observation_space)
    obs, info = env.reset(seed=0)
    ramps = []
    for _ in range(12):
        x = features(obs, info)
        assert space.contains(x) and x.shape == (
            cfg.devices.num_devices * features.device_features + 4,
        )
        rows = x[:-4].reshape(cfg.devices.num_devices, features.device_features)
        assert np.all(rows[:, -2:] == rows[0, -2:])  # the same for every device
        ramps.append(rows[0, -2:].tolist())
        obs, _, _, _, info = env.step(env.action_space.sample())
    # h = 3 and h = 10: zero until the last h rounds, then 1 - (rounds to go) / h
    assert ramps[0] == [0.0, 0.0] and ramps[1] == [0.0, 0.0]
    assert ramps[2] == pytest.approx([0.0, 0.0]) and ramps[3] == pytest.approx([0.0, 0.1])
    assert ramps[11] == pytest.approx([2 / 3, 0.9])


def test_residual_action_form_with_a_zero_action_plays_the_lyapunov_policy() -> None:
    from agents.actions import ActionAdapter
    from agents.envs import make_env
    from baselines.lyapunov import LyapunovPolicy

    cfg = resolve_config("switching", num_rounds=6)
    env = make_env(cfg, "label_mix", "residual")()
    assert env.action_space.shape == (cfg.devices.num_devices, 3)
    env.reset(seed=7)
    rewards = []
    for _ in range(6):
        _, r, terminated, _, _ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        rewards.append(r)
    assert terminated
    base = FedLoRAWirelessEnv(cfg)
    lyap = LyapunovPolicy(cfg)
    obs, info = base.reset(seed=7)
    lyap.reset(7)
    expected = []
    for _ in range(6):
        obs, r, _, _, info = base.step(lyap.act(obs, info))
        expected.append(r)
    assert rewards == expected
    with pytest.raises(RuntimeError, match="observe"):
        ActionAdapter(cfg, "residual")(np.zeros((cfg.devices.num_devices, 3)))


@pytest.mark.parametrize("preset", ["switching", "split"])
def test_gated_action_form_keeps_or_idles_the_lyapunov_decisions(preset: str) -> None:
    from agents.actions import GATE_THRESHOLD, ActionAdapter
    from baselines.lyapunov import LyapunovPolicy
    from fedenv.actions import ActionCodec

    cfg = resolve_config(preset, num_rounds=8)
    k = cfg.devices.num_devices
    adapter, codec, lyap = ActionAdapter(cfg, "gated"), ActionCodec(cfg), LyapunovPolicy(cfg)
    assert adapter.space.shape == (k, 1)
    env = FedLoRAWirelessEnv(cfg)
    obs, info = env.reset(seed=3)
    adapter.reset(3)
    lyap.reset(3)
    rng = np.random.default_rng(0)
    for _ in range(8):
        adapter.observe(info)
        base = lyap.act(obs, info)
        np.testing.assert_array_equal(
            adapter(np.zeros((k, 1), np.float32)), base
        )  # gates open: Lyapunov
        gates = rng.uniform(-1, 1, (k, 1)).astype(np.float32)
        action = adapter(gates)
        kept = codec.decode(codec.validate(base)).module
        got = codec.decode(codec.validate(action)).module
        closed = gates[:, 0] < GATE_THRESHOLD
        np.testing.assert_array_equal(
            got, np.where(closed, 0, kept)
        )  # closed gates idle, open ones keep
        np.testing.assert_array_equal(
            np.delete(action, adapter._gate_column, axis=1),
            np.delete(base, adapter._gate_column, axis=1),
        )
        obs, _, _, _, info = env.step(action)
    with pytest.raises(ValueError, match="module or schedule"):
        ActionAdapter(resolve_config("soft"), "gated")
    with pytest.raises(ValueError, match="no fixed inverse"):
        adapter.encode(np.zeros((k, len(cfg.action_components)), np.float32))


@pytest.mark.parametrize("preset", ["switching", "split"])
def test_tradeoff_action_form_scales_the_lyapunov_policys_energy_backlogs(preset: str) -> None:
    from agents.actions import TRADEOFF_DECADES, ActionAdapter
    from baselines.lyapunov import LyapunovPolicy
    from fedenv.actions import ActionCodec

    cfg = resolve_config(preset, num_rounds=8)
    k = cfg.devices.num_devices
    codec = ActionCodec(cfg)
    # three agents on the same states: a = 0, a = 0.5 on every device, random a (which plays)
    zero, half, agent = (ActionAdapter(cfg, "tradeoff", base_v=3.0) for _ in range(3))
    assert agent.space.shape == (k, 1) and agent.stateful
    at_v = LyapunovPolicy(cfg, 3.0)
    # equal actions on every device move V: a = 0.5 solves the round of V x 10^(d / 2)
    at_higher_v = LyapunovPolicy(cfg, 3.0 * 10.0 ** (TRADEOFF_DECADES / 2))
    env = FedLoRAWirelessEnv(cfg)
    obs, info = env.reset(seed=5)
    for policy in (zero, half, agent, at_v, at_higher_v):
        policy.reset(5)
    rng = np.random.default_rng(1)
    differed = 0
    for _ in range(8):
        for adapter in (zero, half, agent):
            adapter.observe(info)
        base = at_v.act(obs, info)
        np.testing.assert_array_equal(zero(np.zeros((k, 1), np.float32)), base)
        moved = codec.decode(codec.validate(half(np.full((k, 1), 0.5, np.float32))))
        expected = codec.decode(codec.validate(at_higher_v.act(obs, info)))
        np.testing.assert_array_equal(moved.module, expected.module)
        np.testing.assert_allclose(moved.power_w, expected.power_w, rtol=1e-3)
        action = agent(rng.uniform(-1, 1, (k, 1)).astype(np.float32))
        differed += not np.array_equal(action, base)
        obs, _, _, _, info = env.step(action)
        # the Lyapunov policy's budget guard holds whatever the agent does
        assert np.all(np.asarray(info["energy_spent_j"]) <= 8 * cfg.budgets.energy_budget_j)
    assert differed > 0  # the backlogs fill, and the agent's scale changes the decisions
    with pytest.raises(ValueError, match="no energy budget"):
        ActionAdapter(resolve_config("switching", budgets={"energy_budget_j": None}), "tradeoff")
    with pytest.raises(ValueError, match="has none"):
        ActionAdapter(cfg, "factored", base_v=3.0)
    with pytest.raises(RuntimeError, match="observe"):
        ActionAdapter(cfg, "tradeoff")(np.zeros((k, 1), np.float32))


def test_factored_encode_inverts_the_adapter_on_the_decisions() -> None:
    from agents.actions import ActionAdapter
    from fedenv.actions import ActionCodec

    cfg = resolve_config("switching")
    adapter, codec = ActionAdapter(cfg, "factored"), ActionCodec(cfg)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.uniform(-1, 1, (cfg.devices.num_devices, 3)).astype(np.float32)
        d1 = codec.decode(codec.validate(a))
        d2 = codec.decode(codec.validate(adapter(adapter.encode(a))))
        assert np.array_equal(d1.module, d2.module)
        assert np.allclose(d1.power_w, d2.power_w) and np.allclose(d1.share, d2.share, atol=1e-6)


def test_behaviour_cloning_imitates_the_lyapunov_decisions() -> None:
    from agents.actions import ActionAdapter
    from agents.bc import clone, lyapunov_demonstrations
    from agents.envs import make_vec_env
    from agents.policies import PerDeviceActorCriticPolicy
    from baselines.lyapunov import DEFAULT_V

    cfg = resolve_config("switching", num_rounds=5)
    venv = make_vec_env(cfg, 2, "dummy", seed=0)
    obs, act = lyapunov_demonstrations(venv, cfg, ActionAdapter(cfg, "factored"), 24)
    assert obs.shape == (24, venv.observation_space.shape[0]) and act.shape == (24, 40)
    # the recorded actions are the Lyapunov decisions of those rounds, in the agent's form
    assert set(np.unique(act.reshape(24, 10, 4)[:, :, 0])) <= {-0.5, 0.5}
    th.manual_seed(0)  # the network's initial weights, whatever ran before in the process
    policy = PerDeviceActorCriticPolicy(
        venv.observation_space, venv.action_space, lambda _: 3e-4, device_features=9, net_arch=[16]
    )
    before = float(
        (
            (policy.get_distribution(th.as_tensor(obs)).distribution.mean.detach().numpy() - act)
            ** 2
        ).mean()
    )
    after = clone(policy, obs, act, epochs=150, batch_size=8, lr=3e-3)
    assert after < 0.5 * before
    # --bc-v picks the expert's V (None: the Lyapunov policy's default)
    for v, same in ((DEFAULT_V, True), (0.01, False)):
        again = make_vec_env(cfg, 2, "dummy", seed=0)
        _, act_v = lyapunov_demonstrations(again, cfg, ActionAdapter(cfg, "factored"), 24, v=v)
        assert np.array_equal(act_v, act) == same


def test_learning_curve_plot_shows_return_and_accuracy_with_references(tmp_path: Path) -> None:
    from agents.demo import plot_learning_curves, validation_references
    from baselines.registry import make_policy

    cfg = resolve_config("switching", num_rounds=6)
    refs = validation_references(cfg, ["lyapunov", "round_robin"], [5, 6])
    expected = evaluate(make_policy("lyapunov", cfg), cfg, [5, 6])
    ret, acc = refs[make_policy("lyapunov", cfg).name]
    assert ret == pytest.approx(expected.metric("episode_return").mean())
    assert acc == pytest.approx(expected.metric("final_accuracy").mean())
    run = tmp_path / "run"
    run.mkdir()
    (run / "evaluations.csv").write_text(
        "timesteps,wall_s,mean_return,std_return,final_accuracy\n512,1,2.5,0.1,0.80\n0,0,1.0,0.2,0.70\n"
    )
    out = tmp_path / "curves" / "lc.png"
    plot_learning_curves({"PPO": run}, out, refs)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_summary_puts_the_objective_first_then_the_return() -> None:
    from agents.demo import objective_summary
    from baselines.evaluation import evaluate
    from baselines.registry import make_policy

    cfg = resolve_config("switching", num_rounds=6)
    seeds = [3, 4, 5]
    a = evaluate(make_policy("max", cfg), cfg, seeds)
    b = evaluate(make_policy("min_rank", cfg), cfg, seeds)
    text = objective_summary(a, b)
    first, second = text.splitlines()
    d = a.metric("final_accuracy") - b.metric("final_accuracy")
    assert first.startswith("Objective (final accuracy within budget), max vs min_rank")
    assert f"difference {d.mean():+.4f}" in first
    assert f"max higher in {int((d > 0).sum())}/3" in first
    kept = int(a.metric("in_budget").sum()), int(b.metric("in_budget").sum())
    assert f"in {kept[0]}/3 episodes vs {kept[1]}/3" in first
    r = a.metric("episode_return") - b.metric("episode_return")
    assert second == (
        f"Return (the env's weighted reward): {r.mean():+.2f} (max higher in "
        f"{int((r > 0).sum())}/3)."
    )


def test_bare_model_features_are_inferred_only_when_unambiguous() -> None:
    """A bare model file's observation features come from its observation size; two feature
    sets of one size (label_mix_time, label_mix_budget: two extra values per device) are not
    guessed between."""
    from types import SimpleNamespace

    from agents.evaluate import _infer_features

    cfg = resolve_config("switching")

    def model(kind: str) -> SimpleNamespace:
        size = ObservationFeatures(cfg, kind).size
        return SimpleNamespace(observation_space=gym.spaces.Box(-1, 1, (size,)))

    assert _infer_features(model("label_mix"), cfg) == "label_mix"
    assert _infer_features(model("env"), cfg) == "env"
    with pytest.raises(ValueError, match="label_mix_time, label_mix_budget.*run directory"):
        _infer_features(model("label_mix_budget"), cfg)


def test_imitation_fit_reports_how_well_a_network_reproduces_the_lyapunov_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agents.bc import imitation_fit, main

    cfg = resolve_config(str(ROOT / "configs/scenarios/tiny.yaml"))
    untrained = imitation_fit(cfg, steps=80, epochs=0, n_envs=4)
    fitted = imitation_fit(cfg, steps=80, epochs=60, n_envs=4)
    assert (fitted["fit"]["steps"], fitted["held_out"]["steps"]) == (60, 20)
    assert fitted["fit"]["mse"] < 0.5 * untrained["fit"]["mse"]
    assert fitted["fit"]["schedule_agreement"] > untrained["fit"]["schedule_agreement"]
    assert len(fitted["held_out"]["mse_per_component"]) == 4  # schedule, rank, power, band
    soft = imitation_fit(resolve_config("soft", num_rounds=4), steps=16, epochs=1, n_envs=2)
    assert math.isnan(soft["fit"]["schedule_agreement"])  # soft never idles a device
    with pytest.raises(ValueError, match="holdout"):
        imitation_fit(cfg, holdout=1.0)
    with pytest.raises(SystemExit) as exc:
        main(["--config", "nope"])
    assert exc.value.code == 2 and "nope" in capsys.readouterr().err


@pytest.mark.parametrize("trainer", ["train_ppo", "train_sac"])
def test_a_misspelled_prune_mode_is_refused_before_the_run_directory(
    trainer: str, tmp_path: Path
) -> None:
    """``--prune`` takes never, deploy or always; any other value stops the trainer with the
    modes, before it writes anything."""
    import importlib

    from agents.actions import prune_stages

    assert prune_stages("never") == (False, False)
    assert prune_stages("deploy") == (True, False)
    assert prune_stages("always") == (True, True)
    main = importlib.import_module(f"agents.{trainer}").main
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"--prune must be one of never, deploy, always, got 'on'"):
        main(["--config", "switching", "--prune", "on", "--run-dir", str(run)])
    assert not run.exists()
