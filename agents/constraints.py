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

:class:`DualAscentCallback` runs the dual ascent of any :class:`DualConstraint` (a VecEnv wrapper
with ``update()`` and ``state()``): this accuracy constraint, and the energy and latency
constraints of PPO-Lagrangian (:mod:`agents.lagrangian`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from fedenv.atomic import write_file

__all__ = ["AccuracyConstraint", "DualAscentCallback", "DualConstraint"]


class DualConstraint(Protocol):
    """A Lagrangian relaxation: :meth:`update` takes a dual-ascent step, :meth:`state` is what is
    saved."""

    def update(self) -> dict[str, float]:
        """One dual-ascent step from the experience since the last one; statistics to log ({} if
        none)."""
        ...

    def state(self) -> dict[str, Any]:
        """The multipliers (JSON-serialisable), as the run directory keeps them."""
        ...


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
        bonus = np.array(
            [info.get("reward_terms", {}).get("accuracy", 0.0) for info in infos], dtype=np.float64
        )
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

    def state(self) -> dict[str, Any]:
        return {"lambda": self.lam, "target": self.target}


class DualAscentCallback(BaseCallback):
    """Updates the multipliers after every rollout, logs them (``<prefix>/<stat>``) and saves
    them atomically in ``path`` (the constraint's state plus ``timesteps``)."""

    def __init__(self, constraint: DualConstraint, path: Path, prefix: str = "constraint") -> None:
        super().__init__()
        self.constraint = constraint
        self.path = path
        self.prefix = prefix

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        stats = self.constraint.update()
        for key, value in stats.items():
            self.logger.record(f"{self.prefix}/{key}", value)
        state = {**self.constraint.state(), "timesteps": int(self.num_timesteps)}
        write_file(self.path, json.dumps(state))

    @staticmethod
    def saved_state(path: Path) -> dict[str, Any] | None:
        """The saved state a resumed run continues from (None before the first rollout)."""
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict):
                raise TypeError(f"expected a JSON object, got {type(state).__name__}")
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{path}: damaged ({exc}); it holds the constraint's multipliers. Restore it "
                "from a copy of the run, "
                "or delete it to restart the multiplier from 0"
            ) from exc
        return state

    @staticmethod
    def saved_lambda(path: Path) -> float:
        """The accuracy constraint's multiplier a resumed run continues from (0 before the first
        rollout)."""
        try:
            state = DualAscentCallback.saved_state(path)
            return 0.0 if state is None else float(state["lambda"])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}: damaged ({exc!r}); it holds the constraint's multiplier. Restore "
                "it from a copy of the run, "
                "or delete it to restart the multiplier from 0"
            ) from exc
