"""Replaying a recorded episode's decisions on the lora backend:
``python -m fedenv.calibrate replay``.

A trace records, for every round, the rank each device trained, its sparsification ratio and
whether its upload arrived. Feeding those to a fresh lora learner of the same seed reproduces
the episode (the same data partition, mini-batches and arrivals), and feeding them to a learner
with other settings (``--set learning.lora.server_step=full``) shows what those settings change
on exactly the same rounds. The learner's state can be saved after a round and a later replay
started from it, so that the rounds after an event can be replayed under several settings
without training the rounds before it again (docs/lora.md, "Partial participation").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedenv.calibrate.traces import EpisodeTrace, collection_config_path
from fedenv.config import EnvConfig

__all__ = ["ReplayedRound", "replay_episode", "trace_config"]


@dataclass(frozen=True)
class ReplayedRound:
    """One replayed round next to the recorded one."""

    round: int
    arrived: int
    """Devices that trained and whose update arrived."""
    data_share: float
    """Their share of all the training data."""
    accuracy: float
    loss: float
    recorded_accuracy: float


def replay_episode(
    episode: EpisodeTrace,
    config: EnvConfig,
    *,
    rounds: int | None = None,
    load_state: str | os.PathLike[str] | None = None,
    save_state: str | os.PathLike[str] | None = None,
    save_after: int | None = None,
) -> Iterator[ReplayedRound]:
    """Train ``episode``'s recorded rounds on a lora learner built from ``config``.

    Args:
        episode: the recorded episode (its seed makes the learner's partition and batches).
        config: the learner's config (``learning.backend`` must be ``lora``); its
            ``num_rounds`` must be at least the episode's.
        rounds: replay up to this round (default: all the episode's rounds).
        load_state: a state written by an earlier replay (``save_state``); the replay continues
            after the round it was saved at.
        save_state, save_after: write the learner's state to ``save_state`` after round
            ``save_after``.

    Yields:
        One :class:`ReplayedRound` per round played.

    Raises:
        ValueError: a config that is not the lora backend's, or whose data partition differs
            from the recorded one (another task, K, alpha or split of the data).
    """
    import gymnasium as gym

    import fedenv  # noqa: F401  (registers the env)
    from fedenv.learning.lora import LoraLearner

    if config.learning.backend != "lora":
        raise ValueError(
            f"replay trains the lora backend; the config has learning.backend="
            f"{config.learning.backend!r} (set learning.backend=lora)"
        )
    last = episode.num_rounds if rounds is None else min(rounds, episode.num_rounds)
    if (save_state is None) != (save_after is None):
        raise ValueError("save_state and save_after go together: where, and after which round")
    env = gym.make("FedLoRAWireless-v0", config=config)
    try:
        env.reset(seed=episode.seed)
        learner = env.unwrapped.learner  # type: ignore[attr-defined]
        assert isinstance(learner, LoraLearner)
        sizes = np.array([idx.size for idx in learner.device_indices], dtype=np.float64)
        if sizes.shape != episode.data_size.shape or not np.array_equal(sizes, episode.data_size):
            raise ValueError(
                f"the config's data partition for seed {episode.seed} is not the recorded one "
                f"(device data sizes {sizes.astype(int).tolist()} against "
                f"{episode.data_size.astype(int).tolist()}); replay with the episode's own "
                "config (its .config.yaml), changing only learner settings"
            )
        if load_state is not None:
            learner.load_state(Path(load_state))
        for t in range(learner.round, last):
            rank, ratio, success = episode.rank[t], episode.ratio[t], episode.success[t]
            report = learner.train_round(rank, ratio, success)
            arrived = (rank > 0) & success
            row = ReplayedRound(
                round=t + 1,
                arrived=int(arrived.sum()),
                data_share=float(sizes[arrived].sum() / sizes.sum()),
                accuracy=float(report.accuracy),
                loss=float(report.loss),
                recorded_accuracy=float(episode.accuracy[t + 1]),
            )
            if save_state is not None and t + 1 == save_after:
                learner.save_state(Path(save_state))
            yield row
    finally:
        env.close()


def trace_config(path: str | os.PathLike[str], episode: EpisodeTrace) -> dict[str, Any]:
    """The config an episode of trace file ``path`` was collected with: the collection's
    ``<name>.config.yaml`` beside it when there is one (it is the complete record), else the
    config in the episode's header."""
    side = collection_config_path(path)
    if side.is_file():
        return EnvConfig.from_yaml(side).to_dict()
    return dict(episode.config)
