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

Every function is vectorised over leading axes (episodes), so the batched vector env, the
Lyapunov policy (which evaluates the expected penalty with c_k = success probability) and
calibration call the same formula.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedenv import streams
from fedenv.config import EnvConfig, SurrogateConfig
from fedenv.learning.base import DevicePartition, RoundReport
from fedenv.learning.partition import dirichlet_label_counts
from fedenv.operands import ZERO_INT, const, put

__all__ = [
    "rank_gain",
    "rank_rows_table",
    "RoundProgress",
    "sparsity_gain",
    "round_progress",
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
_ZERO = const(0.0)


def _values(x: ArrayLike) -> Any:
    """``x`` itself when it is already a number or an array (cheap scalar arithmetic), else an
    array."""
    return (
        x
        if type(x) is float or isinstance(x, (np.ndarray, np.floating))
        else np.asarray(x, dtype=np.float64)
    )


def rank_gain(rank: ArrayLike, cfg: SurrogateConfig) -> F:
    """g(r) = 1 - exp(-r / r_0); g(0) = 0."""
    shortfall = _rank_shortfall(rank, cfg)
    return (
        np.negative(shortfall, out=shortfall)
        if isinstance(shortfall, np.ndarray) and shortfall.ndim
        else -shortfall
    )


def _rank_shortfall(rank: ArrayLike, cfg: SurrogateConfig) -> F:
    """-g(r) = exp(-r / r_0) - 1 (a new array for array ranks)."""
    e = np.divide(rank, const(-cfg.rank_scale))  # in float64, whatever the dtype of the ranks
    return np.expm1(e, out=e) if isinstance(e, np.ndarray) and e.ndim else np.expm1(e)


def rank_rows_table(config: EnvConfig) -> F:
    """-g(r) (:func:`rank_gain`) and r, as floats, of every rank r = 0..max of the config's
    ranks, shape (2, R + 1): the rank rows of :class:`RoundProgress`'s work array, looked up per
    round (the same numbers as computing them: both are elementwise)."""
    ranks = np.arange(max(config.model.ranks) + 1, dtype=np.float64)
    table = np.stack([_rank_shortfall(ranks, config.learning.surrogate), ranks])
    table.flags.writeable = False
    return table


def sparsity_gain(ratio: ArrayLike, cfg: SurrogateConfig) -> F:
    """s(rho) = rho^gamma: update energy kept by sending the top rho of the rank components."""
    return np.power(ratio, const(cfg.sparsity_exponent))


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
        (Gamma, F), shape (...). For a single episode (1-D device arrays) they are NumPy
        scalars, so that the per-episode arithmetic after the reductions stays cheap.

    :class:`RoundProgress` computes the same numbers, bit for bit, for label distributions that
    stay fixed over an episode (the envs).
    """
    r = (
        rank.astype(np.float64)
        if isinstance(rank, np.ndarray)
        else np.asarray(rank, dtype=np.float64)
    )
    x = _participation(data_share, weight, np.greater(r, _ZERO))
    kept = x * _rank_shortfall(r, cfg)
    if ratio is not None:
        kept = kept * sparsity_gain(ratio, cfg)
    # one reduction per sum (for large batches, such as the Lyapunov policy's candidate
    # decisions, cheaper than stacking them as RoundProgress does); the label mix summed along
    # a contiguous device axis (labels moved before devices)
    labels = np.asarray(label_distribution, dtype=np.float64)
    mix = np.add.reduce(np.multiply(x[..., None, :], labels.swapaxes(-1, -2), order="C"), axis=-1)
    sums = (np.add.reduce(x, axis=-1), np.add.reduce(kept, axis=-1), np.add.reduce(x * r, axis=-1))
    return _progress(*sums, mix, x, r, global_label_distribution, cfg)


class RoundProgress:
    """:func:`round_progress` for label distributions fixed over an episode (one, or a batch).

    The sums of a round are x-weighted sums over devices: X = sum x, sum x (-g(r)) s(rho),
    sum x r and the label mix sum x l_c. They are the rows of one product of x with a work
    array of shape (3 + C, ..., K) (row 0 ones, rows 1-2 -g(r) and r, rows 3.. the label
    distributions; devices contiguous), summed by one reduction (each row's sum is the one
    :func:`round_progress` computes by itself, bit for bit). The label rows are written once per
    episode (:meth:`set_labels`), the rank rows looked up per round in :func:`rank_rows_table`.
    """

    def __init__(self, config: EnvConfig) -> None:
        self.cfg = config.learning.surrogate
        self.rank_rows = rank_rows_table(config)
        self.work: F = np.zeros((3 + config.model.num_labels, 0))

    def set_labels(
        self, label_distribution: ArrayLike, index: NDArray[np.intp] | None = None
    ) -> None:
        """Start episodes with label distributions l of shape (..., K, C): all episodes, or those
        at ``index`` of the leading axis (the others keep theirs)."""
        labels = np.asarray(label_distribution, dtype=np.float64)
        moved = labels.transpose(
            (labels.ndim - 1, *range(labels.ndim - 1))
        )  # labels first (np.moveaxis costs 2 us)
        if index is not None:
            self.work[3:, index] = moved
            return
        if self.work.shape != (3 + moved.shape[0], *moved.shape[1:]):
            self.work = np.empty((3 + moved.shape[0], *moved.shape[1:]))
            self.work[0] = 1.0
        self.work[3:] = moved

    def __call__(
        self,
        data_share: ArrayLike,
        weight: ArrayLike,
        rank: NDArray[np.integer],
        ratio: ArrayLike | None,
        global_label_distribution: ArrayLike,
    ) -> tuple[F, F]:
        """(Gamma, F) of a round of the current episodes, for integer ranks of the episodes'
        shape (..., K); ValueError for other ranks (:func:`round_progress` takes any)."""
        work = self.work
        rows = work[1:3]
        if (
            not isinstance(rank, np.ndarray)
            or rank.shape != rows.shape[1:]
            or rank.dtype.kind not in "iu"
        ):
            raise ValueError(
                f"rank must be an integer array of shape {rows.shape[1:]}, got "
                f"{np.asarray(rank).dtype} {np.shape(rank)}"
            )
        try:
            self.rank_rows.take(
                rank, 1, rows
            )  # (the method: np.take with out= costs a microsecond more)
        except IndexError:  # ranks beyond the config's: computed
            r = rank.astype(np.float64)
            rows[0] = _rank_shortfall(r, self.cfg)
            rows[1] = r
        x = _participation(data_share, weight, np.greater(rank, ZERO_INT))
        prod = np.multiply(work, x)
        if ratio is not None:
            prod[1] *= sparsity_gain(ratio, self.cfg)  # (x (-g)) s, in the order of the formula
        sums = np.add.reduce(prod, axis=-1)
        mix = (
            sums[3:] if sums.ndim == 1 else sums[3:].transpose((*range(1, sums.ndim), 0))
        )  # labels last
        return _progress(
            sums[0], sums[1], sums[2], mix, x, work[2], global_label_distribution, self.cfg
        )


def _participation(data_share: ArrayLike, weight: ArrayLike, scheduled: NDArray[np.bool_]) -> F:
    """x = pi c (r > 0): each device's data share, weighted by its success (or success
    probability), 0 unless scheduled."""
    if isinstance(weight, np.ndarray) and weight.dtype == np.bool_:
        # success flags: one mask (the same numbers as the general case)
        return np.multiply(data_share, np.logical_and(scheduled, weight))
    x = np.multiply(data_share, weight)
    if x.shape == scheduled.shape:
        put(x, np.logical_not(scheduled), _ZERO)  # x (r > 0), without the multiplication
        return x
    return x * scheduled


def _progress(
    total: F,
    kept: F,
    xr: F,
    mix: F,
    x: F,
    r: F,
    global_label_distribution: ArrayLike,
    cfg: SurrogateConfig,
) -> tuple[F, F]:
    """Gamma and F from the x-weighted sums over devices: X = sum x (``total``), sum x (-g) s
    (``kept``), sum x r (``xr``), the label mix sum x l_c (``mix``, labels last), and x and the
    ranks r (..., K) as floats."""
    # X where X > 0, else 1 (X >= 0; every sum divided by it is 0 when X = 0)
    safe = total + (total == 0.0)
    # Q = sum x g s / X = -(sum x (-g) s) / X exactly: negating is exact, and rounds alike
    quality = -(kept / safe)
    # X^beta Q is 0 when X = 0 (then Q = 0), for any beta >= 0
    progress = np.power(total, const(cfg.participation_exponent)) * quality
    glob = global_label_distribution
    if mix.ndim == 1 and mix.shape[0] < 8 and (type(glob) is list or np.ndim(glob) == 1):
        # One episode: C numbers, as Python floats (the same IEEE operations in the same order as
        # the array path, whose sum over fewer than 8 labels is sequential; cheaper for a few).
        x_total = float(safe)
        tv = 0.0
        for m, p in zip(mix.tolist(), glob if type(glob) is list else np.asarray(glob).tolist()):
            tv += abs(m / x_total - p)
        tv *= 0.5
    else:
        # labels last and contiguous, so that the sum over them is NumPy's pairwise sum
        mix = np.divide(mix, safe[..., None] if isinstance(safe, np.ndarray) else safe, order="C")
        mix = np.subtract(mix, global_label_distribution)
        tv = 0.5 * np.add.reduce(np.abs(mix, out=mix), axis=-1)
    mean_r = xr / safe
    dev = r - (mean_r[..., None] if isinstance(mean_r, np.ndarray) else mean_r)
    np.square(dev, out=dev)
    var_r = np.add.reduce(np.multiply(x, dev, out=dev), axis=-1) / safe
    # mean_r = 0 only when X = 0, and then var_r = 0
    cv = (np.sqrt(var_r) if isinstance(var_r, np.ndarray) else math.sqrt(var_r)) / (
        mean_r + (mean_r == 0.0)
    )
    floor = cfg.heterogeneity_penalty * tv + cfg.rank_mix_penalty * cv
    return progress, floor


def next_gap(gap: ArrayLike, progress: ArrayLike, floor: ArrayLike, cfg: SurrogateConfig) -> F:
    """G' = G + mu Gamma (F - G) (1 - w min(G, 1))."""
    g = _values(gap)
    step = cfg.step_size * _values(progress) * (_values(floor) - g)
    if cfg.warmup == 0.0:
        return g + step
    return g + step * (
        1.0 - cfg.warmup * (np.minimum(g, 1.0) if isinstance(g, np.ndarray) else min(g, 1.0))
    )


def accuracy_from_gap(gap: ArrayLike, cfg: SurrogateConfig) -> F:
    """acc = a_max - (a_max - a_0) G."""
    return cfg.max_accuracy - (cfg.max_accuracy - cfg.initial_accuracy) * _values(gap)


def loss_from_gap(gap: ArrayLike, cfg: SurrogateConfig) -> F:
    """loss = L* + (L_0 - L*) G."""
    return cfg.min_loss + (cfg.initial_loss - cfg.min_loss) * _values(gap)


def observed_accuracy(gap: ArrayLike, noise: ArrayLike, cfg: SurrogateConfig) -> Any:
    """The reported accuracy: acc(G) plus evaluation noise, clipped to [0, 1] (float for
    scalars)."""
    acc = accuracy_from_gap(gap, cfg) + _values(noise)
    if isinstance(acc, np.ndarray) and acc.ndim > 0:
        return np.clip(acc, 0.0, 1.0)
    return min(max(float(acc), 0.0), 1.0)


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
    """The surrogate as a :class:`~fedenv.learning.base.Learner` (pickles; no heavy imports).

    Sparsification ratios count only in the paradigms that sparsify (soft, unified); elsewhere
    they are ignored, as in the lora backend.
    """

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.cfg = config.learning.surrogate
        self.params_per_rank = float(config.model.lora_params_per_rank)
        self.head_params = int(config.model.head_params)
        self.partition: DevicePartition | None = None
        self.gap = 1.0
        self._round = 0
        self._noise: F = np.zeros(0)
        self._noise_values: list[float] = []
        self._global_values: list[float] = []
        self._classes = class_counts(config)
        self._progress = RoundProgress(config)
        #: sparsification ratios count only in the paradigms that sparsify, as in the lora backend
        self._sparse = config.sparsifies
        self._arrays: tuple[F, F, F] | None = None
        self._notes = {
            "backend": "surrogate",
            "task": config.learning.task,
            "train_samples": config.learning.num_train_samples,
        }

    def reset(self, num_devices: int, rng: np.random.Generator) -> DevicePartition:
        counts, key = draw_episode(self.config, num_devices, rng, self._classes)
        sizes, labels, global_labels, share = partition_arrays(counts, self._classes)
        self.partition = DevicePartition(
            data_sizes=sizes,
            label_distribution=labels,
            global_label_distribution=global_labels,
            notes=dict(self._notes),
        )
        self._arrays = (share, labels, global_labels)
        self._progress.set_labels(labels)
        self.gap = 1.0
        self._round = 0
        self._noise = evaluation_noise(np.array(key, dtype=np.uint64), self.config)
        self._noise_values = (
            self._noise.tolist()
        )  # (Python floats: cheaper scalar arithmetic, same values)
        self._global_values = global_labels.tolist()
        return self.partition

    def _report(self) -> RoundReport:
        noise = (
            self._noise_values[self._round - 1]
            if 0 < self._round <= len(self._noise_values)
            else 0.0
        )
        acc = observed_accuracy(self.gap, noise, self.cfg)
        # Equal to RoundReport(accuracy=acc, loss=..., gap=self.gap), without the frozen
        # dataclass's per-field object.__setattr__ (a measurable share of a step's cost).
        report = object.__new__(RoundReport)
        report.__dict__.update(
            accuracy=acc,
            loss=float(loss_from_gap(self.gap, self.cfg)),
            gap=self.gap,
            evaluated=True,
            extra={},
        )
        return report

    def initial_report(self) -> RoundReport:
        return self._report()

    def expected_gap(self, ranks: ArrayLike, ratios: ArrayLike, success_prob: ArrayLike) -> float:
        """Predicted gap after a round (the Lyapunov penalty Phi) with c_k = success probability."""
        share, labels, global_labels = self._require_arrays()
        progress, floor = round_progress(
            share,
            success_prob,
            ranks,
            ratios if self._sparse else None,
            labels,
            global_labels,
            self.cfg,
        )
        return float(next_gap(self.gap, progress, floor, self.cfg))

    def train_round(
        self, ranks: NDArray[np.int64], ratios: NDArray[np.float64], success: NDArray[np.bool_]
    ) -> RoundReport:
        share, labels, global_labels = self._require_arrays()
        ratio = ratios if self._sparse else None
        try:
            progress, floor = self._progress(share, success, ranks, ratio, self._global_values)
        except ValueError:  # ranks not an integer array of the episode's shape
            progress, floor = round_progress(
                share, success, ranks, ratio, labels, global_labels, self.cfg
            )
        self.gap = float(next_gap(self.gap, progress, floor, self.cfg))
        self._round += 1
        return self._report()

    def _require_arrays(self) -> tuple[F, F, F]:
        if self._arrays is None:
            raise RuntimeError("call reset() before using the learner")
        return self._arrays

    def close(self) -> None:
        pass
