"""Learning backends behind one :class:`~fedenv.learning.base.Learner` interface (docs/model.md
§5)."""

from __future__ import annotations

from fedenv.config import EnvConfig
from fedenv.learning.base import DevicePartition, Learner, RoundReport
from fedenv.learning.surrogate import SurrogateLearner

__all__ = ["Learner", "DevicePartition", "RoundReport", "SurrogateLearner", "make_learner"]


def make_learner(config: EnvConfig) -> Learner:
    """The learner named by ``config.learning.backend``; the lora backend is imported lazily."""
    if config.learning.backend == "surrogate":
        return SurrogateLearner(config)
    try:
        from fedenv.learning.lora import LoraLearner
    except ImportError as exc:  # torch / transformers / peft / datasets missing
        raise ImportError(
            "backend='lora' needs the lora extra: pip install torch==2.13.0 && pip install "
            f"'fedenv[lora]' ({exc})"
        ) from exc
    return LoraLearner(config)
