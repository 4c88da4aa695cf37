"""PPO from Ray RLlib on FedLoRAWireless-v0, on one machine or on a Ray cluster.

    python -m agents.train_rllib --env-runners 2 --iterations 20            # local Ray instance
    python -m agents.train_rllib --run-dir runs/rllib --iterations 40 --resume
    python -m agents.train_rllib --address auto --env-runners 32 ...        # join a running cluster

(``python agents/train_rllib.py ...`` works too.) Needs the ``rllib`` extra:
``pip install 'fedenv[rllib]'``. Multi-node setup and the sampling-throughput figure:
docs/rllib.md.

* Ray: without ``--address`` a small local Ray instance is started (``--num-cpus``, default one
  CPU per env runner) and shut down at the end. ``--address auto`` joins the cluster that
  ``ray start`` runs on this node, ``--address HOST:PORT`` the cluster whose head listens there;
  an address where nothing answers fails within ``--connect-timeout-s`` (Ray itself would
  retry for minutes).
* The env: registered with RLlib's registry (``ray.tune.registry.register_env``) as
  ``FedLoRAWireless-v0``; the fully resolved :class:`~fedenv.config.EnvConfig` travels as
  RLlib's ``env_config`` mapping, so worker nodes need fedenv installed but no config file.
* Action form: :class:`fedenv.wrappers.DictAction`, ``{component: Box(-1, 1, (K,))}``. RLlib's
  default catalog rejects multi-dimensional ``Box`` actions ("Action space has multiple
  dimensions (10, 3)"), so the canonical (K, C) box would need a reshape; the Dict form needs
  none, gives a product of diagonal Gaussians (the same distribution family as one flat
  K * C Gaussian) and keeps the component names.
* Horizon: the observation carries the round fraction t / T, so the end of the T rounds is
  reported to RLlib as a termination (no value bootstrapped past the last round), as in
  :mod:`agents.train_ppo`.

Run directory (``runs/<name>/``)::

    args.yaml          the resolved training arguments
    env_config.yaml    the fully resolved EnvConfig
    meta.json          algorithm, seed, git commit, command, versions (one entry per session)
    progress.jsonl     one line per training iteration (returns, final accuracy, steps, times)
    checkpoints/       iter_<n>/: RLlib checkpoints (Algorithm.from_checkpoint(path) reloads one)
    metrics.json       final summary

``--resume`` reloads the saved arguments (flags given now override them, except the env
config) and continues from the newest checkpoint up to ``--iterations`` iterations in total;
the number of env runners and the address may change between sessions.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml

from agents.runs import arg_help, args_from_mapping, args_to_dict, git_commit, parse_args
from fedenv import ENV_ID
from fedenv.config import EnvConfig, Range
from fedenv.scenarios import named_config

__all__ = [
    "Args",
    "EXTRA_HINT",
    "build_algorithm",
    "check_reachable",
    "latest_checkpoint",
    "main",
    "make_rllib_env",
    "register_rllib_env",
    "require_ray",
]

EXTRA_HINT = "pip install 'fedenv[rllib]'"
_CKPT = re.compile(r"^iter_(\d+)$")


@dataclass
class Args:
    """RLlib PPO training arguments."""

    # --- experiment
    config: str = field(
        default="switching",
        metadata=arg_help("env preset, registered scenario (tight_energy, ...) or env config YAML"),
    )
    train_config: str | None = field(
        default=None, metadata=arg_help("YAML of these arguments; flags override it")
    )
    run_dir: str | None = field(
        default=None,
        metadata=arg_help("run directory (default runs/rllib_ppo_<config>_s<seed>_<time>)"),
    )
    resume: bool = field(
        default=False, metadata=arg_help("continue the run in --run-dir from its newest checkpoint")
    )
    seed: int = field(
        default=0,
        metadata=arg_help("seed of RLlib (torch, numpy, the env runners' envs)", Range(ge=0)),
    )
    iterations: int = field(
        default=20,
        metadata=arg_help(
            "training iterations of the run in total (resume continues up to it)", Range(ge=1)
        ),
    )
    checkpoint_every: int = field(
        default=5,
        metadata=arg_help("iterations between checkpoints (0 = only at the end)", Range(ge=0)),
    )
    # --- Ray
    address: str | None = field(
        default=None,
        metadata=arg_help(
            "Ray cluster to join: auto, or HOST:PORT of the head (default: start a local instance)"
        ),
    )
    connect_timeout_s: float = field(
        default=10.0,
        metadata=arg_help(
            "give up on an unreachable --address after this many seconds", Range(gt=0)
        ),
    )
    num_cpus: int | None = field(
        default=None,
        metadata=arg_help(
            "CPUs of the local Ray instance (default: one per env runner)", Range(ge=1)
        ),
    )
    object_store_mb: int = field(
        default=256, metadata=arg_help("object store of the local Ray instance, MiB", Range(ge=1))
    )
    env_runners: int = field(
        default=2,
        metadata=arg_help(
            "RLlib env runners (sampling actors); 0 samples in this process", Range(ge=0)
        ),
    )
    envs_per_env_runner: int = field(
        default=1, metadata=arg_help("envs stepped together by each env runner", Range(ge=1))
    )
    # --- network
    net_arch: list[int] = field(
        default_factory=lambda: [64, 64],
        metadata=arg_help("hidden layer widths (policy and value nets)"),
    )
    activation: str = field(default="tanh", metadata=arg_help("tanh or relu"))
    # --- PPO
    train_batch_size: int = field(
        default=2000,
        metadata=arg_help("env steps sampled per iteration (all runners together)", Range(ge=1)),
    )
    batch_size: int = field(default=250, metadata=arg_help("minibatch size", Range(ge=1)))
    n_epochs: int = field(default=10, metadata=arg_help("epochs per iteration", Range(ge=1)))
    learning_rate: float = field(default=3e-4, metadata=arg_help("Adam learning rate", Range(gt=0)))
    gamma: float = field(default=0.99, metadata=arg_help("discount factor", Range(ge=0, le=1)))
    gae_lambda: float = field(default=0.95, metadata=arg_help("GAE lambda", Range(ge=0, le=1)))
    clip_range: float = field(default=0.2, metadata=arg_help("PPO clip range", Range(gt=0)))
    ent_coef: float = field(default=0.0, metadata=arg_help("entropy bonus", Range(ge=0)))
    vf_coef: float = field(default=0.5, metadata=arg_help("value loss weight", Range(ge=0)))
    max_grad_norm: float = field(
        default=0.5, metadata=arg_help("gradient clipping norm", Range(gt=0))
    )
    torch_threads: int = field(
        default=1, metadata=arg_help("torch CPU threads of the learner (this process)", Range(ge=1))
    )


def validate(args: Args) -> None:
    """Reject bad arguments before anything starts, naming the flag."""

    def fail(flag: str, expected: str, value: Any) -> None:
        raise ValueError(f"--{flag} must be {expected}, got {value!r}")

    if args.iterations < 0:
        fail("iterations", "an integer >= 0", args.iterations)
    if args.checkpoint_every < 0:
        fail("checkpoint-every", "an integer >= 0 (0 = only at the end)", args.checkpoint_every)
    if args.env_runners < 0:
        fail("env-runners", "an integer >= 0", args.env_runners)
    if args.envs_per_env_runner < 1:
        fail("envs-per-env-runner", "an integer >= 1", args.envs_per_env_runner)
    if args.num_cpus is not None and args.num_cpus < 1:
        fail("num-cpus", "an integer >= 1", args.num_cpus)
    if args.object_store_mb < 75:
        fail("object-store-mb", "at least 75 (Ray's minimum object store)", args.object_store_mb)
    if not args.connect_timeout_s > 0:
        fail("connect-timeout-s", "a positive number of seconds", args.connect_timeout_s)
    if args.train_batch_size < 1 or not 1 <= args.batch_size <= args.train_batch_size:
        fail(
            "batch-size",
            f"between 1 and --train-batch-size ({args.train_batch_size})",
            args.batch_size,
        )
    if args.n_epochs < 1:
        fail("n-epochs", "an integer >= 1", args.n_epochs)
    if args.activation not in ("tanh", "relu"):
        fail("activation", "tanh or relu", args.activation)
    if not args.net_arch or any(w < 1 for w in args.net_arch):
        fail("net-arch", "one or more positive layer widths", args.net_arch)
    if args.torch_threads < 1:
        fail("torch-threads", "an integer >= 1", args.torch_threads)


# ------------------------------------------------------------------------------- Ray
def require_ray() -> Any:
    """Import Ray and RLlib, or raise an ImportError that names the extra to install."""
    try:
        import ray
        from ray.rllib.algorithms.ppo import PPOConfig  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"agents.train_rllib needs Ray RLlib, which is not installed ({err}). "
            f"Install the extra: {EXTRA_HINT}   (see docs/rllib.md)"
        ) from err
    return ray


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            "--address must be 'auto' or HOST:PORT of a Ray head node (e.g. 10.0.0.1:6379), "
            f"got {address!r}"
        )
    return host.strip("[]"), int(port)


def _ray_bootstrap_address(address: str) -> str | None:
    """The HOST:PORT that ``ray.init(address=...)`` will contact, as Ray itself resolves it.

    Ray replaces a loopback host by the node's IP and reads ``auto`` from the file that
    ``ray start`` writes; this uses Ray's own (private) resolver when present.
    """
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    try:
        return canonicalize_bootstrap_address(address)
    except ConnectionError as err:  # "auto" and no cluster started on this node
        raise ConnectionError(
            f"--address {address!r}: {err} Start one with `ray start --head` (docs/rllib.md), "
            "or leave out --address to start a local Ray instance."
        ) from None


def check_reachable(address: str, timeout_s: float) -> str:
    """Fail fast, with a clear message, when no Ray head answers at ``address``.

    Ray's own client retries an unreachable GCS for minutes; this opens a TCP connection first
    (``timeout_s`` at most per candidate host) and raises ``ConnectionError`` if none answers.

    Args:
        address: ``auto`` or ``HOST:PORT`` (``ray://HOST:PORT`` for Ray Client).
        timeout_s: connection timeout, seconds.

    Returns:
        The HOST:PORT that answered.
    """
    target = address.split("://", 1)[1] if "://" in address else address
    candidates: list[str] = []
    if target != "auto":
        _split_host_port(target)
        candidates.append(target)
    resolved = _ray_bootstrap_address(target) if "://" not in address else None
    if resolved and resolved not in candidates:
        candidates.append(resolved)
    if not candidates:
        raise ConnectionError(
            f"--address {address!r}: could not resolve it to HOST:PORT; pass the head's HOST:PORT"
        )
    errors = []
    for candidate in candidates:
        host, port = _split_host_port(candidate)
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return candidate
        except OSError as err:
            errors.append(f"{candidate}: {err.strerror or err}")
    tried = "; ".join(errors)
    raise ConnectionError(
        f"no Ray cluster answers at --address {address!r} ({tried}; timeout {timeout_s:g} s). "
        "Check that `ray start --head` runs there and that the port is open, "
        "or leave out --address to start a local Ray instance."
    )


def connect(args: Args) -> bool:
    """Start a local Ray instance or join ``args.address``; True if this call did either.

    A Ray instance this process already runs (a test fixture, a notebook) is reused and left to
    its owner.
    """
    ray = require_ray()
    if ray.is_initialized():
        print("[ray] reusing the Ray instance this process already runs", flush=True)
        return False
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address == "local":
        num_cpus = args.num_cpus or max(args.env_runners, 1)
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=args.object_store_mb * 2**20,
            include_dashboard=False,
            address="local",
        )
        print(f"[ray] started a local Ray instance ({num_cpus} CPUs)", flush=True)
    else:
        reached = check_reachable(address, args.connect_timeout_s)
        try:
            ray.init(address=address)
        except (
            ConnectionError,
            getattr(ray.exceptions, "AuthenticationError", ConnectionError),
        ) as err:
            raise ConnectionError(
                f"{reached} answers but Ray could not join the cluster there ({err}). If the "
                "cluster uses "
                "token authentication (the default when ~/.ray/auth_token exists on the head), set "
                "RAY_AUTH_MODE=token and give this node the head's token (~/.ray/auth_token or "
                "RAY_AUTH_TOKEN); see docs/rllib.md."
            ) from err
        resources = ray.cluster_resources()
        print(
            f"[ray] joined the cluster at {reached}: {len(ray.nodes())} nodes, "
            f"{resources.get('CPU', 0):g} CPUs",
            flush=True,
        )
    return True


# ------------------------------------------------------------------------------- env
def make_rllib_env(env_config: dict[str, Any]) -> gym.Env[Any, Any]:
    """The env RLlib trains on, from its ``env_config`` (an EnvConfig mapping, may name a
    preset)."""
    from fedenv.env import FedLoRAWirelessEnv
    from fedenv.wrappers import DictAction, HorizonIsTermination

    return HorizonIsTermination(DictAction(FedLoRAWirelessEnv(config=dict(env_config))))


def register_rllib_env() -> str:
    """Register FedLoRAWireless-v0 (Dict actions) with RLlib's env registry; returns the name."""
    from ray.tune.registry import register_env

    register_env(ENV_ID, make_rllib_env)
    return ENV_ID


def _on_episode_end(*, episode: Any, metrics_logger: Any = None, **_: Any) -> None:
    """Log the final accuracy and mean energy backlog of every finished episode."""
    if metrics_logger is None:
        return
    info = episode.get_infos(-1)
    metrics_logger.log_value("final_accuracy", float(info["accuracy"]), reduce="mean")
    metrics_logger.log_value(
        "final_energy_backlog_j", float(info["energy_backlog"].mean()), reduce="mean"
    )


def build_algorithm(args: Args, env_config: EnvConfig, seed: int | None = None) -> Any:
    """The RLlib PPO algorithm of ``args`` on ``env_config`` (Ray must be initialised)."""
    require_ray()
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    name = register_rllib_env()
    config = (
        PPOConfig()
        .environment(name, env_config=env_config.to_dict())
        .env_runners(
            num_env_runners=args.env_runners,
            num_envs_per_env_runner=args.envs_per_env_runner,
            rollout_fragment_length="auto",
        )
        .learners(num_learners=0)
        .training(
            train_batch_size_per_learner=args.train_batch_size,
            minibatch_size=args.batch_size,
            num_epochs=args.n_epochs,
            lr=args.learning_rate,
            gamma=args.gamma,
            lambda_=args.gae_lambda,
            clip_param=args.clip_range,
            entropy_coeff=args.ent_coef,
            vf_loss_coeff=args.vf_coef,
            vf_clip_param=float(
                "inf"
            ),  # returns are O(10): RLlib's default clip (10) would bias the critic
            grad_clip=args.max_grad_norm,
            grad_clip_by="global_norm",
        )
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_hiddens=list(args.net_arch), fcnet_activation=args.activation
            )
        )
        .callbacks(on_episode_end=_on_episode_end)
        .debugging(seed=args.seed if seed is None else seed)
    )
    return config.build_algo()


# --------------------------------------------------------------------------- run directory
def latest_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[int, Path] | None:
    """(iteration, path) of the newest complete checkpoint in ``run_dir/checkpoints``, or None."""
    root = Path(run_dir) / "checkpoints"
    best: tuple[int, Path] | None = None
    if root.is_dir():
        for p in root.iterdir():
            m = _CKPT.match(p.name)
            if (
                m
                and (p / "rllib_checkpoint.json").is_file()
                and (best is None or int(m.group(1)) > best[0])
            ):
                best = (int(m.group(1)), p)
    return best


def _save_checkpoint(algo: Any, run: Path) -> Path:
    """Save atomically (write aside, then rename) so that a crash never leaves half a checkpoint."""
    final = run / "checkpoints" / f"iter_{algo.iteration:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp.resolve()))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _versions() -> dict[str, str]:
    import numpy
    import ray
    import torch

    import fedenv

    return {
        "python": platform.python_version(),
        "fedenv": fedenv.__version__,
        "ray": ray.__version__,
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "numpy": numpy.__version__,
    }


def prepare_run(
    args: Args, given: set[str]
) -> tuple[Args, Path, EnvConfig, tuple[int, Path] | None]:
    """Create a new run directory, or reopen one for ``--resume`` (no Ray needed).

    Returns:
        The effective arguments, the run directory, the env config and the newest checkpoint
        ``(iteration, path)`` to resume from (None for a new run).
    """
    if args.resume:
        if not args.run_dir:
            raise ValueError("--resume needs --run-dir <the run to continue>")
        run = Path(args.run_dir)
        if not (run / "args.yaml").is_file():
            raise FileNotFoundError(
                f"--resume: {run} is not a run directory of agents.train_rllib (no args.yaml)"
            )
        meta = json.loads((run / "meta.json").read_text()) if (run / "meta.json").is_file() else {}
        if meta.get("algo") != "rllib_ppo":
            raise ValueError(
                f"--resume: {run} was trained with {meta.get('algo')!r}, not rllib_ppo"
            )
        saved = args_from_mapping(
            Args, yaml.safe_load((run / "args.yaml").read_text()), str(run / "args.yaml")
        )
        env_config = EnvConfig.from_dict(yaml.safe_load((run / "env_config.yaml").read_text()))
        if "config" in given and named_config(args.config) != env_config:
            raise ValueError(
                f"--resume: --config {args.config!r} differs from the run's env config "
                f"({run / 'env_config.yaml'}); leave it out"
            )
        saved.update({k: getattr(args, k) for k in given})
        saved["resume"] = True
        args = Args(**saved)
        latest = latest_checkpoint(run)
        if latest is None:
            raise FileNotFoundError(
                f"--resume: no checkpoint in {run / 'checkpoints'}; start a new run instead"
            )
    else:
        env_config = named_config(args.config)
        stem = Path(args.config).stem if args.config.endswith((".yaml", ".yml")) else args.config
        run = Path(
            args.run_dir
            or Path("runs") / f"rllib_ppo_{stem}_s{args.seed}_{time.strftime('%Y%m%d-%H%M%S')}"
        )
        if latest_checkpoint(run) is not None or (run / "args.yaml").exists():
            raise FileExistsError(
                f"{run} already holds a run; pass --resume to continue it, or another --run-dir"
            )
        latest = None
    validate(args)
    return args, run, env_config, latest


def _write_start(run: Path, args: Args, env_config: EnvConfig, resumed_from: int | None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "args.yaml").write_text(yaml.safe_dump(args_to_dict(args), sort_keys=False))
    env_config.to_yaml(run / "env_config.yaml")
    meta_path = run / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    commit = git_commit()
    session = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": [sys.executable, *sys.argv],
        "resumed_from_iteration": resumed_from,
        "address": args.address,
        "env_runners": args.env_runners,
        **commit,
    }
    meta.update(
        algo="rllib_ppo",
        seed=args.seed,
        **commit,
        versions=_versions(),
        machine={"platform": platform.platform(), "cpus": os.cpu_count()},
    )
    meta.setdefault("sessions", []).append(session)
    meta_path.write_text(json.dumps(meta, indent=2))


def _num(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _progress_row(result: dict[str, Any]) -> dict[str, Any]:
    runners = result.get("env_runners", {})
    learner = result.get("learners", {}).get("default_policy", {})
    steps = _num(runners.get("num_env_steps_sampled")) or 0.0
    sample_s = _num(result.get("timers", {}).get("env_runner_sampling_timer"))
    return {
        "iteration": int(result["training_iteration"]),
        "env_steps": int(_num(result.get("num_env_steps_sampled_lifetime")) or 0),
        "episodes": int(_num(runners.get("num_episodes_lifetime")) or 0),
        "episode_return_mean": _num(runners.get("episode_return_mean")),
        "episode_len_mean": _num(runners.get("episode_len_mean")),
        "final_accuracy": _num(runners.get("final_accuracy")),
        "final_energy_backlog_j": _num(runners.get("final_energy_backlog_j")),
        "policy_loss": _num(learner.get("policy_loss")),
        "vf_loss": _num(learner.get("vf_loss")),
        "entropy": _num(learner.get("entropy")),
        "env_steps_this_iter": int(steps),
        "time_this_iter_s": _num(result.get("time_this_iter_s")),
        "sample_time_s": sample_s,
        "env_steps_per_s": steps / float(result["time_this_iter_s"])
        if result.get("time_this_iter_s")
        else None,
    }


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, given = parse_args(Args, argv, description=__doc__)
    args, run, env_config, latest = prepare_run(args, given)
    ray = require_ray()
    import torch

    # --- seeding: RLlib seeds torch, numpy and random on the learner and every env runner, and
    # the runners' envs from it; a resumed session gets fresh episodes (like agents.train_ppo)
    seed = args.seed if latest is None else args.seed * 1_000_003 + latest[0]
    torch.set_num_threads(args.torch_threads)

    started = connect(args)
    algo = None
    try:
        _write_start(run, args, env_config, resumed_from=latest[0] if latest else None)
        algo = build_algorithm(args, env_config, seed=seed)
        if latest is not None:
            algo.restore_from_path(str(latest[1].resolve()))
            print(
                f"[resume] {run}: continuing from iteration {algo.iteration} ({latest[1].name})",
                flush=True,
            )
        start_iteration = algo.iteration
        t0 = time.perf_counter()
        with (run / "progress.jsonl").open("a") as progress:
            while algo.iteration < args.iterations:
                row = _progress_row(algo.train())
                progress.write(json.dumps(row) + "\n")
                progress.flush()
                ret = row["episode_return_mean"]
                acc = row["final_accuracy"]
                print(
                    f"[iter {row['iteration']:>4d}] steps {row['env_steps']:>9,d}  return "
                    f"{ret if ret is not None else float('nan'):8.2f}  "
                    f"final acc {acc if acc is not None else float('nan'):.3f}  "
                    f"{row['env_steps_per_s'] or 0:,.0f} steps/s",
                    flush=True,
                )
                if args.checkpoint_every and algo.iteration % args.checkpoint_every == 0:
                    _save_checkpoint(algo, run)
        newest = latest_checkpoint(run)
        last_saved = (
            _save_checkpoint(algo, run)
            if newest is None or newest[0] != algo.iteration
            else newest[1]
        )
        wall = time.perf_counter() - t0
        metrics = {
            "algo": "rllib_ppo",
            "iterations": int(algo.iteration),
            "start_iteration": int(start_iteration),
            "env_runners": args.env_runners,
            "checkpoint": str(last_saved),
            "wall_s_this_session": wall,
            "last": _last_row(run),
            "ray_nodes": len(ray.nodes()),
        }
        (run / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        print(f"[done] {run}: {algo.iteration} iterations; checkpoint {last_saved}", flush=True)
        return metrics
    finally:
        if algo is not None:
            algo.stop()
        if started:
            ray.shutdown()


def _last_row(run: Path) -> dict[str, Any] | None:
    path = run / "progress.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1]) if lines else None


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
