"""``LoraLearner``: the real federated LoRA backend behind
the :class:`~fedenv.learning.base.Learner` interface.

One round (docs/model.md §1.1 steps 3-6, §5.3): every device that was scheduled *and* whose upload
will
arrive trains its module from the global adapter truncated to its rank (tau SGD steps of n_b
examples from its own data), optionally sparsifies (SOFT), and the server aggregates the
updates with the configured rule, weighting devices by their data sizes, and FedAvgs the task
head. The global model is then evaluated on the held-out split.

Speed-up, exact: the environment decides from the channel physics which uploads arrive before
it calls :meth:`LoraLearner.train_round`, and an update that does not arrive contributes nothing.
Devices that are scheduled but fail are therefore not trained at all; the result is identical to
training them and discarding their updates, because every device's mini-batches (and dropout) are
drawn from its own seed ``(episode seed, round, device)``, never from a shared stream.

Determinism: everything random (partition, head and LoRA initialisation, mini-batches) derives
from the generator passed to :meth:`reset`; the same seed gives the same run on the same machine
and thread count. :meth:`state_dict` / :meth:`load_state_dict` (and ``save_state`` /
``load_state``) resume a run; :meth:`export_adapter` writes a peft adapter directory.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from fedenv import costs
from fedenv.config import EnvConfig
from fedenv.learning.base import DevicePartition, RoundReport
from fedenv.learning.lora import aggregation
from fedenv.learning.lora.data import TaskData, is_pair_task, load_task_data
from fedenv.learning.lora.model import (
    LORA_ALPHA_PER_RANK,
    ModelSpec,
    init_head,
    init_lora_a,
    load_model,
    model_spec,
    resolve_model_path,
)
from fedenv.learning.lora.sparsification import component_importance, top_components
from fedenv.learning.lora.training import (
    SCALING,
    DeviceJob,
    GlobalAdapter,
    LocalUpdate,
    TrainSettings,
    make_trainer,
)
from fedenv.learning.partition import partition_indices
from fedenv.learning.surrogate import gap_from_accuracy

__all__ = ["LoraLearner", "EVAL_SUBSET_SEED"]

log = logging.getLogger(__name__)

#: Seed of the fixed evaluation subset (``learning.lora.eval_samples``): the same for every episode.
EVAL_SUBSET_SEED = 0
_STATE_VERSION = 2
# Sub-stream tags of the per-episode seed (any distinct integers).
_INIT_STREAM, _FRESH_STREAM, _BATCH_STREAM = 1, 2, 3


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "learning.lora.device='cuda' but torch sees no CUDA device; use 'auto' or 'cpu'"
        )
    return torch.device(name)


class LoraLearner:
    """Federated LoRA fine-tuning with transformers + peft (docs/model.md §5.3); see the module
    docstring.

    Building it loads the model and the data and checks the configuration, so every bad input
    (unknown task, missing data, a model path without weights, an unknown target module) fails
    here, before any training.

    Attributes:
        params_per_rank: uploaded parameters per rank component, from the loaded model
            (sum over the LoRA targets of d_in + d_out; 9,216 for MiniLM-L6 on query and value).
        head_params: parameters of the task head (770 for MiniLM-L6 with 2 labels).
        spec: the model's LoRA targets and head.
        data: the tokenised train and evaluation splits.
    """

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        lc = config.learning.lora
        if lc.num_threads is not None:
            torch.set_num_threads(lc.num_threads)
        self.device = _resolve_device(lc.device)
        task = config.learning.task
        pair_encoding = lc.pair_encoding if is_pair_task(task) else "joint"
        model, self.tokenizer, head_names = load_model(
            lc.model_name_or_path, config.model.num_labels, lc.pooling, pair_encoding
        )
        #: ``separate`` when a pair task's sentences are encoded apart, else ``joint``
        self.pair_encoding = "separate" if getattr(model, "pairs", False) else "joint"
        self.model_path = resolve_model_path(lc.model_name_or_path)
        self.spec: ModelSpec = model_spec(model, tuple(config.model.target_modules), head_names)
        dims = min(min(d) for d in self.spec.targets.values())
        if max(config.model.ranks) > dims:
            raise ValueError(
                f"model.ranks {list(config.model.ranks)} exceed the smallest LoRA target "
                f"dimension {dims} of {lc.model_name_or_path!r}"
            )
        if config.paradigm == "split" and config.model.hidden_size != self.spec.hidden_size:
            raise ValueError(
                "the split paradigm's activation size uses "
                f"model.hidden_size={config.model.hidden_size}, but "
                f"{lc.model_name_or_path!r} has hidden size {self.spec.hidden_size}; set "
                f"model.hidden_size={self.spec.hidden_size}"
            )
        self.data: TaskData = load_task_data(
            task,
            self.tokenizer,
            self.model_path,
            seq_len=config.model.seq_len,
            data_dir=lc.data_dir,
            holdout=lc.eval_holdout_samples,
        )
        if self.data.num_labels != config.model.num_labels:
            raise ValueError(
                f"task {task!r} has {self.data.num_labels} labels but "
                f"model.num_labels={config.model.num_labels}"
            )
        n_train = config.learning.train_samples
        if n_train is not None and n_train > len(self.data.train):
            raise ValueError(
                f"learning.train_samples={n_train} exceeds the {len(self.data.train)} "
                f"training examples of {task!r} ({self.data.source})"
            )
        self.params_per_rank: float = float(self.spec.params_per_rank)
        self.head_params: int = self.spec.head_params
        self.rank = max(config.model.ranks)
        self.sparse = config.sparsifies
        settings = TrainSettings(
            learning_rate=lc.learning_rate,
            weight_decay=lc.weight_decay,
            optimizer=lc.optimizer,
            lora_dropout=lc.lora_dropout,
            orthogonality_weight=lc.orthogonality_weight,
            max_sequences_per_pass=lc.max_sequences_per_pass,
            max_seq_len=config.model.seq_len,
        )
        pad = self.tokenizer.pad_token_id
        self.trainer = make_trainer(
            lc.trainer,
            model,
            self.spec,
            settings,
            self.data.train,
            0 if pad is None else int(pad),
            self.device,
        )
        n_eval = len(self.data.eval)
        if lc.eval_samples is not None and lc.eval_samples < n_eval:
            self.eval_indices = np.sort(
                np.random.default_rng(EVAL_SUBSET_SEED).permutation(n_eval)[: lc.eval_samples]
            )
        else:
            self.eval_indices = np.arange(n_eval)
        self._seed: int | None = None
        self._round = 0
        self.adapter: GlobalAdapter | None = None
        self.residual: dict[str, torch.Tensor] | None = None
        #: FedAvgM buffers by part (a, b, head; with stack: residual, head), None before the first.
        self.momentum: dict[str, dict[str, torch.Tensor]] | None = None
        self.device_indices: list[NDArray[np.int64]] = []
        self.partition: DevicePartition | None = None
        self._metrics: tuple[float, float] | None = None
        self._metrics_current = False

    # ------------------------------------------------------------------ reset
    def reset(self, num_devices: int, rng: np.random.Generator) -> DevicePartition:
        """Partition the data over the devices and start from the pre-trained model with a fresh
        head."""
        cfg, lc = self.config, self.config.learning
        labels = self.data.train.labels
        pool = np.arange(labels.size)
        if lc.train_samples is not None and lc.train_samples < labels.size:
            pool = np.sort(rng.choice(labels.size, size=lc.train_samples, replace=False))
        parts = partition_indices(
            labels[pool],
            num_devices,
            lc.dirichlet_alpha,
            rng,
            iid=lc.iid,
            min_size=cfg.devices.batch_size,
        )
        self.device_indices = [pool[p] for p in parts]
        self._seed = int(rng.integers(0, 2**63))
        self._init_global()
        num_labels = self.data.num_labels
        counts = np.stack(
            [np.bincount(labels[idx], minlength=num_labels) for idx in self.device_indices]
        ).astype(np.float64)
        sizes = counts.sum(axis=1)
        total = np.bincount(labels[pool], minlength=num_labels).astype(np.float64)
        notes = {
            "backend": "lora",
            "task": lc.task,
            "model": lc.lora.model_name_or_path,
            "source": self.data.source,
            "split": self.data.notes.get("split", ""),
            "train_samples": int(pool.size),
            "eval_samples": int(self.eval_indices.size),
            "params_per_rank": int(self.params_per_rank),
            "head_params": int(self.head_params),
            "trainer": lc.lora.trainer,
            "aggregation": lc.lora.aggregation,
            "pair_encoding": self.pair_encoding,
        }
        log.info("lora backend: %s", notes["split"])
        log.info(
            "lora backend: %s on %s, %d train examples over %d devices, evaluation on %d",
            notes["model"],
            self.device,
            pool.size,
            num_devices,
            notes["eval_samples"],
        )
        self.partition = DevicePartition(
            data_sizes=sizes,
            label_distribution=counts / sizes[:, None],
            global_label_distribution=total / total.sum(),
            notes=notes,
        )
        return self.partition

    def _init_global(self) -> None:
        assert self._seed is not None
        rng = np.random.default_rng([self._seed, _INIT_STREAM])
        self.adapter = self._fresh_adapter(rng, init_head(self.spec, rng))
        self.residual = None
        self.momentum = None
        self.trainer.set_residual(None)
        self._round = 0
        self._metrics = None
        self._metrics_current = False

    def _fresh_adapter(
        self, rng: np.random.Generator, head: dict[str, torch.Tensor]
    ) -> GlobalAdapter:
        """peft's initialisation at rank R: A kaiming-uniform, B = 0 (the adapter starts as a
        no-op)."""
        return GlobalAdapter(
            a={
                p: init_lora_a((self.rank, d_in), rng) for p, (d_in, _) in self.spec.targets.items()
            },
            b={p: torch.zeros((d_out, self.rank)) for p, (_, d_out) in self.spec.targets.items()},
            head=head,
        )

    # ------------------------------------------------------------- reporting
    def _require_reset(self) -> GlobalAdapter:
        if self.adapter is None or self._seed is None:
            raise RuntimeError("call reset() before using the learner")
        return self.adapter

    def evaluate(self) -> tuple[float, float]:
        """(accuracy, loss) of the current global model on the evaluation set (or its fixed
        subset)."""
        adapter = self._require_reset()
        return self.trainer.evaluate(adapter, self.data.eval, self.eval_indices)

    def _report(self, evaluate: bool, extra: dict[str, Any]) -> RoundReport:
        evaluated = False
        if evaluate and not self._metrics_current:
            self._metrics = self.evaluate()
            self._metrics_current = True
            evaluated = True
        elif evaluate:
            evaluated = True  # the global model did not change since its last evaluation
        assert self._metrics is not None
        acc, loss = self._metrics
        gap = float(gap_from_accuracy(acc, self.config.learning.surrogate))
        return RoundReport(accuracy=acc, loss=loss, gap=gap, evaluated=evaluated, extra=extra)

    def initial_report(self) -> RoundReport:
        """Accuracy and loss of the pre-trained model with its fresh head (evaluated)."""
        self._require_reset()
        return self._report(True, {"round": 0})

    # ------------------------------------------------------------------ round
    def local_jobs(
        self, devices: NDArray[np.int64], ranks: NDArray[np.int64], round_index: int | None = None
    ) -> list[DeviceJob]:
        """The local training of ``devices`` in a round: tau mini-batches each, from per-device
        seeds."""
        assert self._seed is not None
        t = self._round + 1 if round_index is None else round_index
        tau, nb = self.config.devices.local_steps, self.config.devices.batch_size
        jobs = []
        for k in devices:
            local = self.device_indices[int(k)]
            rng = np.random.default_rng([self._seed, _BATCH_STREAM, t, int(k)])
            reps = math.ceil(tau * nb / local.size)
            order = np.concatenate([rng.permutation(local.size) for _ in range(reps)])[: tau * nb]
            chosen = local[order]
            batches = tuple(chosen[s * nb : (s + 1) * nb] for s in range(tau))
            jobs.append(
                DeviceJob(
                    device=int(k),
                    rank=int(ranks[k]),
                    batches=batches,
                    dropout_seed=int(rng.integers(0, 2**63)),
                )
            )
        return jobs

    def _validate_round(
        self, ranks: Any, ratios: Any, success: Any
    ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.bool_]]:
        k = len(self.device_indices)
        r = np.asarray(ranks)
        q = np.asarray(ratios, dtype=np.float64)
        s = np.asarray(success)
        for name, arr in (("ranks", r), ("ratios", q), ("success", s)):
            if arr.shape != (k,):
                raise ValueError(f"{name} must have shape ({k},), got {arr.shape}")
        if not np.issubdtype(r.dtype, np.integer) or (r < 0).any() or (r > self.rank).any():
            raise ValueError(
                f"ranks must be integers in [0, {self.rank}] (0 = not scheduled), got {r.tolist()}"
            )
        if not np.isfinite(q).all() or ((r > 0) & ((q <= 0) | (q > 1))).any():
            raise ValueError(f"ratios of scheduled devices must be in (0, 1], got {q.tolist()}")
        return r.astype(np.int64), q, s.astype(bool)

    def train_round(
        self, ranks: NDArray[np.int64], ratios: NDArray[np.float64], success: NDArray[np.bool_]
    ) -> RoundReport:
        """Train the scheduled devices whose uploads arrive, aggregate them, evaluate (module
        docstring)."""
        adapter = self._require_reset()
        r, q, s = self._validate_round(ranks, ratios, success)
        participants = np.flatnonzero((r > 0) & s)
        jobs = self.local_jobs(participants, r)
        updates = self.trainer.train(adapter, jobs)
        sent = self._sent_components(updates, q)
        self._round += 1
        extra: dict[str, Any] = {
            "round": self._round,
            "trained_devices": int(participants.size),
            "aggregated_devices": int(participants.size),
        }
        if updates:
            weights = np.array(
                [self.device_indices[u.device].size for u in updates], dtype=np.float64
            )
            self._aggregate(updates, sent, weights)
            self._metrics_current = False
            extra["train_loss"] = float(
                np.average([u.train_loss for u in updates], weights=weights)
            )
            extra["sent_fraction"] = (
                float(np.mean([float(m.float().mean()) for m in sent.values()]))
                if self.sparse
                else 1.0
            )
        interval = self.config.learning.lora.eval_interval
        due = self._round % interval == 0 or self._round >= self.config.num_rounds
        return self._report(due, extra)

    def _sent_components(
        self, updates: list[LocalUpdate], ratios: NDArray[np.float64]
    ) -> dict[str, torch.Tensor]:
        """Per target, an (n, R) mask of the components each device uploads (SOFT: top ceil(rho
        r))."""
        n, big_r = len(updates), self.rank
        ranks = np.array([u.rank for u in updates], dtype=np.int64)
        prefix = torch.arange(big_r)[None, :] < torch.as_tensor(ranks)[:, None]
        out: dict[str, torch.Tensor] = {}
        if not self.sparse or n == 0:
            return {p: prefix.clone() for p in self.spec.targets}
        keep = torch.as_tensor(
            costs.kept_components(ranks, ratios[[u.device for u in updates]]).astype(np.int64)
        )
        for p in self.spec.targets:
            imp = torch.zeros((n, big_r), dtype=torch.float64)
            for i, u in enumerate(updates):
                imp[i, : u.rank] = component_importance(u.a[p].double(), u.b[p].double())
            out[p] = top_components(imp, keep, prefix)
        return out

    def _aggregate(
        self,
        updates: list[LocalUpdate],
        sent: dict[str, torch.Tensor],
        weights: NDArray[np.float64],
    ) -> None:
        old, old_residual = self._require_reset(), self.residual
        self._average(updates, sent, weights)
        lc = self.config.learning.lora
        scale = 1.0
        if lc.server_step == "data_share":
            total = sum(idx.size for idx in self.device_indices)
            scale = float(weights.sum()) / total
        if lc.server_momentum > 0.0 or scale != 1.0:
            self._server_step(old, old_residual, lc.server_momentum, scale)

    def _server_step(
        self,
        old: GlobalAdapter,
        old_residual: dict[str, torch.Tensor] | None,
        beta: float,
        scale: float,
    ) -> None:
        """Every global tensor moves by ``scale`` (``learning.lora.server_step``) times its
        aggregated update, through FedAvgM's momentum ``beta`` (``learning.lora.server_momentum``).
        With ``stack`` the merged weight update (the residual) and the head do; the adapter
        restarts fresh every round there."""
        new = self._require_reset()
        before: dict[str, dict[str, torch.Tensor]] = {"head": old.head}
        after: dict[str, dict[str, torch.Tensor]] = {"head": new.head}
        if self.residual is None:
            before.update(a=old.a, b=old.b)
            after.update(a=new.a, b=new.b)
        else:
            before["residual"] = old_residual or {
                p: torch.zeros_like(t) for p, t in self.residual.items()
            }
            after["residual"] = self.residual
        moved: dict[str, dict[str, torch.Tensor]] = {}
        buffers: dict[str, dict[str, torch.Tensor]] = {}
        for part, tensors in after.items():
            moved[part], buffers[part] = {}, {}
            for name, averaged in tensors.items():
                buffer = None if self.momentum is None else self.momentum[part][name]
                moved[part][name], buffers[part][name] = aggregation.server_step(
                    before[part][name], averaged, buffer, beta, scale
                )
        self.momentum = buffers if beta > 0.0 else None
        if self.residual is None:
            self.adapter = GlobalAdapter(a=moved["a"], b=moved["b"], head=moved["head"])
        else:
            self.adapter = GlobalAdapter(a=new.a, b=new.b, head=moved["head"])
            self.residual = moved["residual"]
            self.trainer.set_residual(self.residual)

    def _average(
        self,
        updates: list[LocalUpdate],
        sent: dict[str, torch.Tensor],
        weights: NDArray[np.float64],
    ) -> None:
        """The aggregation rule's new global model from the arrived updates (FedAvg of the head)."""
        adapter = self._require_reset()
        rule = self.config.learning.lora.aggregation
        head = {
            n: aggregation.fedavg(torch.stack([u.head[n] for u in updates]), weights)
            for n in self.spec.head
        }
        if rule == "zeropad":
            new_a, new_b = {}, {}
            for p in self.spec.targets:
                padded = [aggregation.pad_components(u.a[p], u.b[p], self.rank) for u in updates]
                a = torch.stack([x[0] for x in padded])
                b = torch.stack([x[1] for x in padded])
                new_a[p], new_b[p] = aggregation.zeropad_aggregate(
                    a, b, sent[p], weights, adapter.a[p], adapter.b[p]
                )
            self.adapter = GlobalAdapter(a=new_a, b=new_b, head=head)
        elif rule == "svd":
            new_a, new_b = {}, {}
            for p in self.spec.targets:
                a_list = [u.a[p][sent[p][i, : u.rank]] for i, u in enumerate(updates)]
                b_list = [u.b[p][:, sent[p][i, : u.rank]] for i, u in enumerate(updates)]
                new_a[p], new_b[p] = aggregation.svd_aggregate(a_list, b_list, weights, self.rank)
            self.adapter = GlobalAdapter(a=new_a, b=new_b, head=head)
        else:
            # stack (FLoRA): merge sum_k w_k B_k A_k into the frozen base, restart from a fresh
            # adapter
            assert self._seed is not None
            residual = self.residual or {
                p: torch.zeros((d_out, d_in)) for p, (d_in, d_out) in self.spec.targets.items()
            }
            for p in self.spec.targets:
                a_list = [u.a[p][sent[p][i, : u.rank]] for i, u in enumerate(updates)]
                b_list = [u.b[p][:, sent[p][i, : u.rank]] for i, u in enumerate(updates)]
                a_s, b_s = aggregation.stack_aggregate(a_list, b_list, weights)
                residual[p] = residual[p] + SCALING * (b_s @ a_s)
            self.residual = residual
            self.trainer.set_residual(residual)
            self.adapter = self._fresh_adapter(
                np.random.default_rng([self._seed, _FRESH_STREAM, self._round]), head
            )

    # ----------------------------------------------------------- state, export
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: seed, round, partition, global adapter, residual,
        metrics."""
        adapter = self._require_reset()
        return {
            "version": _STATE_VERSION,
            "config": self.config.to_dict(),
            "seed": self._seed,
            "round": self._round,
            "device_indices": [idx.copy() for idx in self.device_indices],
            "partition": self.partition,
            "adapter": {"a": adapter.a, "b": adapter.b, "head": adapter.head},
            "residual": self.residual,
            "momentum": self.momentum,
            "metrics": self._metrics,
            "metrics_current": self._metrics_current,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the model, task, targets and ranks must match)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"unsupported learner state version {state.get('version')!r}, expected "
                f"{_STATE_VERSION}"
            )
        saved = state["config"]
        mine = self.config.to_dict()
        for section, key in (("learning", "task"), ("model", "target_modules"), ("model", "ranks")):
            if saved[section][key] != mine[section][key]:
                raise ValueError(
                    f"learner state was saved with {section}.{key}={saved[section][key]!r}, "
                    f"this learner has {mine[section][key]!r}"
                )
        if (
            saved["learning"]["lora"]["model_name_or_path"]
            != mine["learning"]["lora"]["model_name_or_path"]
        ):
            raise ValueError(
                "learner state was saved for another model (learning.lora.model_name_or_path "
                "differs)"
            )
        self._seed = int(state["seed"])
        self._round = int(state["round"])
        self.device_indices = [np.asarray(i, dtype=np.int64) for i in state["device_indices"]]
        self.partition = state["partition"]
        ad = state["adapter"]
        self.adapter = GlobalAdapter(a=dict(ad["a"]), b=dict(ad["b"]), head=dict(ad["head"]))
        self.residual = state["residual"]
        self.trainer.set_residual(self.residual)
        self.momentum = state["momentum"]
        self._metrics = state["metrics"]
        self._metrics_current = bool(state["metrics_current"])

    def save_state(self, path: str | Path) -> None:
        """Write :meth:`state_dict` to ``path`` (torch.save)."""
        torch.save(self.state_dict(), Path(path))

    def load_state(self, path: str | Path) -> None:
        """Restore a state written by :meth:`save_state`."""
        self.load_state_dict(torch.load(Path(path), map_location="cpu", weights_only=False))

    @property
    def round(self) -> int:
        return self._round

    def merged_delta(self) -> dict[str, torch.Tensor]:
        """Per target, the full weight update of the global model: residual + scaling B A."""
        adapter = self._require_reset()
        out = {}
        for p in self.spec.targets:
            d = SCALING * (adapter.b[p] @ adapter.a[p])
            out[p] = d if self.residual is None else self.residual[p] + d
        return out

    def export_adapter(self, directory: str | Path) -> Path:
        """Save the global model as a standard peft adapter directory.

        Load it with
        ``PeftModel.from_pretrained(load_model(base, num_labels, pooling)[0], directory)``
        (:func:`fedenv.learning.lora.model.load_model`; with ``pooling`` resolved to ``model`` that
        is
        ``AutoModelForSequenceClassification.from_pretrained(base, num_labels=...)``). The adapter
        has rank R with ``lora_alpha = 2R``; after
        FLoRA stacking (merged updates), the full update is re-factorised exactly by SVD at rank
        min(d_in, d_out) instead. The head is saved as peft's ``modules_to_save``.
        """
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        adapter = self._require_reset()
        if self.residual is None:
            a, b, rank = adapter.a, adapter.b, self.rank
        else:
            a, b = {}, {}
            rank = min(min(d) for d in self.spec.targets.values())
            for p, delta in self.merged_delta().items():
                u, s, vh = torch.linalg.svd((delta / SCALING).double(), full_matrices=False)
                root = s[:rank].sqrt()
                a[p] = (root[:, None] * vh[:rank]).float()
                b[p] = (u[:, :rank] * root[None, :]).float()
        lc = self.config.learning.lora
        base, _, _ = load_model(
            lc.model_name_or_path, self.config.model.num_labels, lc.pooling, self.pair_encoding
        )
        cfg = LoraConfig(
            r=rank,
            lora_alpha=LORA_ALPHA_PER_RANK * rank,
            target_modules=list(self.spec.targets),
            modules_to_save=list(self.spec.head_modules),
            bias="none",
        )
        with warnings.catch_warnings():  # transformers 5 deprecation noise from inside peft
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(base, cfg)
        state = {f"base_model.model.{p}.lora_A.weight": a[p] for p in self.spec.targets}
        state.update({f"base_model.model.{p}.lora_B.weight": b[p] for p in self.spec.targets})
        state.update({f"base_model.model.{n}": t for n, t in adapter.head.items()})
        set_peft_model_state_dict(peft_model, state)
        out = Path(directory)
        peft_model.save_pretrained(str(out))
        return out

    def close(self) -> None:
        """Drop the model and the optimiser state."""
        self.trainer.model = None  # type: ignore[assignment]
        self.adapter = None
        self.residual = None
