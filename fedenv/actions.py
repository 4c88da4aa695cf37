"""The canonical action: a Box in [-1, 1] of shape (K, components), and its physical meaning.

| component | physical decision                   | mapping from a in [-1, 1]                     |
|-----------|-------------------------------------|-----------------------------------------------|
| module    | LoRA module m in {0..M} (0 = idle)  | m = min(floor((a + 1) / 2 (M + 1)), M)        |
| schedule  | split: train this round or not      | scheduled iff a > 0                           |
| power     | transmit power p, W                 | p = p_min + (a + 1) / 2 (P_max - p_min)       |
| bandwidth | bandwidth weight w, FDMA share beta | w = (a + 1) / 2; beta_k = w_k / sum_sched w_j |
| ratio     | SOFT sparsification ratio rho       | rho = rho_min + (a + 1) / 2 (1 - rho_min)     |

Paradigms without a component use: power P_max, ratio 1, and (split, soft) the structural rank.
The bandwidth is always fully given to the scheduled devices (more band never costs energy);
if every scheduled weight is 0 they share it equally. Out-of-range finite actions are clipped
to [-1, 1]; NaN/inf raise, and so do a wrong shape (a batched ``(1, K, C)`` action to a single
env included), complex, bool, string or object values: :meth:`ActionCodec.check` runs before
anything changes, so a rejected action leaves the env as it was.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from fedenv.config import EnvConfig

__all__ = ["Decision", "ActionCodec", "bandwidth_shares"]


@dataclass(frozen=True)
class Decision:
    """Physical per-device decisions, arrays of shape (..., K)."""

    module: NDArray[np.int64]
    """Module index in 0..M (0 = not scheduled)."""
    power_w: NDArray[np.float64]
    """Transmit power p_k, W (decoded actions: 0 for idle devices, which send nothing)."""
    share: NDArray[np.float64]
    """FDMA bandwidth share beta_k (0 for idle devices); sums to <= 1."""
    ratio: NDArray[np.float64]
    """Sparsification ratio rho_k in (0, 1]."""


def bandwidth_shares(
    weight: NDArray[np.float64], scheduled: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """FDMA shares beta_k = w_k / sum_j w_j over the scheduled devices (last axis), 0 for the
    others; where every scheduled weight is 0, the scheduled devices share the band equally.

    The one rule of the action codec and of the policies that search over weights (the
    Lyapunov policy).
    """
    w = np.where(scheduled, weight, 0.0)
    # without a positive total weight, every scheduled device weighs 1 (equal shares)
    w = np.where(np.add.reduce(w, axis=-1, keepdims=True) > 0.0, w, scheduled)
    total = np.add.reduce(w, axis=-1, keepdims=True)
    # (no device scheduled: w = 0 stays)
    return np.divide(w, total, out=w, where=total > 0.0)


class _Layout(NamedTuple):
    perm: tuple[int, ...]
    half_span: NDArray[np.float64]
    low: NDArray[np.float64]
    module: NDArray[np.int64]
    power: NDArray[np.float64]
    ratio: NDArray[np.float64]


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
        self._column = {
            name: self.index.get(name)
            for name in ("module", "schedule", "power", "ratio", "bandwidth")
        }
        #: the component that idles a device (``module``, else ``schedule``; None in soft), and
        #: its canonical idle value: the centre of module 0's slot (what :meth:`encode` gives
        #: module 0), or schedule -1
        self.idle_column: int | None = (
            self._column["module"]
            if self._column["module"] is not None
            else self._column["schedule"]
        )
        self.idle_value = (
            0.5 / (self.num_modules + 1) * 2.0 - 1.0 if "module" in self.index else -1.0
        )
        # decode's affine maps x = lo + (a + 1) / 2 (hi - lo), per component
        bounds = {
            "module": (0.0, float(self.num_modules + 1)),
            "schedule": (0.0, 2.0),
            "power": (self.p_min, self.p_max),
            "ratio": (self.rho_min, 1.0),
            "bandwidth": (0.0, 1.0),
        }
        self._low = np.array([bounds[c][0] for c in self.components])
        self._half_span = np.array([0.5 * (bounds[c][1] - bounds[c][0]) for c in self.components])
        self._layouts: dict[tuple[int, ...], _Layout] = {}

    # ----------------------------------------------------------------- decode
    def validate(self, action: object, batch: tuple[int, ...] = ()) -> NDArray[np.float64]:
        """Check as :meth:`check` does; clip to [-1, 1]. Raises ValueError on bad input."""
        a = self.check(action, batch).astype(np.float64)
        np.maximum(a, -1.0, out=a)
        return np.minimum(a, 1.0, out=a)

    def check(self, action: object, batch: tuple[int, ...] = ()) -> NDArray[np.floating]:
        """Check the full shape, ``batch + (K, C)``, the dtype (real numbers) and finiteness
        (ValueError otherwise); the action as a float32/float64 array, not clipped.

        ``batch`` holds the leading axes expected (the vector env's ``(N,)``); a single env's
        action has none, so a batched ``(1, K, C)`` action is rejected there. Integer actions
        are converted to float64; other floating types (float16, longdouble) are checked finite
        in their own precision and clipped to [-1, 1] before the conversion, so a finite value
        out of float64's range is clipped like any other, never turned into inf.
        """
        a = np.asarray(action)
        dtype = a.dtype
        if dtype != np.float32 and dtype != np.float64:
            a = self._as_float(a)
        if a.shape != (batch + self.shape if batch else self.shape):
            lead = f"{batch} x " if batch else ""
            raise ValueError(
                f"action must have shape {batch + self.shape} ({lead}devices x components "
                f"{list(self.components)}), got {a.shape}"
            )
        if not np.isfinite(a).all():
            raise ValueError(
                f"action contains NaN or infinite values; expected finite numbers in [-1, 1]: {a}"
            )
        return a

    @staticmethod
    def _as_float(a: NDArray[np.generic]) -> NDArray[np.float64]:
        """A real-valued action of another dtype as float64 (ValueError for complex, bool,
        string and object values that are not real numbers)."""
        kind = a.dtype.kind
        if kind in "iu":
            return a.astype(np.float64)
        if kind == "f":
            if not np.isfinite(a).all():
                raise ValueError(
                    "action contains NaN or infinite values; expected finite numbers in "
                    f"[-1, 1]: {a}"
                )
            return np.clip(a, -1, 1).astype(np.float64)
        if kind == "O":
            # a list mixing Python numbers, e.g. an int beyond float64's range: each clipped to
            # [-2, 2] while exact (ints), the rest as floats (NaN/inf rejected afterwards)
            items = a.ravel().tolist()
            if all(
                isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) for x in items
            ):
                values = [
                    float(max(-2, min(2, int(x)))) if isinstance(x, numbers.Integral) else float(x)
                    for x in items
                ]
                return np.array(values, dtype=np.float64).reshape(a.shape)
        what = {
            "c": "complex numbers",
            "b": "bools",
            "U": "strings",
            "S": "bytes",
            "O": "non-numeric objects",
        }.get(kind, "values")
        raise ValueError(
            f"action must hold real numbers (a float or int array) in [-1, 1], got {what} "
            f"(dtype {a.dtype})"
        )

    def decode(self, action: NDArray[np.floating]) -> Decision:
        """Canonical action (..., K, C) to a :class:`Decision` (finite; clipped to [-1, 1] here).

        ``decode(check(a))`` and ``decode(validate(a))`` are equal.
        """
        # Every component is affine in h = (a + 1) / 2: x = lo + h (hi - lo). Computed for all
        # components at once as clip(a + 1, 0, 2) (span / 2) + lo, components first (C, ..., K),
        # each contiguous: fast for large batches, and every component below is a contiguous
        # array. In float64 a + 1 rounds the same whether a was clipped to [-1, 1] first or its
        # sum is clipped to [0, 2] after, and halving is exact, so this equals
        # lo + ((clip(a, -1, 1) + 1) / 2) span bit for bit.
        action = np.asarray(action)
        layout = self._layouts.get(action.shape)
        if layout is None:
            layout = self._layout(action.shape)
        x = action.transpose(layout.perm).astype(np.float64, order="C")
        x += 1.0
        np.maximum(x, 0.0, out=x)
        np.minimum(x, 2.0, out=x)
        x *= layout.half_span
        x += layout.low
        col = self._column
        if col["module"] is not None:
            module = x[col["module"]].astype(np.int64)
            np.minimum(module, self.num_modules, out=module)
        elif col["schedule"] is not None:
            module = (action[..., col["schedule"]] > 0.0) * self.structural_module
        else:
            module = layout.module.copy()
        power = x[col["power"]] if col["power"] is not None else layout.power.copy()
        ratio = x[col["ratio"]] if col["ratio"] is not None else layout.ratio.copy()
        # idle devices get no band and transmit with no power (the round's physics is the same:
        # an idle device sends nothing)
        idle = np.equal(module, 0)
        np.copyto(power, 0.0, where=idle)
        share = bandwidth_shares(x[col["bandwidth"]], np.logical_not(idle))
        return Decision(module=module, power_w=power, share=share, ratio=ratio)

    def _layout(self, shape: tuple[int, ...]) -> _Layout:
        """Cached per action shape (..., K, C): the axis order moving components first, span / 2
        and low of each component shaped like the moved array, and the values of the components
        the paradigm does not have, shaped (..., K) (read-only; decode copies them)."""
        ndim = len(shape)
        perm = (ndim - 1, *range(ndim - 1))
        moved = (shape[-1], *shape[:-1])
        column = (-1,) + (1,) * (ndim - 1)
        lead = shape[:-1]
        layout = _Layout(
            perm=perm,
            half_span=np.ascontiguousarray(np.broadcast_to(self._half_span.reshape(column), moved)),
            low=np.ascontiguousarray(np.broadcast_to(self._low.reshape(column), moved)),
            module=np.full(lead, self.structural_module, dtype=np.int64),
            power=np.full(lead, self.p_max),
            ratio=np.ones(lead),
        )
        for array in (layout.half_span, layout.low, layout.module, layout.power, layout.ratio):
            array.flags.writeable = False
        if len(self._layouts) > 16:
            self._layouts.clear()
        self._layouts[shape] = layout
        return layout

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
            out[..., idx["ratio"]] = (np.asarray(decision.ratio) - self.rho_min) / (
                1.0 - self.rho_min
            ) * 2.0 - 1.0
        share = np.asarray(decision.share, dtype=np.float64) * (module > 0)
        top = share.max(axis=-1, keepdims=True)
        weight = np.where(top > 0.0, share / np.where(top > 0.0, top, 1.0), 1.0)
        out[..., idx["bandwidth"]] = weight * 2.0 - 1.0
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def ranks(self, module: NDArray[np.int64]) -> NDArray[np.int64]:
        return self.rank_of_module[module]
