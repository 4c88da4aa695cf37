"""The one evaluation loop for every policy (baselines and learned agents), on common seeds.

``evaluate(policy, config, seeds)`` plays one episode per seed and returns an
:class:`Evaluation`: per-episode records and per-round traces. The same seed gives the same
channel trace (placement, CPU, fading, packet-error draws) and the same data partition to every
policy, so differences between policies are paired. ``evaluate_policies`` runs a list of
policies on the seeds ``seed .. seed + episodes - 1`` and ``format_table`` renders their means
with 95% confidence intervals (Student t over episodes).

Per-episode metrics (``EPISODE_METRICS``):

| key                         | meaning                                                            |
|-----------------------------|--------------------------------------------------------------------|
| ``final_accuracy``          | held-out accuracy after the last round                             |
| ``mean_accuracy``           | accuracy averaged over rounds 1..T (area under the learning curve) |
| ``episode_return``          | sum of the env's rewards                                           |
| ``energy_j``                | energy per device per round, J (mean over devices and rounds)      |
| ``max_budget_use``          | max over devices of (average energy per round / energy budget)     |
| ``devices_within_budget``   | fraction of devices with average energy <= (1 + tolerance) x       |
|                             | budget                                                             |
| ``latency_s``               | mean round latency T(t), s                                         |
| ``latency_budget_use``      | mean round latency / latency budget                                |
| ``worst_budget_use``        | max of ``max_budget_use`` and ``latency_budget_use`` (every budget |
|                             | the config has)                                                    |
| ``in_budget``               | 1 if every budget is kept: every device's average energy and the   |
|                             | mean latency <= (1 + tolerance) x budget, else 0 (its mean over    |
|                             | episodes is the *budget compliance*)                               |
| ``deadline_misses``         | uploads dropped for missing the deadline (stragglers), count per   |
|                             | episode                                                            |
| ``packet_losses``           | uploads lost to packet errors, count per episode                   |
| ``scheduled``               | devices scheduled per round                                        |
| ``label_skew``              | total-variation distance of the arrived updates' label mix from    |
|                             | the global one (data-share weighted), mean over the rounds in      |
|                             | which an update arrived (NaN if none did); the surrogate's bias    |
|                             | floor is h times it (docs/model.md §5.2)                           |
| ``final_energy_backlog_j``  | mean energy queue Z_k at the end, J (NaN without an energy budget) |
| ``final_latency_backlog_s`` | latency queue Y at the end, s (NaN without a latency budget)       |
| ``decision_ms``             | wall-clock time of ``policy.act`` per round, ms                    |
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from baselines.policy import Policy
from fedenv.config import EnvConfig
from fedenv.env import FedLoRAWirelessEnv
from fedenv.learning.surrogate import label_skew

__all__ = [
    "EPISODE_METRICS",
    "Evaluation",
    "Comparison",
    "evaluate",
    "evaluate_policies",
    "summarize",
    "format_table",
    "mean_ci",
    "arrivals_label_skew",
]

#: (key, column title, number format) of the per-episode metrics, in table order.
EPISODE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("final_accuracy", "final accuracy", ".4f"),
    ("mean_accuracy", "mean accuracy over rounds", ".4f"),
    ("energy_j", "energy / device / round (J)", ".4f"),
    ("devices_within_budget", "devices within budget", ".3f"),
    ("max_budget_use", "max device energy / budget", ".3f"),
    ("latency_s", "round latency (s)", ".3f"),
    ("latency_budget_use", "latency / budget", ".3f"),
    ("worst_budget_use", "worst cost / budget", ".3f"),
    ("in_budget", "episodes within budget", ".3f"),
    ("deadline_misses", "deadline misses", ".2f"),
    ("packet_losses", "packet losses", ".2f"),
    ("episode_return", "episode return", ".2f"),
    ("scheduled", "scheduled / round", ".2f"),
    ("label_skew", "label skew of arrivals (TV)", ".3f"),
    ("final_energy_backlog_j", "final backlog Z (J)", ".3f"),
    ("final_latency_backlog_s", "final backlog Y (s)", ".3f"),
    ("decision_ms", "decision time (ms)", ".2f"),
)

F = NDArray[np.float64]


@dataclass
class Evaluation:
    """One policy's episodes on a list of seeds."""

    policy: str
    """The policy's name."""
    seeds: list[int]
    episodes: list[dict[str, Any]]
    """One record per seed (keys: ``policy``, ``seed``, ``rounds`` and ``EPISODE_METRICS``)."""
    traces: dict[str, F]
    """Per-round arrays over episodes (NaN after an early termination): ``accuracy``,
    ``loss_gap``, ``latency_backlog`` (E, T + 1; index 0 = before the first round),
    ``energy_backlog`` (E, T + 1, K), ``energy_j`` (E, T, K), ``round_latency_s``, ``reward``,
    ``scheduled``, ``successes``, ``label_skew`` (NaN where no update arrived), ``decision_s``
    (E, T)."""

    def metric(self, key: str) -> F:
        return np.array([float(e[key]) for e in self.episodes])


@dataclass
class Comparison:
    """Several policies evaluated on the same seeds."""

    config: EnvConfig
    seeds: list[int]
    evaluations: list[Evaluation] = field(default_factory=list)
    budget_tolerance: float = 0.05


def mean_ci(values: Sequence[float] | F, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (NaNs ignored; 0 width for n
    < 2)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    if x.size < 2:
        return float(x.mean()), 0.0
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return float(x.mean()), half


def evaluate(
    policy: Policy,
    config: EnvConfig,
    seeds: Sequence[int],
    *,
    env: FedLoRAWirelessEnv | None = None,
    budget_tolerance: float = 0.05,
    progress: Any = None,
) -> Evaluation:
    """Play one episode per seed with ``policy``; the env's reset seed is the episode seed.

    Args:
        policy: any :class:`baselines.Policy`; ``policy.reset(seed)`` is called before each episode.
        config: the env config.
        seeds: episode seeds (the same seeds give every policy the same channel traces).
        env: an env built from ``config`` to reuse (e.g. one lora backend for many policies).
        budget_tolerance: a device is within its energy budget if its average energy is at
            most (1 + tolerance) x budget.
        progress: optional object with ``update(n)`` (a tqdm bar), advanced once per episode.
    """
    if budget_tolerance < 0 or not math.isfinite(budget_tolerance):
        raise ValueError(f"budget_tolerance must be a finite number >= 0, got {budget_tolerance!r}")
    own_env = env is None
    env = env if env is not None else FedLoRAWirelessEnv(config)
    t_max, k = config.num_rounds, config.devices.num_devices
    n = len(seeds)
    nan = np.nan
    traces = {
        "accuracy": np.full((n, t_max + 1), nan),
        "loss_gap": np.full((n, t_max + 1), nan),
        "latency_backlog": np.full((n, t_max + 1), nan),
        "energy_backlog": np.full((n, t_max + 1, k), nan),
        "energy_j": np.full((n, t_max, k), nan),
        "round_latency_s": np.full((n, t_max), nan),
        "reward": np.full((n, t_max), nan),
        "scheduled": np.full((n, t_max), nan),
        "successes": np.full((n, t_max), nan),
        "label_skew": np.full((n, t_max), nan),
        "decision_s": np.full((n, t_max), nan),
    }
    e_budget = config.budgets.energy_budget_j
    l_budget = config.budgets.latency_budget_s
    episodes: list[dict[str, Any]] = []
    try:
        for i, seed in enumerate(seeds):
            policy.reset(int(seed))
            obs, info = env.reset(seed=int(seed))
            _record_state(traces, i, 0, info)
            misses = losses = 0
            t = 0
            while True:
                start = time.perf_counter()
                action = policy.act(obs, info)
                traces["decision_s"][i, t] = time.perf_counter() - start
                obs, reward, terminated, truncated, info = env.step(action)
                traces["reward"][i, t] = float(reward)
                traces["energy_j"][i, t] = info["energy_j"]
                traces["round_latency_s"][i, t] = info["round_latency_s"]
                traces["scheduled"][i, t] = float(np.sum(info["module"] > 0))
                traces["successes"][i, t] = float(np.sum(info["success"]))
                traces["label_skew"][i, t] = arrivals_label_skew(info)
                misses += int(np.sum(info["straggler"]))
                losses += int(np.sum(info["packet_lost"]))
                t += 1
                _record_state(traces, i, t, info)
                if terminated or truncated:
                    break
            energy = traces["energy_j"][i, :t]
            per_device = energy.mean(axis=0)
            uses = [per_device / e_budget] if e_budget is not None else []
            if l_budget is not None:
                uses.append(np.array([traces["round_latency_s"][i, :t].mean() / l_budget]))
            worst = float(np.concatenate(uses).max()) if uses else nan
            skew = traces["label_skew"][i, :t]
            record: dict[str, Any] = {
                "policy": policy.name,
                "seed": int(seed),
                "rounds": t,
                "final_accuracy": float(info["accuracy"]),
                "mean_accuracy": float(np.mean(traces["accuracy"][i, 1 : t + 1])),
                "episode_return": float(np.sum(traces["reward"][i, :t])),
                "energy_j": float(per_device.mean()),
                "max_budget_use": float(per_device.max() / e_budget)
                if e_budget is not None
                else nan,
                "devices_within_budget": float(
                    np.mean(per_device <= (1.0 + budget_tolerance) * e_budget)
                )
                if e_budget is not None
                else nan,
                "latency_s": float(traces["round_latency_s"][i, :t].mean()),
                "latency_budget_use": float(traces["round_latency_s"][i, :t].mean() / l_budget)
                if l_budget is not None
                else nan,
                "worst_budget_use": worst,
                "in_budget": float(worst <= 1.0 + budget_tolerance) if uses else nan,
                "deadline_misses": misses,
                "packet_losses": losses,
                "scheduled": float(traces["scheduled"][i, :t].mean()),
                "label_skew": float(np.nanmean(skew)) if np.isfinite(skew).any() else nan,
                "final_energy_backlog_j": float(np.mean(info["energy_backlog"]))
                if e_budget is not None
                else nan,
                "final_latency_backlog_s": float(info["latency_backlog"])
                if l_budget is not None
                else nan,
                "decision_ms": float(1e3 * traces["decision_s"][i, :t].mean()),
            }
            episodes.append(record)
            if progress is not None:
                progress.update(1)
    finally:
        if own_env:
            env.close()
    return Evaluation(
        policy=policy.name, seeds=[int(s) for s in seeds], episodes=episodes, traces=traces
    )


def arrivals_label_skew(info: dict[str, Any]) -> float:
    """Total-variation distance between the label mix of the updates aggregated this round
    (each device's label distribution weighted by its data size) and the global label mix; NaN
    when none arrived. Under non-IID data a skewed mix biases the aggregate (the surrogate's
    bias floor is h times this distance, :func:`fedenv.learning.surrogate.label_skew`,
    docs/model.md §5.2)."""
    weight = np.where(info["success"], np.asarray(info["data_size"], dtype=np.float64), 0.0)
    total = float(weight.sum())
    if total == 0.0:
        return math.nan
    return float(
        label_skew(weight, total, info["label_distribution"], info["global_label_distribution"])
    )


def _record_state(traces: dict[str, F], i: int, t: int, info: dict[str, Any]) -> None:
    traces["accuracy"][i, t] = info["accuracy"]
    traces["loss_gap"][i, t] = info["loss_gap"]
    traces["latency_backlog"][i, t] = info["latency_backlog"]
    traces["energy_backlog"][i, t] = info["energy_backlog"]


def evaluate_policies(
    policies: Sequence[Policy | str],
    config: EnvConfig,
    *,
    episodes: int = 20,
    seed: int = 1000,
    budget_tolerance: float = 0.05,
    progress: bool = False,
) -> Comparison:
    """Evaluate every policy (objects or specs for :func:`baselines.registry.make_policy`) on the
    seeds ``seed .. seed + episodes - 1``, reusing one env."""
    from baselines.registry import make_policy

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
    built = [make_policy(p, config) if isinstance(p, str) else p for p in policies]
    seeds = [int(seed) + i for i in range(episodes)]
    comparison = Comparison(config=config, seeds=seeds, budget_tolerance=budget_tolerance)
    bar = _progress_bar(len(built) * episodes) if progress else None
    env = FedLoRAWirelessEnv(config)
    try:
        for policy in built:
            if bar is not None and hasattr(bar, "set_description"):
                bar.set_description(policy.name)
            comparison.evaluations.append(
                evaluate(
                    policy, config, seeds, env=env, budget_tolerance=budget_tolerance, progress=bar
                )
            )
    finally:
        env.close()
        if bar is not None:
            bar.close()
    return comparison


class _TextProgress:
    """Minimal progress bar on stderr when tqdm is not installed."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.desc = total, 0, ""

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def update(self, n: int) -> None:
        self.done += n
        print(
            f"\r{self.desc:>24} {self.done}/{self.total} episodes",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        print(file=sys.stderr)


def _progress_bar(total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextProgress(total)
    return tqdm(total=total, unit="episode", file=sys.stderr, dynamic_ncols=True)


def summarize(comparison: Comparison) -> list[dict[str, Any]]:
    """Per policy: ``{policy, episodes, <metric>: mean, <metric>_ci95: half-width, ...}``."""
    rows = []
    for ev in comparison.evaluations:
        row: dict[str, Any] = {"policy": ev.policy, "episodes": len(ev.episodes)}
        for key, _, _ in EPISODE_METRICS:
            mean, half = mean_ci(ev.metric(key))
            row[key], row[f"{key}_ci95"] = mean, half
        rows.append(row)
    return rows


def format_table(comparison: Comparison, metrics: Sequence[str] | None = None) -> str:
    """Markdown table of mean ± 95% CI per policy (metrics that are NaN for every policy are left
    out)."""
    rows = summarize(comparison)
    keys = [m for m in EPISODE_METRICS if metrics is None or m[0] in metrics]
    keys = [m for m in keys if any(math.isfinite(r[m[0]]) for r in rows)]
    head = "| policy | " + " | ".join(title for _, title, _ in keys) + " |"
    sep = "|---|" + "---|" * len(keys)
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in keys:
            m, h = r[key], r[f"{key}_ci95"]
            cells.append("–" if not math.isfinite(m) else f"{m:{fmt}} ± {h:{fmt}}")
        lines.append(f"| {r['policy']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
