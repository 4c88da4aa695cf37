"""Per-device counterfactual credit (agents/credit.py): the what-ifs, the rollout's baseline and
the training option."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import torch as th  # noqa: E402
from stable_baselines3.common.vec_env import VecEnvWrapper  # noqa: E402

from agents import train_ppo  # noqa: E402
from agents.actions import ActionAdapter  # noqa: E402
from agents.credit import CounterfactualPPO, arrival_credit, check_counterfactual  # noqa: E402
from agents.envs import BatchedAgentVecEnv, make_vec_env  # noqa: E402
from agents.evaluate import load_policy  # noqa: E402
from agents.features import ObservationFeatures  # noqa: E402
from agents.policies import policy_class  # noqa: E402
from agents.runs import RunDir, model_steps  # noqa: E402
from baselines.evaluation import evaluate  # noqa: E402
from fedenv.config import EnvConfig  # noqa: E402
from fedenv.learning.surrogate import accuracy_from_gap, next_gap, round_progress  # noqa: E402
from fedenv.scenarios import scenario_config  # noqa: E402


def _credit_env(cfg: EnvConfig, n: int = 4) -> BatchedAgentVecEnv:
    env = BatchedAgentVecEnv(
        cfg,
        n,
        ObservationFeatures(cfg, "label_mix_budget"),
        ActionAdapter(cfg, "factored", shield=True),
        credit=True,
    )
    env.seed(5)
    env.reset()
    return env


@pytest.mark.parametrize("scenario", ["large_cell", "soft_tight_latency", "split_tight_energy"])
def test_each_devices_credit_is_the_accuracy_its_arrival_added(scenario: str) -> None:
    """D_k against the round recomputed with device k's update lost; a lone arrival's credit is
    the round's whole accuracy term; a device that did not arrive gets none."""
    cfg = scenario_config(scenario)
    scfg = cfg.learning.surrogate
    env = _credit_env(cfg)
    rng = np.random.default_rng(0)
    lone = several = 0
    for _ in range(45):  # two episodes and a quarter
        env.step_async(rng.uniform(-1, 1, (4, *env.action_space.shape)).astype(np.float32))
        _, _, _, infos = env.step_wait()
        for info in infos:
            credit = info["device_credit"]
            assert credit.shape == (cfg.devices.num_devices,)
            accuracy = info["reward_terms"]["accuracy"]
            arrived = np.flatnonzero(credit)
            if arrived.size == 1:
                lone += 1
                assert credit[arrived[0]] == pytest.approx(accuracy, abs=1e-12)
            several += arrived.size > 1
            assert 1 <= info["round"] <= cfg.num_rounds
    # every device of the last round, by brute force from the batched env's own info
    info = env.venv.step(
        env.actions(rng.uniform(-1, 1, (4, *env.action_space.shape)).astype(np.float32))
    )[4]
    gap = env._gap
    credit = arrival_credit(cfg, info, gap)
    share = info["data_size"] / info["data_size"].sum(-1, keepdims=True)
    ratio = info["sparsity_ratio"] if cfg.sparsifies else None
    args = (info["label_distribution"], info["global_label_distribution"], scfg)
    success = info["success"].astype(float)
    played = next_gap(gap, *round_progress(share, success, info["rank"], ratio, *args), scfg)
    np.testing.assert_allclose(played, info["loss_gap"], rtol=0, atol=1e-15)
    for k in range(cfg.devices.num_devices):
        lost = success.copy()
        lost[:, k] = 0.0
        without = next_gap(gap, *round_progress(share, lost, info["rank"], ratio, *args), scfg)
        expected = (
            100
            * cfg.reward.accuracy_weight
            * (accuracy_from_gap(played, scfg) - accuracy_from_gap(without, scfg))
        )
        np.testing.assert_allclose(credit[:, k], expected, rtol=1e-7, atol=1e-9)
        assert (credit[:, k][(info["rank"][:, k] == 0) | ~info["success"][:, k]] == 0).all()
    assert several > 0
    if scenario != "soft_tight_latency":  # soft schedules every device
        assert lone > 0


class _Recorder(VecEnvWrapper):
    """Keeps every step's infos."""

    def __init__(self, venv: Any) -> None:
        super().__init__(venv)
        self.infos: list[list[dict[str, Any]]] = []

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        out = self.venv.step_wait()
        self.infos.append(out[3])
        return out


def test_the_rollouts_baseline_lines_up_with_the_rollout_buffer() -> None:
    """b_k - m(t) per buffer row, and per-device log-probabilities that sum to the buffer's."""
    cfg = scenario_config("large_cell")
    cfg = dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, mode="accuracy"))
    venv = _Recorder(make_vec_env(cfg, 3, "batched", seed=2, shield=True, credit=True))
    features = ObservationFeatures(cfg, "label_mix")
    model = CounterfactualPPO(
        policy_class("per_device"),
        venv,
        n_steps=30,
        batch_size=45,
        n_epochs=1,
        policy_kwargs={"net_arch": [16], "device_features": features.device_features},
        seed=0,
    )
    _, callback = model._setup_learn(90, None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    buffer = model.rollout_buffer
    flat = buffer.swap_and_flatten
    baseline = model._baseline()
    k = cfg.devices.num_devices
    assert baseline.shape == (30 * 3, k)
    # the rows in the buffer's order (env-major after the flatten): r_acc = b_k + D_k, and the
    # buffer's reward is r_acc (reward mode "accuracy", no normaliser)
    infos = venv.infos[-30:]
    credit = np.array([[i["device_credit"] for i in step] for step in infos]).swapaxes(0, 1)
    rounds = np.array([[i["round"] for i in step] for step in infos]).T.reshape(-1)
    credit = credit.reshape(-1, k)
    raw = flat(buffer.rewards).reshape(-1)[:, None] - credit  # b_k
    mean = {t: raw[rounds == t].mean() for t in np.unique(rounds)}  # m(t)
    np.testing.assert_allclose(
        baseline, raw - np.array([mean[t] for t in rounds])[:, None], atol=1e-5
    )
    for t in mean:
        assert abs(baseline[rounds == t].mean()) < 1e-5
    # per-device log-probabilities of the rollout's actions sum to the ones PPO stored
    with th.no_grad():
        log_prob, values, _ = model._device_log_prob(
            th.as_tensor(flat(buffer.observations)), th.as_tensor(flat(buffer.actions))
        )
    assert log_prob.shape == (90, k)
    np.testing.assert_allclose(
        log_prob.sum(-1).numpy(), flat(buffer.log_probs).reshape(-1), atol=1e-4
    )
    np.testing.assert_allclose(values.numpy(), flat(buffer.values).reshape(-1), atol=1e-5)
    model.train()  # one update runs


def test_counterfactual_training_runs_resumes_and_evaluates(tmp_path: Path) -> None:
    run = tmp_path / "cf"
    tiny = [
        "--config", "configs/scenarios/tight_energy.yaml", "--advantage", "counterfactual",
        "--n-envs", "2", "--n-steps", "64", "--batch-size", "64", "--n-epochs", "1",
        "--eval-freq", "256", "--eval-episodes", "1", "--checkpoint-freq", "256",
        "--net-arch", "16", "--no-progress-bar", "--no-tensorboard", "--seed", "3",
        "--run-dir", str(run),
    ]  # fmt: skip
    train_ppo.main([*tiny, "--total-timesteps", "256"])
    assert RunDir(run).read_args()["advantage"] == "counterfactual"
    train_ppo.main(["--run-dir", str(run), "--resume", "--total-timesteps", "512"])
    assert model_steps(RunDir(run).model) == 512
    cfg = scenario_config("tight_energy")
    result = evaluate(load_policy(f"ppo:{run}@final", cfg), cfg, [1000])
    assert 0.5 < result.metric("final_accuracy")[0] < 1.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--policy", "per_device_autoregressive"], "factored per-device policy"),
        (["--policy", "mlp"], "factored per-device policy"),
        (["--vec-env", "dummy"], "batched training env"),
        (["--action-form", "tradeoff"], "--action-form factored"),
        (["--advantage", "coma"], "--advantage must be one of gae, counterfactual"),
    ],
)
def test_counterfactual_rejects_what_it_cannot_credit(
    flags: list[str], message: str, tmp_path: Path
) -> None:
    run = tmp_path / "bad"
    argv = ["--config", "tight_energy", "--advantage", "counterfactual", *flags]
    with pytest.raises(ValueError, match=message):
        train_ppo.main([*argv, "--run-dir", str(run), "--total-timesteps", "8"])
    assert not run.exists()  # nothing written


def test_counterfactual_needs_the_surrogate() -> None:
    cfg = scenario_config("tight_energy")
    lora = dataclasses.replace(cfg, learning=dataclasses.replace(cfg.learning, backend="lora"))
    check_counterfactual("per_device", "auto", "factored", cfg)
    with pytest.raises(ValueError, match="'lora' backend has no such model"):
        check_counterfactual("per_device", "auto", "factored", lora)
