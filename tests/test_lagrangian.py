"""PPO-Lagrangian (agents/lagrangian.py): the shaped reward, dual ascent, a training run and its
resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from agents.envs import make_vec_env  # noqa: E402
from agents.lagrangian import STATE_FILE, CostConstraints, PIDGains  # noqa: E402
from agents.runs import RunDir  # noqa: E402
from fedenv.config import EnvConfig, resolve_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: A tiny training run (as tests/test_agents.py's): 2 envs x 64 steps per update.
TINY = [
    "--n-envs", "2", "--n-steps", "64", "--batch-size", "64", "--n-epochs", "1", "--eval-freq",
    "256", "--eval-episodes", "1", "--checkpoint-freq", "128", "--net-arch", "16",
    "--no-progress-bar", "--no-tensorboard", "--seed", "3",
]  # fmt: skip
K, BUDGET = 3, 0.25


def _train(*argv: str) -> None:
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


class _CostEnv(gym.Env[np.ndarray, np.ndarray]):
    """Emits the accuracy reward term and the per-device costs it is told to."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self) -> None:
        self.costs = np.full(K, BUDGET)
        self.latency = 1.0
        self.accuracy_term = 0.5

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        return np.zeros(1, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        info = {
            "reward_terms": {"accuracy": self.accuracy_term},
            "cost_per_device": self.costs.copy(),
            "cost": float(self.costs.sum()),
            "cost_latency": self.latency,
        }
        return np.zeros(1, np.float32), 123.0, False, False, info


def _wrapped(
    multipliers: str = "per_device", preset: str = "switching", lr: float = 0.1, init: float = 0.0
) -> tuple[CostConstraints, _CostEnv]:
    """A slot-form wrapper by default (the episode form's tests use :func:`_episodes`)."""
    env = _CostEnv()
    cfg = resolve_config(
        preset,
        devices={"num_devices": K},
        budgets={"energy_budget_j": None if preset == "soft" else BUDGET},
    )
    return CostConstraints(
        DummyVecEnv([lambda: env]), cfg, lr=lr, multipliers=multipliers, init=init
    ), env


def _step(venv: CostConstraints) -> float:
    venv.reset()
    _, reward, _, _ = venv.step(np.zeros((1, 1), np.float32))
    return float(reward[0])


def test_per_device_multiplier_rises_on_overspend_and_falls_to_zero_when_slack() -> None:
    venv, env = _wrapped(lr=0.1)
    env.costs = np.array([0.5, 0.25, 0.1])  # device 0 spends twice its budget, device 2 is slack
    for _ in range(3):
        _step(venv)
    stats = venv.update()
    np.testing.assert_allclose(
        venv.lam, [0.1 * 1.0, 0.0, 0.0]
    )  # lr x (mean cost - budget) / budget, projected >= 0
    assert stats["energy_violation_max"] == pytest.approx(1.0) and stats[
        "devices_over_budget"
    ] == pytest.approx(1 / 3)
    _step(venv)
    venv.update()
    np.testing.assert_allclose(venv.lam, [0.2, 0.0, 0.0])
    env.costs = np.array(
        [0.15, 0.25, 0.1]
    )  # now under budget: lambda_0 falls by 0.1 x 0.4 per update, to 0
    values = []
    for _ in range(8):
        _step(venv)
        venv.update()
        values.append(venv.lam[0])
    assert values[0] == pytest.approx(0.16) and values[-1] == 0.0 and all(np.diff(values) <= 0)
    assert venv.update() == {}  # no step since the last update: nothing changes


def test_shared_multiplier_ascends_on_the_worst_device() -> None:
    venv, env = _wrapped("shared", lr=0.1, init=0.05)
    assert venv.multiplier_names == ["energy"] and venv.lam.shape == (1,)
    env.costs = np.array([0.3, 0.2, 0.1])  # worst device 20% over, the others under
    _step(venv)
    venv.update()
    assert venv.lam[0] == pytest.approx(0.05 + 0.1 * 0.2)
    env.costs = np.array(
        [0.2, 0.2, 0.1]
    )  # worst 20% under: falls by 0.02 per update, then stays at 0
    for _ in range(5):
        _step(venv)
        venv.update()
    assert venv.lam[0] == 0.0


@pytest.mark.parametrize("multipliers", ["per_device", "shared"])
def test_shaped_reward_is_the_accuracy_term_minus_the_priced_violations(multipliers: str) -> None:
    venv, env = _wrapped(multipliers, preset="unified")
    assert venv.cost_names == ["energy_0", "energy_1", "energy_2", "latency"]
    venv.lam = (
        np.array([0.5, 1.0, 2.0, 0.3]) if multipliers == "per_device" else np.array([0.7, 0.3])
    )
    env.costs, env.latency, env.accuracy_term = np.array([0.5, 0.2, 0.25]), 4.5, 0.8
    weights = [0.5, 1.0, 2.0] if multipliers == "per_device" else [0.7] * 3
    expected = (
        0.8
        - sum(w * (c - BUDGET) / BUDGET for w, c in zip(weights, env.costs))
        - 0.3 * (4.5 - 3.0) / 3.0
    )
    assert _step(venv) == pytest.approx(
        expected, rel=1e-6
    )  # (the env's own reward, 123, is replaced)


def test_latency_only_preset_and_bad_settings() -> None:
    venv, env = _wrapped(preset="soft")  # soft: a latency budget, no energy budget
    assert venv.multiplier_names == ["latency"] and venv.limits.tolist() == [3.0]
    env.latency = 6.0
    _step(venv)
    venv.update()
    assert venv.lam.tolist() == [pytest.approx(0.1)]
    cfg = resolve_config("switching")
    base = DummyVecEnv([_CostEnv])
    with pytest.raises(ValueError, match="multipliers must be one of episode, per_device, shared"):
        CostConstraints(base, cfg, 0.1, "worst")
    with pytest.raises(ValueError, match="ascent must be one of quantile, fraction"):
        CostConstraints(base, cfg, 0.1, ascent="mean")
    with pytest.raises(ValueError, match="allowed must be in"):
        CostConstraints(base, cfg, 0.1, allowed=1.0)
    with pytest.raises(ValueError, match="reward.mode 'dpp' has none"):
        CostConstraints(base, cfg.replace(reward={"mode": "dpp"}), 0.1)
    with pytest.raises(ValueError, match="neither an energy nor a latency budget"):
        CostConstraints(base, cfg.replace(budgets={"energy_budget_j": None}), 0.1)
    with pytest.raises(ValueError, match="resume with the run's own --multipliers"):
        CostConstraints(base, cfg, 0.1, "shared").load_state(
            CostConstraints(base, cfg, 0.1).state()
        )


# ---------------------------------------------------------------- the episode form
class _EpisodeEnv(gym.Env[np.ndarray, np.ndarray]):
    """Plays ``costs`` (rounds x (K devices [+ latency])) as one episode per reset, terminated
    after ``end`` rounds (truncated at the last row otherwise)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, costs: np.ndarray, end: int | None = None) -> None:
        self.costs, self.end, self.t = np.asarray(costs, np.float64), end, 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        row = self.costs[self.t]
        self.t += 1
        info = {
            "reward_terms": {"accuracy": 0.0},
            "cost_per_device": row[:K].copy(),
            "cost_latency": float(row[K]) if row.size > K else 0.0,
        }
        terminated = self.end is not None and self.t >= self.end
        truncated = not terminated and self.t >= len(self.costs)
        return np.zeros(1, np.float32), 0.0, terminated, truncated, info


def _episodes(
    costs: np.ndarray | list[np.ndarray],
    preset: str = "switching",
    ascent: str = "quantile",
    lr: float = 1.0,
    init: float = 0.0,
    end: int | None = None,
    margin: float = 0.0,
    pid: PIDGains | None = None,
) -> CostConstraints:
    """The episode-form wrapper over one env per cost table (horizon = the table's rounds),
    aiming at the rule's tolerance itself (no margin) unless told."""
    tables = costs if isinstance(costs, list) else [costs]
    cfg = resolve_config(
        preset,
        num_rounds=len(tables[0]),
        devices={"num_devices": K},
        budgets={"energy_budget_j": None if preset == "soft" else BUDGET},
    )
    envs = [lambda c=c: _EpisodeEnv(c, end) for c in tables]
    return CostConstraints(
        DummyVecEnv(envs),
        cfg,
        lr=lr,
        multipliers="episode",
        init=init,
        ascent=ascent,
        margin=margin,
        pid=pid,
    )


def _play(venv: CostConstraints, steps: int) -> np.ndarray:
    """The training rewards of ``steps`` steps, shape (steps, envs)."""
    venv.reset()
    action = np.zeros((venv.num_envs, 1), np.float32)
    return np.stack([venv.step(action)[1] for _ in range(steps)])


def _overspend(costs: np.ndarray, limit: float) -> float:
    """W: the worst column's (average per round - limit) / limit."""
    return float(((costs.mean(axis=0) - limit) / limit).max())


@pytest.mark.parametrize("end", [None, 7])
def test_episode_penalties_sum_to_lambda_times_the_worst_devices_overspend(
    end: int | None,
) -> None:
    rng = np.random.default_rng(1)
    t = 12
    costs = rng.uniform(0.0, 2.5 * BUDGET, (t, K))
    costs[: t // 2, 0] = 3 * BUDGET  # device 0 overspends early, device 2 late: the max moves
    costs[t // 2 :, 2] = 4 * BUDGET
    venv = _episodes(costs, init=2.5, end=end)
    played = end or t
    rewards = _play(venv, 2 * played)[:, 0]  # two episodes (the env restarts)
    w = _overspend(costs[:played], BUDGET)
    assert w > 0 and rewards[:played].sum() == pytest.approx(-2.5 * w, rel=1e-5)
    assert rewards[played:].sum() == pytest.approx(-2.5 * w, rel=1e-5)  # reset: again from 0
    # the dense penalty is not the episode's total at the last step: it is spread over the rounds
    assert np.count_nonzero(rewards[:played]) > played // 2
    assert [x[0] for x in venv._finished] == pytest.approx([w, w])
    # a thrifty episode earns a bonus: -lambda W > 0
    venv = _episodes(np.full((t, K), 0.5 * BUDGET), init=2.0)
    assert _play(venv, t)[:, 0].sum() == pytest.approx(2.0 * 0.5)


def test_episode_penalties_telescope_for_the_latency_too() -> None:
    rng = np.random.default_rng(2)
    t = 10
    energy = rng.uniform(0.0, 2 * BUDGET, (t, K))
    latency = rng.uniform(1.0, 6.0, (t, 1))  # unified: T_bar = 3 s
    venv = _episodes(np.hstack([energy, latency]), preset="unified")
    assert venv.multiplier_names == ["energy", "latency"]
    venv.lam = np.array([1.5, 0.7])
    rewards = _play(venv, t)[:, 0]
    expected = 1.5 * _overspend(energy, BUDGET) + 0.7 * _overspend(latency, 3.0)
    assert rewards.sum() == pytest.approx(-expected, rel=1e-5)
    soft = _episodes(np.hstack([energy, latency]), preset="soft", init=1.0)
    assert soft.multiplier_names == ["latency"]
    assert _play(soft, t)[:, 0].sum() == pytest.approx(-_overspend(latency, 3.0), rel=1e-5)


@pytest.mark.parametrize("ascent", ["quantile", "fraction"])
def test_episode_multiplier_rises_on_finished_episodes_that_overspend_only(ascent: str) -> None:
    t = 5
    over = np.full((t, K), 0.5 * BUDGET)
    over[:, 1] = 1.5 * BUDGET  # one device 50% over in every episode: W = 0.5
    kept = np.full((t, K), BUDGET)  # every device exactly at its budget: W = 0
    # 20 envs, one episode each: 2 of 20 overspend (10% > the 5% allowed) -> lambda rises
    venv = _episodes([over] * 2 + [kept] * 18, ascent=ascent, lr=1.0, init=0.3)
    _play(venv, t)
    stats = venv.update()
    step = 0.5 - 0.05 if ascent == "quantile" else 2 / 20 - 0.05
    assert venv.lam[0] == pytest.approx(0.3 + step)
    assert stats["episodes"] == 20 and stats["compliance"] == pytest.approx(0.9)
    # 1 of 20 (exactly the allowed 5%): in compliance, so lambda falls
    venv = _episodes([over] + [kept] * 19, ascent=ascent, lr=1.0, init=0.3)
    _play(venv, t)
    venv.update()
    step = 0.0 - 0.05 if ascent == "quantile" else 1 / 20 - 0.05
    assert venv.lam[0] == pytest.approx(0.3 + step) and venv.lam[0] <= 0.3
    # with a margin the target is stricter: at the budget is over 0.05 - 0.1, so lambda rises
    venv = _episodes([over] + [kept] * 19, ascent=ascent, lr=1.0, init=0.3, margin=0.1)
    _play(venv, t)
    venv.update()
    step = 0.0 + 0.05 if ascent == "quantile" else 1.0 - 0.05
    assert venv.lam[0] == pytest.approx(0.3 + step)
    # every episode kept: lambda falls, and never below 0
    venv = _episodes([kept] * 4, ascent=ascent, lr=10.0, init=0.3)
    _play(venv, t)
    venv.update()
    assert venv.lam[0] == 0.0


def test_episode_multiplier_waits_for_a_finished_episode() -> None:
    t = 8
    over = np.full((t, K), 3 * BUDGET)
    venv = _episodes(over, init=1.0)
    _play(venv, t - 1)  # every round overspends, but the episode is not over
    assert venv.update() == {} and venv.lam.tolist() == [1.0]
    venv.step(np.zeros((1, 1), np.float32))  # its last round
    stats = venv.update()
    assert venv.lam[0] == pytest.approx(1.0 + 2.0 - 0.05) and stats["energy_overspend_max"] == 2.0
    assert venv.update() == {} and venv.lam[0] == pytest.approx(2.95)  # used once


def test_episode_state_round_trips_and_refuses_another_form() -> None:
    venv = _episodes(np.full((4, K), BUDGET), preset="unified", ascent="fraction", lr=0.5)
    venv.lam = np.array([3.25, 0.5])
    state = json.loads(json.dumps(venv.state()))
    assert state["multipliers"] == "episode" and state["names"] == ["energy", "latency"]
    assert state["tolerance"] == 0.05 and state["allowed"] == 0.05 and state["horizon"] == 4
    again = _episodes(np.full((4, K), BUDGET), preset="unified", ascent="fraction", lr=0.5)
    again.load_state(state)
    assert again.lam.tolist() == [3.25, 0.5] and again.record() == {
        "lambda_energy": 3.25,
        "lambda_latency": 0.5,
    }
    cfg = resolve_config("unified", devices={"num_devices": K})
    shared = CostConstraints(DummyVecEnv([_CostEnv]), cfg, 0.1, "shared")
    with pytest.raises(ValueError, match="resume with the run's own --multipliers"):
        shared.load_state(state)  # the same names, another form
    with pytest.raises(ValueError, match="finite and >= 0"):
        again.load_state(dict(state, **{"lambda": [-1.0, 0.0]}))


#: An error sequence and the PID multipliers it gives with lr (= Ki) 0.5, kp 2, kd 3 and a
#: moving average of weight 0.5, worked by hand: I = max(0, I + 0.5 e); s = 0.5 s + 0.5 e (s = e
#: at first); lambda = max(0, 2 e + I + 3 max(0, s - s_prev)).
PID_ERRORS = [1.0, 2.0, 1.0, -4.0, -2.0, 0.5]
PID_LAMBDAS = [
    2.0 + 0.5,  # I 0.5, s 1 (the first: no derivative)
    4.0 + 1.5 + 3 * 0.5,  # I 1.5, s 1.5: a rise of 0.5
    2.0 + 2.0,  # I 2, s 1.25: a fall, which does not count (signed: 3.25)
    0.0,  # I max(0, 2 - 2) = 0, s -1.375: 2 e = -8, projected to 0
    0.0,  # I max(0, 0 - 1) = 0 (unclamped: -1), s -1.6875
    1.0 + 0.25 + 3 * 1.09375,  # I 0.25 (unclamped: -0.75), s -0.59375: a rise of 1.09375
]


def _pid(**gains: float) -> CostConstraints:
    pid = PIDGains(**{"kp": 2.0, "kd": 3.0, "d_smoothing": 0.5, **gains})
    return _episodes(np.full((4, K), BUDGET), lr=0.5, pid=pid)


def test_pid_multiplier_follows_the_hand_computed_sequence() -> None:
    venv = _pid()
    lambdas, integrals = [], []
    for e in PID_ERRORS:
        venv.lam = venv.pid_step(np.array([e]))
        lambdas.append(float(venv.lam[0]))
        integrals.append(float(venv.integral[0]))
    assert lambdas == pytest.approx(PID_LAMBDAS)
    assert integrals == pytest.approx([0.5, 1.5, 2.0, 0.0, 0.0, 0.25])  # never below 0
    assert venv.smoothed_error is not None
    assert float(venv.smoothed_error[0]) == pytest.approx(-0.59375)
    # the update passes the ascent signal of the finished episodes: W = 0.5 over a target of
    # 0.05, so e = 0.45 and the first update gives kp e + lr e
    over = np.full((4, K), BUDGET)
    over[:, 0] = 1.5 * BUDGET
    venv = _episodes(over, lr=0.5, pid=PIDGains(kp=2.0, kd=3.0))
    _play(venv, 4)
    stats = venv.update()
    assert venv.lam[0] == pytest.approx(2.5 * 0.45) and stats["energy_error"] == pytest.approx(0.45)
    assert stats["energy_integral"] == pytest.approx(0.5 * 0.45)


def test_pid_without_proportional_and_derivative_gains_is_plain_ascent() -> None:
    rng = np.random.default_rng(5)
    errors = rng.uniform(-1.0, 1.5, 30)
    venv = _episodes(np.full((4, K), BUDGET), lr=0.7, init=0.4)
    expected = 0.4
    for e in errors:
        venv.lam = venv.pid_step(np.array([e]))
        expected = max(0.0, expected + 0.7 * e)
        assert venv.lam[0] == pytest.approx(expected)
    venv.lam = np.array([5.0])  # plain ascent continues from lambda, whatever set it
    assert venv.pid_step(np.array([-1.0]))[0] == pytest.approx(4.3)


def test_pid_state_round_trips_with_its_integral_and_derivative_memory() -> None:
    venv = _pid()
    for e in PID_ERRORS[:2]:
        venv.lam = venv.pid_step(np.array([e]))
    state = json.loads(json.dumps(venv.state()))
    assert state["kp"] == 2.0 and state["kd"] == 3.0 and state["d_smoothing"] == 0.5
    assert state["lambda"] == [7.0] and state["integral"] == [1.5]
    assert state["smoothed_error"] == [1.5]
    again = _pid()
    again.load_state(state)
    for e, lam in zip(PID_ERRORS[2:], PID_LAMBDAS[2:]):  # continues the same sequence
        again.lam = again.pid_step(np.array([e]))
        assert again.lam[0] == pytest.approx(lam)
    # a fresh controller would differ: the integral and the moving average were restored
    fresh = _pid()
    fresh.lam = fresh.pid_step(np.array([PID_ERRORS[2]]))
    assert fresh.lam[0] != pytest.approx(PID_LAMBDAS[2])
    # a state saved before the PID existed: the integral is lambda, no moving average yet
    old = {k: v for k, v in state.items() if k not in ("integral", "smoothed_error")}
    again.load_state(old)
    assert again.integral.tolist() == [7.0] and again.smoothed_error is None
    with pytest.raises(ValueError, match="integral must be finite and >= 0"):
        again.load_state(dict(state, integral=[-1.0]))
    with pytest.raises(ValueError, match="smoothed_error must be finite"):
        again.load_state(dict(state, smoothed_error=[1.0, 2.0]))


def test_pid_gains_are_checked_and_only_for_the_episode_form() -> None:
    for bad in ({"kp": -1.0}, {"kd": float("nan")}, {"d_smoothing": 1.0}):
        with pytest.raises(ValueError, match="multiplier_"):
            PIDGains(**bad)
    cfg = resolve_config("switching", devices={"num_devices": K})
    with pytest.raises(ValueError, match="the episode form's"):
        CostConstraints(DummyVecEnv([_CostEnv]), cfg, 0.1, "shared", pid=PIDGains(kp=1.0))


def test_episode_penalties_on_the_training_envs_sum_to_lambda_w() -> None:
    cfg = resolve_config("unified", num_rounds=4, devices={"num_devices": 4})
    venv = CostConstraints(make_vec_env(cfg, 2, "batched", seed=0), cfg, lr=0.0, init=0.0)
    venv.lam = np.array([2.0, 0.5])
    venv.reset()
    rng = np.random.default_rng(0)
    totals, spent = np.zeros(2), [[], []]
    done_totals: list[float] = []
    expected: list[float] = []
    for _ in range(8):  # two episodes per env
        _, reward, dones, infos = venv.step(
            rng.uniform(-1, 1, (2, *venv.action_space.shape)).astype(np.float32)
        )
        for i, info in enumerate(infos):
            totals[i] += reward[i] - info["reward_terms"]["accuracy"]
            spent[i].append(np.append(info["cost_per_device"], info["cost_latency"]))
            if dones[i]:
                c = np.array(spent[i])
                w_e = _overspend(c[:, :4], cfg.budgets.energy_budget_j)
                w_l = _overspend(c[:, 4:], cfg.budgets.latency_budget_s)
                expected.append(-(2.0 * w_e + 0.5 * w_l))
                done_totals.append(totals[i])
                totals[i], spent[i] = 0.0, []
    assert len(done_totals) == 4
    np.testing.assert_allclose(done_totals, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["dummy", "batched"])
def test_shaped_reward_on_the_training_envs_reads_the_env_costs(kind: str) -> None:
    cfg = resolve_config("unified", num_rounds=3)
    venv = CostConstraints(
        make_vec_env(cfg, 2, kind, seed=0), cfg, lr=0.1, multipliers="per_device"
    )
    venv.lam = np.linspace(0.1, 1.0, venv.lam.size)
    venv.reset()
    rng = np.random.default_rng(0)
    for _ in range(4):  # through an episode end
        _, reward, _, infos = venv.step(
            rng.uniform(-1, 1, (2, *venv.action_space.shape)).astype(np.float32)
        )
        for r, info in zip(reward, infos):
            costs = np.append(info["cost_per_device"], info["cost_latency"])
            limits = np.append(
                np.full(cfg.devices.num_devices, cfg.budgets.energy_budget_j),
                cfg.budgets.latency_budget_s,
            )
            assert r == pytest.approx(
                info["reward_terms"]["accuracy"] - venv.lam @ ((costs - limits) / limits),
                rel=1e-5,
                abs=1e-5,
            )
            assert info["cost"] == pytest.approx(info["cost_per_device"].sum())


def test_training_writes_the_multipliers_and_resume_restores_them(tmp_path: Path) -> None:
    run = tmp_path / "lag"
    _train(*TINY, "--total-timesteps", "256", "--run-dir", str(run))  # the defaults: PPO-Lagrangian
    assert RunDir(run).read_args()["objective"] == "lagrangian"
    state = json.loads((run / STATE_FILE).read_text())
    assert state["multipliers"] == "episode" and state["timesteps"] == 256
    assert state["names"] == ["energy"] and len(state["lambda"]) == 1
    default = EnvConfig()
    assert state["ascent"] == "quantile" and state["horizon"] == default.num_rounds
    assert all(x >= 0 for x in state["lambda"])
    assert state["limits"]["energy_0"] == default.budgets.energy_budget_j
    # the best model is chosen by the constrained rule, recorded with every evaluation
    from agents.callbacks import read_evaluations

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection"]["rule"] == "constrained"
    rows = read_evaluations(run / "evaluations.csv")
    assert {f"budget_use_{k}" for k in range(10)} | {"lambda_energy"} <= set(rows[0])
    # (an evaluation records the multiplier its rollout trained with: the last one's comes
    # before the last dual step)
    assert all(np.isfinite(r["lambda_energy"]) and r["lambda_energy"] >= 0 for r in rows)
    kept = [r for r in rows if r["compliance"] >= 0.95] or rows
    expected = max(
        kept,
        key=lambda r: r["final_accuracy"] if r["compliance"] >= 0.95 else -r["worst_budget_use"],
    )
    assert metrics["best_eval"]["timesteps"] == expected["timesteps"]
    # the learning curves from these records
    from agents import curves

    png = curves.main([str(run), "--out", str(tmp_path / "curves.png")])
    assert png.stat().st_size > 0
    c = curves.curves(rows)
    assert c.budget_use.shape == (len(rows), 10) and list(c.multipliers) == ["energy"]
    # resume: the saved multiplier continues (set by hand, frozen with a zero step, still there)
    state["lambda"] = [7.5]
    (run / STATE_FILE).write_text(json.dumps(state))
    _train("--run-dir", str(run), "--resume", "--total-timesteps", "384", "--multiplier-lr", "0")
    resumed = json.loads((run / STATE_FILE).read_text())
    assert resumed["lambda"] == [7.5] and resumed["timesteps"] == 384
    # a run of the slot form resumes with its own multipliers (its saved arguments)
    slot = tmp_path / "slot"
    _train(*TINY, "--total-timesteps", "128", "--run-dir", str(slot), "--multipliers", "per_device")
    state = json.loads((slot / STATE_FILE).read_text())
    assert state["multipliers"] == "per_device" and len(state["lambda"]) == 10
    state["lambda"] = [float(k) for k in range(10)]
    (slot / STATE_FILE).write_text(json.dumps(state))
    _train("--run-dir", str(slot), "--resume", "--total-timesteps", "256", "--multiplier-lr", "0")
    assert json.loads((slot / STATE_FILE).read_text())["lambda"] == [float(k) for k in range(10)]
    # the PID update: its gains and memory are saved, and a resume continues the integral
    pid = tmp_path / "pid"
    gains = ["--multiplier-kp", "2", "--multiplier-kd", "1", "--multiplier-d-smoothing", "0.5"]
    _train(*TINY, *gains, "--total-timesteps", "128", "--run-dir", str(pid))
    state = json.loads((pid / STATE_FILE).read_text())
    assert (state["kp"], state["kd"], state["d_smoothing"]) == (2.0, 1.0, 0.5)
    assert len(state["integral"]) == 1 and len(state["smoothed_error"] or [0.0]) == 1
    state["integral"] = [6.25]
    (pid / STATE_FILE).write_text(json.dumps(state))
    _train("--run-dir", str(pid), "--resume", "--total-timesteps", "256", "--multiplier-lr", "0")
    assert json.loads((pid / STATE_FILE).read_text())["integral"] == [6.25]


def test_pareto_plot_names_each_budget_once_and_the_v_of_the_preset_budget_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several budgets the figure stays readable: one legend entry per budget's V sweep and
    per agent, V written beside the points of the preset's budget only (on every point with one
    budget), an agent in its budget's colour (a colour of its own with one budget)."""
    pytest.importorskip("matplotlib")
    from baselines import pareto

    figures = []
    monkeypatch.setattr(pareto, "_save", lambda fig, path, plt: figures.append(fig) or path)

    def point(method: str, value: object, budget: float, acc: float, energy: float) -> dict:
        return {
            "method": method,
            "value": value,
            "energy_budget_j": budget,
            "final_accuracy": acc,
            "final_accuracy_ci95": 0.01,
            "energy_j": energy,
            "energy_j_ci95": 0.001,
        }

    config = resolve_config("switching")  # budget 0.125 J
    rows = [point("lyapunov", v, b, 0.78, 0.01 * v + b) for b in (0.1, 0.125) for v in (1.0, 10.0)]
    rows += [point("ppo", "runs/a_e0.1", 0.1, 0.79, 0.05), point("ppo", "runs/b", 0.125, 0.8, 0.06)]
    pareto.plot_pareto(rows, config, tmp_path)
    ax = figures[-1].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        "the preset's energy budget",
        "Lyapunov, V sweep, Ē=0.1",
        "Lyapunov, V sweep, Ē=0.125",
        "a_e0.1, Ē=0.1",
        "b, Ē=0.125",
    ]
    assert sorted(t.get_text() for t in ax.texts) == ["V=1", "V=10"]  # the 0.125 J line's
    lines = {c.get_label(): c for c in ax.containers}
    agent_colour = lines["a_e0.1, Ē=0.1"].lines[0].get_color()
    assert agent_colour == lines["Lyapunov, V sweep, Ē=0.1"].lines[0].get_color()
    # one budget: every V written, the agent in a colour of its own
    single = [r for r in rows if r["energy_budget_j"] == 0.125]
    pareto.plot_pareto(single, config, tmp_path)
    ax = figures[-1].axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["V=1", "V=10"]
    lines = {c.get_label(): c for c in ax.containers}
    assert lines["b, Ē=0.125"].lines[0].get_color() != (
        lines["Lyapunov, V sweep, Ē=0.125"].lines[0].get_color()
    )


def test_pareto_command_runs_end_to_end_with_the_lyapunov_sweep_and_agents_per_budget(
    tmp_path: Path,
) -> None:
    import csv

    from baselines import pareto
    from fedenv.scenarios import named_config

    runs = []
    for budget in (
        0.25,
        0.5,
    ):  # one PPO-Lagrangian run per energy budget (tiny: 3 devices, 5 rounds)
        config = tmp_path / f"tiny_e{budget}.yaml"
        config.write_text(
            "preset: switching\nnum_rounds: 5\ndevices:\n  num_devices: 3\nbudgets:\n  "
            f"energy_budget_j: {budget}\n"
        )
        run = tmp_path / f"run_e{budget}"
        _train(
            *TINY,
            "--total-timesteps",
            "128",
            "--eval-freq",
            "0",
            "--config",
            str(config),
            "--run-dir",
            str(run),
        )
        runs.append(f"ppo:{run}")
    out = tmp_path / "pareto"
    rows = pareto.main(
        [
            "--preset",
            str(ROOT / "configs/scenarios/tiny.yaml"),
            "--seeds",
            "1000-1002",
            "--V",
            "0.1,1",
            "--budget-scales",
            "0.5,1",
            "--agents",
            *runs,
            "--out",
            str(out),
        ]
    )
    assert [(r["method"], r["parameter"]) for r in rows] == [("lyapunov", "V")] * 4 + [
        ("ppo", "run")
    ] * 2
    default = EnvConfig().budgets.energy_budget_j  # the Lyapunov rows play tiny.yaml
    assert default is not None
    assert [r["energy_budget_j"] for r in rows] == [
        default / 2,
        default / 2,
        default,
        default,
        0.25,
        0.5,
    ]  # the V sweep under each budget scale; each agent in the config it was trained with
    # the budget guard keeps the halved budget, and that costs energy against the full one
    assert all(r["max_budget_use"] <= 1.0 for r in rows[:2])
    assert rows[0]["energy_j"] < rows[2]["energy_j"] and rows[1]["energy_j"] < rows[3]["energy_j"]
    # the front: the most accurate and the cheapest points are on it, every other point is
    # dominated by one (at least as accurate with at most its energy)
    best = max(rows, key=lambda r: (r["final_accuracy"], -r["energy_j"]))
    cheapest = min(rows, key=lambda r: (r["energy_j"], -r["final_accuracy"]))
    assert best["on_front"] and cheapest["on_front"]
    for r in rows:
        if not r["on_front"]:
            assert any(
                q["final_accuracy"] >= r["final_accuracy"] and q["energy_j"] <= r["energy_j"]
                for q in rows
                if q is not r
            )
    # the rule on points made up for it: a dominates b (b less accurate with more energy) and e
    # (as accurate with more energy); c (more accurate, more energy) dominates neither; a tie
    # (d = a) dominates neither
    made_up = {"a": (0.80, 0.05), "b": (0.79, 0.06), "c": (0.81, 0.07), "d": (0.80, 0.05)}
    made_up["e"] = (0.80, 0.06)
    marked = pareto.mark_front(
        [{"name": k, "final_accuracy": a, "energy_j": e} for k, (a, e) in made_up.items()]
    )
    assert [r["name"] for r in marked if r["on_front"]] == ["a", "c", "d"]
    # which agent dominates each Lyapunov point, and the count the docs quote
    budget = 0.1

    def point(method: str, value: object, acc: float, energy: float, b: float = budget) -> dict:
        return {"method": method, "value": value, "energy_budget_j": b} | {
            "final_accuracy": acc,
            "energy_j": energy,
        }

    sweep = [
        point("lyapunov", 1.0, 0.78, 0.050),  # dominated by both agents: the more accurate named
        point("lyapunov", 10.0, 0.80, 0.060),  # more accurate than the cheap agent: by none
        point("lyapunov", 0.1, 0.70, 0.010),  # cheaper than every agent: by none
        point("lyapunov", 1.0, 0.75, 0.045, b=0.08),  # under a lowered budget, dominated
    ]
    agents = [
        point("ppo", "runs/lag_a", 0.79, 0.040, b=0.08),
        point("ppo", "runs/lag_b", 0.785, 0.030),
    ]
    marked = pareto.mark_dominated_by_agents(sweep + agents)
    assert [r["dominated_by"] for r in marked] == [
        "lag_a, Ē=0.08",
        "",
        "",
        "lag_a, Ē=0.08",
        "",
        "",
    ]
    assert pareto.dominance_summary(marked, budget) == (
        "Dominated by an agent (on the means): of the V sweep at the preset's energy budget "
        "(0.1 J), 1 of 3; of the Lyapunov points that spend at least as much as the cheapest "
        "agent (0.0300 J per device-round), 2 of 3."
    )
    assert pareto.dominance_summary(sweep, budget) == ""  # no agent
    for r in rows:
        assert (
            0.0 < r["final_accuracy"] <= 1.0 and r["energy_j"] > 0 and r["final_accuracy_ci95"] >= 0
        )
        assert 0.0 <= r["devices_within_budget"] <= 1.0
    with (out / "pareto.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert (
        "Dominated by an agent (on the means): of the V sweep at the preset's energy"
        in (out / "pareto.md").read_text()
    )
    assert (
        "| ppo | run=" in (out / "pareto.md").read_text()
        and (out / "pareto.png").stat().st_size > 0
    )
    # the plot tells the points apart: V for the sweep, run name and budget for an agent (two
    # agents at one budget differ by name)
    assert [pareto.point_label(r) for r in rows] == [
        "V=0.1",
        "V=1",
        "V=0.1",
        "V=1",
        "run_e0.25, Ē=0.25",
        "run_e0.5, Ē=0.5",
    ]
    assert pareto.point_label({**rows[4], "value": f"{rows[4]['value']}@final"}) == (
        "run_e0.25, Ē=0.25"
    )
    # a checkpoint of a run plays in that run's config too, under the run's name
    checkpoint = sorted((tmp_path / "run_e0.25" / "checkpoints").glob("ckpt_*_steps.zip"))[-1]
    preset = named_config(str(ROOT / "configs/scenarios/tiny.yaml"))
    assert pareto.agent_config(f"ppo:{checkpoint}", preset).budgets.energy_budget_j == 0.25
    assert pareto.point_label({**rows[4], "value": str(checkpoint)}) == "run_e0.25, Ē=0.25"
    # an agent through the arrival pruner plays in its run's config, labelled apart
    pruned = pareto.agent_point(f"prune:ppo:{tmp_path / 'run_e0.25'}", preset, [1000])
    assert pruned["method"] == "prune:ppo" and pruned["energy_budget_j"] == 0.25
    assert pareto.point_label(pruned) == "prune:run_e0.25, Ē=0.25"
    # the prefix is read as the registry reads it (any case)
    assert pareto.agent_config(f"PRUNE:ppo:{checkpoint}", preset).budgets.energy_budget_j == 0.25
    assert pareto.parse_scales("0.8, 0.9,1") == [0.8, 0.9, 1.0]
    for bad in ("0", "-1", "nan", "x", ""):
        with pytest.raises(ValueError, match="--budget-scales"):
            pareto.parse_scales(bad)
    no_budget = preset.replace(budgets={**preset.budgets.to_dict(), "energy_budget_j": None})
    assert pareto.scaled_budget(no_budget, 1.0) is no_budget
    with pytest.raises(ValueError, match="no energy budget"):
        pareto.scaled_budget(no_budget, 0.9)
    assert pareto.parse_seeds("1000-1002") == [1000, 1001, 1002] and pareto.parse_seeds("7,9") == [
        7,
        9,
    ]
    with pytest.raises(ValueError, match="--seeds"):
        pareto.parse_seeds("10-1")


# ---------------------------------------------------------------- best-model selection
def _row(accuracy: float, ret: float, compliance: float, worst: float) -> dict[str, float]:
    return {
        "mean_return": ret,
        "final_accuracy": accuracy,
        "compliance": compliance,
        "worst_budget_use": worst,
        "within_budget": compliance,
        "budget_use_max": worst,
    }


def test_constrained_rule_ranks_in_budget_by_accuracy_then_least_overspend() -> None:
    from agents.callbacks import SelectionRule

    rule = SelectionRule("constrained")
    over = _row(0.86, 40.0, 0.90, 1.30)  # the most accurate and best return, 10% episodes over
    low = _row(0.80, 35.0, 1.00, 0.90)
    high = _row(0.82, 30.0, 0.95, 1.00)  # compliance exactly 0.95: in budget
    assert not rule.feasible(over) and rule.feasible(low) and rule.feasible(high)
    assert max([over, low, high], key=rule.score) is high  # accuracy, not return
    assert rule.score(high) == pytest.approx(0.82) and rule.score(over) < -1.0
    # none in budget: the least overspend, whatever the accuracy
    worse = _row(0.86, 40.0, 0.0, 1.60)
    better = _row(0.70, 20.0, 0.5, 1.10)
    assert max([worse, better], key=rule.score) is better
    # the weighted objective's rule is still the return
    assert max([over, low, high], key=SelectionRule("return").score) is over
    # a row of a run from before the compliance column reads within_budget / budget_use_max
    legacy = {
        "mean_return": 1.0,
        "final_accuracy": 0.8,
        "within_budget": 1.0,
        "budget_use_max": 0.9,
    }
    assert rule.feasible(legacy) and rule.score(legacy) == pytest.approx(0.8)
    legacy_over = dict(legacy, within_budget=0.5, compliance=float("nan"))
    assert rule.score(legacy_over) == pytest.approx(-1.9)
    # without any budget every evaluation is in budget
    assert rule.feasible(_row(0.5, 0.0, float("nan"), float("nan")))
    with pytest.raises(ValueError, match="selection rule must be one of return, constrained"):
        SelectionRule("accuracy")
    with pytest.raises(ValueError, match="takes no accuracy_target"):
        SelectionRule("constrained", accuracy_target=0.8)
    assert "1.05 x budget" in SelectionRule("constrained").describe()


def _fake_evaluation(seeds: list[int], accuracy: float, ret: float, uses: list[list[float]]) -> Any:
    """An Evaluation whose episode e has device energies uses[e] x the budget (tiny config)."""
    from baselines.evaluation import Evaluation

    uses_arr = np.asarray(uses, dtype=np.float64)
    episodes = [
        {
            "policy": "ppo",
            "seed": s,
            "rounds": 5,
            "final_accuracy": accuracy,
            "episode_return": ret,
            "energy_j": float(u.mean() * BUDGET),
            "max_budget_use": float(u.max()),
            "latency_budget_use": float("nan"),
            "worst_budget_use": float(u.max()),
            "in_budget": float(u.max() <= 1.05),
        }
        for s, u in zip(seeds, uses_arr)
    ]
    energy = np.repeat(uses_arr[:, None, :] * BUDGET, 5, axis=1)
    return Evaluation("ppo", seeds, episodes, {"energy_j": energy})


def test_the_callback_keeps_the_most_accurate_evaluation_in_budget_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    import baselines.evaluation
    from agents.actions import ActionAdapter
    from agents.callbacks import HeldOutEvalCallback, SelectionRule, read_evaluations
    from agents.features import ObservationFeatures
    from agents.runs import model_steps

    cfg = resolve_config(
        "switching", num_rounds=5, devices={"num_devices": K}, budgets={"energy_budget_j": BUDGET}
    )
    venv = VecNormalize(
        make_vec_env(cfg, 1, "dummy", seed=0, obs_features="env", action_form="env")
    )
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, policy_kwargs={"net_arch": [4]})
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    seeds = [1, 2]
    # (step, accuracy, return, device uses per episode)
    plan = [
        (100, 0.70, 10.0, [[0.5, 0.5, 0.5]] * 2),  # in budget
        (200, 0.86, 40.0, [[1.3, 0.5, 0.5], [0.9, 0.9, 0.9]]),  # best return, one episode over
        (300, 0.75, 20.0, [[1.04, 0.5, 0.5]] * 2),  # in budget (within 1.05), most accurate
        (400, 0.72, 30.0, [[0.6, 0.6, 0.6]] * 2),  # in budget, less accurate
    ]
    lam = {"value": 0.0}

    def callback(selection: SelectionRule) -> HeldOutEvalCallback:
        cb = HeldOutEvalCallback(
            cfg,
            run,
            0,
            seeds,
            ObservationFeatures(cfg, "env"),
            ActionAdapter(cfg, "env"),
            name="ppo",
            verbose=0,
            selection=selection,
            extras=lambda: {"lambda_energy_0": lam["value"]},
        )
        cb.restore(model)
        return cb

    cb = callback(SelectionRule("constrained"))
    for steps, acc, ret, uses in plan:
        fake = _fake_evaluation(seeds, acc, ret, uses)
        monkeypatch.setattr(baselines.evaluation, "evaluate", lambda *a, _f=fake, **k: _f)
        model.num_timesteps = steps
        lam["value"] = steps / 100
        cb.evaluate()
    rows = read_evaluations(run.evaluations)
    assert [r["best"] for r in rows] == [1, 0, 1, 0]
    assert [r["feasible"] for r in rows] == [1.0, 0.0, 1.0, 1.0]
    assert [r["compliance"] for r in rows] == [1.0, 0.5, 1.0, 1.0]
    assert rows[1]["worst_budget_use"] == pytest.approx((1.3 + 0.9) / 2)
    assert rows[2]["budget_use_0"] == pytest.approx(1.04) and rows[2]["budget_use_2"] == 0.5
    assert [r["lambda_energy_0"] for r in rows] == [1.0, 2.0, 3.0, 4.0]
    assert model_steps(run.best_model) == 300 and cb.best_row()["timesteps"] == 300
    state = json.loads(run.eval_state.read_text())
    assert state["selection"]["rule"] == "constrained" and state["best"]["timesteps"] == 300
    # a resumed session scores the records again with its rule and keeps best/ (step 300)
    again = callback(SelectionRule("constrained"))
    assert again.best_score == pytest.approx(0.75) and model_steps(run.best_model) == 300
    # the weighted objective's rule on the same records would pick the best return (step 200)
    assert max(rows, key=SelectionRule("return").score)["timesteps"] == 200


# ---------------------------------------------------------------- zero-shot transfer
def test_transfer_evaluates_the_per_device_network_zero_shot_at_other_k(tmp_path: Path) -> None:
    from agents import transfer
    from agents.evaluate import load_policy
    from baselines.evaluation import evaluate

    config = tmp_path / "tiny_k3.yaml"
    config.write_text("preset: switching\nnum_rounds: 5\ndevices:\n  num_devices: 3\n")
    run = tmp_path / "lag_k3"
    _train(
        *TINY, "--total-timesteps", "128", "--eval-freq", "0", "--config", str(config),
        "--run-dir", str(run),
    )  # fmt: skip
    out = tmp_path / "transfer"
    rows = transfer.main(
        [
            "--run", str(run), "--devices", "5", "8", "--seeds", "1000-1001", "--val-seeds",
            "100000-100001", "--V", "0.1,1", "--out", str(out),
        ]
    )  # fmt: skip
    agent = [r for r in rows if r["kind"] == "agent"]
    assert [r["setting"] for r in agent] == ["K=3 (trained)", "K=5", "K=8"]
    assert [r["kind"] for r in rows if r["setting"] == "K=8"] == ["lyapunov", "heuristic", "agent"]
    # the row at K = 8 is the K = 3 network acting for 8 devices, scored on the same seeds
    cfg8 = RunDir(run).env_config().replace(devices={"num_devices": 8})
    with pytest.warns(UserWarning, match="different env config"):
        policy = load_policy(f"ppo:{run}", cfg8)
    ev = evaluate(policy, cfg8, [1000, 1001])
    assert ev.traces["energy_j"].shape[-1] == 8
    assert agent[2]["final_accuracy"] == pytest.approx(ev.metric("final_accuracy").mean())
    assert agent[2]["compliance"] == pytest.approx(ev.metric("in_budget").mean())
    assert np.isfinite(agent[2]["diff"])
    text = (out / "transfer.md").read_text()
    assert "| K=8 | ppo:lag_k3 |" in text and "python -m agents.transfer --run" in text
    assert (out / "tuning.csv").read_text().count("\n") == 1 + 3 * 2  # 3 K x 2 V
    # an MLP's sizes are tied to K: a clear error before any evaluation
    mlp = tmp_path / "lag_mlp"
    _train(
        *TINY, "--total-timesteps", "128", "--eval-freq", "0", "--config", str(config),
        "--run-dir", str(mlp), "--policy", "mlp",
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"K=3 devices and the config has K=5; only a per-device"):
        transfer.transfer_rows(f"ppo:{mlp}", [5], [1000], [100000], v_values=[0.1])


def test_curves_arrays_follow_the_steps_and_the_device_slots() -> None:
    from agents.curves import curves

    def row(steps: int, best: int, feasible: float) -> dict[str, float]:
        r = {"timesteps": steps, "final_accuracy": steps / 1000, "best": best}
        r |= {"feasible": feasible, "worst_budget_use": 1.0 + steps / 1000}
        r |= {f"budget_use_{k}": steps + k for k in range(12)}  # slot 10 after slot 9
        return r | {"lambda_energy_0": steps / 10, "lambda_latency": steps / 20}

    c = curves([row(300, 0, 0.0), row(100, 1, 1.0), row(200, 1, 1.0)])  # rows out of order
    assert c.steps.tolist() == [100, 200, 300] and c.best == 1  # the last evaluation flagged best
    assert c.feasible.tolist() == [True, True, False]
    np.testing.assert_array_equal(c.budget_use[0], 100 + np.arange(12))
    assert list(c.multipliers) == ["energy_0", "latency"]
    assert c.multipliers["latency"].tolist() == [5.0, 10.0, 15.0] and c.latency_budget_use is None
    old = curves([{"timesteps": 0, "final_accuracy": 0.5, "best": 1}])  # before these columns
    assert (
        old.budget_use.shape == (1, 0) and old.feasible.tolist() == [True] and not old.multipliers
    )
    with pytest.raises(ValueError, match="no evaluations"):
        curves([])


def test_curves_accuracy_panel_shows_every_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reference just above every evaluation (the max policy's ceiling) is drawn inside the
    panel, not on its frame (autoscaling alone puts it at the top edge)."""
    import baselines.compare
    from agents.curves import curves, plot_curves

    figures = []
    monkeypatch.setattr(baselines.compare, "_save", lambda fig, path, plt: figures.append(fig))
    evaluations = ((0, 0.58), (1, 0.795))
    c = curves([{"timesteps": s, "final_accuracy": a, "best": 0} for s, a in evaluations])
    plot_curves(c, tmp_path / "c.png", {"lyapunov": 0.79, "max": 0.8055})
    low, high = figures[0].axes[0].get_ylim()
    assert low < 0.58 and high > 0.8055 + 0.005  # a margin above the top reference
