"""Per-round traces of federated runs: the record format and a resumable writer.

A trace file is JSON Lines. Each episode (one policy on one env seed) is three kinds of record,
written in order and flushed as they happen:

``{"type": "episode", ...}``
    the header: ``key`` (``"<policy>/seed<seed>"``), ``policy``, ``seed``, ``task``,
    ``backend``, the fully resolved env config, the data partition the BS knows
    (``data_size``, ``label_distribution``, ``global_label_distribution``), the accuracy and
    loss of the initial model, and ``meta`` (machine, start time, package versions).
``{"type": "round", ...}``
    one per federated round ``t``: the decision (``module``, ``rank``, ``sparsity_ratio``,
    ``tx_power_w``, ``bandwidth_share``), what happened (``success``, ``straggler``,
    ``packet_lost``, ``energy_j``, ``round_latency_s``), the global model after the round
    (``accuracy``, ``loss``, ``loss_gap``), the ``reward`` and the round's wall time.
``{"type": "end", ...}``
    closes the episode: ``rounds``, ``wall_s`` and the ``return``.

An episode without its ``end`` record was interrupted. :class:`TraceWriter` drops such
fragments (and any damaged line) when it opens a file, so a collection killed at any point
resumes by rerunning only the episodes that did not finish. :func:`load_traces` reads complete
episodes into :class:`EpisodeTrace` arrays, the input of fitting and reporting; a damaged line
(a torn write, a torn line with the next record appended to it, corruption) skips only the
episode it belongs to, with a :class:`TraceDamageWarning`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from fedenv import atomic

__all__ = [
    "TRACE_FORMAT_VERSION",
    "EpisodeTrace",
    "TraceWriter",
    "TraceDamageWarning",
    "episode_key",
    "load_traces",
    "pack_trace",
    "trace_stem",
    "collection_config_path",
    "round_record",
    "header_record",
]

TRACE_FORMAT_VERSION = 1

#: Per-device arrays copied from the env's ``info`` into every round record.
ROUND_DEVICE_FIELDS = (
    "module",
    "rank",
    "sparsity_ratio",
    "tx_power_w",
    "bandwidth_share",
    "success",
    "straggler",
    "packet_lost",
    "energy_j",
)


def episode_key(policy: str, seed: int) -> str:
    """The identifier of an episode inside a trace file."""
    return f"{policy}/seed{seed}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def header_record(
    *,
    policy: str,
    seed: int,
    config: Mapping[str, Any],
    reset_info: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``episode`` record of a run, from the resolved config and the ``info`` of ``reset``."""
    learning = config["learning"]
    return {
        "type": "episode",
        "version": TRACE_FORMAT_VERSION,
        "key": episode_key(policy, seed),
        "policy": policy,
        "seed": int(seed),
        "task": learning["task"],
        "backend": learning["backend"],
        "config": _jsonable(config),
        "data_size": _jsonable(reset_info["data_size"]),
        "label_distribution": _jsonable(reset_info["label_distribution"]),
        "global_label_distribution": _jsonable(reset_info["global_label_distribution"]),
        "accuracy": float(reset_info["accuracy"]),
        "loss": float(reset_info["loss"]),
        "data_notes": _jsonable(reset_info.get("data_notes", {})),
        "meta": _jsonable(dict(meta or {})),
    }


def round_record(key: str, info: Mapping[str, Any], reward: float, wall_s: float) -> dict[str, Any]:
    """The ``round`` record of the round just played, from the ``info`` returned by ``step``."""
    rec: dict[str, Any] = {"type": "round", "key": key, "round": int(info["round"]) - 1}
    for name in ROUND_DEVICE_FIELDS:
        rec[name] = _jsonable(np.asarray(info[name]))
    rec["round_latency_s"] = float(info["round_latency_s"])
    rec["accuracy"] = float(info["accuracy"])
    rec["loss"] = float(info["loss"])
    rec["loss_gap"] = float(info["loss_gap"])
    rec["reward"] = float(reward)
    rec["wall_s"] = float(wall_s)
    learner = info.get("learner")
    if learner:
        rec["learner"] = _jsonable(learner)
    return rec


@dataclass(frozen=True)
class EpisodeTrace:
    """One complete episode as arrays (K devices, C classes, T rounds)."""

    key: str
    policy: str
    seed: int
    task: str
    backend: str
    data_size: NDArray[np.float64]
    """Samples per device, shape (K,)."""
    label_distribution: NDArray[np.float64]
    """Per-device label mix, shape (K, C)."""
    global_label_distribution: NDArray[np.float64]
    """Label mix of the training set, shape (C,)."""
    rank: NDArray[np.int64]
    """Rank trained per round and device (0 = idle), shape (T, K)."""
    ratio: NDArray[np.float64]
    """Sparsification ratio, shape (T, K)."""
    success: NDArray[np.bool_]
    """Update aggregated, shape (T, K)."""
    straggler: NDArray[np.bool_]
    """Scheduled but missed the deadline, shape (T, K)."""
    packet_lost: NDArray[np.bool_]
    """On time but lost to packet error, shape (T, K)."""
    energy_j: NDArray[np.float64]
    """Device energy per round, shape (T, K)."""
    accuracy: NDArray[np.float64]
    """Accuracy of the global model before round 0 and after each round, shape (T + 1,)."""
    loss: NDArray[np.float64]
    """Evaluation loss, shape (T + 1,)."""
    reward: NDArray[np.float64]
    """Reward of each round, shape (T,)."""
    wall_s: NDArray[np.float64]
    """Wall-clock seconds of each round (training + evaluation), shape (T,)."""
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_rounds(self) -> int:
        return int(self.rank.shape[0])

    @property
    def data_share(self) -> NDArray[np.float64]:
        return self.data_size / self.data_size.sum()

    @property
    def final_accuracy(self) -> float:
        return float(self.accuracy[-1])

    @property
    def mean_accuracy(self) -> float:
        """Mean accuracy over the rounds played (after each round): the area under the curve."""
        return float(self.accuracy[1:].mean())

    def window_accuracy(self, rounds: int = 5) -> float:
        """Mean accuracy after the last ``rounds`` rounds (less noisy than the final value)."""
        return float(self.accuracy[1:][-rounds:].mean())

    @property
    def episode_return(self) -> float:
        return float(self.reward.sum())

    @classmethod
    def from_records(
        cls, header: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]]
    ) -> EpisodeTrace:
        rounds = sorted(rounds, key=lambda r: int(r["round"]))
        if [int(r["round"]) for r in rounds] != list(range(len(rounds))):
            raise ValueError(f"episode {header['key']!r}: rounds are not 0..{len(rounds) - 1}")

        def stack(name: str, dtype: Any) -> NDArray[Any]:
            return np.asarray([r[name] for r in rounds], dtype=dtype)

        return cls(
            key=str(header["key"]),
            policy=str(header["policy"]),
            seed=int(header["seed"]),
            task=str(header["task"]),
            backend=str(header["backend"]),
            data_size=np.asarray(header["data_size"], dtype=np.float64),
            label_distribution=np.asarray(header["label_distribution"], dtype=np.float64),
            global_label_distribution=np.asarray(
                header["global_label_distribution"], dtype=np.float64
            ),
            rank=stack("rank", np.int64),
            ratio=stack("sparsity_ratio", np.float64),
            success=stack("success", bool),
            straggler=stack("straggler", bool),
            packet_lost=stack("packet_lost", bool),
            energy_j=stack("energy_j", np.float64),
            accuracy=np.concatenate([[float(header["accuracy"])], stack("accuracy", np.float64)]),
            loss=np.concatenate([[float(header["loss"])], stack("loss", np.float64)]),
            reward=stack("reward", np.float64),
            wall_s=stack("wall_s", np.float64),
            config=dict(header.get("config", {})),
            meta=dict(header.get("meta", {})),
        )


def _open_text(path: Path) -> IO[str]:
    """A trace file for reading: plain JSON Lines, or gzip-compressed when its name ends in
    ``.gz``."""
    return gzip.open(path, "rt") if path.suffix == ".gz" else path.open(errors="replace")


#: The ``type`` of the marker :func:`_read_records` yields for a line that is not a record.
_DAMAGED = "damaged"
_RECORD_TYPES = ("episode", "round", "end")
#: The start of every record as :class:`TraceWriter` writes it, up to its key.
_RECORD_START = re.compile(
    r'^\{"type": "(episode|round|end)"(?:, "version": \d+)?, "key": "((?:[^"\\]|\\.)*)"'
)


def _record(text: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return None
    if (
        isinstance(rec, dict)
        and rec.get("type") in _RECORD_TYPES
        and isinstance(rec.get("key"), str)
    ):
        return rec
    return None


def _damaged(text: str, lineno: int) -> dict[str, Any]:
    """The marker of a damaged line, with the key of the record it was, when that can be read."""
    key = None
    m = _RECORD_START.match(text)
    if m:
        with contextlib.suppress(json.JSONDecodeError):
            key = json.loads(f'"{m.group(2)}"')
    else:
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            key = json.loads(text).get(
                "key"
            )  # valid JSON, but not a record (a flipped bit in its type)
    return {"type": _DAMAGED, "line": lineno, "key": key if isinstance(key, str) else None}


def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a trace file, in order, with a ``damaged`` marker for every line that is not
    one: a torn last line (a writer killed mid-write), a torn line with the next record appended
    to it (that record is recovered after the marker), or a corrupt line."""
    lineno = 0
    with _open_text(path) as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                text = line.strip()
                if not text:
                    continue
                rec = _record(text)
                if rec is not None:
                    yield rec
                    continue
                yield _damaged(text, lineno)
                for m in re.finditer(r'\{"type": "', text[1:]):  # a record appended to a torn one
                    rec = _record(text[m.start() + 1 :])
                    if rec is not None:
                        yield rec
                        break
        except (
            EOFError,
            OSError,
            zlib.error,
            UnicodeDecodeError,
        ):  # a truncated or corrupt .gz stream
            yield {"type": _DAMAGED, "line": lineno + 1, "key": None, "rest": True}


@dataclass
class _Scan:
    """What :func:`_scan` found in a trace file."""

    complete: list[str]
    """Keys of the complete, undamaged episodes in file order."""
    groups: dict[str, list[dict[str, Any]]]
    """Every episode's records by key (the last attempt of each)."""
    damaged_lines: list[int]
    skipped: list[str]
    """Keys of episodes left out because a damaged line or a record out of order belongs to them."""
    invalid: dict[str, str] = field(default_factory=dict)
    """Complete episodes left out because a record lost a field or holds a wrong type: key ->
    why."""
    traces: dict[str, EpisodeTrace] = field(default_factory=dict)
    """The complete episodes as arrays."""

    def warning(self, path: Path) -> str | None:
        parts = []
        if self.damaged_lines or self.skipped:
            lines = (
                f"damaged line(s) {', '.join(map(str, self.damaged_lines))}"
                if self.damaged_lines
                else "records out of order"
            )
            eps = (
                f"; skipped the episode(s) they belong to: {', '.join(self.skipped)}"
                if self.skipped
                else ""
            )
            parts.append(f"{lines} (an interrupted write or corruption){eps}")
        parts += [
            f"skipped episode {key!r}, a record of it is damaged ({why})"
            for key, why in self.invalid.items()
        ]
        return (
            f"{path}: {'; '.join(parts)}; every other complete episode is kept" if parts else None
        )


def _scan(records: Iterable[dict[str, Any]]) -> _Scan:
    """Group the records by episode and keep the episodes that are complete and intact: a header,
    rounds 0..T-1 in order, and an ``end`` that counts T rounds. A damaged line spoils the episode
    whose key it shows, else the episode open when it was written (episodes are written one at a
    time); a new header of the same key starts the episode afresh."""
    groups: dict[str, list[dict[str, Any]]] = {}
    order: list[str] = []
    done: set[str] = set()
    broken: set[str] = set()
    damaged: list[int] = []
    skipped: list[str] = []
    open_key: str | None = None

    def spoil(key: str | None) -> None:
        if key is not None and key in groups and key not in broken:
            broken.add(key)
            done.discard(key)

    records = list(records)
    for i, rec in enumerate(records):
        kind, key = rec["type"], rec["key"]
        if kind == _DAMAGED:
            if i < len(records) - 1 or rec.get(
                "rest"
            ):  # a torn last line is the usual unfinished episode
                damaged.append(int(rec["line"]))
            spoil(key if key in groups else open_key)
        elif kind == "episode":
            groups[key] = [rec]  # a restarted episode replaces its fragment
            done.discard(key)
            broken.discard(key)
            if key in order:
                order.remove(key)
            order.append(key)
            open_key = key
        elif key not in groups or key in broken:
            continue
        elif key in done:
            spoil(key)  # records after the end: two attempts mixed
        elif kind == "round":
            if rec.get("round") != len(groups[key]) - 1:
                spoil(key)
            else:
                groups[key].append(rec)
        else:
            if rec.get("rounds") != len(groups[key]) - 1:
                spoil(key)
            else:
                groups[key].append(rec)
                done.add(key)
            open_key = None if open_key == key else open_key
    for key in order:
        if key in broken and damaged:
            skipped.append(key)
    scan = _Scan([], groups, damaged, skipped)
    for key in order:
        if key in done:
            header, *rest = groups[key]
            try:
                scan.traces[key] = EpisodeTrace.from_records(
                    header, [r for r in rest if r["type"] == "round"]
                )
                scan.complete.append(key)
            except (KeyError, TypeError, ValueError, IndexError) as err:  # parses, but lost a field
                scan.invalid[key] = f"{type(err).__name__}: {err}"
    return scan


def _episode_lines(
    keys: Iterable[str], groups: Mapping[str, list[dict[str, Any]]]
) -> Iterator[str]:
    """The JSON lines of the episodes ``keys``, in order (what a trace file holds for them)."""
    for key in keys:
        for rec in groups[key]:
            yield json.dumps(rec) + "\n"


def trace_files(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The trace files named by ``paths``: files as given, directories as their ``*.jsonl`` and
    ``*.jsonl.gz`` (sorted by name; a gzip-compressed file is read like the plain one)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted([*p.glob("*.jsonl"), *p.glob("*.jsonl.gz")], key=lambda f: f.name)
            plain = {f.name for f in found if f.suffix == ".jsonl"}
            both = [f.name for f in found if f.suffix == ".gz" and f.name[: -len(".gz")] in plain]
            if both:
                raise ValueError(
                    f"{p} holds {both[0]} and {both[0][: -len('.gz')]}, the same trace twice "
                    "(their episodes would count twice); keep one of them"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(
                f"trace file or directory {str(p)!r} does not exist; collect traces first "
                "with `python -m fedenv.calibrate collect`"
            )
    return files


def _read(path: Path) -> _Scan:
    """The episodes of one trace file; a warning names damaged lines and the episodes skipped."""
    scan = _scan(_read_records(path))
    message = scan.warning(path)
    if message:
        warnings.warn(message, TraceDamageWarning, stacklevel=3)
    return scan


class TraceDamageWarning(UserWarning):
    """A trace file holds damaged lines; the episodes they belong to are skipped."""


def load_traces(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[EpisodeTrace]:
    """Complete episodes of one or more trace files (or directories of ``*.jsonl`` /
    ``*.jsonl.gz``), in file order.

    Damaged lines (an interrupted write, corruption) skip the episode they belong to, with a
    :class:`TraceDamageWarning`; every other complete episode is read.
    """
    out: list[EpisodeTrace] = []
    for f in trace_files(paths):
        scan = _read(f)
        out.extend(scan.traces[key] for key in scan.complete)
    return out


def trace_stem(path: str | os.PathLike[str]) -> str:
    """A trace file's name without ``.jsonl`` / ``.jsonl.gz``."""
    return Path(path).name.removesuffix(".gz").removesuffix(".jsonl")


def collection_config_path(path: str | os.PathLike[str]) -> Path:
    """The ``<name>.config.yaml`` that ``calibrate collect`` writes beside trace file ``path``
    (and ``pack`` copies beside the packed file)."""
    return Path(path).with_name(f"{trace_stem(path)}.config.yaml")


def pack_trace(path: str | os.PathLike[str], into: str | os.PathLike[str]) -> tuple[Path, int]:
    """Write the complete episodes of trace file ``path`` into directory ``into``, gzip-compressed.

    The result is ``<into>/<name>.jsonl.gz``: unfinished and damaged episodes are left out, and
    the bytes depend only on the records (no timestamp or file name in the gzip header), so
    packing the same trace twice gives the same file. The collection's ``<name>.config.yaml``
    (its first line is the collect command) is copied beside it. Returns the packed file and its
    episode count.
    """
    src = Path(path)
    scan = _read(src)
    if not scan.complete:
        raise ValueError(f"{src} holds no complete episode; nothing to pack")
    stem = trace_stem(src)
    dest_dir = Path(into)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{stem}.jsonl.gz"
    if out.resolve() == src.resolve():
        raise ValueError(f"{src} would be packed onto itself; pack into another directory")
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, compresslevel=9, mtime=0) as fh:
        fh.writelines(line.encode() for line in _episode_lines(scan.complete, scan.groups))
    atomic.write_file(out, packed.getvalue())
    side = collection_config_path(src)
    if side.is_file() and side.resolve() != (dest_dir / side.name).resolve():
        atomic.write_file(dest_dir / side.name, side.read_bytes())
    return out, len(scan.complete)


class TraceWriter:
    """Appends episodes to a trace file; reopening it drops unfinished episodes (resume).

    Each record is one line, appended and fsynced as it happens. When it opens an existing file,
    the writer keeps only the complete, undamaged episodes (rewriting the file atomically when
    anything else is there: an unfinished episode, a torn last line, a damaged line), so a
    collection killed at any point resumes by rerunning only the episodes that did not finish.
    A failed append (a full disk) is cut off again before the error propagates.

    Example::

        writer = TraceWriter("results/calibration/sst2.jsonl")
        if key not in writer.completed:
            writer.begin(header)
            for ...: writer.round(record)
            writer.end(key, rounds=T, wall_s=..., episode_return=...)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.suffix == ".gz":
            raise ValueError(
                f"{self.path}: traces are written uncompressed (JSON Lines, appended round "
                "by round); "
                "write to a .jsonl file and compress it when the collection is finished "
                "(python -m fedenv.calibrate pack FILE --into DIR)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.completed: set[str] = set()
        self.dropped: list[str] = []
        if self.path.exists():
            scan = _read(self.path)
            self.completed = set(scan.complete)
            self.dropped = [k for k in scan.groups if k not in self.completed]
            clean = [line.encode() for line in _episode_lines(scan.complete, scan.groups)]
            if sum(map(len, clean)) != self.path.stat().st_size:
                atomic.write_file(self.path, b"".join(clean))
        self._open: str | None = None

    def _write(self, rec: Mapping[str, Any]) -> None:
        line = (json.dumps(_jsonable(rec)) + "\n").encode()
        with self.path.open("ab") as fh:
            end = fh.tell()
            try:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    fh.truncate(end)  # no torn line left behind
                raise

    def begin(self, header: Mapping[str, Any]) -> None:
        key = str(header["key"])
        if key in self.completed:
            raise ValueError(f"episode {key!r} is already complete in {self.path}")
        self._open = key
        self._write(header)

    def round(self, record: Mapping[str, Any]) -> None:
        if self._open is None or record["key"] != self._open:
            raise ValueError(
                "round record outside its episode: call begin() with the episode's header first"
            )
        self._write(record)

    def end(self, key: str, *, rounds: int, wall_s: float, episode_return: float) -> None:
        if self._open != key:
            raise ValueError(f"end({key!r}) does not match the open episode {self._open!r}")
        self._write(
            {
                "type": "end",
                "key": key,
                "rounds": int(rounds),
                "wall_s": float(wall_s),
                "return": float(episode_return),
            }
        )
        self.completed.add(key)
        self._open = None
