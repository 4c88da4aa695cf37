"""Local LoRA training of the scheduled devices: a batched engine and the per-device peft reference.

Both engines implement the same math (docs/model.md §5.3, issue "local training"): device k starts
from
the global adapter truncated to its rank r_k (the first r_k components of every target) and
the global head, and runs tau steps of its optimiser (``learning.lora.optimizer``: SGD or AdamW,
fresh every round) on its own mini-batches of n_b examples, minimising
the cross-entropy (+ lambda times the SOFT orthogonality penalty when lambda > 0). The frozen
backbone runs in eval mode (no dropout), which makes local training deterministic; only the
LoRA input sees ``lora_dropout``.

* :class:`BatchedTrainer` (``trainer="batched"``, default): every device's LoRA factors are
  stacked along a device axis, zero-padded to the largest rank of the pass, and all devices
  train in one forward/backward over the shared frozen base (``torch.bmm`` per target), each
  device's loss touching only its own factors. A padded component has a zero row in A and a zero
  column in B, so its gradient, its optimiser state and its value stay exactly 0: the zero padding
  *is* the rank mask. Devices are grouped into passes of at most ``max_sequences_per_pass``
  sequences, so memory grows with the adapters, not with K copies of the model or K batches.
* :class:`SequentialTrainer` (``trainer="sequential"``): the straightforward loop, one peft
  ``LoraConfig(r, lora_alpha=2r)`` model per device; the reference the batched engine is
  tested against.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from fedenv.config import LoraBackendConfig
from fedenv.learning.lora.data import EncodedSplit
from fedenv.learning.lora.model import LORA_ALPHA_PER_RANK, ModelSpec
from fedenv.learning.lora.sparsification import orthogonality_penalty

__all__ = [
    "GlobalAdapter",
    "DeviceJob",
    "LocalUpdate",
    "TrainSettings",
    "BatchedTrainer",
    "SequentialTrainer",
    "make_trainer",
    "length_groups",
]

SCALING = float(LORA_ALPHA_PER_RANK)


@dataclass
class GlobalAdapter:
    """The server's model state: LoRA factors per target (rank R) and the task head."""

    a: dict[str, torch.Tensor]
    """Target path -> A, shape (R, d_in)."""
    b: dict[str, torch.Tensor]
    """Target path -> B, shape (d_out, R)."""
    head: dict[str, torch.Tensor]
    """Head parameter name -> tensor."""

    @property
    def rank(self) -> int:
        return int(next(iter(self.a.values())).shape[0])

    def truncated(self, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The first ``rank`` components of every target (what a rank-r device receives)."""
        return {n: a[:rank] for n, a in self.a.items()}, {n: b[:, :rank] for n, b in self.b.items()}

    def clone(self) -> GlobalAdapter:
        return GlobalAdapter(
            a={n: t.clone() for n, t in self.a.items()},
            b={n: t.clone() for n, t in self.b.items()},
            head={n: t.clone() for n, t in self.head.items()},
        )


@dataclass(frozen=True)
class DeviceJob:
    """One device's local training: its rank and its tau mini-batches (indices into the train
    split)."""

    device: int
    rank: int
    batches: tuple[NDArray[np.int64], ...]
    dropout_seed: int = 0


@dataclass
class LocalUpdate:
    """What a device produced: its trained factors (rank r_k) and head, and its mean training
    loss."""

    device: int
    rank: int
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    train_loss: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSettings:
    """Local training settings; the defaults are those of ``learning.lora`` (LoraBackendConfig)."""

    learning_rate: float = LoraBackendConfig.learning_rate
    weight_decay: float = LoraBackendConfig.weight_decay
    optimizer: str = LoraBackendConfig.optimizer
    """``sgd`` or ``adamw`` (``learning.lora.optimizer``)."""
    lora_dropout: float = LoraBackendConfig.lora_dropout
    orthogonality_weight: float = LoraBackendConfig.orthogonality_weight
    max_sequences_per_pass: int = LoraBackendConfig.max_sequences_per_pass
    eval_batch_size: int = 128
    max_seq_len: int = 512
    """Longest tokenised example (the batched engine's dropout masks are drawn at this length)."""


def make_optimizer(
    params: Sequence[torch.Tensor], settings: TrainSettings
) -> torch.optim.Optimizer:
    """A device's optimiser for one round: SGD or AdamW (decoupled weight decay), fresh state."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
    raise ValueError(f"learning.lora.optimizer must be sgd or adamw, got {settings.optimizer!r}")


def _model_inputs(
    model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    return {n: batch[n].to(device) for n in names}


def _get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class _TrainerBase:
    """Shared parts: the frozen base, its residual (merged FLoRA updates), evaluation loop."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        settings: TrainSettings,
        train: EncodedSplit,
        pad_id: int,
        device: torch.device,
    ) -> None:
        self.model = model.to(device)
        self.spec = spec
        self.settings = settings
        self.train_split = train
        self.pad_id = pad_id
        self.device = device
        self._w0: dict[str, torch.Tensor] = {}

    # --- the frozen base: W = W0 + residual (FLoRA merges its stacked updates there) ---
    def _target_linear(self, path: str) -> nn.Linear:
        raise NotImplementedError

    def set_residual(self, residual: dict[str, torch.Tensor] | None) -> None:
        """Set every target's frozen weight to W0 + residual (None: back to W0)."""
        if not self._w0:
            if residual is None:
                return
            self._w0 = {
                n: self._target_linear(n).weight.detach().clone() for n in self.spec.targets
            }
        for name in self.spec.targets:
            w = (
                self._w0[name]
                if residual is None
                else self._w0[name] + residual[name].to(self.device)
            )
            self._target_linear(name).weight.data.copy_(w)

    # --- evaluation ---
    def _logits(self, adapter: GlobalAdapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, adapter: GlobalAdapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the global model on a collated batch."""
        with torch.inference_mode():
            return self._logits(adapter, batch).float().cpu()

    def evaluate(
        self, adapter: GlobalAdapter, split: EncodedSplit, indices: NDArray[np.int64] | None = None
    ) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of the global model on ``split`` (or a subset)."""
        idx = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
        order = idx[np.argsort(split.lengths[idx], kind="stable")]  # length-sorted: little padding
        correct, loss_sum = 0, 0.0
        bs = self.settings.eval_batch_size
        with torch.inference_mode():
            self._begin_eval(adapter)
            try:
                for start in range(0, order.size, bs):
                    batch = split.collate(order[start : start + bs], self.pad_id)
                    logits = self._forward_eval(batch).float()
                    labels = batch["labels"].to(logits.device)
                    loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                    correct += int((logits.argmax(dim=-1) == labels).sum())
            finally:
                self._end_eval()
        n = max(int(order.size), 1)
        return correct / n, loss_sum / n

    def _begin_eval(self, adapter: GlobalAdapter) -> None:
        raise NotImplementedError

    def _forward_eval(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _end_eval(self) -> None:
        pass

    def _step_batches(self, jobs: Sequence[DeviceJob]) -> int:
        steps = {len(j.batches) for j in jobs}
        if len(steps) != 1:
            raise ValueError(
                f"every device must run the same number of local steps, got {sorted(steps)}"
            )
        return steps.pop()


# ----------------------------------------------------------------------------- batched engine
class _BatchedLoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus per-device LoRA: y_g = W x_g + b + s B_g A_g x_g for device g.

    The input's first axis is device-major (G devices x n examples); ``a`` is (G, R, d_in) and
    ``b`` (G, d_out, R). With ``a`` unset it is the plain base layer.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.a: torch.Tensor | None = None
        self.b: torch.Tensor | None = None
        self.dropout = 0.0
        self.generators: Sequence[torch.Generator] = ()
        self.max_len = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.a is None or self.b is None:
            return y
        g = self.a.shape[0]
        xs = x.reshape(g, -1, x.shape[-1])
        if self.dropout > 0.0:
            # One generator per device, drawing a fixed (n, max_len, d) mask per call: a device's
            # dropout never depends on which devices share its pass or on their padding.
            n, length = x.shape[0] // g, x.shape[1]
            keep = torch.stack(
                [
                    torch.empty((n, self.max_len, x.shape[-1]), device=x.device).bernoulli_(
                        1.0 - self.dropout, generator=gen
                    )[:, :length]
                    for gen in self.generators
                ]
            ).reshape(xs.shape)
            xs = xs * keep / (1.0 - self.dropout)
        delta = torch.bmm(torch.bmm(xs, self.a.transpose(1, 2)), self.b.transpose(1, 2))
        return y + SCALING * delta.reshape(y.shape)


class _BatchedLinear(nn.Module):
    """A head ``nn.Linear`` with one weight per device: y_g = W_g x_g + b_g."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return self.base(x)
        g = self.weight.shape[0]
        xs = x.reshape(g, -1, x.shape[-1])
        y = torch.bmm(xs, self.weight.transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias[:, None, :]
        return y.reshape(*x.shape[:-1], self.weight.shape[1])


#: Fixed cost of one forward/backward call, in padded tokens: on a CPU compute scales with the
#: padded tokens, so a step splits devices into length groups; on a GPU padding is almost free
#: and launches dominate, so every device of a pass goes in one call.
_CALL_OVERHEAD_TOKENS = {"cpu": 64, "cuda": 1 << 40}


def length_groups(
    longest: Sequence[int], sizes: Sequence[int], overhead_tokens: float
) -> list[list[int]]:
    """Split one step's devices into calls minimising padded tokens + ``overhead_tokens`` per call.

    Devices are sorted by their batch's longest example; a call pads every example to the
    longest one it holds, costing ``sum(sizes) * max(longest) + overhead_tokens``. Contiguous
    groups of the sorted order are optimal for this cost; an O(G^2) dynamic programme finds them.
    The result is exact whatever the grouping: devices never share parameters or losses.
    """
    order = sorted(range(len(longest)), key=lambda i: (longest[i], i))
    n = len(order)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        seqs = 0
        for i in range(j, 0, -1):  # group = order[i-1 : j], its longest is order[j-1]
            seqs += sizes[order[i - 1]]
            cost = best[i - 1] + seqs * longest[order[j - 1]] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    groups = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


class BatchedTrainer(_TrainerBase):
    """All devices of a pass in one forward/backward over the shared frozen base (module
    docstring)."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        settings: TrainSettings,
        train: EncodedSplit,
        pad_id: int,
        device: torch.device,
    ) -> None:
        super().__init__(model, spec, settings, train, pad_id, device)
        self._lora: dict[str, _BatchedLoraLinear] = {}
        for path in spec.targets:
            base = _get_module(self.model, path)
            assert isinstance(base, nn.Linear)
            wrapper = _BatchedLoraLinear(base)
            _set_module(self.model, path, wrapper)
            self._lora[path] = wrapper
        # The head: every parameter must belong to an nn.Linear we can give a device axis.
        self._head: dict[str, tuple[_BatchedLinear, str]] = {}
        covered: set[str] = set()
        for top in spec.head_modules:
            for sub, module in list(self.model.get_submodule(top).named_modules()):
                if isinstance(module, nn.Linear):
                    path = f"{top}.{sub}" if sub else top
                    wrapper_h = _BatchedLinear(module)
                    _set_module(self.model, path, wrapper_h)
                    self._head[f"{path}.weight"] = (wrapper_h, "weight")
                    covered.add(f"{path}.weight")
                    if module.bias is not None:
                        self._head[f"{path}.bias"] = (wrapper_h, "bias")
                        covered.add(f"{path}.bias")
        unsupported = sorted(set(spec.head) - covered)
        if unsupported:
            raise ValueError(
                "the batched trainer needs a task head made of nn.Linear layers; "
                f"{unsupported} are not; "
                "use learning.lora.trainer='sequential'"
            )

    def _target_linear(self, path: str) -> nn.Linear:
        return self._lora[path].base

    def _bind(
        self,
        a: dict[str, torch.Tensor] | None,
        b: dict[str, torch.Tensor] | None,
        head: dict[str, torch.Tensor] | None,
        dropout: float = 0.0,
        generators: Sequence[torch.Generator] = (),
    ) -> None:
        for path, w in self._lora.items():
            w.a = None if a is None else a[path]
            w.b = None if b is None else b[path]
            w.dropout = dropout
            w.generators = generators
            w.max_len = self.settings.max_seq_len
        for name, (module, attr) in self._head.items():
            setattr(module, attr, None if head is None else head[name])

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**_model_inputs(self.model, batch, self.device))
        return out.logits

    # --- evaluation (the global adapter as a single "device") ---
    def _begin_eval(self, adapter: GlobalAdapter) -> None:
        dev = self.device
        self._bind(
            {n: t.to(dev)[None] for n, t in adapter.a.items()},
            {n: t.to(dev)[None] for n, t in adapter.b.items()},
            {n: t.to(dev)[None] for n, t in adapter.head.items()},
        )

    def _forward_eval(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward(batch)

    def _end_eval(self) -> None:
        self._bind(None, None, None)

    def _logits(self, adapter: GlobalAdapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self._begin_eval(adapter)
        try:
            return self._forward(batch)
        finally:
            self._end_eval()

    # --- training ---
    def passes(self, jobs: Sequence[DeviceJob]) -> list[list[DeviceJob]]:
        """Group devices into passes of at most ``max_sequences_per_pass`` sequences (at least one
        device)."""
        out: list[list[DeviceJob]] = []
        current: list[DeviceJob] = []
        seqs = 0
        cap = self.settings.max_sequences_per_pass
        for job in jobs:
            n = int(job.batches[0].size)
            if current and seqs + n > cap:
                out.append(current)
                current, seqs = [], 0
            current.append(job)
            seqs += n
        if current:
            out.append(current)
        return out

    def train(self, adapter: GlobalAdapter, jobs: Sequence[DeviceJob]) -> list[LocalUpdate]:
        """Local training of every job from ``adapter``; updates in job order."""
        if not jobs:
            return []
        self._step_batches(jobs)
        updates: list[LocalUpdate] = []
        for group in self.passes(jobs):
            updates.extend(self._train_pass(adapter, group))
        return updates

    def _train_pass(self, adapter: GlobalAdapter, jobs: Sequence[DeviceJob]) -> list[LocalUpdate]:
        st, dev = self.settings, self.device
        g = len(jobs)
        ranks = [j.rank for j in jobs]
        r_pass = max(ranks)
        mask = torch.zeros((g, r_pass), dtype=torch.bool, device=dev)
        for i, r in enumerate(ranks):
            mask[i, :r] = True
        a: dict[str, torch.Tensor] = {}
        b: dict[str, torch.Tensor] = {}
        for path in self.spec.targets:
            ga, gb = adapter.a[path].to(dev), adapter.b[path].to(dev)
            ta = torch.zeros((g, r_pass, ga.shape[1]), device=dev)
            tb = torch.zeros((g, gb.shape[0], r_pass), device=dev)
            for i, r in enumerate(ranks):
                ta[i, :r] = ga[:r]
                tb[i, :, :r] = gb[:, :r]
            a[path] = ta.requires_grad_(True)
            b[path] = tb.requires_grad_(True)
        head = {
            n: adapter.head[n]
            .to(dev)[None]
            .repeat(g, *([1] * adapter.head[n].ndim))
            .requires_grad_(True)
            for n in self.spec.head
        }
        params = [*a.values(), *b.values(), *head.values()]
        opt = make_optimizer(params, st)
        generators = []
        if st.lora_dropout > 0.0:
            for job in jobs:
                generators.append(torch.Generator(device=dev))
                generators[-1].manual_seed(int(job.dropout_seed) % (2**63))
        steps = len(jobs[0].batches)
        losses = torch.zeros(g, dtype=torch.float64)
        lengths = self.train_split.lengths
        overhead = _CALL_OVERHEAD_TOKENS.get(dev.type, _CALL_OVERHEAD_TOKENS["cpu"])
        try:
            for s in range(steps):
                opt.zero_grad(set_to_none=True)
                longest = [int(lengths[j.batches[s]].max()) for j in jobs]
                for group in length_groups(
                    longest, [int(j.batches[s].size) for j in jobs], overhead
                ):
                    group = list(range(g)) if len(group) == g else group
                    sel = torch.as_tensor(group, device=dev)
                    whole = group == list(range(g))
                    self._bind(
                        a if whole else {p: t[sel] for p, t in a.items()},
                        b if whole else {p: t[sel] for p, t in b.items()},
                        head if whole else {n: t[sel] for n, t in head.items()},
                        st.lora_dropout,
                        [generators[i] for i in group] if generators else (),
                    )
                    idx = np.concatenate([jobs[i].batches[s] for i in group])
                    batch = self.train_split.collate(idx, self.pad_id)
                    logits = self._forward(batch)
                    labels = batch["labels"].to(dev)
                    per_example = F.cross_entropy(logits.float(), labels, reduction="none")
                    per_device = per_example.reshape(len(group), -1).mean(dim=1)
                    per_device.sum().backward()
                    losses[group] += per_device.detach().double().cpu()
                if st.orthogonality_weight > 0.0:
                    reg = sum(orthogonality_penalty(a[p], b[p], mask) for p in self.spec.targets)
                    assert isinstance(reg, torch.Tensor)
                    (st.orthogonality_weight * reg.sum()).backward()
                opt.step()
        finally:
            self._bind(None, None, None)
        out = []
        for i, job in enumerate(jobs):
            r = job.rank
            out.append(
                LocalUpdate(
                    device=job.device,
                    rank=r,
                    a={p: a[p][i, :r].detach().cpu().clone() for p in self.spec.targets},
                    b={p: b[p][i, :, :r].detach().cpu().clone() for p in self.spec.targets},
                    head={n: head[n][i].detach().cpu().clone() for n in self.spec.head},
                    train_loss=float(losses[i]) / steps,
                )
            )
        return out


# -------------------------------------------------------------------------- peft reference
def _peft_key(path: str, which: str) -> str:
    return f"base_model.model.{path}.{which}.weight"


class SequentialTrainer(_TrainerBase):
    """The per-device reference: a peft ``LoraConfig(r=r_k, lora_alpha=2 r_k)`` model per device."""

    def _target_linear(self, path: str) -> nn.Linear:
        module = _get_module(self.model, path)
        assert isinstance(module, nn.Linear)
        return module

    def _peft(
        self,
        rank: int,
        a: dict[str, torch.Tensor],
        b: dict[str, torch.Tensor],
        head: dict[str, torch.Tensor],
    ) -> Any:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        cfg = LoraConfig(
            r=rank,
            lora_alpha=LORA_ALPHA_PER_RANK * rank,
            lora_dropout=self.settings.lora_dropout,
            target_modules=list(self.spec.targets),
            modules_to_save=list(self.spec.head_modules),
            bias="none",
        )
        with warnings.catch_warnings():  # transformers 5 deprecation noise from inside peft
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(self.model, cfg)
        state = {}
        for path in self.spec.targets:
            state[_peft_key(path, "lora_A")] = a[path]
            state[_peft_key(path, "lora_B")] = b[path]
        for name, t in head.items():
            state[f"base_model.model.{name}"] = t
        result = set_peft_model_state_dict(
            peft_model, {k: v.to(self.device) for k, v in state.items()}
        )
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"peft did not accept the adapter keys {unexpected[:4]}")
        peft_model.eval()  # frozen backbone without dropout, as in the batched engine
        return peft_model

    def _release(self, peft_model: Any) -> None:
        self.model = peft_model.unload()

    def _lora_modules(self, peft_model: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for path in self.spec.targets:
            layer = peft_model.base_model.model.get_submodule(path)
            out[path] = (layer.lora_A["default"].weight, layer.lora_B["default"].weight)
        return out

    def train(self, adapter: GlobalAdapter, jobs: Sequence[DeviceJob]) -> list[LocalUpdate]:
        from peft import get_peft_model_state_dict

        if not jobs:
            return []
        self._step_batches(jobs)
        st = self.settings
        updates = []
        for job in jobs:
            a, b = adapter.truncated(job.rank)
            peft_model = self._peft(job.rank, a, b, adapter.head)
            try:
                if (
                    st.lora_dropout > 0.0
                ):  # dropout on the LoRA input only, as in the batched engine
                    torch.manual_seed(int(job.dropout_seed) % (2**63))
                    for path in self.spec.targets:
                        peft_model.base_model.model.get_submodule(path).lora_dropout[
                            "default"
                        ].train()
                params = [p for p in peft_model.parameters() if p.requires_grad]
                opt = make_optimizer(params, st)
                lora = self._lora_modules(peft_model)
                loss_sum = 0.0
                for idx in job.batches:
                    batch = self.train_split.collate(idx, self.pad_id)
                    logits = peft_model(**_model_inputs(self.model, batch, self.device)).logits
                    loss = F.cross_entropy(logits.float(), batch["labels"].to(self.device))
                    total = loss
                    if st.orthogonality_weight > 0.0:
                        reg = sum(orthogonality_penalty(la, lb) for la, lb in lora.values())
                        assert isinstance(reg, torch.Tensor)
                        total = total + st.orthogonality_weight * reg
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    opt.step()
                    loss_sum += float(loss.detach())
                state = get_peft_model_state_dict(peft_model)
                updates.append(
                    LocalUpdate(
                        device=job.device,
                        rank=job.rank,
                        a={
                            p: state[_peft_key(p, "lora_A")].detach().cpu().clone()
                            for p in self.spec.targets
                        },
                        b={
                            p: state[_peft_key(p, "lora_B")].detach().cpu().clone()
                            for p in self.spec.targets
                        },
                        head={
                            n: state[f"base_model.model.{n}"].detach().cpu().clone()
                            for n in self.spec.head
                        },
                        train_loss=loss_sum / len(job.batches),
                    )
                )
            finally:
                self._release(peft_model)
        return updates

    def _begin_eval(self, adapter: GlobalAdapter) -> None:
        self._eval_model = self._peft(adapter.rank, adapter.a, adapter.b, adapter.head)

    def _forward_eval(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._eval_model(**_model_inputs(self.model, batch, self.device)).logits

    def _end_eval(self) -> None:
        self._release(self._eval_model)
        del self._eval_model

    def _logits(self, adapter: GlobalAdapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self._begin_eval(adapter)
        try:
            return self._forward_eval(batch)
        finally:
            self._end_eval()


def make_trainer(
    kind: str,
    model: nn.Module,
    spec: ModelSpec,
    settings: TrainSettings,
    train: EncodedSplit,
    pad_id: int,
    device: torch.device,
) -> BatchedTrainer | SequentialTrainer:
    """The engine named by ``learning.lora.trainer``."""
    if kind == "batched":
        return BatchedTrainer(model, spec, settings, train, pad_id, device)
    if kind == "sequential":
        return SequentialTrainer(model, spec, settings, train, pad_id, device)
    raise ValueError(f"learning.lora.trainer must be batched or sequential, got {kind!r}")
