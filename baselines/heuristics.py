"""Heuristic baseline policies (docs/model.md §8).

| name            | rule                                                    | paradigms          |
|-----------------|---------------------------------------------------------|--------------------|
| ``random``      | a uniform random canonical action                       | all                |
| ``max``         | every device, largest rank, max power, ratio 1, equal   | all                |
|                 | bandwidth                                               |                    |
| ``min_rank``    | every device, smallest rank, max power, equal bandwidth | switching, unified |
| ``fixed_rank``  | every device, one rank (``rank=``, default the middle   | switching, unified |
|                 | one), max power, equal band                             |                    |
| ``greedy``      | the ``fraction`` of devices with the best channels;     | all                |
|                 | largest rank (soft: ratio) meeting the deadline (soft:  |                    |
|                 | the latency budget); bandwidth proportional to need     |                    |
| ``round_robin`` | ``fraction`` of the devices in cyclic order, largest    | switching, split,  |
|                 | rank, equal bandwidth                                   | unified            |

Every heuristic builds a :class:`fedenv.actions.Decision` and returns ``codec.encode(decision)``;
the deadline checks of ``greedy`` use :func:`fedenv.round.play_round`. None of them looks at the
virtual queues: they are the budget-unaware references that a budget-aware policy must beat.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedenv.actions import ActionCodec, Decision
from fedenv.config import EnvConfig
from fedenv.round import EpisodeTablesCache, play_round

__all__ = [
    "HEURISTICS",
    "IncompatiblePolicyError",
    "RandomPolicy",
    "MaxPolicy",
    "MinRankPolicy",
    "FixedRankPolicy",
    "GreedyPolicy",
    "RoundRobinPolicy",
]

F = NDArray[np.float64]


class IncompatiblePolicyError(ValueError):
    """A policy was asked to act on a paradigm whose action components it cannot set."""


def _require(name: str, config: EnvConfig, *, any_of: tuple[str, ...]) -> None:
    comps = config.action_components
    if not any(c in comps for c in any_of):
        raise IncompatiblePolicyError(
            f"policy {name!r} is incompatible with paradigm {config.paradigm!r}: it needs "
            "the action "
            f"component {' or '.join(repr(c) for c in any_of)}, but {config.paradigm!r} has "
            f"{list(comps)}"
        )


def _fraction(name: str, value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: fraction must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < f <= 1.0:
        raise ValueError(f"{name}: fraction must be in (0, 1], got {value!r}")
    return f


class _Fixed:
    """Base of the deterministic heuristics: a decision built from the round's info."""

    name = "fixed"

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.codec = ActionCodec(config)
        self.k = config.devices.num_devices
        self.top_module = (
            self.codec.num_modules
            if "module" in config.action_components
            else self.codec.structural_module
        )
        self.p_max = config.channel.max_tx_power_w

    def reset(self, seed: int | None = None) -> None:
        pass

    def decision(
        self, module: NDArray[np.int64], ratio: F | None = None, share: F | None = None
    ) -> Decision:
        scheduled = module > 0
        if share is None:
            share = scheduled / max(int(scheduled.sum()), 1)
        return Decision(
            module=module,
            power_w=np.full(self.k, self.p_max),
            share=np.asarray(share, dtype=np.float64),
            ratio=np.ones(self.k) if ratio is None else ratio,
        )

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        return self.codec.encode(self.build(info))

    def build(self, info: dict[str, Any]) -> Decision:
        raise NotImplementedError


class RandomPolicy:
    """Uniform random canonical actions (seeded by ``reset``)."""

    def __init__(self, config: EnvConfig) -> None:
        self.name = "random"
        self.shape = ActionCodec(config).shape
        self.rng = np.random.default_rng()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        return self.rng.uniform(-1.0, 1.0, self.shape).astype(np.float32)


class MaxPolicy(_Fixed):
    """Every device, the largest rank (split/soft: the structural one), max power, ratio 1, equal
    band."""

    name = "max"

    def build(self, info: dict[str, Any]) -> Decision:
        return self.decision(np.full(self.k, self.top_module))


class MinRankPolicy(_Fixed):
    """Every device on the smallest rank, max power, equal band."""

    name = "min_rank"

    def __init__(self, config: EnvConfig) -> None:
        _require("min_rank", config, any_of=("module",))
        super().__init__(config)

    def build(self, info: dict[str, Any]) -> Decision:
        return self.decision(np.full(self.k, 1))


class FixedRankPolicy(_Fixed):
    """Every device on one rank (default: the middle of ``model.ranks``), max power, equal band."""

    def __init__(self, config: EnvConfig, rank: int | None = None) -> None:
        _require("fixed_rank", config, any_of=("module",))
        super().__init__(config)
        ranks = config.model.ranks
        if rank is None:
            rank = ranks[len(ranks) // 2]
        try:
            rank = int(rank)
        except (TypeError, ValueError):
            raise ValueError(
                f"fixed_rank: rank must be one of model.ranks {list(ranks)}, got {rank!r}"
            ) from None
        if rank not in ranks:
            raise ValueError(
                f"fixed_rank: rank must be one of model.ranks {list(ranks)}, got {rank!r}"
            )
        self.rank = rank
        self.module = ranks.index(rank) + 1
        self.name = f"fixed_rank(r={rank})"

    def build(self, info: dict[str, Any]) -> Decision:
        return self.decision(np.full(self.k, self.module))


class RoundRobinPolicy(_Fixed):
    """``ceil(fraction K)`` devices per round in cyclic order, the largest rank, max power, equal
    band."""

    def __init__(self, config: EnvConfig, fraction: float = 0.5) -> None:
        _require("round_robin", config, any_of=("module", "schedule"))
        super().__init__(config)
        self.fraction = _fraction("round_robin", fraction)
        self.group = max(1, math.ceil(self.fraction * self.k))
        self.name = f"round_robin(f={self.fraction:g})"

    def build(self, info: dict[str, Any]) -> Decision:
        start = (int(info["round"]) * self.group) % self.k
        chosen = (start + np.arange(self.group)) % self.k
        module = np.zeros(self.k, dtype=np.int64)
        module[chosen] = self.top_module
        return self.decision(module)


class GreedyPolicy(_Fixed):
    """Greedy by channel quality.

    Schedules the ``ceil(fraction K)`` devices with the largest channel gains (soft: every
    device, the paradigm schedules all); gives each the largest rank (soft: the largest ratio)
    whose upload meets the deadline (soft: the latency budget, if any) with bandwidth split in
    proportion to need, need_k = payload_k / log2(1 + full-band SNR_k); at max power.
    """

    def __init__(self, config: EnvConfig, fraction: float = 0.5) -> None:
        super().__init__(config)
        comps = config.action_components
        self.fraction = (
            1.0
            if "module" not in comps and "schedule" not in comps
            else _fraction("greedy", fraction)
        )
        self.count = max(1, math.ceil(self.fraction * self.k))
        self.name = f"greedy(f={self.fraction:g})" if self.fraction < 1.0 else "greedy"
        ranks = config.model.ranks
        if "module" in comps:
            # (module, ratio) from the largest down
            self.levels = [(m, 1.0) for m in range(len(ranks), 0, -1)]
        elif "ratio" in comps:
            r = config.structural_rank
            lowest = max(1, math.ceil(config.min_sparsity_ratio * r - 1e-9))
            self.levels = [
                (
                    self.codec.structural_module,
                    1.0 if j == r else max((j - 0.01) / r, config.min_sparsity_ratio),
                )
                for j in range(r, lowest - 1, -1)
            ]
        else:
            self.levels = [(self.codec.structural_module, 1.0)]
        budget = config.budgets.latency_budget_s
        self.latency_target = (
            budget
            if (config.paradigm == "soft" and budget is not None)
            else config.costs.round_deadline_s
        )
        self._tables = EpisodeTablesCache(config)

    def reset(self, seed: int | None = None) -> None:
        self._tables.clear()

    def build(self, info: dict[str, Any]) -> Decision:
        gain = np.asarray(info["channel_gain"], dtype=np.float64)
        tables = self._tables(np.asarray(info["cpu_freq_hz"], dtype=np.float64)[None])
        chosen = np.argsort(-gain, kind="stable")[: self.count]
        level = np.zeros(self.k, dtype=np.int64)  # index into self.levels, per chosen device
        ch = self.config.channel
        snr_full = self.p_max * gain / (ch.bandwidth_hz * ch.noise_psd_w_per_hz)
        for _ in range(len(self.levels) + 1):
            module = np.zeros(self.k, dtype=np.int64)
            ratio = np.ones(self.k)
            module[chosen] = [self.levels[i][0] for i in level[chosen]]
            ratio[chosen] = [self.levels[i][1] for i in level[chosen]]
            # bandwidth in proportion to need: bits over full-band spectral efficiency
            probe = play_round(
                Decision(
                    module[None],
                    np.full((1, self.k), self.p_max),
                    (module > 0)[None].astype(np.float64),
                    ratio[None],
                ),
                gain,
                tables,
                self.config,
            )
            need = np.where(module > 0, probe.payload_bits[0] / np.log2(1.0 + snr_full), 0.0)
            share = (
                need / need.sum()
                if need.sum() > 0
                else (module > 0) / max(int((module > 0).sum()), 1)
            )
            decision = self.decision(module, ratio, share)
            phys = play_round(
                Decision(module[None], decision.power_w[None], share[None], ratio[None]),
                gain,
                tables,
                self.config,
            )
            late = (module > 0) & (
                phys.compute_time_s[0] + phys.upload_time_s[0] > self.latency_target
            )
            can_lower = late & (level < len(self.levels) - 1)
            if not can_lower.any():
                break
            level = np.where(can_lower, level + 1, level)
        return decision


HEURISTICS = {
    "random": RandomPolicy,
    "max": MaxPolicy,
    "min_rank": MinRankPolicy,
    "fixed_rank": FixedRankPolicy,
    "greedy": GreedyPolicy,
    "round_robin": RoundRobinPolicy,
}
