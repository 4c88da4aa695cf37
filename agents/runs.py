"""Typed training arguments and the run directory shared by the training scripts.

Arguments: each script declares a dataclass of its hyperparameters (CleanRL style). Values come
from, in increasing priority: the dataclass defaults, a YAML file (``--train-config``, keys =
field names, e.g. ``configs/train/ppo.yaml``) and command-line flags (``--n-envs 4``). Unknown
YAML keys are rejected with a "did you mean" hint, like the env config, and a value outside a
field's range (``arg_help(..., Range(ge=1))``) with the range it must lie in, from either source.

Run directory (``runs/<name>/``)::

    args.yaml            the resolved training arguments (last line: # sha256 of the rest)
    env_config.yaml      the fully resolved EnvConfig (reload with RunDir.env_config; same
                         checksum line)
    meta.json            algorithm, seed, git commit (+ dirty flag), versions, and per session its
                         command, start time, resume step and wall time (updated at every save)
    model.zip            final model            vecnormalize.pkl   its observation/reward normaliser
    best/                best model on the held-out evaluation seeds (+ its normaliser)
    checkpoints/         ckpt_<steps>_steps.zip + ckpt_vecnormalize_<steps>_steps.pkl
    evaluations.csv      one row per evaluation during training (the learning curve)
    eval_state.json      best score and last evaluation (a summary; rebuilt from the above on
                         resume)
    metrics.json         final summary: steps, wall-clock (this session and the whole run),
                         frames/s, best and last evaluation
    tb/                  TensorBoard logs (tensorboard --logdir runs/)

Every file but tb/ is written atomically (:func:`replacing`), and ``--resume`` continues from
the newest intact model (:meth:`RunDir.resume_point`), so a run survives a kill or a full disk
at any point (docs/agents.md, "Resume and fault tolerance").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import hashlib
import json
import math
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
import typing
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fedenv import atomic
from fedenv.config import EnvConfig, Range
from fedenv.scenarios import named_config

__all__ = [
    "arg_help",
    "parse_args",
    "args_from_mapping",
    "args_to_dict",
    "RunDir",
    "ResumePoint",
    "RunRepairWarning",
    "git_commit",
    "default_run_name",
    "prepare_run",
    "finish_run",
    "replacing",
    "write_file",
    "copy_file",
    "save_model",
    "save_normalizer",
    "pair_problem",
    "model_steps",
]

A = TypeVar("A")
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- arguments
def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def arg_help(text: str, bounds: Range | None = None) -> dict[str, Any]:
    """A training argument's field metadata: its help text and the range of values it accepts
    (a :class:`fedenv.config.Range`, as the env config's fields declare theirs), which
    :func:`parse_args` checks on the command line and in ``--train-config`` files."""
    return {"help": text} if bounds is None else {"help": text, "bounds": bounds}


def _out_of_bounds(bounds: Range | None, value: Any) -> str | None:
    """``must be >= 1, got 0`` when ``value`` is outside ``bounds`` (NaN is outside every
    bound), else None."""
    if bounds is None or value is None or bounds.violated(float(value)) is None:
        return None
    return f"must be {bounds.describe()}, got {value!r}"


def _converter(hint: Any, name: str, bounds: Range | None = None) -> Any:
    base, optional = _unwrap_optional(hint)

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--{name.replace('_', '-')} expects {base.__name__}, got {text!r}"
            ) from None
        problem = _out_of_bounds(bounds, value)
        if problem is not None:  # (argparse names the flag)
            raise argparse.ArgumentTypeError(problem)
        return value

    return convert


def _check_type(cls_name: str, name: str, hint: Any, value: Any) -> Any:
    """Coerce a YAML value to the field's type; raise a clear error when it does not fit."""
    base, optional = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{cls_name}.{name} must not be null")
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        (item,) = typing.get_args(base)[:1] or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{cls_name}.{name} must be a list, got {value!r}")
        return [_check_type(cls_name, name, item, v) for v in value]
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{cls_name}.{name} must be true or false, got {value!r}")
        return value
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if base in (int, float, str) and not isinstance(value, base):
        raise ValueError(f"{cls_name}.{name} must be {base.__name__}, got {value!r}")
    return value


def args_from_mapping(cls: type[A], data: dict[str, Any], source: str) -> dict[str, Any]:
    """Validate a mapping of argument values against the dataclass ``cls`` (names, types and
    ranges)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    valid = list(fields)
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown key {key!r} in {source}.{hint} Valid keys: {', '.join(sorted(valid))}."
            )
        out[name] = _check_type(cls.__name__, name, hints[name], value)
        problem = _out_of_bounds(fields[name].metadata.get("bounds"), out[name])
        if problem is not None:
            raise ValueError(f"{name} in {source} {problem}")
    return out


def parse_args(
    cls: type[A], argv: Sequence[str] | None = None, description: str | None = None
) -> tuple[A, set[str]]:
    """Build ``cls`` from defaults < ``--train-config`` YAML < command-line flags.

    Every field becomes a flag (``n_envs`` -> ``--n-envs``); booleans get ``--x/--no-x``,
    lists take several values. The field's ``metadata["help"]`` is its help text.

    Returns:
        The arguments and the names of the fields set explicitly (YAML or command line).
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        flag = "--" + f.name.replace("_", "-")
        base, _ = _unwrap_optional(hints[f.name])
        default: Any
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(
                f"{cls.__name__}.{f.name} has no default; every field of an args dataclass "
                "needs one"
            )
        # argparse %-formats help strings: a literal % (e.g. "95% quantile") must be doubled
        accepts = f"; {f.metadata['bounds'].describe()}" if "bounds" in f.metadata else ""
        help_text = f"{f.metadata.get('help', '')} (default: {default}{accepts})".replace("%", "%%")
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) in (list, tuple):
            (item,) = typing.get_args(base)[:1]
            parser.add_argument(flag, nargs="+", type=_converter(item, f.name), **kw)
        else:
            bounds = f.metadata.get("bounds")
            if bounds is not None and base not in (int, float):
                raise TypeError(f"{cls.__name__}.{f.name}: a range needs an int or float field")
            parser.add_argument(flag, type=_converter(hints[f.name], f.name, bounds), **kw)
    given = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    train_config = given.get("train_config")
    if train_config:
        path = Path(train_config)
        if not path.is_file():
            raise FileNotFoundError(
                f"--train-config {str(path)!r} does not exist (see configs/train/)"
            )
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of argument names to values")
        values.update(args_from_mapping(cls, data, str(path)))
    values.update(given)
    return cls(**values), set(values)


def args_to_dict(args: Any) -> dict[str, Any]:
    return dataclasses.asdict(args)


# ------------------------------------------------------------------------ run directory
def git_commit() -> dict[str, Any]:
    """Commit of the source tree (and whether it had uncommitted changes), or 'unknown'."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"commit": head, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def _versions() -> dict[str, str]:
    import gymnasium
    import numpy
    import stable_baselines3
    import torch

    import fedenv

    return {
        "python": platform.python_version(),
        "fedenv": fedenv.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
    }


# ------------------------------------------------------------- files that survive a kill
def replacing(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """Write a run file atomically (:func:`fedenv.atomic.replacing`), with the run directory's
    advice on a failed write (a full disk: free space and continue with --resume)::

        with replacing(run.model) as tmp:
            model.save(tmp)
    """
    return atomic.replacing(path, _WRITE_HINTS)


_READ_ONLY = (
    "The run directory must be writable: fix its permissions, or copy it elsewhere and pass the "
    "copy as --run-dir."
)
_WRITE_HINTS = {
    errno.ENOSPC: (
        "The disk is full; the files saved before are intact: free some space and continue with "
        "--resume."
    ),
    errno.EDQUOT: (
        "The disk quota is exhausted; the files saved before are intact: free some space and "
        "continue with --resume."
    ),
    errno.EACCES: _READ_ONLY,
    errno.EPERM: _READ_ONLY,
    errno.EROFS: _READ_ONLY,
}


def write_file(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write text or bytes to a run file atomically (:func:`replacing`)."""
    atomic.write_file(path, data, _WRITE_HINTS)


def _damaged(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path}: {problem}. The run directory is damaged: restore {path.name} from a copy "
        "of the run, "
        "or start a new run in another --run-dir"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise _damaged(path, f"not valid JSON, truncated or corrupt ({err})") from None
    except UnicodeDecodeError as err:
        raise _damaged(path, f"not text, corrupt ({err})") from None
    if not isinstance(data, dict):
        raise _damaged(path, f"expected a JSON object, found {type(data).__name__}")
    return data


#: Last line of the YAML files a run writes: the SHA-256 of everything above it.
_SUM = re.compile(r"# sha256 ([0-9a-f]{64})\n?$")
#: meta.json's ``run_format`` from which args.yaml and env_config.yaml carry the checksum line.
RUN_FORMAT = 2


def _checked_yaml(data: dict[str, Any]) -> str:
    text = yaml.safe_dump(data, sort_keys=False)
    return f"{text}# sha256 {hashlib.sha256(text.encode()).hexdigest()}\n"


def _read_checked_yaml(path: Path, required: bool) -> dict[str, Any]:
    """A YAML mapping written by :func:`_checked_yaml`; a missing or wrong checksum is an error
    (a missing one only where the run's format promises one: runs of older versions lack it)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise _damaged(path, f"not text, corrupt ({err})") from None
    m = _SUM.search(text)
    if m is not None:
        body = text[: m.start()]
        if hashlib.sha256(body.encode()).hexdigest() != m.group(1):
            raise _damaged(path, "its content does not match its checksum line (corrupt or edited)")
    elif required:
        raise _damaged(path, "truncated: its last line, the checksum, is missing")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _damaged(path, f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise _damaged(path, f"expected a mapping, found {type(data).__name__}")
    return data


# ------------------------------------------------------------------ checkpoints, resume
_CKPT = re.compile(r"ckpt_(\d+)_steps\.zip$")
_CKPT_FILE = re.compile(r"ckpt_(?:vecnormalize_|replay_buffer_)?(\d+)_steps\.(?:zip|pkl)$")


class RunRepairWarning(UserWarning):
    """A run file was skipped, dropped or rebuilt on the way to resuming (the message says which and
    why)."""


class ResumePoint(typing.NamedTuple):
    """The model (and normaliser) a run continues from."""

    steps: int
    model: Path
    normalizer: Path
    label: str


def model_steps(path: Path) -> int:
    """``num_timesteps`` recorded in an SB3 model zip (raises on a damaged zip)."""
    with zipfile.ZipFile(path) as zf:
        return int(json.loads(zf.read("data"))["num_timesteps"])


def save_normalizer(norm: Any, path: Path, steps: int) -> None:
    """Save a ``VecNormalize`` atomically, stamped with the model step it belongs to (the
    stamp pairs it with its model.zip: a kill between the two saves cannot go unnoticed)."""
    norm.saved_at_step = int(steps)
    with replacing(path) as tmp:
        norm.save(str(tmp))


def save_model(model: Any, path: Path) -> None:
    """Save an SB3 model atomically."""
    with replacing(path) as tmp:
        model.save(tmp)


def copy_file(src: Path, dest: Path) -> None:
    """Copy ``src`` onto ``dest`` atomically."""
    with replacing(dest) as tmp:
        shutil.copyfile(src, tmp)


def pair_problem(model: Path, normalizer: Path, *, stamped: bool = False) -> str | None:
    """Why ``model`` and its ``normalizer`` cannot be loaded together, or None when they can.

    The zip must open with every member passing its CRC check (a truncated or bit-flipped file
    fails), and the normaliser must unpickle; when the normaliser carries the step stamp of
    :func:`save_normalizer` it must match the model's. With ``stamped`` the stamp is required.
    """
    if not model.is_file():
        return f"{model.name} is missing"
    try:
        with zipfile.ZipFile(model) as zf:
            bad = zf.testzip()
            if bad is not None:
                return f"{model.name} is corrupt (its member {bad!r} fails the CRC check)"
            steps = int(json.loads(zf.read("data"))["num_timesteps"])
            if "policy.pth" not in zf.namelist():
                return f"{model.name} holds no policy.pth"
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, ValueError) as err:
        return f"{model.name} does not open ({type(err).__name__}: {err})"
    if not normalizer.is_file():
        return f"its normaliser {normalizer.name} is missing"
    try:
        with normalizer.open("rb") as fh:
            norm = pickle.load(fh)
    except Exception as err:  # a damaged pickle raises anything: every one means "not loadable"
        return f"its normaliser {normalizer.name} does not load ({type(err).__name__}: {err})"
    stamp = getattr(norm, "saved_at_step", None)
    if stamp is None and stamped:
        return f"its normaliser {normalizer.name} does not record the step it was saved at"
    if stamp is not None and stamp != steps:
        return (
            f"its normaliser {normalizer.name} was saved at step {stamp:,d}, the model at step "
            f"{steps:,d}"
        )
    return None


class RunDir:
    """The files of one training run (module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._meta: dict[str, Any] | None = None
        self._session_t0 = time.perf_counter()

    # paths
    @property
    def model(self) -> Path:
        return self.path / "model.zip"

    @property
    def normalizer(self) -> Path:
        return self.path / "vecnormalize.pkl"

    @property
    def best_model(self) -> Path:
        return self.path / "best" / "model.zip"

    @property
    def best_normalizer(self) -> Path:
        return self.path / "best" / "vecnormalize.pkl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def evaluations(self) -> Path:
        return self.path / "evaluations.csv"

    @property
    def eval_state(self) -> Path:
        return self.path / "eval_state.json"

    @property
    def args_file(self) -> Path:
        return self.path / "args.yaml"

    @property
    def is_run(self) -> bool:
        """Whether the directory holds a run: its args.yaml, written when training starts."""
        return self.args_file.is_file()

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    def checkpoint(self, steps: int, kind: str = "") -> Path:
        """A checkpoint file: the model (``kind=""``), ``vecnormalize_`` or ``replay_buffer_``."""
        return self.checkpoints / f"ckpt_{kind}{steps}_steps.{'zip' if not kind else 'pkl'}"

    # contents
    def _checkpoint_steps(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(
            (int(m.group(1)) for p in self.checkpoints.iterdir() if (m := _CKPT.search(p.name))),
            reverse=True,
        )

    def intact_checkpoints(self) -> Iterator[tuple[int, Path, Path]]:
        """(steps, model, normaliser) of every intact checkpoint (:func:`pair_problem`), newest
        first."""
        for steps in self._checkpoint_steps():
            model, norm = self.checkpoint(steps), self.checkpoint(steps, "vecnormalize_")
            if pair_problem(model, norm) is None:
                yield steps, model, norm

    def latest_checkpoint(self) -> tuple[int, Path, Path] | None:
        """(steps, model, normaliser) of the newest intact checkpoint, or None."""
        return next(self.intact_checkpoints(), None)

    def resume_point(self) -> tuple[ResumePoint | None, list[str]]:
        """The newest intact model to continue from, and why each newer one was skipped.

        Candidates are the final model (model.zip with its step-stamped normaliser) and every
        checkpoint; the final model wins a tie, as it holds the update of the last rollout.
        """
        skipped: list[str] = []
        final: ResumePoint | None = None
        if self.model.is_file():
            problem = pair_problem(self.model, self.normalizer, stamped=True)
            if problem is None:
                final = ResumePoint(
                    model_steps(self.model),
                    self.model,
                    self.normalizer,
                    "model.zip (the final model)",
                )
            elif (
                "does not record the step" in problem and self._final_steps_of_old_run() is not None
            ):
                final = ResumePoint(
                    model_steps(self.model),
                    self.model,
                    self.normalizer,
                    "model.zip (the final model)",
                )
            else:
                skipped.append(f"model.zip: {problem}")
        for steps in self._checkpoint_steps():
            if final is not None and steps <= final.steps:
                break
            model, norm = self.checkpoint(steps), self.checkpoint(steps, "vecnormalize_")
            problem = pair_problem(model, norm)
            if problem is None:
                return ResumePoint(steps, model, norm, f"checkpoints/{model.name}"), skipped
            skipped.append(f"checkpoints/{model.name}: {problem}")
        return final, skipped

    def _final_steps_of_old_run(self) -> int | None:
        """A run of an older version stamps no normaliser: its final pair is trusted when
        metrics.json (written last) records the model's step count."""
        try:
            steps = model_steps(self.model)
            recorded = json.loads(self.metrics.read_text()).get("timesteps")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        return steps if recorded == steps else None

    def discard_after(self, steps: int) -> list[str]:
        """Rename the checkpoint files of steps after ``steps`` (a branch that resume abandons)
        to ``*.broken``, so that no later save is mixed with them; returns their names."""
        moved = []
        if self.checkpoints.is_dir():
            for p in sorted(self.checkpoints.iterdir()):
                m = _CKPT_FILE.search(p.name)
                if m and int(m.group(1)) > steps:
                    os.replace(p, p.with_name(p.name + ".broken"))
                    moved.append(p.name)
        return moved

    def remove_temporary_files(self) -> list[Path]:
        """Delete what killed writers left behind (:func:`replacing`'s ``.<name>.<pid>.tmp``)."""
        removed = []
        for folder in (self.path, self.path / "best", self.checkpoints):
            if folder.is_dir():
                for p in folder.iterdir():
                    if atomic.TEMPORARY.match(p.name) and p.is_file():
                        p.unlink()
                        removed.append(p)
        return removed

    def check_writable(self) -> None:
        """Raise a clear PermissionError unless files can be created in the run directory."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(
                dir=self.path, prefix=".write-probe.", suffix=f".{os.getpid()}.tmp"
            )
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise PermissionError(
                err.errno,
                f"cannot write in the run directory {self.path}: {err.strerror or err}. "
                f"{_READ_ONLY}",
            ) from err

    def run_format(self) -> int:
        meta = self.path / "meta.json"
        return int(self.read_meta().get("run_format", 1)) if meta.is_file() else 1

    def read_args(self) -> dict[str, Any]:
        return _read_checked_yaml(self.args_file, required=self.run_format() >= RUN_FORMAT)

    def read_meta(self) -> dict[str, Any]:
        return _read_json(self.path / "meta.json")

    def env_config(self) -> EnvConfig:
        path = self.path / "env_config.yaml"
        data = _read_checked_yaml(path, required=self.run_format() >= RUN_FORMAT)
        try:
            return EnvConfig.from_dict(data)
        except (TypeError, ValueError) as err:
            raise _damaged(path, f"not a valid env config ({err})") from None

    def write_start(
        self, algo: str, args: Any, config: EnvConfig, resumed_from: int | None = None
    ) -> None:
        """Write args.yaml, env_config.yaml and meta.json (appending this session to the
        history)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_file(self.args_file, _checked_yaml(args_to_dict(args)))
        write_file(self.path / "env_config.yaml", _checked_yaml(config.to_dict()))
        meta = self.read_meta() if (self.path / "meta.json").is_file() else {}
        session = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": [sys.executable, *sys.argv],
            "resumed_from_step": resumed_from,
            "wall_s": 0.0,
            **git_commit(),
        }
        meta.update(
            algo=algo,
            seed=args.seed,
            run_format=RUN_FORMAT,
            **git_commit(),
            versions=_versions(),
            machine={"platform": platform.platform(), "cpus": os.cpu_count()},
        )
        meta.setdefault("sessions", []).append(session)
        self._meta = meta
        self._session_t0 = time.perf_counter()
        write_file(self.path / "meta.json", json.dumps(meta, indent=2))

    def elapsed_s(self) -> float:
        """Wall-clock seconds of the whole run: every earlier session (up to its last save) and this
        one."""
        sessions = (self._meta or {}).get("sessions", [])
        return (
            float(sum(float(s.get("wall_s") or 0.0) for s in sessions[:-1]))
            + time.perf_counter()
            - self._session_t0
        )

    def record_session(self) -> float:
        """Write this session's wall time into meta.json (after every checkpoint and evaluation,
        so that a killed session still counts up to its last save); returns :meth:`elapsed_s`."""
        total = self.elapsed_s()
        if self._meta is not None:
            self._meta["sessions"][-1]["wall_s"] = time.perf_counter() - self._session_t0
            total = float(sum(float(s.get("wall_s") or 0.0) for s in self._meta["sessions"]))
            write_file(self.path / "meta.json", json.dumps(self._meta, indent=2))
        return total

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_file(self.metrics, json.dumps(metrics, indent=2, default=float))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def default_run_name(algo: str, config_spec: str, policy: str, seed: int) -> str:
    stem = Path(config_spec).stem if config_spec.endswith((".yaml", ".yml")) else config_spec
    return f"{algo}_{stem}_{policy}_s{seed}_{time.strftime('%Y%m%d-%H%M%S')}"


def _warn(message: str) -> None:
    warnings.warn(message, RunRepairWarning, stacklevel=3)


def prepare_run(
    args: Any, given: set[str], algo: str, args_cls: type[Any]
) -> tuple[Any, RunDir, EnvConfig, ResumePoint | None]:
    """Create a new run directory, or reopen one for ``--resume``.

    On resume the saved arguments are reloaded and the flags given now override them (e.g. a
    larger ``--total-timesteps``); the env config is the saved one. The run continues from the
    newest intact model (:meth:`RunDir.resume_point`): a damaged newer checkpoint is skipped
    with a :class:`RunRepairWarning` and renamed ``*.broken``, and what killed writers left
    behind is deleted.

    Returns:
        The effective arguments, the run directory, the env config and the point to resume
        from (None for a new run).

    Raises:
        ValueError: a run file is truncated or corrupt (the message names it and what to do).
        PermissionError: the run directory is not writable.
    """
    if args.resume:
        if not args.run_dir:
            raise ValueError("--resume needs --run-dir <the run to continue>")
        run = RunDir(args.run_dir)
        if not run.is_run:
            raise FileNotFoundError(f"--resume: {run.path} is not a run directory (no args.yaml)")
        meta = run.read_meta() if (run.path / "meta.json").is_file() else {}
        if meta.get("algo", algo) != algo:
            raise ValueError(
                f"--resume: {run.path} was trained with {meta.get('algo')}, not {algo}"
            )
        saved = args_from_mapping(args_cls, run.read_args(), str(run.args_file))
        saved.update({k: getattr(args, k) for k in given})
        saved["resume"] = True
        args = args_cls(**saved)
        config = run.env_config()
        run.check_writable()
        latest, skipped = run.resume_point()
        if latest is None:
            why = f" (skipped: {'; '.join(skipped)})" if skipped else ""
            raise FileNotFoundError(
                f"--resume: no intact checkpoint in {run.checkpoints}{why}; start a new run instead"
            )
        if skipped:
            _warn(
                f"--resume: skipped {'; '.join(skipped)}; continuing from {latest.label} at "
                f"step {latest.steps:,d}"
            )
        moved = run.discard_after(latest.steps)
        if moved:
            _warn(
                f"--resume: renamed the checkpoint files after step {latest.steps:,d} to "
                f"*.broken (a branch this resume abandons): {', '.join(moved)}"
            )
        run.remove_temporary_files()
    else:
        config = named_config(args.config)
        run = RunDir(
            args.run_dir
            or Path("runs") / default_run_name(algo, args.config, args.policy, args.seed)
        )
        if run.model.exists() or run._checkpoint_steps():
            raise FileExistsError(
                f"{run.path} already holds a run; pass --resume to continue it, or another "
                "--run-dir"
            )
        run.check_writable()
        run.remove_temporary_files()
        latest = None
    run.write_start(algo, args, config, resumed_from=latest.steps if latest else None)
    return args, run, config, latest


def finish_run(
    run: RunDir,
    model: Any,
    venv: Any,
    evaluator: Any,
    *,
    algo: str,
    args: Any,
    start_steps: int,
    wall_s: float,
) -> dict[str, Any]:
    """Save the final model, normaliser (and replay buffer), evaluate it once more, write
    metrics.json."""
    from agents.envs import episode_seeds

    steps = int(model.num_timesteps)
    save_normalizer(
        venv, run.normalizer, steps
    )  # the normaliser first: model.zip completes the pair
    if getattr(model, "replay_buffer", None) is not None:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        with replacing(run.checkpoint(steps, "replay_buffer_")) as tmp:
            model.save_replay_buffer(tmp)
        for p in run.checkpoints.glob("ckpt_replay_buffer_*_steps.pkl"):
            if p.name != run.checkpoint(steps, "replay_buffer_").name:
                p.unlink()
    save_model(model, run.model)
    evaluator.restore(model)  # when no training ran in this session (nothing left to train)
    if args.eval_freq > 0 and evaluator.last.get("timesteps") != steps:
        evaluator.evaluate()
    if args.eval_freq <= 0 or pair_problem(run.best_model, run.best_normalizer) is not None:
        # evaluation off: the final model is the best one known; or best/ could not be repaired
        run.best_model.parent.mkdir(exist_ok=True)
        copy_file(run.normalizer, run.best_normalizer)
        copy_file(run.model, run.best_model)
    total_s = run.record_session()
    trained = steps - start_steps
    metrics = {
        "algo": algo,
        "policy": args.policy,
        "timesteps": steps,
        "wall_s_this_session": wall_s,
        "wall_s_total": total_s,
        "fps_this_session": trained / wall_s if wall_s > 0 else None,
        "best_eval_return": evaluator.best_return,
        "best_eval": evaluator.best_row(),
        "selection": evaluator.selection.to_dict(),
        "last_eval": evaluator.last,
        "eval_seeds": episode_seeds(args.eval_seed, args.eval_episodes),
    }
    run.write_metrics(metrics)
    best = metrics["best_eval"] or {}
    print(
        f"[done] {run.path}: {steps:,d} steps in {wall_s:.0f} s; best model (rule "
        f"{evaluator.selection.kind}): step {best.get('timesteps', 'none')}, validation return "
        f"{evaluator.best_return:.2f}, final accuracy {best.get('final_accuracy', math.nan):.4f}",
        flush=True,
    )
    return metrics
