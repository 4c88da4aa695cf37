"""The one ``Policy`` protocol every policy implements, learned agents included (via adapters).

A policy sees only what the base station knows, delivered through the observation and the
``info`` dict of the last ``reset``/``step`` (channel gains, backlogs, device resources, data
sizes, learning progress; see :class:`fedenv.env.FedLoRAWirelessEnv`). It never reads
``env.unwrapped`` internals. ``act`` returns an action in the env's canonical format: a float32
array of shape (K, components) in [-1, 1].
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from fedenv.config import EnvConfig
from fedenv.wrappers import ArrivalPruner

__all__ = ["Policy", "Handover", "Pruned"]


@runtime_checkable
class Policy(Protocol):
    """A per-round decision rule."""

    name: str

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; seeds any randomness of the policy itself."""
        ...

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        """The canonical action for the coming round."""
        ...


class Handover:
    """Plays ``first`` for rounds ``0 .. from_round - 1`` and ``then`` from round ``from_round`` on.

    A diagnostic composition (e.g. a learned agent with the Lyapunov policy over the last rounds:
    ``make_policy("ppo:runs/x>>lyapunov@44", config)``). Both policies see every observation
    and ``info`` and act every round, so a policy with internal state (round-robin's turn) stays
    as it would be alone; only the action of the policy in charge is played.
    """

    def __init__(self, first: Policy, then: Policy, from_round: int) -> None:
        if from_round < 0:
            raise ValueError(f"from_round must be >= 0, got {from_round}")
        self.first, self.then, self.from_round = first, then, int(from_round)
        self.name = f"{first.name}>>{then.name}@{self.from_round}"

    def reset(self, seed: int | None = None) -> None:
        self.first.reset(seed)
        self.then.reset(seed)

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        a_first = self.first.act(obs, info)
        a_then = self.then.act(obs, info)
        return a_then if int(info["round"]) >= self.from_round else a_first


class Pruned:
    """Plays ``policy``'s decisions through the arrival pruner
    (:class:`fedenv.wrappers.ArrivalPruner`): every scheduled device whose update the surrogate
    predicts would raise the loss gap is idled.

    ``make_policy("prune:<spec>", config)``: e.g. ``prune:lyapunov:V=30`` (the Lyapunov policy
    through the pruner: a control for the learned agents that act through it), or
    ``prune:ppo:zoo/<run>`` (a run trained before the pruner, ``--prune never``).
    """

    def __init__(self, policy: Policy, config: EnvConfig) -> None:
        self.policy, self.pruner = policy, ArrivalPruner(config)
        self.name = f"prune:{policy.name}"

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset(seed)

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        return self.pruner(self.policy.act(obs, info), info)
