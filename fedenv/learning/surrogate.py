"""Surrogate learning-progress model (SPEC §5), shaped like a federated convergence bound.

State: the normalised loss gap G (1 for the pre-trained model with a fresh head, 0 at the best
reachable model). One round moves G towards a floor F at a rate set by what arrived:

    x_k   = pi_k c_k                                  data share pi_k of a device that succeeded
    X     = sum_k x_k                                 participating data share
    Q     = sum_k x_k g(r_k) s(rho_k) / X             update quality
    Gamma = X^beta Q                                  progress of the round, in [0, 1]
    F     = h TV(p_hat, p) + sigma_mix CV(r)          bias floor
    G'    = G + mu Gamma (F - G)

with the rank gain g(r) = 1 - exp(-r / r_0), the kept update energy of sparsification
s(rho) = rho^gamma, TV the total-variation distance between the participants' label mix
p_hat = sum x_k l_k / X and the global mix p (unbalanced participation under non-IID data
biases the model), and CV the x-weighted coefficient of variation of the aggregated ranks
(mixed ranks add aggregation noise). A device that is not scheduled, loses its packet or misses
the deadline has c_k = 0 and contributes nothing. Accuracy and loss are affine in G.

Every function is vectorised over leading axes (episodes), so the batched vector env, the
Lyapunov policy (which evaluates the expected penalty with c_k = success probability) and
calibration call the same formula.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedenv import streams
from fedenv.config import EnvConfig, SurrogateConfig
from fedenv.learning.base import DevicePartition, RoundReport
from fedenv.learning.partition import dirichlet_label_counts

__all__ = [
    "rank_gain",
    "sparsity_gain",
    "round_progress",
    "next_gap",
    "accuracy_from_gap",
    "loss_from_gap",
    "gap_from_accuracy",
    "SurrogateLearner",
]

F = NDArray[np.float64]


def rank_gain(rank: ArrayLike, cfg: SurrogateConfig) -> F:
    """g(r) = 1 - exp(-r / r_0); g(0) = 0."""
    return -np.expm1(-np.asarray(rank, dtype=np.float64) / cfg.rank_scale)


def sparsity_gain(ratio: ArrayLike, cfg: SurrogateConfig) -> F:
    """s(rho) = rho^gamma: update energy kept by sending the top rho of the rank components."""
    return np.power(np.asarray(ratio, dtype=np.float64), cfg.sparsity_exponent)


def round_progress(
    data_share: ArrayLike,
    weight: ArrayLike,
    rank: ArrayLike,
    ratio: ArrayLike,
    label_distribution: ArrayLike,
    global_label_distribution: ArrayLike,
    cfg: SurrogateConfig,
) -> tuple[F, F]:
    """Progress Gamma and floor F of one round (module docstring), over the last axis (devices).

    Args:
        data_share: pi_k, shape (..., K), summing to 1.
        weight: c_k in [0, 1]: 1/0 success, or a success probability for predictions.
        rank: r_k (0 = not scheduled).
        ratio: rho_k in (0, 1] (1 = no sparsification).
        label_distribution: l_k, shape (..., K, C).
        global_label_distribution: p, shape (..., C).
    """
    r = np.asarray(rank, dtype=np.float64)
    x = np.asarray(data_share) * np.asarray(weight) * (r > 0)
    total = x.sum(axis=-1)
    safe = np.where(total > 0.0, total, 1.0)
    quality = (x * rank_gain(r, cfg) * sparsity_gain(ratio, cfg)).sum(axis=-1) / safe
    progress = np.where(total > 0.0, np.power(total, cfg.participation_exponent) * quality, 0.0)
    mix = np.einsum("...k,...kc->...c", x, np.asarray(label_distribution)) / safe[..., None]
    tv = 0.5 * np.abs(mix - np.asarray(global_label_distribution)).sum(axis=-1)
    mean_r = (x * r).sum(axis=-1) / safe
    var_r = (x * (r - mean_r[..., None]) ** 2).sum(axis=-1) / safe
    cv = np.sqrt(var_r) / np.where(mean_r > 0.0, mean_r, 1.0)
    floor = cfg.heterogeneity_penalty * tv + cfg.rank_mix_penalty * cv
    return progress, floor


def next_gap(gap: ArrayLike, progress: ArrayLike, floor: ArrayLike, cfg: SurrogateConfig) -> F:
    """G' = G + mu Gamma (F - G)."""
    g = np.asarray(gap, dtype=np.float64)
    return g + cfg.step_size * np.asarray(progress) * (np.asarray(floor) - g)


def accuracy_from_gap(gap: ArrayLike, cfg: SurrogateConfig) -> F:
    """acc = a_max - (a_max - a_0) G."""
    return cfg.max_accuracy - (cfg.max_accuracy - cfg.initial_accuracy) * np.asarray(gap)


def loss_from_gap(gap: ArrayLike, cfg: SurrogateConfig) -> F:
    """loss = L* + (L_0 - L*) G."""
    return cfg.min_loss + (cfg.initial_loss - cfg.min_loss) * np.asarray(gap)


def gap_from_accuracy(accuracy: ArrayLike, cfg: SurrogateConfig) -> F:
    """Inverse of :func:`accuracy_from_gap`, clipped to [0, 1]: the gap estimate for any backend."""
    span = cfg.max_accuracy - cfg.initial_accuracy
    return np.clip((cfg.max_accuracy - np.asarray(accuracy)) / span, 0.0, 1.0) if span > 0 else np.zeros_like(np.asarray(accuracy, dtype=np.float64))


def class_prior(task: str, num_labels: int) -> F:
    """Global label mix of a task's train split (SST-2: 44.2% / 55.8%)."""
    if task == "sst2" and num_labels == 2:
        return np.array([29780.0, 37569.0]) / 67349.0
    return np.full(num_labels, 1.0 / num_labels)


class SurrogateLearner:
    """The surrogate as a :class:`~fedenv.learning.base.Learner` (pickles; no heavy imports)."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.cfg = config.learning.surrogate
        self.params_per_rank = float(config.model.lora_params_per_rank)
        self.head_params = int(config.model.head_params)
        self.partition: DevicePartition | None = None
        self.gap = 1.0
        self._round = 0
        self._noise: F = np.zeros(0)

    def reset(self, num_devices: int, rng: np.random.Generator) -> DevicePartition:
        lc = self.config.learning
        num_labels = self.config.model.num_labels
        prior = class_prior(lc.task, num_labels)
        n = lc.num_train_samples
        class_counts = np.floor(prior * n).astype(np.int64)
        class_counts[-1] += n - class_counts.sum()
        counts = dirichlet_label_counts(
            class_counts, num_devices, lc.dirichlet_alpha, rng, iid=lc.iid, min_size=self.config.devices.batch_size
        ).astype(np.float64)
        sizes = counts.sum(axis=1)
        self.partition = DevicePartition(
            data_sizes=sizes,
            label_distribution=counts / sizes[:, None],
            global_label_distribution=class_counts / class_counts.sum(),
            notes={"backend": "surrogate", "task": lc.task, "train_samples": n},
        )
        self.gap = 1.0
        self._round = 0
        key = rng.integers(0, 2**63, dtype=np.uint64)
        self._noise = self.cfg.eval_noise_std * streams.normal(
            np.array(key, dtype=np.uint64), streams.Stream.EVAL_NOISE, (self.config.num_rounds,)
        )
        return self.partition

    def _report(self) -> RoundReport:
        noise = self._noise[self._round - 1] if 0 < self._round <= self._noise.size else 0.0
        acc = float(np.clip(accuracy_from_gap(self.gap, self.cfg) + noise, 0.0, 1.0))
        return RoundReport(accuracy=acc, loss=float(loss_from_gap(self.gap, self.cfg)), gap=self.gap)

    def initial_report(self) -> RoundReport:
        return self._report()

    def expected_gap(self, ranks: ArrayLike, ratios: ArrayLike, success_prob: ArrayLike) -> float:
        """Predicted gap after a round (the Lyapunov penalty Phi) with c_k = success probability."""
        p = self._require_partition()
        progress, floor = round_progress(
            p.data_share, success_prob, ranks, ratios, p.label_distribution, p.global_label_distribution, self.cfg
        )
        return float(next_gap(self.gap, progress, floor, self.cfg))

    def train_round(self, ranks: NDArray[np.int64], ratios: NDArray[np.float64], success: NDArray[np.bool_]) -> RoundReport:
        p = self._require_partition()
        progress, floor = round_progress(
            p.data_share, success, ranks, ratios, p.label_distribution, p.global_label_distribution, self.cfg
        )
        self.gap = float(next_gap(self.gap, progress, floor, self.cfg))
        self._round += 1
        return self._report()

    def _require_partition(self) -> DevicePartition:
        if self.partition is None:
            raise RuntimeError("call reset() before using the learner")
        return self.partition

    def close(self) -> None:
        pass

