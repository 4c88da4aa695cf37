"""Server-side aggregation of LoRA factors (docs/model.md §5.3), as pure functions over tensors.

One LoRA target at a time: a device's update is ``A`` (r x d_in) and ``B`` (d_out x r), its
weight is its data size, and only devices whose upload arrived are passed in. Three rules for
heterogeneous ranks:

* :func:`zeropad_aggregate` (default, HetLoRA-style): factors zero-padded to the global rank R;
  each rank component i is the weighted average over the devices that *sent* component i, and
  keeps its previous global value if none did. With SOFT, devices send a subset of their
  components, and A and B are averaged separately over the components received.
* :func:`stack_aggregate` (FLoRA): the factors are stacked, ``B' = [w_1 B_1, ..., w_n B_n]`` and
  ``A' = [A_1; ...; A_n]``, so ``B' A' = sum_k w_k B_k A_k`` exactly, with rank sum_k r_k.
* :func:`svd_aggregate` (FlexLoRA): the weighted sum ``sum_k w_k B_k A_k`` re-factorised by SVD
  and truncated to rank R, ``B = U_R S_R^(1/2)``, ``A = S_R^(1/2) V_R^T``; components come
  ordered by singular value, so the first r are the best rank-r approximation a rank-r
  device receives.

The classification head is averaged with :func:`fedavg`. Weights are normalised to sum to 1
over the devices that arrived. The server step, :func:`server_step`, then moves each global
tensor by a fraction of that update (the arrived devices' share of all the data: devices that
did not arrive count as a zero update) and, optionally, by the momentum of the updates
(FedAvgM, Hsu et al. 2019).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

Weights = Sequence[float] | torch.Tensor | NDArray[np.float64]
"""Per-device aggregation weights (data sizes); normalised to sum to 1."""

__all__ = [
    "Weights",
    "normalized_weights",
    "fedavg",
    "zeropad_aggregate",
    "stack_aggregate",
    "svd_aggregate",
    "pad_components",
    "server_step",
]


def normalized_weights(weights: Weights) -> torch.Tensor:
    """Weights / their sum, float64; raises on an empty, negative or all-zero weight vector."""
    w = torch.as_tensor(
        np.asarray(weights, dtype=np.float64) if not isinstance(weights, torch.Tensor) else weights,
        dtype=torch.float64,
    ).reshape(-1)
    if w.numel() == 0:
        raise ValueError("aggregation needs at least one update")
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()) or float(w.sum()) <= 0.0:
        raise ValueError(
            f"aggregation weights must be finite, >= 0 and not all zero, got {w.tolist()}"
        )
    return w / w.sum()


def fedavg(tensors: torch.Tensor, weights: Weights) -> torch.Tensor:
    """Weighted average over the first axis: sum_k w_k x_k / sum_k w_k (FedAvg)."""
    w = normalized_weights(weights).to(tensors.device)
    out = torch.tensordot(w, tensors.to(torch.float64), dims=1)
    return out.to(tensors.dtype)


def pad_components(
    a: torch.Tensor, b: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad A (r x d_in) and B (d_out x r) to ``rank`` components."""
    r = a.shape[0]
    if r > rank:
        raise ValueError(f"cannot pad rank {r} factors to the smaller rank {rank}")
    a_pad = torch.zeros((rank, a.shape[1]), dtype=a.dtype, device=a.device)
    b_pad = torch.zeros((b.shape[0], rank), dtype=b.dtype, device=b.device)
    a_pad[:r] = a
    b_pad[:, :r] = b
    return a_pad, b_pad


def zeropad_aggregate(
    a: torch.Tensor,
    b: torch.Tensor,
    sent: torch.Tensor,
    weights: Weights,
    previous_a: torch.Tensor,
    previous_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-component weighted average over the devices that sent each component.

    Args:
        a: padded A factors, shape (n, R, d_in).
        b: padded B factors, shape (n, d_out, R).
        sent: (n, R) bool, whether device k sent component i (its first r_k, or SOFT's top set).
        weights: (n,) data sizes.
        previous_a, previous_b: the global factors (R, d_in) and (d_out, R), kept for components
            that nobody sent.

    Returns:
        (A, B): A[i] = sum_k w_k s_ki A_k[i] / sum_k w_k s_ki, likewise B[:, i], and the previous
        value where sum_k s_ki = 0.
    """
    w = normalized_weights(weights).to(a.device)
    s = sent.to(torch.float64) * w[:, None]  # (n, R)
    total = s.sum(dim=0)  # (R,)
    coef = torch.where(total > 0, s / torch.where(total > 0, total, 1.0), 0.0)
    new_a = torch.einsum("ki,kid->id", coef, a.to(torch.float64))
    new_b = torch.einsum("ki,kdi->di", coef, b.to(torch.float64))
    keep = total <= 0
    new_a[keep] = previous_a.to(torch.float64)[keep]
    new_b[:, keep] = previous_b.to(torch.float64)[:, keep]
    return new_a.to(a.dtype), new_b.to(b.dtype)


def stack_aggregate(
    a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], weights: Weights
) -> tuple[torch.Tensor, torch.Tensor]:
    """FLoRA stacking: ``A' = [A_1; ...; A_n]`` (sum r_k x d_in),
    ``B' = [w_1 B_1, ..., w_n B_n]``."""
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} A factors and {len(b)} B factors")
    w = normalized_weights(weights)
    stacked_a = torch.cat(list(a), dim=0)
    stacked_b = torch.cat(
        [(bk.to(torch.float64) * float(wk)).to(bk.dtype) for bk, wk in zip(b, w, strict=True)],
        dim=1,
    )
    return stacked_a, stacked_b


def svd_aggregate(
    a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], weights: Weights, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexLoRA: SVD of ``sum_k w_k B_k A_k`` truncated to ``rank`` (zero components beyond its
    rank)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"got {len(a)} A factors and {len(b)} B factors")
    w = normalized_weights(weights)
    delta = sum(
        float(wk) * (bk.to(torch.float64) @ ak.to(torch.float64))
        for ak, bk, wk in zip(a, b, w, strict=True)
    )
    assert isinstance(delta, torch.Tensor)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    new_a = torch.zeros((rank, delta.shape[1]), dtype=torch.float64, device=delta.device)
    new_b = torch.zeros((delta.shape[0], rank), dtype=torch.float64, device=delta.device)
    new_a[:k] = root[:, None] * vh[:k]
    new_b[:, :k] = u[:, :k] * root[None, :]
    return new_a.to(a[0].dtype), new_b.to(b[0].dtype)


def server_step(
    old: torch.Tensor,
    averaged: torch.Tensor,
    buffer: torch.Tensor | None,
    beta: float,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's step for one tensor: ``m = beta m + scale (averaged - old)``, new value
    ``old + m``.

    ``buffer`` is the previous ``m`` (None before the first aggregation, i.e. ``m = 0``).
    ``scale`` is the fraction of the aggregated update taken (the arrived devices' share of the
    data; 1 takes all of it). With ``beta = 0`` and ``scale = 1`` the new value is ``averaged``
    (plain FedAvg over the arrivals). Returns ``(new value, m)``.
    """
    delta = scale * (averaged - old)  # exact for scale = 1
    m = delta if buffer is None else beta * buffer + delta
    return old + m, m
