"""LoRA aggregation, SOFT sparsification and the batched engine's grouping, against hand-written
oracles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fedenv import costs  # noqa: E402
from fedenv.learning.lora import aggregation as agg  # noqa: E402
from fedenv.learning.lora.sparsification import (  # noqa: E402
    component_importance,
    orthogonality_penalty,
    top_components,
)
from fedenv.learning.lora.training import length_groups  # noqa: E402


def _factors(
    rng: np.random.Generator, ranks: list[int], d_in: int = 5, d_out: int = 4
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    a = [torch.from_numpy(rng.normal(size=(r, d_in))) for r in ranks]
    b = [torch.from_numpy(rng.normal(size=(d_out, r))) for r in ranks]
    return a, b


def test_fedavg_equals_numpy_average():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 4))
    w = np.array([10.0, 30.0, 60.0])
    out = agg.fedavg(torch.from_numpy(x), w)
    np.testing.assert_allclose(out.numpy(), np.average(x, axis=0, weights=w), rtol=1e-12)


@pytest.mark.parametrize("weights", [[], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]])
def test_bad_weights_raise(weights):
    with pytest.raises(ValueError, match="aggregation"):
        agg.normalized_weights(weights)


def test_zeropad_averages_each_component_over_the_devices_that_sent_it():
    rng = np.random.default_rng(1)
    big_r, ranks, w = 6, [2, 4, 4], np.array([5.0, 1.0, 2.0])
    a_list, b_list = _factors(rng, ranks)
    padded = [agg.pad_components(a, b, big_r) for a, b in zip(a_list, b_list, strict=True)]
    a = torch.stack([p[0] for p in padded])
    b = torch.stack([p[1] for p in padded])
    sent = torch.zeros((3, big_r), dtype=torch.bool)
    for k, r in enumerate(ranks):
        sent[k, :r] = True
    sent[2, 1] = False  # SOFT: device 2 did not send component 1
    prev_a = torch.from_numpy(rng.normal(size=(big_r, 5)))
    prev_b = torch.from_numpy(rng.normal(size=(4, big_r)))
    new_a, new_b = agg.zeropad_aggregate(a, b, sent, w, prev_a, prev_b)
    for i in range(big_r):  # the oracle, one component at a time
        senders = [k for k in range(3) if ranks[k] > i and not (k == 2 and i == 1)]
        if not senders:
            np.testing.assert_array_equal(new_a[i].numpy(), prev_a[i].numpy())
            np.testing.assert_array_equal(new_b[:, i].numpy(), prev_b[:, i].numpy())
            continue
        ws = np.array([w[k] for k in senders])
        exp_a = sum(w[k] * a_list[k][i].numpy() for k in senders) / ws.sum()
        exp_b = sum(w[k] * b_list[k][:, i].numpy() for k in senders) / ws.sum()
        np.testing.assert_allclose(new_a[i].numpy(), exp_a, rtol=1e-12)
        np.testing.assert_allclose(new_b[:, i].numpy(), exp_b, rtol=1e-12)


def test_zeropad_of_equal_ranks_is_fedavg_of_factors():
    rng = np.random.default_rng(2)
    a_list, b_list = _factors(rng, [3, 3])
    a, b = torch.stack(a_list), torch.stack(b_list)
    new_a, new_b = agg.zeropad_aggregate(
        a, b, torch.ones((2, 3), dtype=torch.bool), [1.0, 3.0], a[0], b[0]
    )
    np.testing.assert_allclose(new_a.numpy(), np.average(a.numpy(), axis=0, weights=[1, 3]))
    np.testing.assert_allclose(new_b.numpy(), np.average(b.numpy(), axis=0, weights=[1, 3]))


def test_stack_is_exactly_the_weighted_sum_of_products():
    rng = np.random.default_rng(3)
    a_list, b_list = _factors(rng, [2, 3, 1])
    w = np.array([1.0, 2.0, 7.0])
    a_s, b_s = agg.stack_aggregate(a_list, b_list, w)
    assert a_s.shape == (6, 5) and b_s.shape == (4, 6)
    oracle = sum(
        wk / w.sum() * (bk.numpy() @ ak.numpy())
        for ak, bk, wk in zip(a_list, b_list, w, strict=True)
    )
    np.testing.assert_allclose((b_s @ a_s).numpy(), oracle, rtol=1e-12)
    np.testing.assert_array_equal(
        a_s[2:5].numpy(), a_list[1].numpy()
    )  # A blocks are stacked unscaled


def test_svd_is_the_best_rank_r_approximation_with_ordered_components():
    rng = np.random.default_rng(4)
    a_list, b_list = _factors(rng, [2, 3], d_in=6, d_out=5)
    w = np.array([3.0, 1.0])
    delta = sum(
        wk / w.sum() * (bk.numpy() @ ak.numpy())
        for ak, bk, wk in zip(a_list, b_list, w, strict=True)
    )
    u, s, vh = np.linalg.svd(delta)
    for rank in (1, 2, 5):
        a, b = agg.svd_aggregate(a_list, b_list, w, rank)
        assert a.shape == (rank, 6) and b.shape == (5, rank)
        k = min(rank, 5)
        best = (u[:, :k] * s[:k]) @ vh[:k]
        np.testing.assert_allclose((b @ a).numpy(), best, atol=1e-10)
        importance = component_importance(a, b).numpy()
        np.testing.assert_allclose(
            importance[:k], s[:k], rtol=1e-10
        )  # balanced split: ||b_i|| ||a_i|| = sigma_i
    a, b = agg.svd_aggregate(a_list, b_list, w, 5)
    np.testing.assert_allclose(
        (b @ a).numpy(), delta, atol=1e-10
    )  # rank 5 >= rank of the sum: exact


def test_importance_and_top_components_match_oracle():
    rng = np.random.default_rng(5)
    a = torch.from_numpy(rng.normal(size=(2, 4, 3)))
    b = torch.from_numpy(rng.normal(size=(2, 5, 4)))
    imp = component_importance(a, b)
    oracle = np.array(
        [[np.linalg.norm(b[k, :, i]) * np.linalg.norm(a[k, i]) for i in range(4)] for k in range(2)]
    )
    np.testing.assert_allclose(imp.numpy(), oracle)
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    mask = top_components(imp, torch.tensor([2, 1]), valid)
    for k, keep in enumerate((2, 1)):
        allowed = [i for i in range(4) if valid[k, i]]
        best = sorted(allowed, key=lambda i: -oracle[k, i])[:keep]
        assert sorted(np.flatnonzero(mask[k].numpy()).tolist()) == sorted(best)
    tie = top_components(torch.ones(4), 2)
    assert tie.tolist() == [True, True, False, False]  # ties: lower index first


def test_soft_keeps_ceil_rho_r_components_like_the_payload_model():
    assert costs.kept_components(
        np.array([8, 8, 8, 16]), np.array([0.5, 0.3, 0.01, 1.0])
    ).tolist() == [4, 3, 1, 16]


def test_orthogonality_penalty_oracle_and_padding():
    rng = np.random.default_rng(6)
    a = torch.from_numpy(rng.normal(size=(3, 7)))
    b = torch.from_numpy(rng.normal(size=(6, 3)))
    exp = np.sum((a.numpy() @ a.numpy().T - np.eye(3)) ** 2) + np.sum(
        (b.numpy().T @ b.numpy() - np.eye(3)) ** 2
    )
    np.testing.assert_allclose(float(orthogonality_penalty(a, b)), exp)
    a_pad, b_pad = agg.pad_components(a, b, 5)
    a_pad.requires_grad_(True)
    b_pad.requires_grad_(True)
    mask = torch.tensor([True, True, True, False, False])
    pen = orthogonality_penalty(a_pad, b_pad, mask)
    np.testing.assert_allclose(float(pen.detach()), exp)
    pen.backward()
    assert float(a_pad.grad[3:].abs().sum()) == 0.0 and float(b_pad.grad[:, 3:].abs().sum()) == 0.0
    q, _ = np.linalg.qr(rng.normal(size=(7, 3)))
    assert (
        float(orthogonality_penalty(torch.from_numpy(q.T), torch.from_numpy(np.eye(6, 3)))) < 1e-20
    )  # orthonormal: 0


def test_length_groups_partition_and_optimality():
    rng = np.random.default_rng(7)
    for _ in range(20):
        g = int(rng.integers(1, 6))
        longest = rng.integers(5, 60, size=g).tolist()
        sizes = [16] * g
        overhead = float(rng.choice([0.0, 64.0, 1e9]))
        groups = length_groups(longest, sizes, overhead)
        assert sorted(i for grp in groups for i in grp) == list(range(g))
        cost = sum(16 * len(grp) * max(longest[i] for i in grp) + overhead for grp in groups)
        best = np.inf  # brute force over every set partition
        for labels in itertools.product(range(g), repeat=g):
            parts = [[i for i in range(g) if labels[i] == c] for c in set(labels)]
            best = min(
                best, sum(16 * len(p) * max(longest[i] for i in p) + overhead for p in parts)
            )
        assert cost == pytest.approx(best)
    assert length_groups([3, 9, 5], [16] * 3, 1e9) == [[0, 2, 1]]


def test_server_step_takes_the_scaled_update_through_the_momentum():
    old, averaged = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 2.0])
    # FedAvg: all the way to the aggregate; momentum 0 before the first step
    new, m = agg.server_step(old, averaged, None, 0.9)
    torch.testing.assert_close(new, averaged)
    # a partial round takes its data share of the update
    new, m = agg.server_step(old, averaged, None, 0.0, scale=0.25)
    torch.testing.assert_close(new, torch.tensor([1.5, -1.0]))
    torch.testing.assert_close(m, torch.tensor([0.5, 1.0]))
    # FedAvgM: m = beta m + scale (averaged - old)
    new, m2 = agg.server_step(new, averaged, m, 0.5, scale=0.5)
    torch.testing.assert_close(m2, 0.5 * m + 0.5 * (averaged - torch.tensor([1.5, -1.0])))
    torch.testing.assert_close(new, torch.tensor([1.5, -1.0]) + m2)
