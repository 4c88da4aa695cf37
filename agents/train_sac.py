"""SAC (stable-baselines3) on FedLoRAWireless-v0, in one readable file (CleanRL style).

The off-policy counterpart of :mod:`agents.train_ppo`, with the same conventions: typed
arguments (defaults = ``configs/train/sac.yaml``), one seeding block, a run directory with model,
normaliser, best model on held-out seeds, checkpoints (plus the newest replay buffer, so that
``--resume`` continues the same learning state), resolved config, seed, git commit, metrics and
TensorBoard logs with the env's reward terms::

    python -m agents.train_sac --total-timesteps 200000
    python -m agents.train_sac --run-dir runs/my_sac --resume
    python -m baselines.compare --policies lyapunov,sac:runs/my_sac

SAC squashes its Gaussian with tanh, so its actions are in [-1, 1] like the env's.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.utils import set_random_seed

from agents.actions import ACTION_FORM_HELP, BASE_V_HELP, PRUNE_HELP, ActionAdapter, prune_stages
from agents.callbacks import EnvMetricsCallback, HeldOutEvalCallback, checkpoint_callback
from agents.envs import episode_seeds, make_vec_env
from agents.features import ObservationFeatures
from agents.normalization import load_normalizer, make_normalizer
from agents.runs import RunRepairWarning, arg_help, finish_run, parse_args, prepare_run
from fedenv.config import Range


@dataclass
class Args:
    """SAC training arguments; defaults = configs/train/sac.yaml."""

    # --- experiment
    config: str = field(
        default="switching",
        metadata=arg_help("env preset, registered scenario (tight_energy, ...) or env config YAML"),
    )
    train_config: str | None = field(
        default=None,
        metadata=arg_help("YAML of these arguments (configs/train/*.yaml); flags override it"),
    )
    run_dir: str | None = field(
        default=None,
        metadata=arg_help("run directory (default runs/sac_<config>_<policy>_s<seed>_<time>)"),
    )
    resume: bool = field(
        default=False,
        metadata=arg_help(
            "continue the run in --run-dir from its newest intact checkpoint or final model"
        ),
    )
    seed: int = field(
        default=0, metadata=arg_help("seed of torch, numpy and the training envs", Range(ge=0))
    )
    total_timesteps: int = field(
        default=200_000, metadata=arg_help("env steps (rounds) to train for", Range(ge=1))
    )
    # --- environment
    n_envs: int = field(default=4, metadata=arg_help("parallel training envs", Range(ge=1)))
    vec_env: str = field(
        default="auto",
        metadata=arg_help(
            "auto (batched where it applies, else dummy), batched (one batched env, fastest; "
            "surrogate backend, env and factored action forms), dummy (single envs in one "
            "process) or subproc (one process per env); agents/envs.py"
        ),
    )
    obs_features: str = field(
        default="label_mix",
        metadata=arg_help(
            "env (the env's observation), label_mix (+ each device's label skew from info), "
            "label_mix_time (+ time-to-go ramps) or label_mix_budget (+ what is left of each "
            "device's energy budget); agents/features.py"
        ),
    )
    action_form: str = field(
        default="factored",
        metadata=arg_help(ACTION_FORM_HELP),
    )
    base_v: float | None = field(
        default=None,
        metadata=arg_help(BASE_V_HELP, Range(gt=0)),
    )
    shield: bool = field(
        default=False,
        metadata=arg_help(
            "idle every device whose round would pass what is left of its episode energy "
            "budget, in training and evaluation (fedenv.wrappers.BudgetShield; PPO's default)"
        ),
    )
    prune: str = field(default="never", metadata=arg_help(PRUNE_HELP))
    norm_obs: bool = field(
        default=True,
        metadata=arg_help("normalise observations (VecNormalize, saved with the model)"),
    )
    norm_reward: bool = field(
        default=True, metadata=arg_help("normalise rewards by the running return's std")
    )
    # --- network
    policy: str = field(default="mlp", metadata=arg_help("mlp (SB3 SAC MlpPolicy)"))
    net_arch: list[int] = field(
        default_factory=lambda: [256, 256],
        metadata=arg_help("hidden layer widths of actor and critics"),
    )
    # --- SAC
    learning_rate: float = field(default=3e-4, metadata=arg_help("Adam learning rate", Range(gt=0)))
    buffer_size: int = field(
        default=200_000, metadata=arg_help("replay buffer capacity (transitions)", Range(ge=1))
    )
    learning_starts: int = field(
        default=5_000, metadata=arg_help("env steps of random actions before learning", Range(ge=0))
    )
    batch_size: int = field(default=256, metadata=arg_help("minibatch size", Range(ge=1)))
    tau: float = field(
        default=0.005, metadata=arg_help("target network averaging", Range(gt=0, le=1))
    )
    gamma: float = field(default=0.99, metadata=arg_help("discount factor", Range(ge=0, le=1)))
    train_freq: int = field(
        default=1, metadata=arg_help("vector-env steps between updates", Range(ge=1))
    )
    gradient_steps: int = field(
        default=1, metadata=arg_help("gradient steps per update", Range(ge=1))
    )
    ent_coef: str = field(
        default="auto",
        metadata=arg_help("entropy coefficient: auto, auto_<init> or a number"),
    )
    # --- evaluation, checkpoints, logging
    eval_freq: int = field(
        default=10_000,
        metadata=arg_help("env steps between held-out evaluations (0 = off)", Range(ge=0)),
    )
    eval_episodes: int = field(
        default=10, metadata=arg_help("held-out episodes per evaluation", Range(ge=1))
    )
    eval_seed: int = field(
        default=100_000,
        metadata=arg_help(
            "first validation seed (the comparison's test seeds start at 1000)", Range(ge=0)
        ),
    )
    checkpoint_freq: int = field(
        default=50_000, metadata=arg_help("env steps between checkpoints", Range(ge=0))
    )
    tensorboard: bool = field(default=True, metadata=arg_help("write TensorBoard logs to <run>/tb"))
    progress_bar: bool = field(default=True, metadata=arg_help("show a progress bar"))
    torch_threads: int = field(default=1, metadata=arg_help("torch CPU threads", Range(ge=1)))
    device: str = field(default="cpu", metadata=arg_help("torch device (cpu, cuda, auto)"))


def main(argv: list[str] | None = None) -> Path:
    args, given = parse_args(Args, argv, description=__doc__)
    prune_stages(args.prune)  # checked before the run directory is made
    if args.policy != "mlp":
        raise ValueError(
            f"train_sac supports policy=mlp only, got {args.policy!r} (the per-device "
            "network is a PPO option)"
        )

    # --- run directory (a new one, or the one to resume with its saved arguments)
    args, run, config, latest = prepare_run(args, given, "sac", Args)

    # --- seeding: python, numpy and torch (SB3's set_random_seed), the model (seed=) and the envs
    set_random_seed(args.seed)
    th.set_num_threads(args.torch_threads)
    env_seed = args.seed * 1_000_003 + (
        latest.steps if latest else 0
    )  # fresh episodes after a resume

    # --- environments and normaliser
    features = ObservationFeatures(config, args.obs_features)
    prune_decisions, prune_rollouts = prune_stages(args.prune)
    actions = ActionAdapter(
        config,
        args.action_form,
        shield=args.shield,
        base_v=args.base_v,
        prune=prune_decisions,
    )
    venv = make_vec_env(
        config,
        args.n_envs,
        args.vec_env,
        seed=env_seed,
        obs_features=args.obs_features,
        action_form=args.action_form,
        shield=args.shield,
        base_v=args.base_v,
        prune=prune_rollouts,
    )
    if latest is not None:
        venv = load_normalizer(str(latest.normalizer), venv)
        venv.training = True
    else:
        venv = make_normalizer(
            venv,
            per_device=False,
            gamma=args.gamma,
            norm_obs=args.norm_obs,
            norm_reward=args.norm_reward,
        )

    # --- model
    tb = str(run.tensorboard) if args.tensorboard else None
    if latest is not None:
        model = SAC.load(latest.model, env=venv, device=args.device, tensorboard_log=tb)
        buffer, restored = run.checkpoint(latest.steps, "replay_buffer_"), "empty"
        if buffer.is_file():
            try:
                model.load_replay_buffer(buffer)
                restored = "restored"
            except (
                Exception
            ) as err:  # a damaged pickle raises anything; SAC then refills its buffer
                warnings.warn(
                    f"--resume: {buffer} does not load ({type(err).__name__}: {err}); "
                    "continuing with an empty replay buffer",
                    RunRepairWarning,
                    stacklevel=1,
                )
        print(
            f"[resume] {run.path}: continuing from step {model.num_timesteps:,d} "
            f"({latest.label}, replay buffer {restored})",
            flush=True,
        )
    else:
        ent: str | float = (
            args.ent_coef if args.ent_coef.startswith("auto") else float(args.ent_coef)
        )
        model = SAC(
            "MlpPolicy",
            venv,
            learning_rate=args.learning_rate,
            buffer_size=args.buffer_size,
            learning_starts=args.learning_starts,
            batch_size=args.batch_size,
            tau=args.tau,
            gamma=args.gamma,
            train_freq=args.train_freq,
            gradient_steps=args.gradient_steps,
            ent_coef=ent,
            policy_kwargs={"net_arch": list(args.net_arch)},
            tensorboard_log=tb,
            seed=args.seed,
            device=args.device,
            verbose=0,
        )

    # --- callbacks: env metrics to TensorBoard, held-out evaluation (best model), checkpoints
    evaluator = HeldOutEvalCallback(
        config,
        run,
        args.eval_freq,
        episode_seeds(args.eval_seed, args.eval_episodes),
        features,
        actions,
        name="sac",
    )
    callbacks = CallbackList(
        [
            EnvMetricsCallback(config.budgets.energy_budget_j),
            evaluator,
            checkpoint_callback(run, args.checkpoint_freq, replay_buffer=True),
        ]
    )

    # --- train
    start_steps = model.num_timesteps
    remaining = args.total_timesteps - start_steps
    t0 = time.perf_counter()
    if remaining > 0:
        model.learn(
            remaining,
            callback=callbacks,
            progress_bar=args.progress_bar,
            reset_num_timesteps=latest is None,
            tb_log_name="sac",
        )
    wall = time.perf_counter() - t0

    # --- final model + normaliser, a last evaluation, metrics.json
    finish_run(
        run, model, venv, evaluator, algo="sac", args=args, start_steps=start_steps, wall_s=wall
    )
    venv.close()
    return run.path


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
