"""Fidelity of a calibrated surrogate against traces of the real backend.

Three measurements, all on episodes the fit did not see (held-out seeds):

* **one-round-ahead accuracy error**: from the observed accuracy before each round and the
  round's record, the surrogate's accuracy after it
  (:func:`fedenv.calibrate.fit.one_step_accuracy`);
* **final-accuracy error per policy**: every recorded (policy, seed) episode is replayed *closed
  loop* on the surrogate: the same policy, built from the same spec and config, plays the env
  with ``backend="surrogate"`` and the calibrated constants on the same seed (so the same
  channels, CPU frequencies and data partition), reacting to the surrogate's accuracies as it
  would on the real backend. Its final accuracy is compared with the real one;
* **ranking agreement**: Kendall's tau-b between the orders of the policies by mean final
  accuracy over the common seeds on the real backend and on the surrogate.

Under non-IID partial participation the real accuracy can swing by tens of points from one
round to the next, so the same figures are also given for the mean accuracy over the last
``window`` rounds of each episode, a less noisy summary of where a policy ends.

What the surrogate can be asked to reproduce is bounded by the real backend's own seed-to-seed
noise, which :func:`seed_noise` measures on every seed where all the ranked policies ran (fit
seeds included: the noise is a property of the real backend, not of the fit): the spread of a
policy's real final accuracy across seeds, and Kendall's tau between the real rankings on two
different seeds. When the real backend does not agree with itself across seeds, no surrogate can
show a higher tau than that agreement on a handful of held-out seeds. :func:`noise_ceiling`
turns the same measurement into the figures a perfect surrogate would reach on as many
held-out seeds as the report uses.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fedenv import atomic
from fedenv.calibrate.fit import prediction_errors
from fedenv.calibrate.traces import EpisodeTrace
from fedenv.config import EnvConfig, SurrogateConfig

__all__ = [
    "kendall_tau",
    "replay_on_surrogate",
    "noise_ceiling",
    "seed_noise",
    "trace_inventory",
    "PolicyRow",
    "FidelityReport",
    "fidelity_report",
    "render_markdown",
    "update_markdown",
]


def kendall_tau(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall's tau-b rank correlation of two equally long sequences (ties handled).

    tau_b = (n_c - n_d) / sqrt((n_0 - n_x)(n_0 - n_y)) with n_c / n_d the concordant /
    discordant pairs, n_0 = n (n - 1) / 2, and n_x / n_y the pairs tied in x / y. NaN when
    either sequence is constant (as ``scipy.stats.kendalltau``).
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"kendall_tau needs two 1-D sequences of equal length, got shapes {a.shape} and "
            f"{b.shape}"
        )
    n = a.size
    i, j = np.triu_indices(n, k=1)
    sx = np.sign(a[i] - a[j])
    sy = np.sign(b[i] - b[j])
    n0 = n * (n - 1) / 2
    nx = float((sx == 0).sum())
    ny = float((sy == 0).sum())
    denom = math.sqrt((n0 - nx) * (n0 - ny))
    if denom == 0.0:
        return float("nan")
    return float((sx * sy).sum() / denom)


def replay_on_surrogate(ep: EpisodeTrace, surrogate: SurrogateConfig) -> EpisodeTrace:
    """Play ``ep``'s policy closed loop on the surrogate, same seed and config (module docstring).

    The env gets the episode's recorded config with ``learning.backend = "surrogate"`` and the
    calibrated constants. The policy is built from the recorded config unchanged, so a
    model-based policy (Lyapunov) keeps the model it had on the real backend.
    """
    import gymnasium as gym

    import fedenv  # noqa: F401
    from fedenv.calibrate.collect import make_policy, run_episode

    recorded = EnvConfig.from_dict(ep.config)
    env_cfg = recorded.replace(learning={"backend": "surrogate", "surrogate": surrogate.to_dict()})
    env = gym.make("FedLoRAWireless-v0", config=env_cfg)
    policy = make_policy(AS_COLLECTED.get(ep.policy, ep.policy), recorded)
    try:
        return run_episode(env, policy, ep.seed, spec=ep.policy)
    finally:
        env.close()


#: What a bare policy name in the committed traces was when they were collected: the Lyapunov
#: policy's default V was 0.1 until 2026-12-05 (it is 10 now), so a trace's ``lyapunov`` is
#: replayed at V = 0.1. (Its budget guard and expected penalty are today's: the traces' runs had
#: neither; docs/fidelity.md.)
AS_COLLECTED = {"lyapunov": "lyapunov:V=0.1"}


@dataclass(frozen=True)
class PolicyRow:
    """One policy's final accuracies (in points) over the common seeds."""

    policy: str
    seeds: list[int]
    real: list[float]
    surrogate: list[float]
    real_window: list[float] = field(default_factory=list)
    """Mean accuracy over the last rounds, per seed (real), points."""
    surrogate_window: list[float] = field(default_factory=list)

    @property
    def real_mean(self) -> float:
        return float(np.mean(self.real))

    @property
    def surrogate_mean(self) -> float:
        return float(np.mean(self.surrogate))

    @property
    def error(self) -> float:
        """Surrogate minus real mean final accuracy, points."""
        return self.surrogate_mean - self.real_mean

    @property
    def abs_error_per_seed(self) -> float:
        return float(np.mean(np.abs(np.subtract(self.surrogate, self.real))))

    @property
    def window_error(self) -> float:
        """Surrogate minus real mean last-rounds accuracy, points."""
        return float(np.mean(self.surrogate_window) - np.mean(self.real_window))


@dataclass(frozen=True)
class FidelityReport:
    task: str
    backend: str
    heldout_seeds: list[int]
    one_step: dict[str, float]
    rows: list[PolicyRow]
    kendall_tau: float
    real_order: list[str]
    surrogate_order: list[str]
    mean_abs_final_error: float
    max_abs_final_error: float
    window: int = 5
    kendall_tau_window: float = float("nan")
    mean_abs_window_error: float = float("nan")
    traces: dict[str, Any] = field(default_factory=dict)
    missing_seeds: list[int] = field(default_factory=list)
    """Held-out seeds asked for with no episode in the traces (not collected yet)."""
    noise: dict[str, Any] = field(default_factory=dict)
    """The real backend's seed-to-seed noise (:func:`seed_noise`)."""


def _order(names: Sequence[str], values: Sequence[float]) -> list[str]:
    return [names[i] for i in np.argsort(-np.asarray(values), kind="stable")]


def noise_ceiling(
    values: dict[str, list[float]], n: int, *, draws: int = 2000, seed: int = 0
) -> dict[str, float]:
    """What a perfect surrogate would score against the mean over ``n`` seeds (module docstring).

    A perfect surrogate predicts each policy's expected value. The expectation is estimated by
    the mean over every seed in ``values`` (policy -> one value per seed, seeds in common
    order); ``n`` seeds are drawn with replacement (the same seeds for every policy, as the
    held-out seeds are common) ``draws`` times, and each draw's means are compared with the
    expectation: Kendall's tau-b of the two rankings and the mean absolute difference over the
    policies. A plug-in bootstrap: with few seeds the expectation is itself close to the
    sample, so the ceiling is optimistic rather than pessimistic.

    Returns:
        ``tau`` (mean over the draws), ``tau_lo`` / ``tau_hi`` (5th / 95th percentile),
        ``error`` (mean over the draws of the mean absolute error, in the values' unit).
    """
    table = np.array(list(values.values()), dtype=np.float64)  # (policies, seeds)
    if table.ndim != 2 or table.shape[1] < 2 or n < 1:
        nan = float("nan")
        return {"n": n, "draws": 0, "tau": nan, "tau_lo": nan, "tau_hi": nan, "error": nan}
    expected = table.mean(axis=1)
    rng = np.random.default_rng(seed)
    taus, errors = np.empty(draws), np.empty(draws)
    for i in range(draws):
        means = table[:, rng.integers(0, table.shape[1], size=n)].mean(axis=1)
        taus[i] = kendall_tau(expected, means)
        errors[i] = np.mean(np.abs(means - expected))
    lo, hi = np.nanpercentile(taus, [5, 95])
    return {
        "n": n,
        "draws": draws,
        "tau": float(np.nanmean(taus)),
        "tau_lo": float(lo),
        "tau_hi": float(hi),
        "error": float(errors.mean()),
    }


def seed_noise(
    episodes: Sequence[EpisodeTrace],
    policies: Sequence[str],
    window: int = 5,
    heldout: int | None = None,
) -> dict[str, Any]:
    """The real backend's own seed-to-seed noise over ``policies`` (module docstring).

    Uses every seed on which all ``policies`` have a complete episode. Returns the seeds, per
    policy the final accuracies (points) per seed and their sample standard deviation, the
    pooled standard deviation over policies (root mean of the per-policy variances), and
    Kendall's tau between the real rankings on each pair of seeds, by final accuracy and by
    mean accuracy over the last ``window`` rounds (with their means over the pairs), and
    (``heldout``: the number of held-out seeds a report averages over) the :func:`noise_ceiling`
    of final and last-rounds accuracy. Fewer than two such seeds give NaN spreads and no pairs.
    """
    table: dict[str, dict[int, EpisodeTrace]] = defaultdict(dict)
    for ep in episodes:
        table[ep.policy][ep.seed] = ep
    seeds = sorted(set.intersection(*(set(table[p]) for p in policies))) if policies else []
    final = {p: [100.0 * table[p][s].final_accuracy for s in seeds] for p in policies}
    win = {p: [100.0 * table[p][s].window_accuracy(window) for s in seeds] for p in policies}
    std = {p: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan") for p, v in final.items()}
    pairs: list[dict[str, Any]] = []
    for a in range(len(seeds)):
        for b in range(a + 1, len(seeds)):
            pairs.append(
                {
                    "seeds": [seeds[a], seeds[b]],
                    "tau": kendall_tau(
                        [final[p][a] for p in policies], [final[p][b] for p in policies]
                    ),
                    "tau_window": kendall_tau(
                        [win[p][a] for p in policies], [win[p][b] for p in policies]
                    ),
                }
            )
    ceiling = {}
    if heldout is not None:
        ceiling = {
            "final": noise_ceiling(final, heldout),
            "window": noise_ceiling(win, heldout),
        }
    return {
        "seeds": seeds,
        "final": final,
        "ceiling": ceiling,
        "std": std,
        "pooled_std": float(np.sqrt(np.mean([v**2 for v in std.values()])))
        if len(seeds) > 1 and std
        else float("nan"),
        "pairs": pairs,
        "mean_tau": float(np.nanmean([q["tau"] for q in pairs])) if pairs else float("nan"),
        "mean_tau_window": float(np.nanmean([q["tau_window"] for q in pairs]))
        if pairs
        else float("nan"),
    }


def fidelity_report(
    episodes: Sequence[EpisodeTrace],
    surrogate: SurrogateConfig,
    heldout_seeds: Sequence[int],
    *,
    policies: Sequence[str] | None = None,
    window: int = 5,
) -> FidelityReport:
    """Measure the surrogate against the real episodes on ``heldout_seeds`` (module docstring).

    Args:
        episodes: real-backend episodes (any seeds; only the held-out ones are used).
        surrogate: the calibrated constants.
        heldout_seeds: seeds the fit did not use; those with no episode in ``episodes`` are
            left out and named in the report's ``missing_seeds``.
        policies: policies to rank (default: every policy recorded on all the held-out seeds
            present).
        window: rounds at the end of each episode averaged for the less noisy summary.
    """
    held = [ep for ep in episodes if ep.seed in set(heldout_seeds)]
    if not held:
        raise ValueError(
            f"no episode on the held-out seeds {list(heldout_seeds)}; collect them first"
        )
    by_policy: dict[str, dict[int, EpisodeTrace]] = defaultdict(dict)
    for ep in held:
        by_policy[ep.policy][ep.seed] = ep
    seeds = sorted({ep.seed for ep in held})
    if policies is None:
        policies = [p for p in by_policy if all(s in by_policy[p] for s in seeds)]
    missing = [f"{p}/seed{s}" for p in policies for s in seeds if s not in by_policy.get(p, {})]
    if missing:
        raise ValueError(f"episodes missing for the ranking on common seeds: {', '.join(missing)}")
    rows: list[PolicyRow] = []
    for p in policies:
        real_eps = [by_policy[p][s] for s in seeds]
        sim_eps = [replay_on_surrogate(ep, surrogate) for ep in real_eps]
        rows.append(
            PolicyRow(
                policy=p,
                seeds=seeds,
                real=[100.0 * ep.final_accuracy for ep in real_eps],
                surrogate=[100.0 * ep.final_accuracy for ep in sim_eps],
                real_window=[100.0 * ep.window_accuracy(window) for ep in real_eps],
                surrogate_window=[100.0 * ep.window_accuracy(window) for ep in sim_eps],
            )
        )
    real_means = [r.real_mean for r in rows]
    sim_means = [r.surrogate_mean for r in rows]
    tau = kendall_tau(real_means, sim_means) if len(rows) >= 2 else float("nan")
    tau_window = (
        kendall_tau(
            [np.mean(r.real_window) for r in rows], [np.mean(r.surrogate_window) for r in rows]
        )
        if len(rows) >= 2
        else float("nan")
    )
    errors = np.abs([r.error for r in rows]) if rows else np.zeros(1)
    wall = sum(float(ep.wall_s.sum()) for ep in episodes)
    machines = sorted(
        {
            str(ep.meta.get("processor", "?"))
            + f" ({ep.meta.get('cpus', '?')} CPUs, cuda={ep.meta.get('cuda')})"
            for ep in episodes
        }
    )
    return FidelityReport(
        task=held[0].task,
        backend=held[0].backend,
        heldout_seeds=seeds,
        missing_seeds=sorted(set(heldout_seeds) - set(seeds)),
        one_step=prediction_errors(held, surrogate),
        rows=rows,
        kendall_tau=tau,
        real_order=_order([r.policy for r in rows], real_means),
        surrogate_order=_order([r.policy for r in rows], sim_means),
        mean_abs_final_error=float(errors.mean()),
        max_abs_final_error=float(errors.max()),
        window=window,
        kendall_tau_window=tau_window,
        mean_abs_window_error=float(np.mean(np.abs([r.window_error for r in rows])))
        if rows
        else float("nan"),
        traces={
            "episodes": len(episodes),
            "rounds": int(sum(ep.num_rounds for ep in episodes)),
            "wall_s": wall,
            "machines": machines,
        },
        noise=seed_noise(episodes, [r.policy for r in rows], window, heldout=len(seeds)),
    )


def render_markdown(report: FidelityReport, *, command: str = "", calibration: str = "") -> str:
    """The report as a Markdown section (the block :func:`update_markdown` maintains)."""
    r = report
    os_ = r.one_step
    lines = [
        f"### {r.task}: surrogate vs {r.backend} backend",
        "",
        f"Generated by `{command}`." if command else "",
        f"Calibration: `{calibration}`." if calibration else "",
        f"Traces: {r.traces['episodes']} episodes, {r.traces['rounds']} rounds, "
        f"{r.traces['wall_s'] / 3600:.2f} h of wall time on {'; '.join(r.traces['machines'])}.",
        f"Held-out seeds: {', '.join(map(str, r.heldout_seeds))}"
        + (
            f" (not collected yet: {', '.join(map(str, r.missing_seeds))})."
            if r.missing_seeds
            else "."
        ),
        "",
        "| measure (held-out episodes) | value |",
        "|---|---|",
        f"| one-round-ahead accuracy RMSE, points | {os_['one_step_rmse']:.2f} (MAE "
        f"{os_['one_step_mae']:.2f}, {os_['rounds']} rounds) |",
        f"| open-loop replay accuracy RMSE, points | {os_['rollout_rmse']:.2f} |",
        "| closed-loop final-accuracy error, mean abs over policies, points | "
        f"{r.mean_abs_final_error:.2f} (max {r.max_abs_final_error:.2f}) |",
        f"| Kendall tau-b of the policy ranking by final accuracy ({len(r.rows)} policies) | "
        f"{r.kendall_tau:.3f} |",
        f"| mean accuracy over the last {r.window} rounds: error, mean abs over policies, "
        f"points | {r.mean_abs_window_error:.2f} |",
        f"| Kendall tau-b of the ranking by mean accuracy over the last {r.window} rounds | "
        f"{r.kendall_tau_window:.3f} |",
        "",
        "Final accuracy per policy (%, mean over the held-out seeds; per-seed values in brackets):",
        "",
        "| policy | real | surrogate (closed loop) | error | mean abs error per seed | "
        f"last-{r.window}-rounds real / surrogate / error |",
        "|---|---|---|---|---|---|",
    ]
    for row in r.rows:
        real = ", ".join(f"{v:.1f}" for v in row.real)
        sim = ", ".join(f"{v:.1f}" for v in row.surrogate)
        lines.append(
            f"| `{row.policy}` | {row.real_mean:.2f} [{real}] | {row.surrogate_mean:.2f} "
            f"[{sim}] | {row.error:+.2f} | {row.abs_error_per_seed:.2f} "
            f"| {np.mean(row.real_window):.2f} / {np.mean(row.surrogate_window):.2f} / "
            f"{row.window_error:+.2f} |"
        )
    lines += [
        "",
        f"Ranking on the real backend: {' > '.join(f'`{p}`' for p in r.real_order)}",
        "",
        f"Ranking on the surrogate:    {' > '.join(f'`{p}`' for p in r.surrogate_order)}",
    ]
    nz = r.noise
    if nz and len(nz.get("seeds", [])) > 1:
        lines += [
            "",
            f"Seed-to-seed noise of the real backend (every seed with all {len(r.rows)} "
            "policies, fit seeds included: "
            f"{', '.join(map(str, nz['seeds']))}): final accuracy per seed, points, and its "
            "standard deviation across seeds:",
            "",
            "| policy | real final accuracy per seed | std across seeds |",
            "|---|---|---|",
        ]
        for p, vals in nz["final"].items():
            lines.append(f"| `{p}` | {', '.join(f'{v:.1f}' for v in vals)} | {nz['std'][p]:.2f} |")
        taus = [q["tau"] for q in nz["pairs"]]
        taus_w = [q["tau_window"] for q in nz["pairs"]]
        lines += [
            "",
            "Pooled std of a policy's real final accuracy across seeds: "
            f"{nz['pooled_std']:.2f} points "
            "(spread of the policies' real means on the held-out seeds: "
            f"{max(_real_means(r)) - min(_real_means(r)):.2f} points).",
            f"Kendall tau-b between the real rankings on two seeds ({len(taus)} pairs): mean "
            f"{nz['mean_tau']:.3f}, from {np.nanmin(taus):.3f} to {np.nanmax(taus):.3f} (last "
            f"{r.window} rounds: mean {nz['mean_tau_window']:.3f}, from {np.nanmin(taus_w):.3f} "
            f"to {np.nanmax(taus_w):.3f}).",
        ]
        ceil = nz.get("ceiling") or {}
        if ceil:
            fin, win = ceil["final"], ceil["window"]
            lines += [
                "",
                f"**Noise ceiling** (`noise_ceiling`): a perfect surrogate, one that predicts "
                "each policy's expected accuracy (estimated by its mean over the "
                f"{len(nz['seeds'])} seeds above), compared as this report compares, with the "
                f"mean over {fin['n']} seeds drawn from those ({fin['draws']} draws):",
                "",
                "| | Kendall tau-b, mean (5th-95th percentile) | mean abs error, points |",
                "|---|---|---|",
                f"| final accuracy | {fin['tau']:.3f} ({fin['tau_lo']:.3f}-{fin['tau_hi']:.3f})"
                f" | {fin['error']:.2f} |",
                f"| mean of the last {r.window} rounds | {win['tau']:.3f} "
                f"({win['tau_lo']:.3f}-{win['tau_hi']:.3f}) | {win['error']:.2f} |",
            ]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _real_means(report: FidelityReport) -> list[float]:
    """The policies' real mean final accuracies (points), in row order."""
    return [row.real_mean for row in report.rows]


def trace_inventory(files: Sequence[str | Path]) -> str:
    """A Markdown table of the complete episodes in each trace file: per file and policy, the
    seeds, rounds per episode and wall time, with the machine that ran them."""
    from fedenv.calibrate.traces import load_traces

    lines = [
        "| trace file | policy | seeds (complete episodes) | rounds per episode | wall time, "
        "h | median s / round |",
        "|---|---|---|---|---|---|",
    ]
    per_round: list[float] = []
    machines: set[str] = set()
    total_eps, total_rounds, total_wall = 0, 0, 0.0
    for f in files:
        episodes = load_traces(f)
        by_policy: dict[str, list[EpisodeTrace]] = defaultdict(list)
        for ep in episodes:
            by_policy[ep.policy].append(ep)
            meta = ep.meta
            machines.add(
                f"{meta.get('processor', '?')}, {meta.get('cpus', '?')} CPUs, "
                f"cuda={meta.get('cuda')}, torch {meta.get('torch', '?')} "
                f"at {meta.get('torch_threads', '?')} thread(s)"
            )
        for policy, eps in by_policy.items():
            rounds = sorted({ep.num_rounds for ep in eps})
            wall = sum(float(ep.wall_s.sum()) for ep in eps)
            walls = np.concatenate([ep.wall_s for ep in eps])
            per_round.extend(walls.tolist())
            lines.append(
                f"| `{Path(f).name}` | `{policy}` | {', '.join(str(ep.seed) for ep in eps)} "
                f"| {', '.join(map(str, rounds))} "
                f"| {wall / 3600:.2f} | {float(np.median(walls)):.0f} |"
            )
            total_eps += len(eps)
            total_rounds += sum(ep.num_rounds for ep in eps)
            total_wall += wall
    q = np.percentile(per_round, [10, 50, 90]) if per_round else np.full(3, np.nan)
    lines += [
        "",
        f"In all: {total_eps} complete episodes, {total_rounds} rounds, "
        f"{total_wall / 3600:.2f} h of wall time on {'; '.join(sorted(machines)) or '?'}; "
        f"wall time of a round: median {q[1]:.0f} s (10th-90th percentile "
        f"{q[0]:.0f}-{q[2]:.0f} s).",
    ]
    return "\n".join(lines) + "\n"


def update_markdown(path: str | Path, block: str, body: str) -> None:
    """Replace the generated block named ``block`` in ``path`` (created or appended if absent)."""
    p = Path(path)
    begin, end = f"<!-- BEGIN generated: {block} -->", f"<!-- END generated: {block} -->"
    text = p.read_text() if p.exists() else ""
    new = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: new, text)
    else:
        text = (text.rstrip() + "\n\n" if text else "") + new + "\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_file(p, text)
