"""Surrogate learning-progress model (docs/model.md §5.2), shaped like a federated convergence
bound.

State: the normalised loss gap G (1 for the pre-trained model with a fresh head, 0 at the best
reachable model). One round moves G towards a floor F at a rate set by what arrived:

    x_k   = pi_k c_k                                  data share pi_k of a device that succeeded
    X     = sum_k x_k                                 participating data share
    Q     = sum_k x_k g(r_k) s(rho_k) / X             update quality
    Gamma = X^beta Q                                  progress of the round, in [0, 1]
    F     = h TV(p_hat, p) + sigma_mix CV(r)          bias floor
    G'    = G + mu Gamma (F - G) (1 - w min(G, 1))

with the rank gain g(r) = 1 - exp(-r / r_0), the kept update energy of sparsification
s(rho) = rho^gamma, TV the total-variation distance between the participants' label mix
p_hat = sum x_k l_k / X and the global mix p (unbalanced participation under non-IID data
biases the model), and CV the x-weighted coefficient of variation of the aggregated ranks
(mixed ranks add aggregation noise). A device that is not scheduled, loses its packet or misses
the deadline has c_k = 0 and contributes nothing. Accuracy and loss are affine in G. The
warm-up w in [0, 1) slows the first rounds (rate mu (1 - w) at G = 1, mu near convergence):
real LoRA fine-tuning from a zero-initialised adapter and a fresh head starts slowly and then
accelerates (an S-shaped accuracy curve; docs/fidelity.md); w = 0 is the plain geometric model.

Every function is vectorised over leading axes (episodes), so the envs (through
:class:`SurrogateLearner`, N episodes at once), the Lyapunov policy (which evaluates the
expected penalty with c_k = success probability) and calibration call the same formula.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedenv import streams
from fedenv.config import EnvConfig, SurrogateConfig
from fedenv.learning.base import BatchReport, EpisodeStart
from fedenv.learning.partition import dirichlet_label_counts

__all__ = [
    "rank_gain",
    "sparsity_gain",
    "round_progress",
    "label_skew",
    "arrival_what_ifs",
    "next_gap",
    "accuracy_from_gap",
    "loss_from_gap",
    "gap_from_accuracy",
    "observed_accuracy",
    "evaluation_noise",
    "class_counts",
    "draw_episode",
    "partition_arrays",
    "SurrogateLearner",
]

F = NDArray[np.float64]


def rank_gain(rank: ArrayLike, cfg: SurrogateConfig) -> F:
    """g(r) = 1 - exp(-r / r_0); g(0) = 0."""
    return np.negative(_rank_shortfall(rank, cfg))


def _rank_shortfall(rank: ArrayLike, cfg: SurrogateConfig) -> F:
    """-g(r) = exp(-r / r_0) - 1, in float64 whatever the dtype of the ranks."""
    return np.expm1(np.divide(rank, -cfg.rank_scale))


def sparsity_gain(ratio: ArrayLike, cfg: SurrogateConfig) -> F:
    """s(rho) = rho^gamma: update energy kept by sending the top rho of the rank components."""
    return np.power(ratio, cfg.sparsity_exponent)


def round_progress(
    data_share: ArrayLike,
    weight: ArrayLike,
    rank: ArrayLike,
    ratio: ArrayLike | None,
    label_distribution: ArrayLike,
    global_label_distribution: ArrayLike,
    cfg: SurrogateConfig,
) -> tuple[F, F]:
    """Progress Gamma and floor F of one round (module docstring), over the last axis (devices).

    Args:
        data_share: pi_k, shape (..., K), summing to 1.
        weight: c_k in [0, 1]: 1/0 success, or a success probability for predictions.
        rank: r_k (0 = not scheduled).
        ratio: rho_k in (0, 1] (1 = no sparsification); None for none at all (s = 1).
        label_distribution: l_k, shape (..., K, C).
        global_label_distribution: p, shape (..., C).

    Returns:
        (Gamma, F), shape (...).
    """
    r = np.asarray(rank, dtype=np.float64)
    # x = pi c (r > 0): each device's data share, weighted by its success (or success
    # probability), 0 unless scheduled
    x = np.where(r > 0.0, np.multiply(data_share, weight), 0.0)
    kept = x * _rank_shortfall(r, cfg)
    if ratio is not None:
        kept = kept * sparsity_gain(ratio, cfg)
    total = np.add.reduce(x, axis=-1)
    # X where X > 0, else 1 (X >= 0; every sum divided by it is 0 when X = 0)
    safe = total + (total == 0.0)
    # Q = sum x g s / X = -(sum x (-g) s) / X exactly: negating is exact, and rounds alike
    quality = -(np.add.reduce(kept, axis=-1) / safe)
    # X^beta Q is 0 when X = 0 (then Q = 0), for any beta >= 0
    progress = np.power(total, cfg.participation_exponent) * quality
    tv = label_skew(x, safe, label_distribution, global_label_distribution)
    mean_r = np.add.reduce(x * r, axis=-1) / safe
    dev = r - mean_r[..., None]
    np.square(dev, out=dev)
    var_r = np.add.reduce(np.multiply(x, dev, out=dev), axis=-1) / safe
    # mean_r = 0 only when X = 0, and then var_r = 0
    cv = np.sqrt(var_r) / (mean_r + (mean_r == 0.0))
    floor = cfg.heterogeneity_penalty * tv + cfg.rank_mix_penalty * cv
    return progress, floor


def label_skew(
    weight: ArrayLike,
    total: ArrayLike,
    label_distribution: ArrayLike,
    global_label_distribution: ArrayLike,
) -> F:
    """TV(p_hat, p): the total-variation distance between the weighted label mix
    p_hat = sum_k w_k l_k / total and the global mix p, over the last axis (devices).

    Args:
        weight: w_k, shape (..., K) (the round's x_k = pi_k c_k [r_k > 0]).
        total: sum_k w_k, shape (...); pass 1 where it is 0 (then p_hat = 0).
        label_distribution: l_k, shape (..., K, C).
        global_label_distribution: p, shape (..., C).
    """
    w = np.asarray(weight, dtype=np.float64)
    # the label mix sum_k w_k l_k, summed along a contiguous device axis (labels moved first)
    labels = np.asarray(label_distribution, dtype=np.float64)
    mix = np.add.reduce(np.multiply(w[..., None, :], labels.swapaxes(-1, -2), order="C"), axis=-1)
    # labels last and contiguous, so that the sum over them is NumPy's pairwise sum
    mix = np.divide(mix, np.asarray(total, dtype=np.float64)[..., None], order="C")
    mix = np.subtract(mix, global_label_distribution)
    return 0.5 * np.add.reduce(np.abs(mix, out=mix), axis=-1)


def arrival_what_ifs(
    data_share: ArrayLike,
    weight: ArrayLike,
    rank: ArrayLike,
    ratio: ArrayLike | None,
    label_distribution: ArrayLike,
    global_label_distribution: ArrayLike,
    cfg: SurrogateConfig,
) -> tuple[F, F]:
    """Progress and floor when one device's arrival is decided, for every device at once.

    The same round as :func:`round_progress` (same arguments), with device k's weight c_k set to
    1 (arrived) and to 0 (lost), every other device's weight kept. Every sum in the round is
    linear in the weights, so each what-if updates the sums by device k's term: O(K C) per row,
    where calling :func:`round_progress` on the 2 K what-ifs would cost O(K^2 C). Agrees with
    those calls to 1e-9 (tested); only the rank-mix floor can differ by up to about 1e-8 where
    the arrived ranks are all equal, since its variance comes from moments here (about the
    largest rank) and a square root amplifies their rounding near zero.

    Returns:
        (Gamma, F), each of shape (..., 2, K): [..., 0, k] with c_k = 1, [..., 1, k] with c_k = 0.
    """
    r = np.asarray(rank, dtype=np.float64)
    on = r > 0.0
    share = np.broadcast_to(np.asarray(data_share, dtype=np.float64), r.shape)
    x = np.where(on, share * np.asarray(weight, dtype=np.float64), 0.0)
    quality = -_rank_shortfall(r, cfg)
    if ratio is not None:
        quality = quality * sparsity_gain(ratio, cfg)
    labels = np.asarray(label_distribution, dtype=np.float64)  # (..., K, C)
    # the round's sums, then each what-if's: sum + (x_k' - x_k) * term_k
    delta = np.stack([np.where(on, share, 0.0) - x, -x], axis=-2)  # (..., 2, K)
    total = np.sum(x, axis=-1)[..., None, None] + delta
    kept = np.sum(x * quality, axis=-1)[..., None, None] + delta * quality[..., None, :]
    # rank moments about the largest rank: exact zeros where the ranks are equal
    top = np.max(r, axis=-1, keepdims=True)
    d_r = r - top
    r1 = np.sum(x * d_r, axis=-1)[..., None, None] + delta * d_r[..., None, :]
    r2 = np.sum(x * d_r * d_r, axis=-1)[..., None, None] + delta * (d_r * d_r)[..., None, :]
    # the label mix, (..., 2, K, C), updated in place
    mix = np.multiply(delta[..., None], labels[..., None, :, :])
    mix += np.einsum("...k,...kc->...c", x, labels)[..., None, None, :]
    # X' where X' > 0, else 1: every sum divided by it is 0 (to rounding) when nothing arrives
    np.maximum(total, 0.0, out=total)
    safe = total + (total <= 1e-15)
    progress = np.power(total, cfg.participation_exponent)
    progress *= kept
    progress /= safe
    mix /= safe[..., None]
    mix -= global_label_distribution
    tv = 0.5 * np.sum(np.abs(mix, out=mix), axis=-1)
    shift = r1 / safe  # E[r] - top
    var_r = r2 / safe
    var_r -= shift * shift
    np.maximum(var_r, 0.0, out=var_r)
    mean_r = shift + top[..., None]
    cv = np.sqrt(var_r) / np.where(mean_r > 0.0, mean_r, 1.0)
    floor = cfg.heterogeneity_penalty * tv + cfg.rank_mix_penalty * cv
    return progress, floor


def next_gap(gap: ArrayLike, progress: ArrayLike, floor: ArrayLike, cfg: SurrogateConfig) -> F:
    """G' = G + mu Gamma (F - G) (1 - w min(G, 1))."""
    g = np.asarray(gap, dtype=np.float64)
    step = np.multiply(np.multiply(cfg.step_size, progress), np.subtract(floor, g))
    if cfg.warmup == 0.0:
        return g + step
    return g + step * (1.0 - cfg.warmup * np.minimum(g, 1.0))


def accuracy_from_gap(gap: ArrayLike, cfg: SurrogateConfig) -> F:
    """acc = a_max - (a_max - a_0) G."""
    return cfg.max_accuracy - np.multiply(cfg.max_accuracy - cfg.initial_accuracy, gap)


def loss_from_gap(gap: ArrayLike, cfg: SurrogateConfig) -> F:
    """loss = L* + (L_0 - L*) G."""
    return cfg.min_loss + np.multiply(cfg.initial_loss - cfg.min_loss, gap)


def observed_accuracy(gap: ArrayLike, noise: ArrayLike, cfg: SurrogateConfig) -> F:
    """The reported accuracy: acc(G) plus evaluation noise, clipped to [0, 1]."""
    accuracy = np.add(accuracy_from_gap(gap, cfg), noise)
    return np.minimum(np.maximum(accuracy, 0.0), 1.0)


def evaluation_noise(keys: NDArray[np.uint64], config: EnvConfig) -> F:
    """Evaluation noise of rounds 1..T for episodes with the given noise keys, shape keys.shape +
    (T,)."""
    cfg = config.learning.surrogate
    shape = np.shape(keys) + (config.num_rounds,)
    if cfg.eval_noise_std == 0.0:
        return np.zeros(shape)  # std x N(0, 1) = 0
    return cfg.eval_noise_std * streams.normal(
        np.asarray(keys, dtype=np.uint64), streams.Stream.EVAL_NOISE, (config.num_rounds,)
    )


def gap_from_accuracy(accuracy: ArrayLike, cfg: SurrogateConfig) -> F:
    """Inverse of :func:`accuracy_from_gap`, clipped to [0, 1]: the gap estimate for any backend."""
    span = cfg.max_accuracy - cfg.initial_accuracy
    return (
        np.clip((cfg.max_accuracy - np.asarray(accuracy)) / span, 0.0, 1.0)
        if span > 0
        else np.zeros_like(np.asarray(accuracy, dtype=np.float64))
    )


def class_prior(task: str, num_labels: int) -> F:
    """Global label mix of a task's train split (SST-2: 44.2% / 55.8%)."""
    if task == "sst2" and num_labels == 2:
        return np.array([29780.0, 37569.0]) / 67349.0
    return np.full(num_labels, 1.0 / num_labels)


def class_counts(config: EnvConfig) -> NDArray[np.int64]:
    """Training samples per class: the task's prior over ``num_train_samples`` (rounding to the
    last)."""
    lc = config.learning
    prior = class_prior(lc.task, config.model.num_labels)
    n = lc.num_train_samples
    counts = np.floor(prior * n).astype(np.int64)
    counts[-1] += n - counts.sum()
    return counts


def draw_episode(
    config: EnvConfig,
    num_devices: int,
    rng: np.random.Generator,
    classes: NDArray[np.int64] | None = None,
) -> tuple[F, np.uint64]:
    """The surrogate's random draws at the start of an episode, in order, from ``rng``.

    Returns:
        (per-device label counts (K, C) of the Dirichlet partition, key of the evaluation
        noise). ``classes`` is :func:`class_counts` (computed when None).
    """
    lc = config.learning
    if classes is None:
        classes = class_counts(config)
    counts = dirichlet_label_counts(
        classes,
        num_devices,
        lc.dirichlet_alpha,
        rng,
        iid=lc.iid,
        min_size=config.devices.batch_size,
    )
    return counts.astype(np.float64), streams.draw_keys(rng, 1)[0]


def partition_arrays(counts: F, classes: NDArray[np.int64]) -> tuple[F, F, F, F]:
    """(data sizes, label distribution, global label distribution, data share) from label counts.

    Vectorised over leading axes of ``counts`` (..., K, C).
    """
    sizes = np.add.reduce(counts, axis=-1)
    return (
        sizes,
        counts / sizes[..., None],
        classes / classes.sum(),
        sizes / np.add.reduce(sizes, axis=-1, keepdims=True),
    )


class SurrogateLearner:
    """The surrogate learner of N episodes at once (pickles; no heavy imports).

    A :class:`~fedenv.learning.base.BatchLearner`: the single env holds one with N = 1, the
    vector env one with N = ``num_envs``. Sparsification ratios count only in the paradigms that
    sparsify (soft, unified); elsewhere they are ignored, as in the lora backend.
    """

    def __init__(self, config: EnvConfig, num_envs: int = 1) -> None:
        self.config = config
        self.cfg = config.learning.surrogate
        self.num_envs = n = num_envs
        self.params_per_rank = float(config.model.lora_params_per_rank)
        self.head_params = int(config.model.head_params)
        k, c = config.devices.num_devices, config.model.num_labels
        self._classes = class_counts(config)
        #: sparsification ratios count only in the paradigms that sparsify, as in the lora backend
        self._sparse = config.sparsifies
        self.notes = {
            "backend": "surrogate",
            "task": config.learning.task,
            "train_samples": config.learning.num_train_samples,
        }
        self._share = np.zeros((n, k))
        self._labels = np.zeros((n, k, c))
        self._global = np.zeros((n, c))
        self._noise = np.zeros((n, config.num_rounds))
        self._round = np.zeros(n, dtype=np.int64)
        self._rows = np.arange(n)
        self.gap = np.ones(n)
        # one generator, set to each episode's seeded state (its state is set per episode)
        self._rng = np.random.Generator(np.random.PCG64(0))

    def start(self, index: NDArray[np.intp], keys: NDArray[np.uint64]) -> EpisodeStart:
        """Start episodes at rows ``index``, each drawing its data partition and evaluation noise
        from ``default_rng(key)`` (the single env's rule)."""
        cfg, m = self.config, index.size
        k = cfg.devices.num_devices
        counts = np.empty((m, k, self._classes.size))
        noise_keys = np.empty(m, dtype=np.uint64)
        rng = self._rng
        for j, state in enumerate(streams.pcg64_states(np.asarray(keys, dtype=np.uint64))):
            rng.bit_generator.state = state
            counts[j], noise_keys[j] = draw_episode(cfg, k, rng, self._classes)
        sizes, labels, global_labels, share = partition_arrays(counts, self._classes)
        self._share[index] = share
        self._labels[index] = labels
        self._global[index] = global_labels
        self._noise[index] = evaluation_noise(noise_keys, cfg)
        self._round[index] = 0
        # (a new array: the gap is handed out in info, never written after)
        self.gap = self.gap.copy()
        self.gap[index] = 1.0
        ones = np.ones(m)
        return EpisodeStart(
            data_sizes=sizes,
            label_distribution=labels,
            global_label_distribution=np.broadcast_to(global_labels, (m, global_labels.size)),
            data_share=share,
            accuracy=observed_accuracy(ones, np.zeros(m), self.cfg),
            loss=loss_from_gap(ones, self.cfg),
            gap=ones,
            notes=dict(self.notes),
        )

    def train_round(
        self, ranks: NDArray[np.int64], ratios: NDArray[np.float64], success: NDArray[np.bool_]
    ) -> BatchReport:
        """One round of every episode, arrays (N, K)."""
        progress, floor = round_progress(
            self._share,
            success,
            ranks,
            ratios if self._sparse else None,
            self._labels,
            self._global,
            self.cfg,
        )
        self.gap = gap = next_gap(self.gap, progress, floor, self.cfg)
        # round t's noise (an episode past its last round, which the vector env resets next,
        # reads its last)
        noise = self._noise[self._rows, np.minimum(self._round, self.config.num_rounds - 1)]
        self._round = self._round + 1
        return BatchReport(
            accuracy=observed_accuracy(gap, noise, self.cfg),
            loss=loss_from_gap(gap, self.cfg),
            gap=gap,
        )

    def close(self) -> None:
        pass
