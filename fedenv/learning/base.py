"""The ``Learner`` interface shared by the surrogate and the real LoRA backend (docs/model.md
§5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ["DevicePartition", "RoundReport", "Learner"]


@dataclass(frozen=True)
class DevicePartition:
    """How the training data is spread over the K devices (known to the BS)."""

    data_sizes: NDArray[np.float64]
    """Samples per device, shape (K,)."""
    label_distribution: NDArray[np.float64]
    """Per-device label mix, shape (K, C), rows sum to 1."""
    global_label_distribution: NDArray[np.float64]
    """Label mix of the whole training set, shape (C,)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Backend remarks reported in ``info`` (e.g. how a missing train split was replaced)."""

    @property
    def data_share(self) -> NDArray[np.float64]:
        return self.data_sizes / self.data_sizes.sum()


@dataclass(frozen=True)
class RoundReport:
    """What the learner reports after a round."""

    accuracy: float
    """Held-out accuracy of the global model, in [0, 1]."""
    loss: float
    """Held-out loss of the global model."""
    gap: float
    """Normalised loss gap (1 = initial model, 0 = converged): the learning penalty Phi."""
    evaluated: bool = True
    """False when the evaluation was skipped this round (accuracy and loss are held)."""
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Learner(Protocol):
    """One federated learning process driven round by round by the environment.

    ``ranks[k] == 0`` means device k was not scheduled; ``success[k]`` says whether its upload
    arrived intact and on time, so only those devices' updates are aggregated.
    """

    params_per_rank: float
    """Uploaded parameters per LoRA rank component (the payload model uses it)."""
    head_params: int
    """Parameters of the task head."""

    def reset(self, num_devices: int, rng: np.random.Generator) -> DevicePartition:
        """Start a new federated run from the pre-trained model; partition the data."""
        ...

    def initial_report(self) -> RoundReport:
        """Accuracy and loss of the model before the first round."""
        ...

    def train_round(
        self, ranks: NDArray[np.int64], ratios: NDArray[np.float64], success: NDArray[np.bool_]
    ) -> RoundReport:
        """Run one round: local training on scheduled devices, aggregation of the successful
        ones."""
        ...

    def close(self) -> None:
        """Release resources (models, threads)."""
        ...
