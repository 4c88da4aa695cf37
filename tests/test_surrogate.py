"""Surrogate learner (docs/model.md §5.2): every decision has its documented effect."""

from __future__ import annotations

import numpy as np
import pytest

from fedenv.config import EnvConfig, SurrogateConfig
from fedenv.learning.partition import dirichlet_label_counts, partition_indices
from fedenv.learning.surrogate import (
    SurrogateLearner,
    accuracy_from_gap,
    arrival_what_ifs,
    gap_from_accuracy,
    next_gap,
    rank_gain,
    round_progress,
)

# hand constants (the surrogate's defaults before the calibration became them), so that the hand
# values below do not move with the defaults
CFG = SurrogateConfig(
    step_size=0.22,
    rank_scale=4.0,
    participation_exponent=0.5,
    sparsity_exponent=0.5,
    heterogeneity_penalty=0.3,
    rank_mix_penalty=0.05,
    initial_accuracy=0.5,
    max_accuracy=0.86,
    initial_loss=0.693,
    min_loss=0.35,
    warmup=0.0,
)
K = 4
SHARE = np.full(K, 0.25)
BALANCED = np.tile([0.5, 0.5], (K, 1))
SKEWED = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
GLOBAL = np.array([0.5, 0.5])


def progress(weight=1.0, rank=8, ratio=1.0, labels=BALANCED, share=SHARE):
    w = np.broadcast_to(np.asarray(weight, float), (K,))
    r = np.broadcast_to(np.asarray(rank), (K,))
    rho = np.broadcast_to(np.asarray(ratio, float), (K,))
    return round_progress(share, w, r, rho, labels, GLOBAL, CFG)


def test_rank_gain_hand_values():
    np.testing.assert_allclose(rank_gain([0, 4, 8], CFG), [0.0, 1 - np.exp(-1), 1 - np.exp(-2)])


def test_boolean_success_flags_equal_their_float_weights():
    r = np.array([0, 2, 16, 8])
    w = np.array([True, True, False, True])
    assert round_progress(SHARE, w, r, np.ones(K), SKEWED, GLOBAL, CFG) == round_progress(
        SHARE, w.astype(float), r, np.ones(K), SKEWED, GLOBAL, CFG
    )


def test_round_progress_broadcasts_one_episode_against_a_batch_of_decisions():
    """The Lyapunov policy's call: labels (K, C) and shares (K,) of the episode, ranks and weights
    of N candidate decisions (N, K)."""
    rng = np.random.default_rng(3)
    r = rng.choice([0, 2, 4, 8, 16], size=(6, K))
    w = rng.uniform(size=(6, K))
    g, f = round_progress(SHARE, w, r, None, SKEWED, GLOBAL, CFG)
    for i in range(6):
        assert (g[i], f[i]) == round_progress(SHARE, w[i], r[i], None, SKEWED, GLOBAL, CFG)


@pytest.mark.parametrize(
    ("preset", "counts"),
    [("switching", False), ("split", False), ("soft", True), ("unified", True)],
)
def test_learner_uses_ratios_only_where_the_paradigm_sparsifies(preset, counts):
    """As the lora backend: sparsification ratios matter in soft and unified only."""
    cfg = EnvConfig.from_preset(preset)
    gaps = []
    for ratio in (1.0, 0.3):
        learner = SurrogateLearner(cfg)
        learner.start(np.array([0]), np.array([0], dtype=np.uint64))
        ranks = np.full((1, 10), cfg.model.ranks[0])
        ratios = np.full((1, 10), ratio)
        gaps.append(learner.train_round(ranks, ratios, np.ones((1, 10), dtype=bool)).gap[0])
    assert (gaps[0] != gaps[1]) == counts


def test_full_participation_hand_value():
    gamma, floor = progress()
    assert gamma == pytest.approx(1 - np.exp(-2))  # X = 1, Q = g(8)
    assert floor == pytest.approx(0.0)
    assert next_gap(1.0, gamma, floor, CFG) == pytest.approx(1 - 0.22 * (1 - np.exp(-2)))


def test_higher_rank_more_progress():
    assert progress(rank=16)[0] > progress(rank=8)[0] > progress(rank=2)[0]


def test_failed_or_idle_devices_contribute_nothing():
    full = progress()[0]
    assert progress(weight=[1, 1, 1, 0])[0] < full
    np.testing.assert_allclose(progress(weight=[1, 1, 1, 0]), progress(rank=[8, 8, 8, 0]))
    assert progress(weight=0.0)[0] == 0.0
    assert next_gap(0.7, 0.0, 0.3, CFG) == pytest.approx(0.7)  # nothing arrived: model unchanged


def test_sparsification_keeps_a_fraction_of_the_update():
    assert progress(ratio=0.25)[0] == pytest.approx(progress()[0] * 0.25**0.5)


def test_unbalanced_participation_under_non_iid_adds_bias():
    balanced_floor = progress(weight=[1, 0, 1, 0], labels=SKEWED)[1]
    unbalanced_floor = progress(weight=[1, 1, 0, 0], labels=SKEWED)[1]
    assert balanced_floor == pytest.approx(0.0)
    assert unbalanced_floor == pytest.approx(CFG.heterogeneity_penalty * 0.5)
    # with IID-like data the same participation is unbiased
    assert progress(weight=[1, 1, 0, 0], labels=BALANCED)[1] == pytest.approx(0.0)


def test_mixed_ranks_add_aggregation_noise():
    assert progress(rank=[2, 16, 2, 16])[1] > progress(rank=8)[1] == 0.0


def test_gap_moves_towards_floor_and_can_rise_when_biased():
    assert next_gap(0.05, 1.0, 0.2, CFG) > 0.05


def test_accuracy_gap_inverse():
    acc = accuracy_from_gap(np.array([0.0, 0.5, 1.0]), CFG)
    np.testing.assert_allclose(acc, [0.86, 0.68, 0.5])
    np.testing.assert_allclose(gap_from_accuracy(acc, CFG), [0.0, 0.5, 1.0])
    assert gap_from_accuracy(0.99, CFG) == 0.0 and gap_from_accuracy(0.1, CFG) == 1.0


def test_batched_equals_per_episode():
    rng = np.random.default_rng(0)
    n = 5
    share = rng.dirichlet(np.ones(K), size=n)
    w = rng.uniform(size=(n, K))
    r = rng.choice([0, 2, 4, 8, 16], size=(n, K))
    rho = rng.uniform(0.1, 1, size=(n, K))
    lab = rng.dirichlet(np.ones(2), size=(n, K))
    g, f = round_progress(share, w, r, rho, lab, np.tile(GLOBAL, (n, 1)), CFG)
    for i in range(n):
        gi, fi = round_progress(share[i], w[i], r[i], rho[i], lab[i], GLOBAL, CFG)
        assert g[i] == pytest.approx(gi) and f[i] == pytest.approx(fi)


@pytest.mark.parametrize("labels", [2, 3, 7, 9])
def test_one_episode_equals_its_row_of_a_batch_bit_for_bit(labels):
    """The single env's path (scalars, Python floats for the label terms) and the batched one agree
    exactly."""
    rng = np.random.default_rng(labels)
    n, k = 6, 10
    share = rng.dirichlet(np.ones(k), size=n)
    success = rng.uniform(size=(n, k)) < 0.7
    r = rng.choice([0, 2, 4, 8, 16], size=(n, k))
    rho = rng.uniform(0.1, 1, size=(n, k))
    lab = rng.dirichlet(np.ones(labels), size=(n, k))
    glob = rng.dirichlet(np.ones(labels), size=n)
    g, f = round_progress(share, success, r, rho, lab, glob, CFG)
    for i in range(n):
        gi, fi = round_progress(share[i], success[i], r[i], rho[i], lab[i], glob[i], CFG)
        assert gi == g[i] and fi == f[i]


def test_learner_is_deterministic_and_its_round_is_the_formula():
    """N episodes at once: each is the episode started alone, and a round is round_progress and
    next_gap on the episode's partition."""
    cfg = EnvConfig()
    keys = np.array([3, 5, 3], dtype=np.uint64)
    a, b = SurrogateLearner(cfg, 3), SurrogateLearner(cfg)
    pa = a.start(np.arange(3), keys)
    pb = b.start(np.array([0]), keys[:1])
    np.testing.assert_array_equal(pa.data_sizes[0], pb.data_sizes[0])
    np.testing.assert_array_equal(pa.data_sizes[0], pa.data_sizes[2])
    assert (pa.data_sizes.sum(axis=1) == cfg.learning.num_train_samples).all()
    assert (pa.data_sizes >= cfg.devices.batch_size).all()
    rng = np.random.default_rng(0)
    ranks = rng.choice([0, *cfg.model.ranks], size=(3, 10))
    ok = rng.uniform(size=(3, 10)) < 0.8
    scfg = cfg.learning.surrogate
    progress, floor = round_progress(
        pa.data_share, ok, ranks, None, pa.label_distribution, pa.global_label_distribution, scfg
    )
    report = a.train_round(ranks, np.ones((3, 10)), ok)
    np.testing.assert_array_equal(report.gap, next_gap(np.ones(3), progress, floor, scfg))
    assert b.train_round(ranks[:1], np.ones((1, 10)), ok[:1]).gap[0] == report.gap[0]


def test_dirichlet_partition_skew_depends_on_alpha():
    rng = np.random.default_rng(0)
    cls = np.array([5000, 5000])
    skewed = dirichlet_label_counts(cls, 20, 0.1, rng)
    iid = dirichlet_label_counts(cls, 20, 0.5, rng, iid=True)
    assert skewed.sum(axis=0).tolist() == [5000, 5000] and iid.sum(axis=0).tolist() == [5000, 5000]

    def spread(c):
        p = c[:, 0] / c.sum(axis=1)
        return p.std()

    assert spread(skewed) > 0.3 > 0.05 > spread(iid)


def test_partition_indices_cover_every_sample_once():
    labels = np.random.default_rng(1).integers(0, 3, 1000)
    parts = partition_indices(labels, 7, 0.5, np.random.default_rng(2), min_size=16)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(1000))
    assert min(len(p) for p in parts) >= 16


@pytest.mark.parametrize("with_ratio", [False, True])
def test_arrival_what_ifs_equal_round_progress_on_each_what_if(with_ratio):
    """Device k's arrival set to 1 and to 0, for every k at once, equals round_progress on each
    what-if (rows with nothing scheduled, all arrived and all lost included)."""
    cfg = EnvConfig().learning.surrogate
    rng = np.random.default_rng(0)
    n, k, c = 7, 5, 3
    share = rng.dirichlet(np.ones(k))
    labels, global_mix = rng.dirichlet(np.ones(c), k), rng.dirichlet(np.ones(c))
    weight = rng.uniform(0, 1, (n, k))
    weight[0], weight[1, :2], weight[2] = 0.0, 0.0, 1.0
    rank = rng.choice([0, 2, 4, 8, 16], (n, k)).astype(float)
    rank[3] = 0.0
    rank[4] = 8.0  # equal ranks: no rank-mix floor
    ratio = rng.uniform(0.2, 1.0, (n, k)) if with_ratio else None
    progress, floor = arrival_what_ifs(share, weight, rank, ratio, labels, global_mix, cfg)
    assert progress.shape == floor.shape == (n, 2, k)
    for row, arrived in enumerate((1.0, 0.0)):
        for dev in range(k):
            w = weight.copy()
            w[:, dev] = arrived
            p, f = round_progress(share, w, rank, ratio, labels, global_mix, cfg)
            np.testing.assert_allclose(progress[:, row, dev], p, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(floor[:, row, dev], f, rtol=1e-9, atol=1e-7)
