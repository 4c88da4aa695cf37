"""Learning backends (docs/model.md §5): the surrogate, a
:class:`~fedenv.learning.base.BatchLearner` of N episodes, and the real LoRA backend, a
:class:`~fedenv.learning.base.Learner` of one."""

from __future__ import annotations

from fedenv.config import EnvConfig
from fedenv.learning.base import (
    BatchLearner,
    DevicePartition,
    Learner,
    OneEpisode,
    RoundReport,
)
from fedenv.learning.surrogate import SurrogateLearner

__all__ = [
    "Learner",
    "BatchLearner",
    "OneEpisode",
    "DevicePartition",
    "RoundReport",
    "SurrogateLearner",
    "make_learner",
]


def make_learner(config: EnvConfig, num_envs: int = 1) -> SurrogateLearner | Learner:
    """The learner named by ``config.learning.backend``: the surrogate for ``num_envs`` episodes,
    or the lora backend (one episode, imported lazily)."""
    if config.learning.backend == "surrogate":
        return SurrogateLearner(config, num_envs)
    if num_envs != 1:
        raise ValueError(
            f"the lora backend runs one episode at a time, got num_envs={num_envs}; use the "
            "single env (or gym.make_vec(..., vectorization_mode='sync'))"
        )
    try:
        from fedenv.learning.lora import LoraLearner
    except ImportError as exc:  # torch / transformers / peft / datasets missing
        raise ImportError(
            "backend='lora' needs the lora extra: pip install torch==2.13.0 && pip install "
            f"'fedenv[lora]' ({exc})"
        ) from exc
    return LoraLearner(config)
