"""SB3 callbacks of the training scripts: env metrics to TensorBoard, held-out evaluation, checkpoints.

* :class:`EnvMetricsCallback` reads the env's ``info`` after every step (or the batched training
  env's per-episode metrics) and, at each episode end, logs the episode's reward terms, energy, budget use, final accuracy and backlogs
  (``episode/*`` scalars in TensorBoard, averaged over the episodes of a rollout).
* :class:`HeldOutEvalCallback` evaluates the current policy every ``eval_freq`` env steps on
  fixed held-out seeds, through the same :class:`agents.evaluate.SB3Policy` adapter and the
  same evaluation loop as the baselines; it appends the scores to ``evaluations.csv`` (the
  learning curve) and keeps the best model and its normaliser in ``best/``.
* :func:`checkpoint_callback` saves the model and its normaliser every ``checkpoint_freq`` env
  steps (SB3's ``CheckpointCallback``); ``--resume`` restarts from the newest one.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.vec_env import VecNormalize

from agents.actions import ActionAdapter
from agents.envs import EpisodeStats
from agents.evaluate import SB3Policy
from agents.features import ObservationFeatures
from agents.runs import RunDir
from fedenv.config import EnvConfig

__all__ = ["EnvMetricsCallback", "HeldOutEvalCallback", "checkpoint_callback", "selection_score", "EVAL_FIELDS"]


class EnvMetricsCallback(BaseCallback):
    """Logs per-episode env metrics (:class:`agents.envs.EpisodeStats`) under ``episode/``.

    With single envs (``DummyVecEnv``, ``SubprocVecEnv``) it sums the env's step ``info`` itself;
    the batched training env (:class:`agents.envs.BatchedAgentVecEnv`) sums them in arrays and
    hands the finished episodes' metrics over in ``info["episode_metrics"]``.
    """

    def __init__(self, energy_budget_j: float | None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.energy_budget_j = energy_budget_j
        self._stats: EpisodeStats | None = None

    def _on_step(self) -> bool:
        infos: list[dict[str, Any]] = self.locals["infos"]
        if "energy_j" not in infos[0]:
            for info in infos:
                if "episode_metrics" in info:
                    self._log(info["episode_metrics"])
            return True
        if self._stats is None:
            self._stats = EpisodeStats(len(infos), len(infos[0]["energy_j"]), self.energy_budget_j)
        stats = self._stats
        terms = {name: np.array([info["reward_terms"][name] for info in infos]) for name in infos[0]["reward_terms"]}
        stats.add(terms, np.stack([info["energy_j"] for info in infos]), np.stack([info["module"] for info in infos]), np.stack([info["success"] for info in infos]), np.array([info["round_latency_s"] for info in infos]))
        for i in np.flatnonzero(self.locals["dones"]):
            info = infos[i]
            self._log(stats.finish(int(i), float(info["accuracy"]), np.asarray(info["energy_backlog"]), float(info["latency_backlog"])))
        return True

    def _log(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.logger.record_mean(f"episode/{key}", value)


_INFEASIBLE = 1e6

#: Columns of evaluations.csv.
EVAL_FIELDS = (
    "timesteps",
    "wall_s",
    "mean_return",
    "std_return",
    "final_accuracy",
    "energy_j_per_device_round",
    "budget_use_max",
    "within_budget",
    "best",
)


def selection_score(mean_return: float, accuracy: float, accuracy_target: float | None) -> float:
    """The score that picks the best model: the validation return; with an accuracy target,
    evaluations meeting it rank above every evaluation that does not."""
    feasible = accuracy_target is None or accuracy >= accuracy_target
    return mean_return - (0.0 if feasible else _INFEASIBLE)


class HeldOutEvalCallback(BaseCallback):
    """Evaluates on fixed held-out seeds every ``eval_freq`` env steps and keeps the best model.

    Args:
        config: the env config to evaluate in (the training one).
        run: the run directory (evaluations.csv, best/, eval_state.json).
        eval_freq: env steps (summed over the vector envs) between evaluations.
        seeds: the held-out episode seeds.
        features: the agent's observation (as in training).
        actions: the agent's action form (as in training).
        name: label of the evaluated policy.
        accuracy_target: with a target, the best model is the best return among evaluations
            whose mean final accuracy meets it (if any does; :func:`selection_score`).
    """

    def __init__(self, config: EnvConfig, run: RunDir, eval_freq: int, seeds: list[int], features: ObservationFeatures, actions: ActionAdapter, name: str = "agent", accuracy_target: float | None = None, verbose: int = 1) -> None:
        super().__init__(verbose)
        self.accuracy_target = accuracy_target
        self.config = config
        self.features = features
        self.actions = actions
        self.run = run
        self.eval_freq = int(eval_freq)
        self.seeds = list(seeds)
        self.name = name
        self.best_score = -np.inf
        self.best_return = float("nan")
        self.last: dict[str, float] = {}
        self._next = 0
        self._start = time.perf_counter()
        self._elapsed0 = 0.0

    def _on_training_start(self) -> None:
        state = json.loads(self.run.eval_state.read_text()) if self.run.eval_state.is_file() else {}
        self.best_score = float(state.get("best_score", -np.inf))
        self.best_return = float(state.get("best_return", float("nan")))
        self._elapsed0 = float(state.get("wall_s", 0.0))
        self._start = time.perf_counter()
        self._next = (self.num_timesteps // self.eval_freq + 1) * self.eval_freq if self.eval_freq > 0 else np.inf
        if self.eval_freq > 0 and self.num_timesteps == 0:
            self.evaluate()  # the untrained policy: the learning curve's first point

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.num_timesteps >= self._next:
            self._next += self.eval_freq * max(1, (self.num_timesteps - self._next) // self.eval_freq + 1)
            self.evaluate()
        return True

    def evaluate(self) -> dict[str, float]:
        """Run the held-out episodes now; log, record and keep the model if it is the best."""
        from baselines.evaluation import evaluate  # the one evaluation loop of every policy

        norm = self.model.get_vec_normalize_env()
        policy = SB3Policy(self.model, norm, self.name, features=self.features, actions=self.actions)
        ev = evaluate(policy, self.config, self.seeds)
        self.model.policy.set_training_mode(False)
        returns = ev.metric("episode_return")
        summary: dict[str, float] = {
            "timesteps": int(self.num_timesteps),
            "wall_s": self._elapsed0 + time.perf_counter() - self._start,
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()),
            "final_accuracy": float(ev.metric("final_accuracy").mean()),
            "energy_j_per_device_round": float(ev.metric("energy_j").mean()),
            "budget_use_max": float(np.nanmax(ev.metric("max_budget_use"))) if self.config.uses_energy_queue else float("nan"),
            "within_budget": float(np.mean(ev.metric("max_budget_use") <= 1.0)) if self.config.uses_energy_queue else float("nan"),
        }
        score = selection_score(summary["mean_return"], summary["final_accuracy"], self.accuracy_target)
        improved = score > self.best_score
        summary["best"] = int(improved)
        if improved:
            self.best_score = score
            self.best_return = summary["mean_return"]
            self.run.best_model.parent.mkdir(parents=True, exist_ok=True)
            self.model.save(self.run.best_model)
            if isinstance(norm, VecNormalize):
                norm.save(str(self.run.best_normalizer))
        for key in ("mean_return", "std_return", "final_accuracy", "energy_j_per_device_round", "budget_use_max", "within_budget"):
            self.logger.record(f"eval/{key}", summary[key])
        self.logger.record("eval/best_return", self.best_return)
        new_file = not self.run.evaluations.is_file()
        with self.run.evaluations.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=EVAL_FIELDS)
            if new_file:
                writer.writeheader()
            writer.writerow(summary)
        self.run.eval_state.write_text(json.dumps({"best_score": self.best_score, "best_return": self.best_return, "wall_s": summary["wall_s"], "last": summary}, indent=2))
        self.last = summary
        if self.verbose:
            flag = " (new best)" if improved else ""
            print(
                f"[eval] step {summary['timesteps']:>9,d}: return {summary['mean_return']:7.2f} +- {summary['std_return']:.2f}, "
                f"accuracy {summary['final_accuracy']:.4f}, budget use max {summary['budget_use_max']:.2f}{flag}",
                flush=True,
            )
        return summary


class _Checkpoints(CheckpointCallback):
    """SB3's checkpoints, keeping only the newest replay buffer (off-policy agents; it is large)."""

    def _on_step(self) -> bool:
        saved = self.n_calls % self.save_freq == 0
        result = super()._on_step()
        if saved and self.save_replay_buffer:
            newest = self._checkpoint_path("replay_buffer_", extension="pkl")
            for p in Path(self.save_path).glob("ckpt_replay_buffer_*_steps.pkl"):
                if p.name != Path(newest).name:
                    p.unlink()
        return result


def checkpoint_callback(run: RunDir, checkpoint_freq: int, n_envs: int, replay_buffer: bool = False) -> CheckpointCallback:
    """Save model + normaliser (+ the replay buffer) every ``checkpoint_freq`` env steps in ``run/checkpoints``."""
    return _Checkpoints(
        save_freq=max(checkpoint_freq // n_envs, 1),
        save_path=str(run.checkpoints),
        name_prefix="ckpt",
        save_vecnormalize=True,
        save_replay_buffer=replay_buffer,
    )
