"""Splitting a labelled data set over devices (docs/model.md §5.1): Dirichlet(alpha) label skew or
IID.

Shared by the surrogate (which needs only the per-device label counts) and the lora backend
(which needs the sample indices), so both backends see the same kind of heterogeneity.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

__all__ = ["dirichlet_label_counts", "partition_indices"]


def dirichlet_label_counts(
    class_counts: NDArray[np.int64],
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    iid: bool = False,
    min_size: int = 1,
    max_tries: int = 100,
) -> NDArray[np.int64]:
    """Per-device label counts, shape (K, C), summing to ``class_counts`` over devices.

    Dirichlet: for every class c, the proportions over devices are ~ Dir(alpha 1_K) and the
    n_c samples are split multinomially; draws where a device gets fewer than ``min_size``
    samples are redrawn (Hsu et al. 2019; the usual FL benchmark rule). IID: every sample goes
    to a uniformly random device, so each device's label mix follows the global one.
    """
    per_class, concentration = _setup(
        tuple(np.asarray(class_counts, dtype=np.int64).tolist()), num_devices, alpha, iid, min_size
    )
    counts = np.zeros((num_devices, len(per_class)), dtype=np.int64)
    # the same draws in the same order for every class: Dir(alpha 1_K) proportions (or the
    # uniform ones), then the multinomial split of that class's samples
    for _ in range(max_tries):
        for c, n_c in enumerate(per_class):
            counts[:, c] = rng.multinomial(
                n_c, concentration if iid else rng.dirichlet(concentration)
            )
        if np.minimum.reduce(np.add.reduce(counts, axis=1)) >= min_size:
            return counts
    # Extremely skewed draws: move samples from the largest devices to the starving ones.
    sizes = counts.sum(axis=1)
    for k in np.flatnonzero(sizes < min_size):
        while counts[k].sum() < min_size:
            donor = int(np.argmax(counts.sum(axis=1)))
            c = int(np.argmax(counts[donor]))
            counts[donor, c] -= 1
            counts[k, c] += 1
    return counts


@lru_cache(maxsize=64)
def _setup(
    class_counts: tuple[int, ...], num_devices: int, alpha: float, iid: bool, min_size: int
) -> tuple[tuple[int, ...], NDArray[np.float64]]:
    """Checked arguments of :func:`dirichlet_label_counts`: the per-class counts and the (read-only)
    concentration vector (computed once per setting: a vector env draws thousands of partitions)."""
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if sum(class_counts) < num_devices * min_size:
        raise ValueError(
            f"cannot give {num_devices} devices at least {min_size} samples each from "
            f"{sum(class_counts)} samples"
        )
    concentration = np.full(num_devices, 1.0 / num_devices if iid else alpha)
    concentration.flags.writeable = False
    return class_counts, concentration


def partition_indices(
    labels: NDArray[np.int64],
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    iid: bool = False,
    min_size: int = 1,
) -> list[NDArray[np.int64]]:
    """Sample indices per device, drawn with :func:`dirichlet_label_counts`."""
    labels = np.asarray(labels, dtype=np.int64)
    classes = int(labels.max()) + 1 if labels.size else 0
    class_counts = np.bincount(labels, minlength=classes)
    counts = dirichlet_label_counts(
        class_counts, num_devices, alpha, rng, iid=iid, min_size=min_size
    )
    parts: list[list[NDArray[np.int64]]] = [[] for _ in range(num_devices)]
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.cumsum(counts[:, c])[:-1]
        for k, chunk in enumerate(np.split(idx, bounds)):
            parts[k].append(chunk)
    return [rng.permutation(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
