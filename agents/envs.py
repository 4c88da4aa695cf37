"""Training environments for the agents: vectorised FedLoRAWireless-v0 for SB3.

``make_env(config, obs_features, action_form)`` stacks the forms of :mod:`fedenv.wrappers` on a
monitored env: ``LabelSkewObservation`` (obs features ``label_mix``, ``label_mix_time``),
``FactoredAction`` (action form ``factored``; the stateful forms ``residual``, ``gated`` and
``tradeoff`` are :class:`agents.actions.AgentAction`), with ``shield=True``
``BudgetShieldAction`` under them (the budget shield, :class:`fedenv.wrappers.BudgetShield`),
with ``prune=True`` ``ArrivalPrunerAction`` under the shield (the arrival pruner,
:class:`fedenv.wrappers.ArrivalPruner`, which prunes what the shield let through), and
``HorizonIsTermination``.
``make_vec_env(config, n_envs, kind, seed)`` builds ``n_envs`` training envs with the agent's
observation and action form (:mod:`agents.features`, :mod:`agents.actions`):

* ``batched``: :class:`BatchedAgentVecEnv`, the
  batched :class:`fedenv.vector.FedLoRAWirelessVectorEnv`
  (one set of array operations for all envs) with the agent's forms applied to whole batches;
  the fastest with the surrogate backend, and the same observations, rewards and dones as
  ``dummy`` with the same seeds (tested). Stateless action forms only (``env``, ``factored``).
* ``dummy``: a ``DummyVecEnv`` of single envs in one process (every action form, every backend).
* ``subproc``: a ``SubprocVecEnv``, one process per env (for the lora backend).
* ``auto`` (the training scripts' default): ``batched`` where it applies (surrogate backend,
  stateless action form), else ``dummy``.

The horizon is part of the task (the observation carries the round fraction t / T and the
episode ends after T rounds), so the training envs report the horizon as a termination: SB3
must not bootstrap a value beyond the last round. Evaluation is unaffected (it reads returns).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from agents.actions import ACTION_FORMS, ActionAdapter, AgentAction
from agents.credit import arrival_credit
from agents.features import ObservationFeatures
from fedenv.config import EnvConfig
from fedenv.env import FedLoRAWirelessEnv
from fedenv.sb3 import FedLoRAWirelessVecEnv
from fedenv.wrappers import (
    ArrivalPrunerAction,
    BudgetShieldAction,
    FactoredAction,
    HorizonIsTermination,
    LabelSkewObservation,
)

__all__ = [
    "VEC_ENV_KINDS",
    "BatchedAgentVecEnv",
    "EpisodeStats",
    "HorizonIsTermination",
    "make_env",
    "make_vec_env",
]

VEC_ENV_KINDS = ("auto", "batched", "dummy", "subproc")


def make_env(
    config: EnvConfig,
    obs_features: str = "label_mix",
    action_form: str = "factored",
    shield: bool = False,
    base_v: float | None = None,
    prune: bool = False,
) -> Callable[[], gym.Env[Any, Any]]:
    """A thunk building one monitored training env (picklable for subprocess vector envs);
    ``base_v``: V of the Lyapunov policy under the stateful action forms (None = its default);
    ``prune``: the arrival pruner over the shield."""

    if action_form not in ACTION_FORMS:
        raise ValueError(
            f"action_form must be one of {', '.join(ACTION_FORMS)}, got {action_form!r}"
        )
    ObservationFeatures(config, obs_features)  # (raises for an unknown feature set)

    def thunk() -> gym.Env[Any, Any]:
        env: gym.Env[Any, Any] = Monitor(FedLoRAWirelessEnv(config))
        if obs_features != "env":
            env = LabelSkewObservation(env, obs_features)
        # (the outer wrapper maps the action first: the shield, then the pruner)
        if prune:
            env = ArrivalPrunerAction(env)
        if shield:
            env = BudgetShieldAction(env)
        if action_form == "factored":
            env = FactoredAction(env)
        elif action_form != "env":
            env = AgentAction(env, ActionAdapter(config, action_form, base_v=base_v))
        return HorizonIsTermination(env)

    return thunk


def make_vec_env(
    config: EnvConfig,
    n_envs: int,
    kind: str = "dummy",
    seed: int = 0,
    obs_features: str = "label_mix",
    action_form: str = "factored",
    shield: bool = False,
    base_v: float | None = None,
    credit: bool = False,
    prune: bool = False,
) -> VecEnv:
    """``n_envs`` training envs with the agent's observation and action form (and the budget
    shield); env i starts from ``reset(seed=seed + i)``. ``base_v``: V of the Lyapunov policy
    under the stateful action forms (None = its default). ``credit``: every info also carries
    each device's credit (:class:`BatchedAgentVecEnv`; batched envs only). ``prune``: the
    arrival pruner after the shield (:class:`fedenv.wrappers.ArrivalPruner`)."""
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if kind not in VEC_ENV_KINDS:
        raise ValueError(f"vec_env must be one of {', '.join(VEC_ENV_KINDS)}, got {kind!r}")
    venv: VecEnv
    actions = ActionAdapter(config, action_form, shield=shield, base_v=base_v, prune=prune)
    if kind == "auto":
        kind = (
            "batched"
            if config.learning.backend == "surrogate" and not actions.stateful
            else "dummy"
        )
    if credit and kind != "batched":
        raise ValueError(
            f"the devices' credit comes from the batched training env; got vec_env {kind!r} "
            "(use batched, with the surrogate backend and a stateless action form)"
        )
    if kind == "batched":
        venv = VecMonitor(
            BatchedAgentVecEnv(
                config, n_envs, ObservationFeatures(config, obs_features), actions, credit=credit
            )
        )
    elif kind == "subproc" and n_envs > 1:
        venv = SubprocVecEnv(
            [
                make_env(config, obs_features, action_form, shield, base_v, prune)
                for _ in range(n_envs)
            ],
            start_method="forkserver",
        )
    else:
        venv = DummyVecEnv(
            [
                make_env(config, obs_features, action_form, shield, base_v, prune)
                for _ in range(n_envs)
            ]
        )
    venv.seed(int(seed))
    return venv


class EpisodeStats:
    """Running sums of the training episodes of N envs (arrays over envs); their metrics at the end.

    The metrics of :class:`agents.callbacks.EnvMetricsCallback` (TensorBoard ``episode/*``):
    ``reward_<term>`` and ``return`` (episode sums), ``final_accuracy``,
    ``energy_j_per_device_round`` (mean over devices), ``budget_use_max`` and ``within_budget``
    (with an energy budget), the final energy backlogs (mean, max) and latency backlog,
    ``scheduled_per_round``, ``success_rate`` (of scheduled uploads) and ``round_latency_s``.
    """

    def __init__(self, num_envs: int, num_devices: int, energy_budget_j: float | None) -> None:
        self.energy_budget_j = energy_budget_j
        self.terms: dict[str, NDArray[np.float64]] = {}
        self.energy = np.zeros((num_envs, num_devices))
        self.rounds = np.zeros(num_envs, dtype=np.int64)
        self.scheduled = np.zeros(num_envs, dtype=np.int64)
        self.success = np.zeros(num_envs, dtype=np.int64)
        self.latency = np.zeros(num_envs)

    def add(
        self,
        terms: Mapping[str, NDArray[np.float64]],
        energy_j: NDArray[np.float64],
        module: NDArray[np.int64],
        success: NDArray[np.bool_],
        round_latency_s: NDArray[np.float64],
    ) -> None:
        """One step of every env: reward terms (N,), energies (N, K), modules (N, K), successes (N,
        K), latencies (N,)."""
        for name, value in terms.items():
            if name not in self.terms:
                self.terms[name] = np.zeros_like(self.latency)
            self.terms[name] += value
        self.energy += energy_j
        self.rounds += 1
        self.scheduled += np.count_nonzero(np.asarray(module) > 0, axis=-1)
        self.success += np.count_nonzero(success, axis=-1)
        self.latency += round_latency_s

    def finish(
        self, i: int, accuracy: float, energy_backlog: NDArray[np.float64], latency_backlog: float
    ) -> dict[str, float]:
        """The metrics of env ``i``'s episode, which ended with this state; its sums restart
        at 0."""
        rounds = max(int(self.rounds[i]), 1)
        per_device = self.energy[i] / rounds
        out = {f"reward_{name}": float(value[i]) for name, value in self.terms.items()}
        out["return"] = float(sum(value[i] for value in self.terms.values()))
        out["final_accuracy"] = float(accuracy)
        out["energy_j_per_device_round"] = float(per_device.mean())
        if self.energy_budget_j is not None:
            out["budget_use_max"] = float(per_device.max() / self.energy_budget_j)
            out["within_budget"] = float((per_device <= self.energy_budget_j + 1e-12).all())
        backlog = np.asarray(energy_backlog, dtype=np.float64)
        out["final_energy_backlog_mean"] = float(backlog.mean())
        out["final_energy_backlog_max"] = float(backlog.max())
        out["final_latency_backlog"] = float(latency_backlog)
        out["scheduled_per_round"] = int(self.scheduled[i]) / rounds
        out["success_rate"] = int(self.success[i]) / max(int(self.scheduled[i]), 1)
        out["round_latency_s"] = float(self.latency[i]) / rounds
        for value in (
            *self.terms.values(),
            self.energy,
            self.rounds,
            self.scheduled,
            self.success,
            self.latency,
        ):
            value[i] = 0
        return out


class BatchedAgentVecEnv(FedLoRAWirelessVecEnv):
    """N training envs advanced as one batched env, with the agent's observation and action form.

    The SB3 ``VecEnv`` of :mod:`fedenv.sb3` with, applied to the whole batch at once, the
    agent's :class:`~agents.features.ObservationFeatures` and (stateless)
    :class:`~agents.actions.ActionAdapter`, the horizon reported as a termination (as
    :class:`HorizonIsTermination` does for single envs) and the episode metrics of
    :class:`EpisodeStats`. Every ``info`` carries ``reward_terms`` (the env's named terms) and the
    round's costs (``cost``, ``cost_per_device``, with a latency budget ``cost_latency``); an
    episode's last one also ``accuracy`` (the final accuracy), ``episode_metrics`` and
    ``terminal_observation``. With ``credit=True`` every info also carries ``device_credit``,
    the accuracy-term points each device's arrival added to the round
    (:func:`agents.credit.arrival_credit`, shape (K,)), and ``round``, the round's number in its
    episode (for :class:`agents.credit.CounterfactualPPO`). Wrap it in ``VecMonitor`` for SB3's
    episode returns.
    """

    def __init__(
        self,
        config: EnvConfig,
        num_envs: int,
        features: ObservationFeatures,
        actions: ActionAdapter,
        credit: bool = False,
    ) -> None:
        if actions.stateful:
            raise ValueError(
                "the batched training env applies stateless action forms (env, factored); "
                f"the {actions.kind} form needs its base policy per env: use --vec-env dummy"
            )
        super().__init__(num_envs, config)
        self.features = features
        self.actions = actions
        env_space = self.venv.single_observation_space
        assert isinstance(env_space, gym.spaces.Box)
        self.observation_space: gym.spaces.Space[Any] = features.observation_space(env_space)
        self.action_space: gym.spaces.Space[Any] = actions.space
        self.stats = EpisodeStats(
            num_envs, config.devices.num_devices, config.budgets.energy_budget_j
        )
        self.credit = credit
        # the loss gap of the state each env is in (the credit's round starts from it)
        self._gap = np.ones(num_envs)

    def reset(self) -> NDArray[np.float32]:
        obs = np.asarray(super().reset())
        self.stats = EpisodeStats(
            self.num_envs, self.config.devices.num_devices, self.config.budgets.energy_budget_j
        )
        return self._observe(obs, self.venv.state_info())

    def _observe(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        """The agent's observation of the state ``info`` describes; the action form (its
        shield) acts on the same ``info``."""
        if self.credit:
            # the gap the next round starts from (state arrays are read-only, replaced per round)
            self._gap = info["loss_gap"]
        self.actions.observe(info)
        return self.features(obs, info)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = self.actions(
            np.asarray(actions, dtype=np.float32).reshape((self.num_envs, *self.actions.shape))
        )

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async() before step_wait()")
        gap_before = self._gap
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        terms = {
            name: value for name, value in info["reward_terms"].items() if not name.startswith("_")
        }
        self.stats.add(
            terms, info["energy_j"], info["module"], info["success"], info["round_latency_s"]
        )
        agent_obs = self._observe(obs, info)
        rows = zip(*(value.tolist() for value in terms.values()))
        infos: list[dict[str, Any]] = [
            {"TimeLimit.truncated": False, "reward_terms": dict(zip(terms, row))} for row in rows
        ]
        # the round's costs, as a single env reports them (PPO-Lagrangian reads them;
        # agents/lagrangian.py)
        for out, row, total in zip(infos, info["cost_per_device"], info["cost"].tolist()):
            out["cost"], out["cost_per_device"] = total, row
        if "cost_latency" in info:
            for out, latency in zip(infos, info["cost_latency"].tolist()):
                out["cost_latency"] = latency
        if self.credit:
            credit = arrival_credit(self.config, info, gap_before)
            for out, row, t in zip(infos, credit, info["round"].tolist()):
                out["device_credit"], out["round"] = row, t
        dones = terminated | truncated
        if dones.any():
            for j in np.flatnonzero(dones):
                accuracy = float(info["accuracy"][j])
                infos[j]["terminal_observation"] = agent_obs[j].copy()
                infos[j]["accuracy"] = accuracy
                infos[j]["episode_metrics"] = self.stats.finish(
                    int(j), accuracy, info["energy_backlog"][j], float(info["latency_backlog"][j])
                )
            agent_obs = self._observe(self.venv.restart(dones), self.venv.state_info())
        return agent_obs, rewards.astype(np.float32), dones, infos


def episode_seeds(first: int, count: int) -> list[int]:
    """The held-out evaluation seeds first, first + 1, ... (the baselines use the same rule)."""
    return list(np.arange(first, first + count, dtype=np.int64).tolist())
