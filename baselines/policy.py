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

__all__ = ["Policy"]


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
