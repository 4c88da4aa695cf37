"""How a learned agent acts: the env's action, the factored form, or forms on top of the Lyapunov
policy.

``env`` is the identity. ``factored`` is :class:`fedenv.wrappers.FactoredAction` (its mapping,
:class:`fedenv.wrappers.FactoredCodec`): the env encodes a device's LoRA module in one ordinal
component (0 = idle, 1..M = ranks r_1 < ... < r_M), so a Gaussian policy that wants to idle a
device must move its mean down through every rank, and the ranks it passes on the way differ
from device to device. Mixed ranks raise the aggregate's noise floor (the surrogate's rank-mix
term, docs/model.md §5.2), so a policy trained on that encoding settles on mixed ranks (measured in
docs/agents.md). The factored form gives the agent one more component per device and keeps
*whether* and *at which rank* a device trains apart:

    agent action (K, C + 1): [schedule, rank, <the env's other components, in order>]
    module = 0                                   if schedule <= 0
           = 1 + min(floor((rank + 1) / 2 M), M - 1)   otherwise

Paradigms without a ``module`` component (split, soft) keep the env's action. The training
envs (:mod:`agents.envs`) use the fedenv wrapper for ``factored``; this module's adapter
applies the same mapping to batches and in evaluation.

``residual`` (residual policy learning, Silver et al. 2018; Johannink et al. 2019): the agent
acts *on top of* the Lyapunov policy (``baselines.lyapunov``, V = ``DEFAULT_V``), which decides
from the same ``info`` the agent sees:

    env action = clip(lyapunov action + RESIDUAL_SCALE x agent action, -1, 1)

in the env's canonical action space, so an agent whose action is 0 plays the Lyapunov policy
exactly, and learning starts from the baseline's operating point (its accuracy) instead of
from a random policy. The adapter is stateful: :meth:`ActionAdapter.observe` gives it the
``info`` of each reset/step before the next action.

``gated``: the agent decides only *which* of the Lyapunov policy's scheduled devices train. Its
action is one gate per device, ``(K, 1)``; a device whose gate is below :data:`GATE_THRESHOLD`
is idled, every other device plays the Lyapunov decision unchanged (the bandwidth of an idled
device goes to the others: the env normalises the weights over the scheduled devices). The
threshold lies below the initial policy's mean (0), so training starts at the Lyapunov policy
up to the exploration noise, and every structural change it can make (skip a costly device in a
round where it buys little accuracy) keeps the baseline's deadline-feasible power and bandwidth
split. The agent cannot add devices, only drop them. Paradigms with a ``module`` or
``schedule`` component (switching, split, unified).

``tradeoff`` (learning-augmented Lyapunov optimisation): the agent sets, per device and round,
how the Lyapunov policy weighs that device's energy against learning. Its action is one
component per device, ``(K, 1)``; the Lyapunov policy solves the round with device k's energy
backlog scaled,

    Q'_k = Q_k x 10 ** (-TRADEOFF_DECADES x a_k)

so ``a_k = 0`` everywhere plays the Lyapunov policy exactly, equal ``a_k`` over the devices move
its V (a V schedule, when they change over the episode: the headroom probe's ``ScheduledV``,
docs/suite.md#headroom), and unequal ones price some devices' energy above others'. Every
decision keeps the Lyapunov policy's deadline-feasible power and bandwidth and its budget guard,
so each device's episode energy stays within its budget whatever the agent does. Any paradigm
with an energy budget.

``shield=True`` adds the budget shield (:class:`fedenv.wrappers.BudgetShield`) after any form:
every device whose round would pass what is left of its episode energy budget is idled, by the
Lyapunov policy's own budget-guard rule, so the energy constraint holds by construction. The
shield reads the ``info`` of the state the action is for: :meth:`ActionAdapter.observe` before
each action, as the stateful forms do (a batch's ``info`` in the batched training env).

``prune=True`` adds the arrival pruner (:class:`fedenv.wrappers.ArrivalPruner`) after the form
and the shield: every scheduled device whose update the surrogate predicts would raise the loss
gap (a label-skewed arrival once the model is good) is idled.

One :class:`ActionAdapter` serves the training wrapper of the stateful forms
(:class:`AgentAction`), the batched training env and the evaluation adapter, so they cannot
disagree.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from fedenv.actions import ActionCodec
from fedenv.config import EnvConfig
from fedenv.wrappers import ArrivalPruner, BudgetShield, FactoredCodec

__all__ = [
    "ACTION_FORMS",
    "ACTION_FORM_HELP",
    "BASE_V_HELP",
    "PRUNE_HELP",
    "PRUNE_MODES",
    "GATE_THRESHOLD",
    "RESIDUAL_SCALE",
    "TRADEOFF_DECADES",
    "ActionAdapter",
    "AgentAction",
    "prune_stages",
]

ACTION_FORMS = ("env", "factored", "residual", "gated", "tradeoff")
#: scale of the agent's action in the ``residual`` form (canonical units per unit of action)
RESIDUAL_SCALE = 1.0
#: the ``gated`` form idles a device whose gate is below this value
GATE_THRESHOLD = -0.5
#: decades of the energy backlog's scale per unit of action in the ``tradeoff`` form
TRADEOFF_DECADES = 2.0
#: the help of the training scripts' ``--action-form`` and ``--base-v``
ACTION_FORM_HELP = (
    "env (the env's action), factored (separate schedule and rank per device), residual (on top "
    "of the Lyapunov policy), gated (which of the Lyapunov policy's devices train) or tradeoff "
    "(how the Lyapunov policy weighs each device's energy); agents/actions.py"
)
#: When the arrival pruner acts on a learned policy's decisions (the training scripts' --prune)
PRUNE_MODES = ("never", "deploy", "always")
PRUNE_HELP = (
    "the arrival pruner (fedenv.wrappers.ArrivalPruner: idle every scheduled device whose update "
    "the surrogate predicts would raise the loss gap, after the shield): never; deploy (on the "
    "trained policy's decisions: the held-out evaluations that pick the best model, and wherever "
    "the run is loaded; the training rollouts play the agent's own decisions); always (the "
    "training rollouts too)"
)


def prune_stages(mode: str, where: str = "--prune") -> tuple[bool, bool]:
    """Where a ``--prune`` mode (:data:`PRUNE_MODES`) puts the arrival pruner: (on the trained
    policy's decisions, in the training rollouts).

    Raises:
        ValueError: an unknown mode (``where`` names what gave it).
    """
    if mode not in PRUNE_MODES:
        raise ValueError(f"{where} must be one of {', '.join(PRUNE_MODES)}, got {mode!r}")
    return mode != "never", mode == "always"


BASE_V_HELP = (
    "V of the Lyapunov policy that the residual, gated and tradeoff action forms act on (None = "
    "its default V; pass the scenario's tuned V, docs/suite.md)"
)


class ActionAdapter:
    """Maps the agent's action to the env's canonical action (module docstring)."""

    def __init__(
        self,
        config: EnvConfig,
        kind: str = "factored",
        shield: bool = False,
        base_v: float | None = None,
        prune: bool = False,
    ) -> None:
        """``base_v``: V of the Lyapunov policy that the ``residual``, ``gated`` and ``tradeoff``
        forms act on (None = its default V); ``prune``: the arrival pruner after the form (and
        the shield)."""
        if kind not in ACTION_FORMS:
            raise ValueError(f"action_form must be one of {', '.join(ACTION_FORMS)}, got {kind!r}")
        comps = config.action_components
        self.kind = kind
        self.num_devices = config.devices.num_devices
        self.num_modules = config.model.num_modules
        self.env_shape = (self.num_devices, len(comps))
        self._factored = FactoredCodec(config) if kind == "factored" else None
        self.factored = self._factored is not None and self._factored.factored
        self.gated = kind == "gated"
        self.tradeoff = kind == "tradeoff"
        #: the column that schedules a device, and its canonical "idle" value (the codec's)
        codec = ActionCodec(config)
        self._gate_column, self._idle_value = codec.idle_column, codec.idle_value
        if self.gated and self._gate_column is None:
            raise ValueError(
                "the gated action form idles devices, so it needs a module or schedule "
                f"action component; the {config.paradigm!r} paradigm has {', '.join(comps)}"
            )
        if self.tradeoff and not config.uses_energy_queue:
            raise ValueError(
                "the tradeoff action form scales the Lyapunov policy's energy backlogs, and this "
                "config has no energy budget (budgets.energy_budget_j is null)"
            )
        self.shape = (
            self._factored.shape
            if self._factored is not None
            else (self.num_devices, 1)
            if self.gated or self.tradeoff
            else self.env_shape
        )
        self._base_policy: Any = None
        self._base: NDArray[np.float32] | None = None
        self.shield = BudgetShield(config) if shield else None
        self.pruner = ArrivalPruner(config) if prune else None
        self._info: dict[str, Any] | None = None
        if kind in ("residual", "gated", "tradeoff"):
            from baselines.lyapunov import DEFAULT_V, LyapunovPolicy

            self._base_policy = LyapunovPolicy(config, DEFAULT_V if base_v is None else base_v)
        elif base_v is not None:
            raise ValueError(
                f"base_v is the V of the Lyapunov policy under the residual, gated and tradeoff "
                f"action forms; the {kind} form has none"
            )

    @property
    def stateful(self) -> bool:
        """Whether the form keeps a base policy per episode (``residual``, ``gated``,
        ``tradeoff``): one adapter per env, and :meth:`observe` before each action. (The shield
        needs :meth:`observe` too, but takes a whole batch's ``info``.)"""
        return self._base_policy is not None

    def reset(self, seed: int | None = None) -> None:
        """Start an episode (resets the base policy of the stateful forms)."""
        self._info = None
        if self._base_policy is not None:
            self._base_policy.reset(seed)
            self._base = None

    def observe(self, info: dict[str, Any]) -> None:
        """The ``info`` of the last reset/step: the base policy decides the coming round from it,
        and the shield plays it on the round's channel."""
        if self._base_policy is not None and not self.tradeoff:
            self._base = np.asarray(self._base_policy.act(None, info), dtype=np.float32)
        if self.shield is not None or self.pruner is not None or self.tradeoff:
            self._info = info

    @property
    def space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=self.shape, dtype=np.float32)

    def __call__(self, action: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        """The env's canonical action; a batch (N, K, C') of ``env`` or ``factored`` actions gives
        (N, K, C)."""
        out = self._form(action)
        if self.shield is None and self.pruner is None:
            return out
        if self._info is None:
            raise RuntimeError(
                "the budget shield and the arrival pruner need observe(info) after every reset/step"
            )
        if self.shield is not None:
            out = self.shield(out, self._info)
        if self.pruner is not None:
            out = self.pruner(out, self._info)
        return out

    def _form(self, action: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        a = np.asarray(action, dtype=np.float32)
        if a.ndim == 3 and self._base_policy is None:
            return self._map(np.clip(a, -1.0, 1.0))
        a = np.clip(a.reshape(self.shape), -1.0, 1.0)
        if self.tradeoff:
            return self._tradeoff(a[:, 0])
        if self._base_policy is not None:
            if self._base is None:
                raise RuntimeError(
                    f"the {self.kind} action form needs observe(info) after every reset/step "
                    "before an action"
                )
            if self.gated:
                out = self._base.copy()
                out[a[:, 0] < GATE_THRESHOLD, self._gate_column] = self._idle_value
                return out
            return np.clip(self._base + RESIDUAL_SCALE * a, -1.0, 1.0)
        return self._map(a)

    def _tradeoff(self, a: NDArray[np.float32]) -> NDArray[np.float32]:
        """The Lyapunov decision with each device's energy backlog scaled by 10^(-d a_k)."""
        if self._info is None:
            raise RuntimeError(
                "the tradeoff action form needs observe(info) after every reset/step before an "
                "action"
            )
        backlog = np.asarray(self._info["energy_backlog"], dtype=np.float64)
        scale = 10.0 ** (-TRADEOFF_DECADES * a.astype(np.float64))
        info = {**self._info, "energy_backlog": backlog * scale}
        return np.asarray(self._base_policy.act(None, info), dtype=np.float32)

    def _map(self, a: NDArray[np.float32]) -> NDArray[np.float32]:
        """The stateless forms on clipped actions of shape (..., K, C')."""
        return self._factored.to_env(a) if self._factored is not None else a

    def encode(self, env_action: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        """An agent action that this adapter maps to ``env_action``'s decisions (inverse of
        ``__call__``).

        The ``env`` form returns the canonical action itself; ``factored``: schedule +-0.5, the
        centre of the rank's slot, the other components unchanged
        (:meth:`fedenv.wrappers.FactoredCodec.from_env`). Used for imitation targets
        (agents/bc.py); the stateful forms have no fixed inverse (they depend on the base
        action).
        """
        if self._base_policy is not None:
            raise ValueError(
                f"the {self.kind} action form has no fixed inverse: its action is relative "
                "to the Lyapunov action of the round"
            )
        if self._factored is not None:
            return self._factored.from_env(env_action)
        return np.clip(np.asarray(env_action, dtype=np.float32).reshape(self.env_shape), -1.0, 1.0)


class AgentAction(gym.ActionWrapper[Any, NDArray[np.float32], NDArray[np.float32]]):
    """Training-side wrapper: the env driven by the agent's action form (:class:`ActionAdapter`).

    The training envs use it for the stateful forms (``residual``, ``gated``, ``tradeoff``);
    ``factored`` is :class:`fedenv.wrappers.FactoredAction` there.
    """

    def __init__(self, env: gym.Env[Any, Any], adapter: ActionAdapter) -> None:
        super().__init__(env)
        self.adapter = adapter
        self.action_space = adapter.space  # type: ignore[assignment]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        if self.adapter.stateful:
            self.adapter.reset(seed)
            self.adapter.observe(info)
        return obs, info

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        if self.adapter.stateful and not (terminated or truncated):
            self.adapter.observe(info)
        return obs, reward, terminated, truncated, info

    def action(self, action: NDArray[np.float32]) -> NDArray[np.float32]:
        return self.adapter(action)
