"""Typed training arguments and the run directory shared by the training scripts.

Arguments: each script declares a dataclass of its hyperparameters (CleanRL style). Values come
from, in increasing priority: the dataclass defaults, a YAML file (``--train-config``, keys =
field names, e.g. ``configs/train/ppo.yaml``) and command-line flags (``--n-envs 4``). Unknown
YAML keys are rejected with a "did you mean" hint, like the env config.

Run directory (``runs/<name>/``)::

    args.yaml            the resolved training arguments
    env_config.yaml      the fully resolved EnvConfig (reload with EnvConfig.from_yaml)
    meta.json            algorithm, seed, git commit (+ dirty flag), command, versions, start time
    model.zip            final model            vecnormalize.pkl   its observation/reward normaliser
    best/                best model on the held-out evaluation seeds (+ its normaliser)
    checkpoints/         ckpt_<steps>_steps.zip + ckpt_vecnormalize_<steps>_steps.pkl
    evaluations.csv      one row per evaluation during training (the learning curve)
    eval_state.json      best score so far (kept across --resume)
    metrics.json         final summary: steps, wall-clock, frames/s, best and last evaluation
    tb/                  TensorBoard logs (tensorboard --logdir runs/)
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import platform
import re
import subprocess
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fedenv.config import EnvConfig, resolve_config

__all__ = ["parse_args", "args_from_mapping", "args_to_dict", "RunDir", "git_commit", "env_config_of", "default_run_name", "prepare_run", "finish_run"]

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


def _converter(hint: Any, name: str) -> Any:
    base, optional = _unwrap_optional(hint)

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')} expects {base.__name__}, got {text!r}") from None

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
    if base in (int, str) and not isinstance(value, base):
        raise ValueError(f"{cls_name}.{name} must be {base.__name__}, got {value!r}")
    return value


def args_from_mapping(cls: type[A], data: dict[str, Any], source: str) -> dict[str, Any]:
    """Validate a mapping of argument values against the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown key {key!r} in {source}.{hint} Valid keys: {', '.join(sorted(valid))}.")
        out[name] = _check_type(cls.__name__, name, hints[name], value)
    return out


def parse_args(cls: type[A], argv: Sequence[str] | None = None, description: str | None = None) -> tuple[A, set[str]]:
    """Build ``cls`` from defaults < ``--train-config`` YAML < command-line flags.

    Every field becomes a flag (``n_envs`` -> ``--n-envs``); booleans get ``--x/--no-x``,
    lists take several values. The field's ``metadata["help"]`` is its help text.

    Returns:
        The arguments and the names of the fields set explicitly (YAML or command line).
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        flag = "--" + f.name.replace("_", "-")
        base, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) in (list, tuple):
            (item,) = typing.get_args(base)[:1]
            parser.add_argument(flag, nargs="+", type=_converter(item, f.name), **kw)
        else:
            parser.add_argument(flag, type=_converter(hints[f.name], f.name), **kw)
    given = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    train_config = given.get("train_config")
    if train_config:
        path = Path(train_config)
        if not path.is_file():
            raise FileNotFoundError(f"--train-config {str(path)!r} does not exist (see configs/train/)")
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
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return {"commit": head, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def env_config_of(spec: str | EnvConfig) -> EnvConfig:
    """The env config of ``--config``: a preset name or a YAML file (full or partial override)."""
    return resolve_config(spec)


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


_CKPT = re.compile(r"ckpt_(\d+)_steps\.zip$")


class RunDir:
    """The files of one training run (module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

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
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    # contents
    def latest_checkpoint(self) -> tuple[int, Path, Path] | None:
        """(steps, model, normaliser) of the checkpoint with the most steps, or None."""
        best: tuple[int, Path, Path] | None = None
        if self.checkpoints.is_dir():
            for p in self.checkpoints.iterdir():
                m = _CKPT.search(p.name)
                if m and (best is None or int(m.group(1)) > best[0]):
                    steps = int(m.group(1))
                    best = (steps, p, self.checkpoints / f"ckpt_vecnormalize_{steps}_steps.pkl")
        return best

    def read_args(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "args.yaml").read_text())

    def read_meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())

    def env_config(self) -> EnvConfig:
        return EnvConfig.from_dict(yaml.safe_load((self.path / "env_config.yaml").read_text()))

    def write_start(self, algo: str, args: Any, config: EnvConfig, resumed_from: int | None = None) -> None:
        """Write args.yaml, env_config.yaml and meta.json (appending the resume history)."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "args.yaml").write_text(yaml.safe_dump(args_to_dict(args), sort_keys=False))
        config.to_yaml(self.path / "env_config.yaml")
        meta_path = self.path / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": [sys.executable, *sys.argv], "resumed_from_step": resumed_from, **git_commit()}
        meta.update(
            algo=algo,
            seed=args.seed,
            **git_commit(),
            versions=_versions(),
            machine={"platform": platform.platform(), "cpus": os.cpu_count()},
        )
        meta.setdefault("sessions", []).append(session)
        meta_path.write_text(json.dumps(meta, indent=2))

    def read_metrics_or_empty(self) -> dict[str, Any]:
        return json.loads(self.metrics.read_text()) if self.metrics.is_file() else {}

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self.metrics.write_text(json.dumps(metrics, indent=2, default=float))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def default_run_name(algo: str, config_spec: str, policy: str, seed: int) -> str:
    stem = Path(config_spec).stem if config_spec.endswith((".yaml", ".yml")) else config_spec
    return f"{algo}_{stem}_{policy}_s{seed}_{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run(args: Any, given: set[str], algo: str, args_cls: type[Any]) -> tuple[Any, RunDir, EnvConfig, tuple[int, Path, Path] | None]:
    """Create a new run directory, or reopen one for ``--resume``.

    On resume the saved arguments are reloaded and the flags given now override them (e.g. a
    larger ``--total-timesteps``); the env config is the saved one.

    Returns:
        The effective arguments, the run directory, the env config and the newest checkpoint
        ``(steps, model, normaliser)`` to resume from (None for a new run).
    """
    if args.resume:
        if not args.run_dir:
            raise ValueError("--resume needs --run-dir <the run to continue>")
        run = RunDir(args.run_dir)
        if not (run.path / "args.yaml").is_file():
            raise FileNotFoundError(f"--resume: {run.path} is not a run directory (no args.yaml)")
        saved = args_from_mapping(args_cls, run.read_args(), str(run.path / "args.yaml"))
        saved.update({k: getattr(args, k) for k in given})
        saved["resume"] = True
        args = args_cls(**saved)
        config = run.env_config()
        latest = run.latest_checkpoint()
        if latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {run.checkpoints}; start a new run instead")
        if run.read_meta().get("algo") != algo:
            raise ValueError(f"--resume: {run.path} was trained with {run.read_meta().get('algo')}, not {algo}")
    else:
        config = env_config_of(args.config)
        run = RunDir(args.run_dir or Path("runs") / default_run_name(algo, args.config, args.policy, args.seed))
        if run.model.exists() or run.latest_checkpoint() is not None:
            raise FileExistsError(f"{run.path} already holds a run; pass --resume to continue it, or another --run-dir")
        latest = None
    run.write_start(algo, args, config, resumed_from=latest[0] if latest else None)
    return args, run, config, latest


def finish_run(run: RunDir, model: Any, venv: Any, evaluator: Any, *, algo: str, args: Any, start_steps: int, wall_s: float) -> dict[str, Any]:
    """Save the final model and normaliser, evaluate it once more, write metrics.json."""
    import shutil

    from agents.envs import episode_seeds

    model.save(run.model)
    venv.save(str(run.normalizer))
    if args.eval_freq > 0 and evaluator.last.get("timesteps") != model.num_timesteps:
        evaluator.init_callback(model)
        evaluator.evaluate()
    if not run.best_model.is_file():  # evaluation off: the final model is the best one known
        run.best_model.parent.mkdir(exist_ok=True)
        shutil.copy(run.model, run.best_model)
        shutil.copy(run.normalizer, run.best_normalizer)
    previous = run.read_metrics_or_empty()
    trained = model.num_timesteps - start_steps
    metrics = {
        "algo": algo,
        "policy": args.policy,
        "timesteps": int(model.num_timesteps),
        "wall_s_this_session": wall_s,
        "wall_s_total": previous.get("wall_s_total", 0.0) + wall_s,
        "fps_this_session": trained / wall_s if wall_s > 0 else None,
        "best_eval_return": evaluator.best_return,
        "last_eval": evaluator.last,
        "eval_seeds": episode_seeds(args.eval_seed, args.eval_episodes),
    }
    run.write_metrics(metrics)
    print(f"[done] {run.path}: {model.num_timesteps:,d} steps in {wall_s:.0f} s; best validation return {evaluator.best_return:.2f}", flush=True)
    return metrics
