"""SB3 callbacks of the training scripts: env metrics to TensorBoard, held-out evaluation,
checkpoints.

* :class:`EnvMetricsCallback` reads the env's ``info`` after every step (or the batched training
  env's per-episode metrics) and, at each episode end, logs the episode's reward terms, energy,
  budget use, final accuracy and backlogs
  (``episode/*`` scalars in TensorBoard, averaged over the episodes of a rollout).
* :class:`HeldOutEvalCallback` evaluates the current policy every ``eval_freq`` env steps on
  fixed held-out seeds, through the same :class:`agents.evaluate.SB3Policy` adapter and the
  same evaluation loop as the baselines; it appends the scores to ``evaluations.csv`` (the
  learning curve) and keeps the best model and its normaliser in ``best/``, the best by a
  :class:`SelectionRule` (the validation return, or for PPO-Lagrangian the final accuracy
  among the evaluations in budget).
* :func:`checkpoint_callback` saves the model and its normaliser every ``checkpoint_freq`` env
  steps, each file atomically; ``--resume`` restarts from the newest intact one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecNormalize

from agents.actions import ActionAdapter
from agents.envs import EpisodeStats
from agents.evaluate import SB3Policy
from agents.features import ObservationFeatures
from agents.runs import (
    RunDir,
    RunRepairWarning,
    copy_file,
    model_steps,
    pair_problem,
    replacing,
    save_model,
    save_normalizer,
    write_file,
)
from baselines.objective import (
    BUDGET_TOLERANCE,
    CONSTRAINED_RULE,
    MIN_COMPLIANCE,
    constrained_score,
    in_budget,
)
from fedenv.config import EnvConfig

__all__ = [
    "EnvMetricsCallback",
    "HeldOutEvalCallback",
    "Checkpoints",
    "checkpoint_callback",
    "SelectionRule",
    "SELECTION_RULES",
    "selection_score",
    "read_evaluations",
    "write_evaluations",
    "EVAL_FIELDS",
]


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
        terms = {
            name: np.array([info["reward_terms"][name] for info in infos])
            for name in infos[0]["reward_terms"]
        }
        stats.add(
            terms,
            np.stack([info["energy_j"] for info in infos]),
            np.stack([info["module"] for info in infos]),
            np.stack([info["success"] for info in infos]),
            np.array([info["round_latency_s"] for info in infos]),
        )
        for i in np.flatnonzero(self.locals["dones"]):
            info = infos[i]
            self._log(
                stats.finish(
                    int(i),
                    float(info["accuracy"]),
                    np.asarray(info["energy_backlog"]),
                    float(info["latency_backlog"]),
                )
            )
        return True

    def _log(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.logger.record_mean(f"episode/{key}", value)


_INFEASIBLE = 1e6

#: The columns every evaluations.csv has (a run written before the selection columns has these).
_REQUIRED_FIELDS = (
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
#: Columns of evaluations.csv (means over the validation episodes): ``budget_use_max`` the
#: largest device energy / budget of any episode, ``within_budget`` the share of episodes with
#: every device's energy <= its budget; ``compliance`` the share with every budget (energy per
#: device, latency) kept within 1.05 x, ``worst_budget_use`` the mean of each episode's largest
#: cost / budget (:mod:`baselines.objective`); ``feasible`` and ``score`` the selection rule's
#: verdict (:class:`SelectionRule`); ``best`` 1 where the evaluation became the best model. After
#: them, per run: ``budget_use_<k>`` (device slot k's mean energy / budget),
#: ``latency_budget_use`` and, for PPO-Lagrangian, the multipliers ``lambda_<name>`` at the
#: evaluation.
EVAL_FIELDS = (
    *_REQUIRED_FIELDS[:-1],
    "compliance",
    "worst_budget_use",
    "feasible",
    "score",
    "best",
)

#: The kinds of :class:`SelectionRule`.
SELECTION_RULES = ("return", "constrained")


def selection_score(mean_return: float, accuracy: float, accuracy_target: float | None) -> float:
    """The score of the ``return`` rule: the validation return; with an accuracy target,
    evaluations meeting it rank above every evaluation that does not."""
    feasible = accuracy_target is None or accuracy >= accuracy_target
    return mean_return - (0.0 if feasible else _INFEASIBLE)


@dataclass(frozen=True)
class SelectionRule:
    """Which held-out evaluation's model is the best model (``best/``).

    * ``return`` (the weighted objective, SAC): the highest validation return; with an
      ``accuracy_target``, among the evaluations whose mean final accuracy meets it, if any does
      (:func:`selection_score`).
    * ``constrained`` (PPO-Lagrangian, the papers' problem): the highest mean final accuracy
      among the evaluations in budget, i.e. with every budget kept within (1 +
      ``budget_tolerance``) x in at least ``min_compliance`` of the validation episodes; if none
      is, the least overspend (lowest mean worst cost / budget;
      :func:`baselines.objective.constrained_score`).

    Each evaluation's ``feasible`` and ``score`` are written to evaluations.csv, and the rule in
    words to eval_state.json and metrics.json (``selection``).
    """

    kind: str = "return"
    accuracy_target: float | None = None
    min_compliance: float = MIN_COMPLIANCE
    budget_tolerance: float = BUDGET_TOLERANCE

    def __post_init__(self) -> None:
        if self.kind not in SELECTION_RULES:
            raise ValueError(
                f"selection rule must be one of {', '.join(SELECTION_RULES)}, got {self.kind!r}"
            )
        if self.kind == "constrained" and self.accuracy_target is not None:
            raise ValueError("the constrained rule ranks by accuracy; it takes no accuracy_target")
        if not 0.0 <= self.min_compliance <= 1.0:
            raise ValueError(f"min_compliance must be in [0, 1], got {self.min_compliance!r}")
        if not (math.isfinite(self.budget_tolerance) and self.budget_tolerance >= 0):
            raise ValueError(f"budget_tolerance must be >= 0, got {self.budget_tolerance!r}")

    def feasible(self, row: dict[str, float]) -> bool:
        """Whether an evaluation meets the rule's condition."""
        if self.kind == "return":
            return self.accuracy_target is None or row["final_accuracy"] >= self.accuracy_target
        return in_budget(self._budget(row)[0], self.min_compliance)

    def score(self, row: dict[str, float]) -> float:
        """The evaluation's score (higher is better) from its evaluations.csv row."""
        if self.kind == "return":
            return selection_score(row["mean_return"], row["final_accuracy"], self.accuracy_target)
        compliance, worst = self._budget(row)
        return constrained_score(row["final_accuracy"], compliance, worst, self.min_compliance)

    @staticmethod
    def _budget(row: dict[str, float]) -> tuple[float, float]:
        """(compliance, worst budget use) of a row.

        With an energy budget the compliance is always a number; a row written before the
        column existed (NaN or missing, while within_budget is a number) reads within_budget
        (every device <= its budget: stricter) and budget_use_max in their place.
        """
        compliance = row.get("compliance", math.nan)
        if not math.isfinite(compliance) and math.isfinite(row.get("within_budget", math.nan)):
            return row["within_budget"], row["budget_use_max"]
        return compliance, row.get("worst_budget_use", math.nan)

    def describe(self) -> str:
        """The rule in words."""
        if self.kind == "constrained":
            return CONSTRAINED_RULE.format(
                min_compliance=self.min_compliance, tolerance_factor=1.0 + self.budget_tolerance
            )
        if self.accuracy_target is None:
            return "the highest mean validation return"
        return (
            "the highest mean validation return among the evaluations with mean final accuracy "
            f">= {self.accuracy_target:g}; if none, the highest return"
        )

    def to_dict(self) -> dict[str, Any]:
        """What eval_state.json and metrics.json record."""
        return {
            "rule": self.kind,
            "accuracy_target": self.accuracy_target,
            "min_compliance": self.min_compliance,
            "budget_tolerance": self.budget_tolerance,
            "description": self.describe(),
        }


def read_evaluations(path: Path) -> list[dict[str, float]]:
    """The rows of an evaluations.csv (:data:`EVAL_FIELDS` and the run's own columns; none when
    it does not exist). A file from before the selection columns reads without them.

    A damaged row (a torn last line of an interrupted write, or a corrupt line) is dropped with
    a :class:`agents.runs.RunRepairWarning`; the learning curve loses that point, the run goes on.
    """
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines(keepends=True)
    except UnicodeDecodeError:
        lines = path.read_bytes().decode(errors="replace").splitlines(keepends=True)
    if not lines:
        return []
    header = lines[0].strip().split(",")
    if header[: len(_REQUIRED_FIELDS) - 1] != list(_REQUIRED_FIELDS[:-1]) or "best" not in header:
        warnings.warn(
            f"{path}: the header does not start with {','.join(_REQUIRED_FIELDS[:-1])} and "
            f"name best (damaged); its {len(lines) - 1} row(s) are ignored",
            RunRepairWarning,
            stacklevel=2,
        )
        return []
    rows: list[dict[str, float]] = []
    damaged: list[int] = []
    for lineno, line in enumerate(lines[1:], 2):
        values = line.strip().split(",")
        try:
            if len(values) != len(header):  # a torn line lacks its last fields
                raise ValueError(line)
            row = {name: float(v) for name, v in zip(header, values)}
            row["timesteps"], row["best"] = int(values[0]), int(row["best"])
        except ValueError:
            damaged.append(lineno)
            continue
        rows.append(row)
    if damaged:
        warnings.warn(
            f"{path}: dropped damaged line(s) {', '.join(map(str, damaged))} (interrupted "
            "write or corruption)",
            RunRepairWarning,
            stacklevel=2,
        )
    return rows


def write_evaluations(path: Path, rows: list[dict[str, float]]) -> None:
    """Write evaluations.csv atomically (the whole file: a kill never leaves a torn row).

    The columns are :data:`EVAL_FIELDS`, then the rows' other keys in order of appearance; a
    value a row lacks is written as nan.
    """
    fields = list(EVAL_FIELDS) + [
        k for k in dict.fromkeys(k for r in rows for k in r) if k not in EVAL_FIELDS
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n", restval="nan")
    writer.writeheader()
    writer.writerows(rows)
    write_file(path, out.getvalue())


class HeldOutEvalCallback(BaseCallback):
    """Evaluates on fixed held-out seeds every ``eval_freq`` env steps and keeps the best model.

    On ``--resume`` (:meth:`restore`) the record is lined up with the model training continues
    from: evaluation rows after its step (a branch the resume abandons) are dropped, and best/
    is kept only if it holds the best remaining evaluation's model; otherwise it is re-saved
    from the best evaluation whose model is still intact (its checkpoint).

    Args:
        config: the env config to evaluate in (the training one).
        run: the run directory (evaluations.csv, best/, eval_state.json).
        eval_freq: env steps (summed over the vector envs) between evaluations.
        seeds: the held-out episode seeds.
        features: the agent's observation (as in training).
        actions: the agent's action form (as in training).
        name: label of the evaluated policy.
        accuracy_target: with a target, the best model is the best return among evaluations
            whose mean final accuracy meets it (if any does; :func:`selection_score`); a
            shorthand for ``selection=SelectionRule("return", accuracy_target)``.
        selection: the rule that picks the best model (default: the validation return).
        extras: called at each evaluation; its values (e.g. the Lagrange multipliers) are
            recorded with the evaluation in evaluations.csv.
    """

    def __init__(
        self,
        config: EnvConfig,
        run: RunDir,
        eval_freq: int,
        seeds: list[int],
        features: ObservationFeatures,
        actions: ActionAdapter,
        name: str = "agent",
        accuracy_target: float | None = None,
        verbose: int = 1,
        *,
        selection: SelectionRule | None = None,
        extras: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        super().__init__(verbose)
        if selection is not None and accuracy_target is not None:
            raise ValueError("pass the accuracy target in the selection rule, not both")
        self.selection = selection or SelectionRule("return", accuracy_target)
        self.extras = extras
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
        self.rows: list[dict[str, float]] = []
        self._next: float = 0
        self._restored = False

    def _on_training_start(self) -> None:
        self.restore()
        steps = self.model.num_timesteps
        self._next = (
            (steps // self.eval_freq + 1) * self.eval_freq if self.eval_freq > 0 else np.inf
        )
        if self.eval_freq > 0 and steps == 0:
            self.evaluate()  # the untrained policy: the learning curve's first point

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.num_timesteps >= self._next:
            self._next += self.eval_freq * max(
                1, (self.num_timesteps - self._next) // self.eval_freq + 1
            )
            self.evaluate()
        return True

    def restore(self, model: Any | None = None) -> None:
        """Line evaluations.csv and best/ up with the model training continues from (class
        docstring); once per session. ``model`` initialises the callback when no training ran."""
        if self._restored:
            return
        if model is not None:
            if not hasattr(
                model, "_logger"
            ):  # learn() never ran: give the evaluation a logger to record to
                model.set_logger(Logger(None, []))
            self.init_callback(model)
        self._restored = True
        steps = int(self.model.num_timesteps)
        rows = read_evaluations(self.run.evaluations)
        kept = [r for r in rows if steps > 0 and r["timesteps"] <= steps]
        if len(kept) < len(rows):
            dropped = [r["timesteps"] for r in rows if steps == 0 or r["timesteps"] > steps]
            why = (
                f"after step {steps:,d}, the branch this resume abandons"
                if steps
                else "an earlier attempt of this new run"
            )
            warnings.warn(
                f"{self.run.evaluations}: dropped {len(dropped)} evaluation row(s) of "
                f"step(s) {', '.join(f'{int(s):,d}' for s in dropped)} ({why})",
                RunRepairWarning,
                stacklevel=2,
            )
        if self.run.evaluations.is_file():  # without the dropped and damaged rows
            write_evaluations(self.run.evaluations, kept)
        for row in kept:  # the verdicts of the rule this session selects with
            row["feasible"], row["score"] = (
                float(self.selection.feasible(row)),
                self.selection.score(row),
            )
        self.rows = kept
        self.last = dict(kept[-1]) if kept else {}
        self._restore_best(steps)
        if kept:
            self._write_state()

    def best_row(self) -> dict[str, float] | None:
        """The evaluation whose model best/ holds (the first with the highest score), None
        before any."""
        if not self.rows or not math.isfinite(self.best_score):
            return None
        return max(self.rows, key=lambda r: (r["score"], -r["timesteps"]))

    def _write_state(self) -> None:
        """eval_state.json: a summary for people and tools; the run reads evaluations.csv and
        best/."""
        state = {
            "best_score": self.best_score,
            "best_return": self.best_return,
            "selection": self.selection.to_dict(),
            "best": self.best_row(),
            "wall_s": self.last.get("wall_s"),
            "last": self.last,
        }
        write_file(self.run.eval_state, json.dumps(state, indent=2))

    def _restore_best(self, steps: int) -> None:
        best_problem = pair_problem(self.run.best_model, self.run.best_normalizer)
        best_steps = model_steps(self.run.best_model) if best_problem is None else None
        candidates = []
        for row in self.rows:
            s = int(row["timesteps"])
            if s == best_steps:
                source = None  # best/ already holds it
            elif (
                pair_problem(self.run.checkpoint(s), self.run.checkpoint(s, "vecnormalize_"))
                is None
            ):
                source = s
            else:
                continue
            candidates.append((row["score"], row, source))
        if not candidates:
            self.best_score, self.best_return = -np.inf, float("nan")
            if steps > 0 and (self.rows or best_problem is None):
                why = (
                    best_problem
                    or f"it holds the model of step {best_steps:,d}, which no remaining "
                    "evaluation scored"
                )
                warnings.warn(
                    f"{self.run.best_model.parent}: no evaluated model is left to keep "
                    f"({why}); the next evaluation sets best/ again",
                    RunRepairWarning,
                    stacklevel=3,
                )
            return
        score, row, source = max(candidates, key=lambda c: c[0])
        self.best_score, self.best_return = score, float(row["mean_return"])
        if source is not None:
            if best_problem is not None:
                why = (
                    f"best/ is damaged ({best_problem})"
                    if self.run.best_model.parent.is_dir()
                    else "best/ is missing"
                )
            else:
                why = (
                    f"best/ held the model of step {best_steps:,d}, which no remaining "
                    "evaluation scored best"
                )
            warnings.warn(
                f"{why}; re-saved it from checkpoints/{self.run.checkpoint(source).name}, "
                f"the best remaining evaluation (step {source:,d}, return "
                f"{row['mean_return']:.2f})",
                RunRepairWarning,
                stacklevel=3,
            )
            self.run.best_model.parent.mkdir(parents=True, exist_ok=True)
            copy_file(self.run.checkpoint(source, "vecnormalize_"), self.run.best_normalizer)
            copy_file(self.run.checkpoint(source), self.run.best_model)

    def evaluate(self) -> dict[str, float]:
        """Run the held-out episodes now; log, record and keep the model if it is the best."""
        from baselines.evaluation import evaluate  # the one evaluation loop of every policy

        norm = self.model.get_vec_normalize_env()
        policy = SB3Policy(
            self.model, norm, self.name, features=self.features, actions=self.actions
        )
        ev = evaluate(
            policy, self.config, self.seeds, budget_tolerance=self.selection.budget_tolerance
        )
        self.model.policy.set_training_mode(False)
        returns = ev.metric("episode_return")
        kept = ev.metric("in_budget")
        summary: dict[str, float] = {
            "timesteps": int(self.model.num_timesteps),
            "wall_s": self.run.elapsed_s(),
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()),
            "final_accuracy": float(ev.metric("final_accuracy").mean()),
            "energy_j_per_device_round": float(ev.metric("energy_j").mean()),
            "budget_use_max": float(np.nanmax(ev.metric("max_budget_use")))
            if self.config.uses_energy_queue
            else float("nan"),
            "within_budget": float(np.mean(ev.metric("max_budget_use") <= 1.0))
            if self.config.uses_energy_queue
            else float("nan"),
            "compliance": float(kept.mean()) if np.isfinite(kept).all() else float("nan"),
            "worst_budget_use": float(ev.metric("worst_budget_use").mean()),
        }
        summary["feasible"] = float(self.selection.feasible(summary))
        summary["score"] = score = self.selection.score(summary)
        improved = score > self.best_score
        summary["best"] = int(improved)
        summary |= _budget_use_per_device(ev.traces["energy_j"], self.config)
        if self.config.budgets.latency_budget_s is not None:
            summary["latency_budget_use"] = float(ev.metric("latency_budget_use").mean())
        if self.extras is not None:
            summary |= {k: float(v) for k, v in self.extras().items()}
        if improved:
            self.best_score = score
            self.best_return = summary["mean_return"]
            self.run.best_model.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(norm, VecNormalize):
                save_normalizer(norm, self.run.best_normalizer, int(self.model.num_timesteps))
            save_model(self.model, self.run.best_model)
        for key in (
            "mean_return",
            "std_return",
            "final_accuracy",
            "energy_j_per_device_round",
            "budget_use_max",
            "within_budget",
            "compliance",
            "worst_budget_use",
        ):
            self.logger.record(f"eval/{key}", summary[key])
        self.logger.record("eval/best_return", self.best_return)
        self.rows.append(summary)
        write_evaluations(self.run.evaluations, self.rows)
        self.last = summary
        self._write_state()
        self.run.record_session()
        if self.verbose:
            flag = " (new best)" if improved else ""
            print(
                f"[eval] step {summary['timesteps']:>9,d}: return "
                f"{summary['mean_return']:7.2f} +- {summary['std_return']:.2f}, "
                f"accuracy {summary['final_accuracy']:.4f}, budget use max "
                f"{summary['budget_use_max']:.2f}, compliance {summary['compliance']:.2f}{flag}",
                flush=True,
            )
        return summary


def _budget_use_per_device(energy_j: np.ndarray, config: EnvConfig) -> dict[str, float]:
    """``budget_use_<k>``: device slot k's average energy per round / budget, averaged over the
    episodes (energy_j: (episodes, rounds, K), NaN after an early end); none without a budget."""
    budget = config.budgets.energy_budget_j
    if budget is None:
        return {}
    use = np.nanmean(energy_j, axis=1).mean(axis=0) / budget
    return {f"budget_use_{k}": float(u) for k, u in enumerate(use)}


class Checkpoints(BaseCallback):
    """Saves the model and its normaliser (+ the replay buffer) when the env steps pass a
    multiple of ``checkpoint_freq``, as ``checkpoints/ckpt_<steps>_steps.zip`` and
    ``ckpt_vecnormalize_<steps>_steps.pkl``.

    Every file is written atomically (:func:`agents.runs.replacing`), the normaliser (stamped
    with the step) before the model, so a checkpoint whose model zip exists is complete. Only the
    newest replay buffer is kept (off-policy agents; it is large).
    """

    def __init__(self, run: RunDir, checkpoint_freq: int, replay_buffer: bool = False) -> None:
        super().__init__()
        self.run = run
        self.freq = int(checkpoint_freq)
        self.replay_buffer = replay_buffer
        self._next: float = np.inf

    def _on_training_start(self) -> None:
        self.run.checkpoints.mkdir(parents=True, exist_ok=True)
        if self.freq > 0:
            self._next = (self.model.num_timesteps // self.freq + 1) * self.freq

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.freq + 1) * self.freq
            self.save()
        return True

    def save(self) -> None:
        steps = int(self.num_timesteps)
        norm = self.model.get_vec_normalize_env()
        if norm is not None:
            save_normalizer(norm, self.run.checkpoint(steps, "vecnormalize_"), steps)
        buffer = self.run.checkpoint(steps, "replay_buffer_")
        if self.replay_buffer and getattr(self.model, "replay_buffer", None) is not None:
            with replacing(buffer) as tmp:
                self.model.save_replay_buffer(tmp)  # type: ignore[attr-defined]
        save_model(self.model, self.run.checkpoint(steps))
        if self.replay_buffer:
            for p in self.run.checkpoints.glob("ckpt_replay_buffer_*_steps.pkl"):
                if p.name != buffer.name:
                    p.unlink()
        self.run.record_session()


def checkpoint_callback(
    run: RunDir, checkpoint_freq: int, replay_buffer: bool = False
) -> Checkpoints:
    """Save model + normaliser (+ the replay buffer) every ``checkpoint_freq`` env steps in
    ``run/checkpoints`` (0 = never)."""
    return Checkpoints(run, checkpoint_freq, replay_buffer)
