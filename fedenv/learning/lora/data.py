"""GLUE SST-2 and QNLI through ``datasets``: sources, seeded hold-out, tokenisation cache, batches.

Sources, in order (docs/model.md §5.3):

1. ``learning.lora.data_dir``: a GLUE TSV root holding ``sst2/`` and ``qnli/`` (the layout of
   ``../shared/data/glue``). A ``data_dir`` that is set but lacks the task is an error, not a
   silent fall-through.
2. The ``FEDENV_DATA_DIR`` environment variable, same layout.
3. The Hugging Face hub, ``datasets.load_dataset("nyu-mll/glue", task)``. Offline
   (``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1``) only a copy in the Hugging Face cache
   is read, which fails in well under a second when there is none. Online, the hub's host is
   first probed with a :data:`HUB_PROBE_TIMEOUT_S` connection (skipped behind an HTTP(S)
   proxy): when it cannot be reached, loading fails at once naming ``FEDENV_DATA_DIR``,
   instead of after the ``datasets`` library's half a minute of retries.

The TSVs are read with quoting off (QNLI sentences contain ``"``). When a source has no train
split (QNLI here ships only ``dev.tsv``), the labelled data is split by a fixed seeded rule
(seed 0, ``eval_holdout_samples`` for evaluation, the rest for training), and the learner reports
it in ``info["data_notes"]`` and the log. Text is tokenised once per process and cached in memory,
keyed by tokenizer, task, sequence length and source; batches are padded dynamically.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = [
    "TASK_FIELDS",
    "is_pair_task",
    "EncodedSplit",
    "TaskData",
    "load_task_data",
    "read_glue_tsv",
    "clear_cache",
]

log = logging.getLogger(__name__)

#: Text columns and label names of each task (GLUE's label order).
TASK_FIELDS: dict[str, dict[str, Any]] = {
    "sst2": {"text": ("sentence",), "labels": ("negative", "positive")},
    "qnli": {"text": ("question", "sentence"), "labels": ("entailment", "not_entailment")},
}


def is_pair_task(task: str) -> bool:
    """Whether a task's examples are sentence pairs (QNLI) rather than single sentences."""
    return len(TASK_FIELDS[task]["text"]) == 2


HOLDOUT_SEED = 0
#: seconds to wait for a connection to the hub's host before giving up on the hub, s
HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")
_CACHE: dict[tuple[Any, ...], TaskData] = {}


@dataclass(frozen=True)
class EncodedSplit:
    """Tokenised examples stored flat: example i is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: NDArray[np.int32]
    type_ids: NDArray[np.int8]
    offsets: NDArray[np.int64]
    labels: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.labels.size)

    @property
    def lengths(self) -> NDArray[np.int64]:
        return np.diff(self.offsets)

    def subset(self, indices: NDArray[np.int64]) -> EncodedSplit:
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[idx]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        take = (
            np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
            if idx.size
            else np.zeros(0, np.int64)
        )
        return EncodedSplit(self.ids[take], self.type_ids[take], offsets, self.labels[idx])

    def collate(
        self, indices: Sequence[int] | NDArray[np.int64], pad_id: int, min_len: int = 0
    ) -> dict[str, torch.Tensor]:
        """A padded batch (dynamic padding to the longest example, at least ``min_len``)."""
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[idx]
        width = int(max(lengths.max(initial=1), min_len))
        ids = np.full((idx.size, width), pad_id, dtype=np.int64)
        types = np.zeros((idx.size, width), dtype=np.int64)
        mask = np.zeros((idx.size, width), dtype=np.int64)
        for row, (i, n) in enumerate(zip(idx, lengths, strict=True)):
            start = self.offsets[i]
            ids[row, :n] = self.ids[start : start + n]
            types[row, :n] = self.type_ids[start : start + n]
            mask[row, :n] = 1
        return {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(types),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(self.labels[idx].copy()),
        }


@dataclass(frozen=True)
class TaskData:
    """A task's tokenised train and evaluation splits."""

    task: str
    train: EncodedSplit
    eval: EncodedSplit
    num_labels: int
    source: str
    notes: dict[str, Any] = field(default_factory=dict)


def clear_cache() -> None:
    """Forget every tokenised task of this process."""
    _CACHE.clear()


def read_glue_tsv(path: str | os.PathLike[str], task: str) -> Any:
    """One GLUE TSV as a ``datasets.Dataset`` with the task's text columns and an int ``label``.

    Read with ``csv.QUOTE_NONE``: QNLI sentences contain quote characters.
    """
    from datasets import Dataset

    fields = TASK_FIELDS[task]
    label_names: tuple[str, ...] = fields["labels"]
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a GLUE {task} TSV with a header row")
        needed = (*fields["text"], "label")
        missing = [c for c in needed if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing columns {missing}; expected a GLUE {task} TSV with columns "
                f"{list(needed)}, got {header}"
            )
        cols = {c: header.index(c) for c in needed}
        data: dict[str, list[Any]] = {c: [] for c in needed}
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(
                    f"{path}:{line}: {len(row)} fields, expected {len(header)} "
                    "(tab-separated, no quoting)"
                )
            for c in fields["text"]:
                data[c].append(row[cols[c]])
            raw = row[cols["label"]]
            label = (
                int(raw) if raw.isdigit() else label_names.index(raw) if raw in label_names else -1
            )
            if not 0 <= label < len(label_names):
                raise ValueError(
                    f"{path}:{line}: label {raw!r} is not one of {list(label_names)} or "
                    f"0..{len(label_names) - 1}"
                )
            data["label"].append(label)
    return Dataset.from_dict(data)


def _local_root(task: str, data_dir: str | None) -> tuple[Path | None, list[str]]:
    """The first local GLUE root holding the task, and why the others were passed over."""
    tried: list[str] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if (root / task / "dev.tsv").is_file() or (root / task / "train.tsv").is_file():
            return root, tried
        raise FileNotFoundError(
            f"learning.lora.data_dir={data_dir!r} has no {task}/train.tsv or {task}/dev.tsv; "
            "expected a GLUE TSV "
            "root with sst2/ and qnli/ (like ../shared/data/glue), or unset it to use "
            "$FEDENV_DATA_DIR or the hub"
        )
    tried.append("learning.lora.data_dir is not set")
    env = os.environ.get("FEDENV_DATA_DIR")
    if env:
        root = Path(env).expanduser()
        if (root / task / "dev.tsv").is_file() or (root / task / "train.tsv").is_file():
            return root, tried
        tried.append(f"$FEDENV_DATA_DIR={env!r} has no {task}/train.tsv or {task}/dev.tsv")
    else:
        tried.append("$FEDENV_DATA_DIR is not set")
    return None, tried


def _hub_offline() -> bool:
    """Whether the Hugging Face libraries are in offline mode (environment, or as ``datasets`` read
    it at import)."""
    if any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        return True
    import datasets.config

    return bool(
        getattr(datasets.config, "HF_HUB_OFFLINE", False)
        or getattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    )


def _hub_unreachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub's host cannot be reached (a TCP connection within ``timeout_s``), or None.

    None too behind an HTTP(S) proxy (the connection goes through it; ``datasets`` decides).
    """
    if any(
        os.environ.get(name)
        for name in (
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        )
    ):
        return None
    import huggingface_hub.constants

    url = urlsplit(
        str(getattr(huggingface_hub.constants, "ENDPOINT", None) or "https://huggingface.co")
    )
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return (
            f"no connection to {host}:{port} within {timeout_s:g} s ({type(exc).__name__}: {exc})"
        )


def _raw_splits(
    task: str, data_dir: str | None, holdout: int
) -> tuple[Any, Any, str, dict[str, Any]]:
    """(train Dataset, eval Dataset, source, notes) from the first available source."""
    root, tried = _local_root(task, data_dir)
    notes: dict[str, Any] = {}
    if root is not None:
        folder = root / task
        source = str(folder)
        dev = read_glue_tsv(folder / "dev.tsv", task) if (folder / "dev.tsv").is_file() else None
        train = (
            read_glue_tsv(folder / "train.tsv", task) if (folder / "train.tsv").is_file() else None
        )
        if train is not None and dev is not None:
            notes["split"] = (
                f"{task}: train.tsv ({len(train)}) for training, dev.tsv ({len(dev)}) for "
                "evaluation"
            )
            return train, dev, source, notes
        only = dev if dev is not None else train
        name = "dev.tsv" if dev is not None else "train.tsv"
        assert only is not None
        if len(only) <= holdout:
            raise ValueError(
                f"{folder / name} has {len(only)} examples, too few to hold out "
                f"learning.lora.eval_holdout_samples={holdout}"
            )
        perm = np.random.default_rng(HOLDOUT_SEED).permutation(len(only))
        eval_idx, train_idx = np.sort(perm[:holdout]), np.sort(perm[holdout:])
        notes["split"] = (
            f"{task} has no local {'train' if dev is not None else 'dev'} split: seeded "
            f"split (seed {HOLDOUT_SEED}) "
            f"of {name} ({len(only)}) into {train_idx.size} train / {eval_idx.size} eval"
        )
        return only.select(train_idx), only.select(eval_idx), source, notes
    fix = (
        "Set learning.lora.data_dir or FEDENV_DATA_DIR to a GLUE TSV root holding sst2/ and "
        "qnli/ (e.g. ../shared/data/glue)"
    )
    offline = _hub_offline()
    if not offline:
        unreachable = _hub_unreachable()
        if unreachable:
            tried.append(f"the Hugging Face hub (nyu-mll/glue) is unreachable: {unreachable}")
            raise FileNotFoundError(
                f"no data for task {task!r}. Tried, in order: "
                + "; ".join(tried)
                + f". {fix}, or set HF_HUB_OFFLINE=1 "
                "to read a copy from the Hugging Face cache."
            )
    try:
        from datasets import load_dataset

        hub = load_dataset("nyu-mll/glue", task)
    except Exception as exc:  # offline without a cached copy, a hub error: one clear error below
        mode = (
            " in offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), from the cache only"
            if offline
            else ""
        )
        tried.append(
            f"the Hugging Face hub (nyu-mll/glue) failed{mode}: {type(exc).__name__}: {exc}"
        )
        raise FileNotFoundError(
            f"no data for task {task!r}. Tried, in order: " + "; ".join(tried) + f". {fix}."
        ) from exc
    notes["split"] = (
        f"{task}: hub train ({len(hub['train'])}) for training, validation "
        f"({len(hub['validation'])}) for evaluation"
    )
    return hub["train"], hub["validation"], f"hub:nyu-mll/glue/{task}", notes


def _encode(dataset: Any, task: str, tokenizer: Any, seq_len: int) -> EncodedSplit:
    text_cols: tuple[str, ...] = TASK_FIELDS[task]["text"]

    table = dataset[:]  # plain lists of every row (respects select()'s index mapping)
    columns = [table[c] for c in text_cols]
    labels = np.asarray(table["label"], dtype=np.int64)
    ids_list: list[list[int]] = []
    types_list: list[list[int]] = []
    for start in range(0, len(labels), 4096):
        enc = tokenizer(
            *[col[start : start + 4096] for col in columns],
            truncation=True,
            max_length=seq_len,
            return_token_type_ids=True,
        )
        ids_list.extend(enc["input_ids"])
        types_list.extend(enc["token_type_ids"])
    lengths = np.fromiter((len(x) for x in ids_list), dtype=np.int64, count=len(ids_list))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.fromiter((t for x in ids_list for t in x), dtype=np.int32, count=int(offsets[-1]))
    types = np.fromiter((t for x in types_list for t in x), dtype=np.int8, count=int(offsets[-1]))
    return EncodedSplit(ids, types, offsets, labels)


def load_task_data(
    task: str,
    tokenizer: Any,
    tokenizer_key: str,
    *,
    seq_len: int,
    data_dir: str | None = None,
    holdout: int = 1000,
) -> TaskData:
    """Load, split and tokenise a task (cached per process).

    Args:
        task: ``sst2`` or ``qnli``.
        tokenizer: a Hugging Face tokenizer.
        tokenizer_key: identifies the tokenizer in the cache key (its path or hub id).
        seq_len: truncation length in tokens.
        data_dir: an explicit GLUE TSV root (source 1).
        holdout: evaluation examples split off when there is no local train split.

    Raises:
        ValueError: unknown task or malformed file.
        FileNotFoundError: no source has the task (the message names all three).
    """
    if task not in TASK_FIELDS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_FIELDS)}")
    env = os.environ.get("FEDENV_DATA_DIR")
    key = (tokenizer_key, task, seq_len, data_dir, env if data_dir is None else None, holdout)
    if key in _CACHE:
        return _CACHE[key]
    train, evaluation, source, notes = _raw_splits(task, data_dir, holdout)
    data = TaskData(
        task=task,
        train=_encode(train, task, tokenizer, seq_len),
        eval=_encode(evaluation, task, tokenizer, seq_len),
        num_labels=len(TASK_FIELDS[task]["labels"]),
        source=source,
        notes=notes,
    )
    _CACHE[key] = data
    return data
