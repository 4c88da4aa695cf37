"""The canonical action: a Box in [-1, 1] of shape (K, components), and its physical meaning.

| component  | physical decision                       | mapping from a in [-1, 1]                          |
|------------|-----------------------------------------|----------------------------------------------------|
| module     | LoRA module m in {0..M} (0 = idle)      | m = min(floor((a + 1) / 2 (M + 1)), M)             |
| schedule   | split: train this round or not          | scheduled iff a > 0                                |
| power      | transmit power p, W                     | p = p_min + (a + 1) / 2 (P_max - p_min)            |
| bandwidth  | bandwidth weight w, FDMA share beta     | w = (a + 1) / 2; beta_k = w_k / sum_sched w_j      |
| ratio      | SOFT sparsification ratio rho           | rho = rho_min + (a + 1) / 2 (1 - rho_min)          |

Paradigms without a component use: power P_max, ratio 1, and (split, soft) the structural rank.
The bandwidth is always fully given to the scheduled devices (more band never costs energy);
if every scheduled weight is 0 they share it equally. Out-of-range finite actions are clipped
to [-1, 1]; NaN/inf raise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedenv.config import EnvConfig

__all__ = ["Decision", "ActionCodec"]


@dataclass(frozen=True)
class Decision:
    """Physical per-device decisions, arrays of shape (..., K)."""

    module: NDArray[np.int64]
    """Module index in 0..M (0 = not scheduled)."""
    power_w: NDArray[np.float64]
    share: NDArray[np.float64]
    """FDMA bandwidth share beta_k (0 for idle devices); sums to <= 1."""
    ratio: NDArray[np.float64]
    """Sparsification ratio rho_k in (0, 1]."""


class ActionCodec:
    """Maps canonical actions to :class:`Decision` and back, for one config."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.components = config.action_components
        self.index = {name: i for i, name in enumerate(self.components)}
        self.num_devices = config.devices.num_devices
        self.num_modules = config.model.num_modules
        self.shape = (self.num_devices, len(self.components))
        ch = config.channel
        self.p_min, self.p_max = ch.min_tx_power_w, ch.max_tx_power_w
        self.rho_min = config.min_sparsity_ratio
        #: rank of each module index, module 0 = rank 0
        self.rank_of_module = np.array((0, *config.model.ranks), dtype=np.int64)
        self.structural_module = config.model.ranks.index(config.structural_rank) + 1

    # ----------------------------------------------------------------- decode
    def validate(self, action: object) -> NDArray[np.float64]:
        """Check shape and finiteness; clip to [-1, 1]. Raises ValueError on bad input."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape[-2:] != self.shape:
            raise ValueError(
                f"action must have shape {self.shape} (devices x components {list(self.components)}), got {a.shape}"
            )
        if not np.isfinite(a).all():
            raise ValueError(f"action contains NaN or infinite values; expected finite numbers in [-1, 1]: {a}")
        return np.clip(a, -1.0, 1.0)

    def decode(self, action: NDArray[np.float64]) -> Decision:
        """Canonical action (..., K, C) in [-1, 1] (already validated) to a :class:`Decision`."""
        a = action
        lead = a.shape[:-1]
        idx = self.index
        if "module" in idx:
            module = np.minimum(((a[..., idx["module"]] + 1.0) * (0.5 * (self.num_modules + 1))).astype(np.int64), self.num_modules)
        elif "schedule" in idx:
            module = np.where(a[..., idx["schedule"]] > 0.0, self.structural_module, 0)
        else:
            module = np.full(lead, self.structural_module, dtype=np.int64)
        if "power" in idx:
            power = self.p_min + (a[..., idx["power"]] + 1.0) * (0.5 * (self.p_max - self.p_min))
        else:
            power = np.full(lead, self.p_max)
        if "ratio" in idx:
            ratio = self.rho_min + (a[..., idx["ratio"]] + 1.0) * (0.5 * (1.0 - self.rho_min))
        else:
            ratio = np.ones(lead)
        scheduled = module > 0
        w = (a[..., idx["bandwidth"]] + 1.0) * 0.5 * scheduled
        total = w.sum(axis=-1, keepdims=True)
        n_sched = scheduled.sum(axis=-1, keepdims=True)
        equal = scheduled / np.maximum(n_sched, 1)
        share = np.where(total > 0.0, w / np.where(total > 0.0, total, 1.0), equal)
        return Decision(module=module, power_w=power, share=share, ratio=ratio)

    # ----------------------------------------------------------------- encode
    def encode(self, decision: Decision) -> NDArray[np.float32]:
        """A canonical action that decodes to ``decision`` (bandwidth renormalised to sum to 1)."""
        lead = np.shape(decision.module)
        out = np.zeros(lead + (len(self.components),), dtype=np.float64)
        idx = self.index
        module = np.asarray(decision.module)
        if "module" in idx:
            out[..., idx["module"]] = (module + 0.5) / (self.num_modules + 1) * 2.0 - 1.0
        if "schedule" in idx:
            out[..., idx["schedule"]] = np.where(module > 0, 1.0, -1.0)
        if "power" in idx:
            span = self.p_max - self.p_min
            out[..., idx["power"]] = (np.asarray(decision.power_w) - self.p_min) / span * 2.0 - 1.0
        if "ratio" in idx:
            out[..., idx["ratio"]] = (np.asarray(decision.ratio) - self.rho_min) / (1.0 - self.rho_min) * 2.0 - 1.0
        share = np.asarray(decision.share, dtype=np.float64) * (module > 0)
        top = share.max(axis=-1, keepdims=True)
        weight = np.where(top > 0.0, share / np.where(top > 0.0, top, 1.0), 1.0)
        out[..., idx["bandwidth"]] = weight * 2.0 - 1.0
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def ranks(self, module: NDArray[np.int64]) -> NDArray[np.int64]:
        return self.rank_of_module[module]
