"""SOFT (paper [C], docs/model.md §5.3, §3.3): near-orthogonal LoRA factors and SVD-free
sparsification.

During local training a regulariser ``lambda (||A A^T - I||_F^2 + ||B^T B - I||_F^2)`` keeps the
rank components near-orthogonal, so that a component's importance ``||b_i|| ||a_i||`` (b_i the
i-th column of B, a_i the i-th row of A) stands in for its singular value without an SVD. A
device then sends, for every LoRA target, its top ``ceil(rho r)`` components by importance
(:func:`fedenv.costs.kept_components`, the same count the payload model charges) with their
indices; the server averages A and B separately over the components received
(:func:`fedenv.learning.lora.aggregation.zeropad_aggregate`).

Functions are vectorised over leading axes (devices), with an optional component mask for
devices whose rank is below the padded rank R.
"""

from __future__ import annotations

import torch

__all__ = ["component_importance", "top_components", "orthogonality_penalty"]


def component_importance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||b_i|| ||a_i|| per component: A (..., r, d_in), B (..., d_out, r) -> (..., r)."""
    return torch.linalg.vector_norm(b, dim=-2) * torch.linalg.vector_norm(a, dim=-1)


def top_components(
    importance: torch.Tensor, keep: int | torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask of the ``keep`` most important components (ties: the lower index wins).

    Args:
        importance: (..., R) scores.
        keep: components to keep, an int or a (...,) tensor.
        valid: optional (..., R) mask of the components a device has (its rank); others are never
            kept.
    """
    score = importance.to(torch.float64)
    if valid is not None:
        score = torch.where(valid, score, torch.full_like(score, -torch.inf))
    order = torch.argsort(-score, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(
        -1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order).contiguous()
    )
    k = torch.as_tensor(keep, device=score.device)
    mask = ranks < k[..., None] if k.ndim else ranks < k
    return mask if valid is None else mask & valid


def orthogonality_penalty(
    a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """||A A^T - I||_F^2 + ||B^T B - I||_F^2 over leading axes -> (...,).

    With ``mask`` (..., R), I is diag(mask): padded components (zero rows of A, zero columns of
    B) then contribute exactly 0 and receive no gradient.
    """
    r = a.shape[-2]
    eye = torch.eye(r, dtype=a.dtype, device=a.device)
    ident = eye if mask is None else torch.diag_embed(mask.to(a.dtype))
    gram_a = a @ a.transpose(-1, -2)
    gram_b = b.transpose(-1, -2) @ b
    return ((gram_a - ident) ** 2).sum(dim=(-1, -2)) + ((gram_b - ident) ** 2).sum(dim=(-1, -2))
