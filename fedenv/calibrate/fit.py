"""Fit the surrogate's constants to traces of real federated runs (docs/model.md §5.2, calibration).

The surrogate (:mod:`fedenv.learning.surrogate`) maps what arrived in a round to the change of
the loss gap G, and G to accuracy and loss. Written in accuracy, one round is

    G_t = (a_max - acc_t) / (a_max - a_0),   acc_{t+1} = acc(next_gap(G_t, Gamma_t, F_t)),

with acc(G) = a_max - (a_max - a_0) G, so given the observed accuracy before a round, the
accuracy after it is a closed-form function of the round's record (ranks, ratios, successes)
and the data partition, computed by the surrogate's own functions. The fit
minimises by bounded least squares (``scipy.optimize.least_squares``, several starts):

* ``one_step``: the one-round-ahead errors acc_{t+1} - pred(acc_t, round t) over all rounds;
* ``rollout``: the errors of the accuracy simulated from the episode's initial accuracy through
  all its recorded rounds (open loop; insensitive to evaluation noise in acc_t);
* ``both`` (default): the two sets of residuals together.

a_0 (``initial_accuracy``) is measured, the mean accuracy of the initial models. The loss map
(``initial_loss``, ``min_loss``) is a linear regression of the observed loss on the gap implied
by the observed accuracy. A constant whose effect the traces cannot show (no sparsified update,
a single rank) keeps its base value, and the result says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import least_squares

from fedenv.calibrate.traces import EpisodeTrace
from fedenv.config import SurrogateConfig
from fedenv.learning.surrogate import accuracy_from_gap, next_gap, round_progress

__all__ = [
    "FIT_PARAMETERS",
    "OBJECTIVES",
    "LOSSES",
    "FitResult",
    "round_drivers",
    "one_step_accuracy",
    "rollout_accuracy",
    "identifiable_parameters",
    "fit_surrogate",
    "prediction_errors",
    "fit_bounds",
    "constant_sources",
    "at_bounds",
]

F = NDArray[np.float64]

#: Constants the dynamics fit can move, with their bounds (SurrogateConfig's validation ranges).
FIT_PARAMETERS: dict[str, tuple[float, float]] = {
    "step_size": (1e-3, 1.0),
    "rank_scale": (0.05, 256.0),
    "participation_exponent": (0.0, 2.0),
    "sparsity_exponent": (0.0, 2.0),
    "heterogeneity_penalty": (0.0, 5.0),
    "rank_mix_penalty": (0.0, 1.0),
    "warmup": (0.0, 0.999),
    "max_accuracy": (0.0, 1.0),
}
OBJECTIVES = ("one_step", "rollout", "both")
#: Residual losses of the least squares (``scipy.optimize.least_squares``'s ``loss``): ``linear``
#: is plain least squares; the robust ones grow slower than the square beyond ``f_scale`` so that
#: a few rounds where the real accuracy collapses for one round (a biased aggregate under non-IID
#: partial participation) do not drag the fitted curve below where the episodes end.
LOSSES = ("linear", "soft_l1", "huber", "cauchy")


def round_drivers(ep: EpisodeTrace, cfg: SurrogateConfig) -> tuple[F, F]:
    """Progress Gamma_t and floor F_t of every recorded round, shape (T,) each."""
    t = ep.num_rounds
    labels = np.broadcast_to(ep.label_distribution, (t, *ep.label_distribution.shape))
    glob = np.broadcast_to(ep.global_label_distribution, (t, ep.global_label_distribution.size))
    share = np.broadcast_to(ep.data_share, ep.rank.shape)
    return round_progress(
        share, ep.success.astype(np.float64), ep.rank, ep.ratio, labels, glob, cfg
    )


def one_step_accuracy(ep: EpisodeTrace, cfg: SurrogateConfig) -> F:
    """Accuracy after each round predicted from the observed accuracy before it, shape (T,)."""
    progress, floor = round_drivers(ep, cfg)
    return accuracy_from_gap(next_gap(_gap(ep.accuracy[:-1], cfg), progress, floor, cfg), cfg)


def rollout_accuracy(ep: EpisodeTrace, cfg: SurrogateConfig, start: float | None = None) -> F:
    """Accuracy simulated through the recorded rounds from ``start`` (default: observed), (T + 1,).

    Open loop: the surrogate sees the episode's decisions and successes but never its later
    accuracies, as it would when it stands in for the real backend.
    """
    progress, floor = round_drivers(ep, cfg)
    gap = np.empty(ep.num_rounds + 1)
    gap[0] = _gap(ep.accuracy[0] if start is None else start, cfg)
    for t in range(ep.num_rounds):
        gap[t + 1] = next_gap(gap[t], progress[t], floor[t], cfg)
    return np.asarray(accuracy_from_gap(gap, cfg), dtype=np.float64)


def _gap(accuracy: ArrayLike, cfg: SurrogateConfig) -> F:
    """The gap of an observed accuracy (the inverse of the accuracy map, not clipped)."""
    return (cfg.max_accuracy - np.asarray(accuracy, dtype=np.float64)) / (
        cfg.max_accuracy - cfg.initial_accuracy
    )


def _rank_cv_positive(ep: EpisodeTrace) -> bool:
    r = np.where(ep.success, ep.rank, 0)
    for row in r:
        used = row[row > 0]
        if used.size > 1 and used.min() != used.max():
            return True
    return False


def identifiable_parameters(episodes: Sequence[EpisodeTrace]) -> tuple[list[str], dict[str, str]]:
    """Which constants the traces can inform, and why each other one is left at its base value."""
    fixed: dict[str, str] = {}
    ok_rank = [ep.rank[ep.success] for ep in episodes]
    ranks = np.unique(np.concatenate(ok_rank)) if ok_rank else np.zeros(0)
    if ranks.size < 2:
        fixed["rank_scale"] = "every aggregated update had the same rank"
    if not any(_rank_cv_positive(ep) for ep in episodes):
        fixed["rank_mix_penalty"] = "no round aggregated updates of different ranks"
    if not any(((ep.ratio < 1.0) & ep.success).any() for ep in episodes):
        fixed["sparsity_exponent"] = "no aggregated update was sparsified (ratio < 1)"
    shares = [
        float((ep.data_share * ep.success[t]).sum())
        for ep in episodes
        for t in range(ep.num_rounds)
    ]
    if not any(0.0 < s < 0.999 for s in shares):
        fixed["participation_exponent"] = "every round aggregated all or none of the data"
    if not any(
        not np.allclose(ep.label_distribution, ep.global_label_distribution[None, :], atol=1e-3)
        for ep in episodes
    ):
        fixed["heterogeneity_penalty"] = "every device holds the global label mix (IID data)"
    return [n for n in FIT_PARAMETERS if n not in fixed], fixed


def _with(
    cfg: SurrogateConfig, names: Sequence[str], values: Sequence[float] | F
) -> SurrogateConfig:
    data = cfg.to_dict()
    data.update({n: float(v) for n, v in zip(names, values)})
    data["max_accuracy"] = max(data["max_accuracy"], data["initial_accuracy"])
    return SurrogateConfig.from_dict(data)


def _residuals(episodes: Sequence[EpisodeTrace], cfg: SurrogateConfig, objective: str) -> F:
    parts: list[F] = []
    for ep in episodes:
        if objective in ("one_step", "both"):
            parts.append(one_step_accuracy(ep, cfg) - ep.accuracy[1:])
        if objective in ("rollout", "both"):
            parts.append(rollout_accuracy(ep, cfg)[1:] - ep.accuracy[1:])
    return np.concatenate(parts) if parts else np.zeros(0)


def prediction_errors(episodes: Sequence[EpisodeTrace], cfg: SurrogateConfig) -> dict[str, float]:
    """One-round-ahead and open-loop accuracy errors, in accuracy points (x 100)."""
    if not episodes:
        return {"episodes": 0}
    one = 100.0 * _residuals(episodes, cfg, "one_step")
    roll = 100.0 * _residuals(episodes, cfg, "rollout")
    final = 100.0 * np.array([rollout_accuracy(ep, cfg)[-1] - ep.final_accuracy for ep in episodes])
    return {
        "episodes": len(episodes),
        "rounds": int(one.size),
        "one_step_rmse": float(np.sqrt(np.mean(one**2))),
        "one_step_mae": float(np.mean(np.abs(one))),
        "rollout_rmse": float(np.sqrt(np.mean(roll**2))),
        "rollout_final_mae": float(np.mean(np.abs(final))),
        "rollout_final_bias": float(np.mean(final)),
    }


def fit_bounds(names: Sequence[str], initial_accuracy: float) -> tuple[F, F]:
    """The fit's bounds of ``names``: :data:`FIT_PARAMETERS`, with a_max kept above a_0 (a_max =
    a_0 would make the accuracy map constant)."""
    lo = np.array([FIT_PARAMETERS[n][0] for n in names])
    hi = np.array([FIT_PARAMETERS[n][1] for n in names])
    if "max_accuracy" in names:
        lo[list(names).index("max_accuracy")] = initial_accuracy + 1e-3
    return lo, hi


def constant_sources(
    episodes: Sequence[EpisodeTrace],
    cfg: SurrogateConfig,
    names: Sequence[str],
    objective: str,
    rel_step: float = 1e-4,
) -> dict[str, dict[str, float]]:
    """Which traces determine each constant: per constant, each policy's share of the fit's
    sensitivity to it.

    The share of policy p in constant theta is sum over p's episodes of ||d r / d theta||^2 (r
    the episode's residuals under ``objective``, by central differences within the constant's
    bounds), divided by the same sum over every episode: the policies whose traces would move
    the constant if it were wrong. A constant no residual depends on gets an empty dict.
    """
    policies = sorted({ep.policy for ep in episodes})
    out: dict[str, dict[str, float]] = {}
    for name, lo, hi in zip(names, *fit_bounds(names, cfg.initial_accuracy)):
        value = float(getattr(cfg, name))
        step = rel_step * max(abs(value), 1e-3)
        a, b = max(lo, value - step), min(hi, value + step)
        lo_cfg, hi_cfg = _with(cfg, [name], [a]), _with(cfg, [name], [b])
        weight = dict.fromkeys(policies, 0.0)
        for ep in episodes:
            diff = (_residuals([ep], hi_cfg, objective) - _residuals([ep], lo_cfg, objective)) / (
                b - a
            )
            weight[ep.policy] += float(np.sum(diff**2))
        total = sum(weight.values())
        out[name] = {p: w / total for p, w in weight.items()} if total > 0 else {}
    return out


def at_bounds(cfg: SurrogateConfig, names: Sequence[str], rtol: float = 1e-3) -> list[str]:
    """The fitted constants that ended at (within ``rtol`` of the range of) a bound of the fit
    (:func:`fit_bounds`)."""
    out = []
    for name, lo, hi in zip(names, *fit_bounds(names, cfg.initial_accuracy)):
        value = float(getattr(cfg, name))
        if min(value - lo, hi - value) <= rtol * (hi - lo):
            out.append(name)
    return out


@dataclass(frozen=True)
class FitResult:
    """A fitted surrogate and how well it explains the traces."""

    config: SurrogateConfig
    fitted: list[str]
    fixed: dict[str, str]
    objective: str
    train_keys: list[str]
    heldout_keys: list[str]
    train_errors: dict[str, float]
    heldout_errors: dict[str, float]
    loss_fit_rmse: float
    details: dict[str, Any] = field(default_factory=dict)


def _fit_loss_map(
    episodes: Sequence[EpisodeTrace], cfg: SurrogateConfig
) -> tuple[float, float, float]:
    """Least squares of loss = L* + (L_0 - L*) G over every observation; returns (L_0, L*, rmse)."""
    span = cfg.max_accuracy - cfg.initial_accuracy
    gap = np.concatenate([(cfg.max_accuracy - ep.accuracy) / span for ep in episodes])
    loss = np.concatenate([ep.loss for ep in episodes])
    design = np.stack([np.ones_like(gap), gap], axis=1)
    (l_star, slope), *_ = np.linalg.lstsq(design, loss, rcond=None)
    l_star = float(np.clip(l_star, 1e-6, None))
    l_0 = float(max(l_star + slope, l_star))
    rmse = float(np.sqrt(np.mean((l_star + (l_0 - l_star) * gap - loss) ** 2)))
    return l_0, l_star, rmse


def fit_surrogate(
    train: Sequence[EpisodeTrace],
    base: SurrogateConfig | None = None,
    *,
    heldout: Sequence[EpisodeTrace] = (),
    objective: str = "both",
    parameters: Sequence[str] | None = None,
    starts: int = 6,
    seed: int = 0,
    loss: str = "linear",
    f_scale: float = 0.02,
) -> FitResult:
    """Fit the surrogate's constants to ``train`` and measure the errors on ``heldout``.

    Args:
        train: complete episodes used by the least squares.
        base: the constants the fit starts from and keeps where the traces say nothing.
        heldout: episodes kept out of the fit, for validation.
        objective: ``one_step``, ``rollout`` or ``both`` (module docstring).
        parameters: the constants to fit (default: every identifiable one of FIT_PARAMETERS).
        starts: random restarts besides the base point (the objective is not convex).
        seed: seed of the restarts.
        loss: residual loss, one of :data:`LOSSES` (``linear``: plain least squares).
        f_scale: accuracy error (fraction, 0.02 = 2 points) beyond which a robust loss
            grows slower than the square.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if not f_scale > 0.0:
        raise ValueError(
            f"f_scale must be > 0 (an accuracy error as a fraction, e.g. 0.02), got {f_scale!r}"
        )
    if not train:
        raise ValueError(
            "no training episodes to fit: collect traces first (python -m fedenv.calibrate collect)"
        )
    base = base or SurrogateConfig()
    identifiable, fixed = identifiable_parameters(train)
    if parameters is None:
        names = identifiable
    else:
        unknown = [n for n in parameters if n not in FIT_PARAMETERS]
        if unknown:
            raise ValueError(
                f"cannot fit {unknown}; fittable constants: {', '.join(FIT_PARAMETERS)}"
            )
        names = list(parameters)
        fixed = {n: fixed.get(n, "not requested") for n in FIT_PARAMETERS if n not in names}
    a0 = float(np.mean([ep.accuracy[0] for ep in train]))
    start_cfg = _with(base, ["initial_accuracy"], [a0])
    if "max_accuracy" in names:
        top = float(max(ep.accuracy.max() for ep in train))
        start_cfg = _with(start_cfg, ["max_accuracy"], [max(start_cfg.max_accuracy, min(top, 1.0))])
    lo, hi = fit_bounds(names, a0)
    x0 = np.clip(np.array([getattr(start_cfg, n) for n in names], dtype=np.float64), lo, hi)

    def fun(x: F) -> F:
        return _residuals(train, _with(start_cfg, names, x), objective)

    rng = np.random.default_rng(seed)
    best: Any = None
    candidates = [x0] + [
        lo + rng.uniform(0.05, 0.95, size=lo.size) * (np.minimum(hi, _soft_hi(names, hi)) - lo)
        for _ in range(starts)
    ]
    for x in candidates:
        if not names:
            break
        sol = least_squares(
            fun,
            np.clip(x, lo, hi),
            bounds=(lo, hi),
            x_scale="jac",
            max_nfev=2000,
            loss=loss,
            f_scale=f_scale,
        )
        if best is None or sol.cost < best.cost:
            best = sol
    cfg = _with(start_cfg, names, best.x) if best is not None else start_cfg
    l_0, l_star, loss_rmse = _fit_loss_map(train, cfg)
    cfg = SurrogateConfig.from_dict({**cfg.to_dict(), "initial_loss": l_0, "min_loss": l_star})
    return FitResult(
        config=cfg,
        fitted=names,
        fixed=fixed,
        objective=objective,
        train_keys=[ep.key for ep in train],
        heldout_keys=[ep.key for ep in heldout],
        train_errors=prediction_errors(train, cfg),
        heldout_errors=prediction_errors(heldout, cfg),
        loss_fit_rmse=loss_rmse,
        details={
            "sources": constant_sources(train, cfg, names, objective),
            "at_bounds": at_bounds(cfg, names),
            "cost": float(best.cost) if best is not None else None,
            "starts": len(candidates),
            "loss": loss,
            "f_scale": f_scale,
        },
    )


def _soft_hi(names: Sequence[str], hi: F) -> F:
    """Upper ends for random restarts (the rank scale's bound is far above useful values)."""
    out = hi.copy()
    if "rank_scale" in names:
        out[list(names).index("rank_scale")] = 16.0
    return out


def calibration_yaml(result: FitResult, *, task: str, model: str, command: str, traces: str) -> str:
    """The calibration as a partial env config (YAML) with its provenance in the header comment.

    Load it with ``EnvConfig.from_yaml(path)`` or ``gym.make("FedLoRAWireless-v0", config=path)``.
    """
    import yaml

    values = {name: float(f"{value:.6g}") for name, value in result.config.to_dict().items()}
    body = yaml.safe_dump({"learning": {"task": task, "surrogate": values}}, sort_keys=False)
    te, he = result.train_errors, result.heldout_errors
    lines = [
        f"# Surrogate calibrated against real federated LoRA fine-tuning of {model} on {task}.",
        f"# Written by: {command}",
        f"# Traces: {traces}; fit on {len(result.train_keys)} episodes, validated on "
        f"{len(result.heldout_keys)} held-out episodes.",
        f"# Objective: {result.objective}. Fitted: {', '.join(result.fitted) or 'none'}; "
        "initial_accuracy measured;",
        "# initial_loss / min_loss by linear regression of the loss on the gap "
        f"(RMSE {result.loss_fit_rmse:.4f}).",
    ]
    for name, why in result.fixed.items():
        lines.append(f"# Kept at the base value: {name} ({why}).")
    bounds = result.details.get("at_bounds", [])
    lines.append("# At a bound of the fit: " + (", ".join(bounds) if bounds else "none") + ".")
    for name, shares in result.details.get("sources", {}).items():
        ranked = sorted(shares.items(), key=lambda kv: -kv[1])
        lines.append(
            f"# {name} is determined by: "
            + (", ".join(f"{p} {w:.0%}" for p, w in ranked if w >= 0.005) or "no trace")
            + "."
        )
    lines.append(
        f"# One-round-ahead accuracy RMSE: train {te.get('one_step_rmse', float('nan')):.2f} points"
        + (f", held-out {he['one_step_rmse']:.2f} points" if he.get("episodes") else "")
        + "; see docs/fidelity.md."
    )
    return "\n".join(lines) + "\n" + body
