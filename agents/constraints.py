"""An optional accuracy constraint for training: Lagrangian relaxation of final accuracy >= target.

The env's reward prices energy against accuracy; the return-maximising policy may stop at a
lower final accuracy than a user needs. ``--accuracy-target a*`` trains for

    maximise E[return]   subject to   E[final accuracy] >= a*

(a constrained MDP) by Lagrangian relaxation with dual ascent, as in Lagrangian PPO
(Ray, Achiam & Amodei, "Benchmarking Safe Exploration in Deep RL", 2019). The *training*
reward becomes r + lambda * r_acc, where r_acc = w_acc 100 (acc_t - acc_(t-1)) is the env's own
accuracy term (``info["reward_terms"]["accuracy"]``; its episode sum is the final accuracy
gain), and after each rollout

    lambda <- max(0, lambda + lr_lambda * 100 (a* - mean final accuracy of the rollout's episodes)).

The env, its reward and every evaluation are unchanged: evaluations report the env's reward.
The multiplier is logged (``constraint/lambda``) and saved in ``<run>/constraint.json`` so that
``--resume`` continues with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from fedenv.atomic import write_file

__all__ = ["AccuracyConstraint", "DualAscentCallback"]


class AccuracyConstraint(VecEnvWrapper):
    """Adds lambda x the accuracy reward term to the training reward (module docstring)."""

    def __init__(self, venv: VecEnv, target: float, lr: float, lam: float = 0.0) -> None:
        super().__init__(venv)
        if not 0.0 < target <= 1.0:
            raise ValueError(f"accuracy_target must be in (0, 1], got {target!r}")
        if lr < 0:
            raise ValueError(f"lambda_lr must be >= 0, got {lr!r}")
        self.target = float(target)
        self.lr = float(lr)
        self.lam = float(lam)
        self._finals: list[float] = []

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, dones, infos = self.venv.step_wait()
        bonus = np.array([info.get("reward_terms", {}).get("accuracy", 0.0) for info in infos], dtype=np.float64)
        for done, info in zip(dones, infos):
            if done:
                self._finals.append(float(info["accuracy"]))
        return obs, (reward + self.lam * bonus).astype(reward.dtype), dones, infos

    def update(self) -> dict[str, float]:
        """One dual-ascent step from the episodes finished since the last one."""
        if not self._finals:
            return {}
        mean = float(np.mean(self._finals))
        self._finals = []
        self.lam = max(0.0, self.lam + self.lr * 100.0 * (self.target - mean))
        return {"lambda": self.lam, "final_accuracy": mean, "violation": self.target - mean}


class DualAscentCallback(BaseCallback):
    """Updates the multiplier after every rollout, logs it and saves it in ``path``."""

    def __init__(self, constraint: AccuracyConstraint, path: Path) -> None:
        super().__init__()
        self.constraint = constraint
        self.path = path

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        stats = self.constraint.update()
        for key, value in stats.items():
            self.logger.record(f"constraint/{key}", value)
        state = {"lambda": self.constraint.lam, "target": self.constraint.target, "timesteps": int(self.num_timesteps)}
        write_file(self.path, json.dumps(state))

    @staticmethod
    def saved_lambda(path: Path) -> float:
        """The multiplier a resumed run continues from (0 before the first rollout)."""
        if not path.is_file():
            return 0.0
        try:
            return float(json.loads(path.read_text())["lambda"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}: damaged ({exc}); it holds the constraint's multiplier. Restore it from a copy of the run, "
                "or delete it to restart the multiplier from 0"
            ) from exc
