"""PPO (stable-baselines3) on FedLoRAWireless-v0, in one readable file (CleanRL style).

    # PPO-Lagrangian, the default (configs/train/ppo_lagrangian.yaml)
    python -m agents.train_ppo --config switching
    # the older slot form: one multiplier per device slot's average energy
    python -m agents.train_ppo --config switching --multipliers per_device --multiplier-lr 0.05
    # PPO on the env's weighted reward (--objective weighted)
    python -m agents.train_ppo --train-config configs/train/ppo.yaml
    python -m agents.train_ppo --config soft --total-timesteps 200000 --n-envs 4 --vec-env subproc
    python -m agents.train_ppo --train-config configs/train/ppo.yaml \\
        --config configs/scenarios/dense_cell.yaml
    # each device credited with what its own update added (agents/credit.py)
    python -m agents.train_ppo --config configs/scenarios/large_cell.yaml --advantage counterfactual
    # continue from the newest intact checkpoint
    python -m agents.train_ppo --run-dir runs/my_run --resume

The default objective is PPO-Lagrangian (:mod:`agents.lagrangian`): the accuracy gain as the
reward, every device's average energy per round (and, where budgeted, the round latency) kept
within its budget in 95% of the episodes by a Lagrange multiplier on the episode's worst device,
learned by dual ascent, saved in ``<run>/lagrangian.json``. ``--objective weighted`` trains on
the env's own reward (accuracy against energy, ``reward.mode``) instead.

Every run writes a run directory (see :mod:`agents.runs`): model + normaliser, the best model on
held-out validation seeds (PPO-Lagrangian: the most accurate evaluation with every budget kept;
weighted: the best return; :class:`agents.callbacks.SelectionRule`), checkpoints, the resolved
env config and arguments, seed, git commit, metrics and TensorBoard logs (``tensorboard
--logdir runs``) with the env's reward terms, energy, budget use, accuracy and backlogs.
Evaluate on test seeds with ``python -m agents.evaluate`` or next to the baselines with
``python -m baselines.compare --policies lyapunov,ppo:<run dir>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.utils import set_random_seed

from agents.actions import (
    ACTION_FORM_HELP,
    BASE_V_HELP,
    PRUNE_HELP,
    PRUNE_MODES,
    ActionAdapter,
    prune_stages,
)
from agents.callbacks import (
    EnvMetricsCallback,
    HeldOutEvalCallback,
    SelectionRule,
    checkpoint_callback,
)
from agents.constraints import AccuracyConstraint, DualAscentCallback
from agents.credit import ADVANTAGES, CounterfactualPPO, check_counterfactual
from agents.envs import episode_seeds, make_vec_env
from agents.features import ObservationFeatures
from agents.lagrangian import (
    ASCENT_RULES,
    MULTIPLIER_MODES,
    STATE_FILE,
    CostConstraints,
    PIDGains,
)
from agents.normalization import load_normalizer, make_normalizer
from agents.policies import POLICIES, policy_class
from agents.runs import RunDir, arg_help, finish_run, parse_args, prepare_run
from fedenv.config import Range


@dataclass
class Args:
    """PPO training arguments; defaults = the tuned values of configs/train/ppo.yaml."""

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
        metadata=arg_help("run directory (default runs/ppo_<config>_<policy>_s<seed>_<time>)"),
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
        default=600_000, metadata=arg_help("env steps (rounds) to train for", Range(ge=1))
    )
    # --- environment
    n_envs: int = field(default=8, metadata=arg_help("parallel training envs", Range(ge=1)))
    vec_env: str = field(
        default="auto",
        metadata=arg_help(
            "auto (batched where it applies, else dummy), batched (one batched env, fastest; "
            "surrogate backend, env and factored action forms), dummy (single envs in one "
            "process) or subproc (one process per env); agents/envs.py"
        ),
    )
    obs_features: str = field(
        default="label_mix_budget",
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
        default=True,
        metadata=arg_help(
            "idle every device whose round would pass what is left of its episode energy "
            "budget, in training and evaluation (the Lyapunov policy's budget guard as a "
            "shield; fedenv.wrappers.BudgetShield)"
        ),
    )
    prune: str = field(default="deploy", metadata=arg_help(PRUNE_HELP))
    norm_obs: bool = field(
        default=True,
        metadata=arg_help("normalise observations (VecNormalize, saved with the model)"),
    )
    norm_reward: bool = field(
        default=True, metadata=arg_help("normalise rewards by the running return's std")
    )
    # --- network
    policy: str = field(
        default="per_device",
        metadata=arg_help(
            "mlp (SB3 MlpPolicy), per_device (shared, permutation-equivariant, mean-pooled "
            "context), per_device_attention (the same with self-attention over the devices) or "
            "per_device_autoregressive (devices drawn in turn, each seeing the actions drawn "
            "before it)"
        ),
    )
    net_arch: list[int] = field(
        default_factory=lambda: [64, 64],
        metadata=arg_help("hidden layer widths (per device for per_device)"),
    )
    activation: str = field(default="tanh", metadata=arg_help("tanh or relu"))
    log_std_init: float = field(
        default=-0.5, metadata=arg_help("initial log standard deviation of the Gaussian policy")
    )
    ortho_init: bool = field(default=True, metadata=arg_help("orthogonal weight initialisation"))
    use_sde: bool = field(
        default=False,
        metadata=arg_help(
            "generalised state-dependent exploration (gSDE, SB3's use_sde): the exploration "
            "noise is a function of the state, redrawn every --sde-sample-freq steps, so an "
            "episode explores one consistent plan instead of independent noise per step "
            "(--policy mlp only; --log-std-init then sets the noise weights' scale)"
        ),
    )
    sde_sample_freq: int = field(
        default=-1,
        metadata=arg_help("env steps between redraws of the gSDE noise (-1: once per rollout)"),
    )
    # --- PPO
    learning_rate: float = field(default=3e-4, metadata=arg_help("Adam learning rate", Range(gt=0)))
    lr_schedule: str = field(
        default="linear", metadata=arg_help("constant or linear (decays to 0 at total_timesteps)")
    )
    n_steps: int = field(
        default=256, metadata=arg_help("rollout steps per env per update", Range(ge=1))
    )
    batch_size: int = field(default=256, metadata=arg_help("minibatch size", Range(ge=2)))
    n_epochs: int = field(default=10, metadata=arg_help("epochs per update", Range(ge=1)))
    gamma: float = field(default=0.99, metadata=arg_help("discount factor", Range(ge=0, le=1)))
    gae_lambda: float = field(default=0.95, metadata=arg_help("GAE lambda", Range(ge=0, le=1)))
    clip_range: float = field(default=0.2, metadata=arg_help("PPO clip range", Range(gt=0)))
    ent_coef: float = field(default=0.0, metadata=arg_help("entropy bonus", Range(ge=0)))
    vf_coef: float = field(default=0.5, metadata=arg_help("value loss weight", Range(ge=0)))
    max_grad_norm: float = field(
        default=0.5, metadata=arg_help("gradient clipping norm", Range(gt=0))
    )
    target_kl: float | None = field(
        default=None,
        metadata=arg_help("early-stop an update above this KL (None = off)", Range(gt=0)),
    )
    advantage: str = field(
        default="gae",
        metadata=arg_help(
            "gae (PPO's: every device's action credited with the round's advantage) or "
            "counterfactual (each device's with the advantage less the accuracy the round "
            "would have gained without its update, from the surrogate; per-device ratios; "
            "agents/credit.py)"
        ),
    )
    # --- objective: PPO-Lagrangian (agents/lagrangian.py) or the env's weighted reward
    objective: str = field(
        default="lagrangian",
        metadata=arg_help(
            "lagrangian (PPO-Lagrangian: the accuracy gain as reward, each device's average "
            "energy per round, and the latency where budgeted, within budget by dual ascent; "
            "agents/lagrangian.py) or weighted (the env's own reward, reward.mode)"
        ),
    )
    multipliers: str = field(
        default="episode",
        metadata=arg_help(
            "lagrangian: episode (one energy multiplier on the worst device's overspend of "
            "each episode, the rule evaluations check), or the older slot forms per_device "
            "(one multiplier per device slot's average over a rollout) or shared (one, on the "
            "worst slot's average)"
        ),
    )
    multiplier_ascent: str = field(
        default="quantile",
        metadata=arg_help(
            "lagrangian, episode: the dual step per rollout from its finished episodes, "
            "quantile (their 95% quantile of the overspend minus the 0.05 tolerance) or "
            "fraction (their share over the tolerance minus 0.05)"
        ),
    )
    multiplier_lr: float = field(
        default=1.0,
        metadata=arg_help(
            "lagrangian: dual ascent step per rollout, per unit of the ascent signal (episode: "
            "the overspend's quantile or the share over; the slot forms, tuned with 0.05-0.2: "
            "(mean cost - budget) / budget)",
            Range(ge=0),
        ),
    )
    multiplier_margin: float = field(
        default=0.1,
        metadata=arg_help(
            "lagrangian, episode: aim at an overspend of at most 0.05 - this (a stricter "
            "target than the compliance rule's 1.05 x budget)"
        ),
    )
    multiplier_init: float = field(
        default=0.0, metadata=arg_help("lagrangian: initial value of every multiplier", Range(ge=0))
    )
    multiplier_kp: float = field(
        default=0.0,
        metadata=arg_help(
            "lagrangian, episode: the PID update's proportional gain on the ascent signal "
            "(--multiplier-lr is its integral gain; kp = kd = 0: plain dual ascent)",
            Range(ge=0),
        ),
    )
    multiplier_kd: float = field(
        default=0.0,
        metadata=arg_help(
            "lagrangian, episode: the PID update's derivative gain on the rise of the ascent "
            "signal's moving average (only rises count)",
            Range(ge=0),
        ),
    )
    multiplier_d_smoothing: float = field(
        default=0.0,
        metadata=arg_help(
            "lagrangian, episode: weight of the old value in the moving average of the ascent "
            "signal that the PID derivative differences, in [0, 1)"
        ),
    )
    # --- optional constraint (agents/constraints.py; the env and its reward are unchanged)
    accuracy_target: float | None = field(
        default=None,
        metadata=arg_help(
            "train for E[final accuracy] >= this by Lagrangian relaxation (None = off)"
        ),
    )
    lambda_lr: float = field(
        default=0.05,
        metadata=arg_help(
            "dual ascent step of the accuracy multiplier, per accuracy point of violation",
            Range(ge=0),
        ),
    )
    select_accuracy: float | None = field(
        default=None,
        metadata=arg_help(
            "weighted: the best model is the best validation return among evaluations with "
            "validation accuracy >= this (None = --accuracy-target, or no condition); "
            "lagrangian always selects the most accurate evaluation in budget"
        ),
    )
    bc_steps: int = field(
        default=0,
        metadata=arg_help(
            "env steps of the Lyapunov policy to imitate before PPO (behaviour-cloning warm "
            "start; 0 = off; agents/bc.py)",
            Range(ge=0),
        ),
    )
    bc_epochs: int = field(
        default=30, metadata=arg_help("epochs of the behaviour-cloning fit", Range(ge=1))
    )
    bc_v: float | None = field(
        default=None,
        metadata=arg_help(
            "V of the Lyapunov policy that --bc-steps imitates (None = its default V; pass the "
            "scenario's tuned V, docs/suite.md)",
            Range(gt=0),
        ),
    )
    # --- evaluation, checkpoints, logging
    eval_freq: int = field(
        default=25_000,
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
        default=100_000, metadata=arg_help("env steps between checkpoints", Range(ge=0))
    )
    tensorboard: bool = field(default=True, metadata=arg_help("write TensorBoard logs to <run>/tb"))
    progress_bar: bool = field(default=True, metadata=arg_help("show a progress bar"))
    torch_threads: int = field(default=1, metadata=arg_help("torch CPU threads", Range(ge=1)))
    device: str = field(default="cpu", metadata=arg_help("torch device (cpu, cuda, auto)"))


def main(argv: list[str] | None = None) -> Path:
    args, given = parse_args(Args, argv, description=__doc__)
    for name, value, valid in (
        ("policy", args.policy, tuple(POLICIES)),
        ("lr_schedule", args.lr_schedule, ("constant", "linear")),
        ("activation", args.activation, ("tanh", "relu")),
        ("objective", args.objective, ("lagrangian", "weighted")),
        ("multipliers", args.multipliers, MULTIPLIER_MODES),
        ("multiplier_ascent", args.multiplier_ascent, ASCENT_RULES),
        ("advantage", args.advantage, ADVANTAGES),
        ("prune", args.prune, PRUNE_MODES),
    ):
        if value not in valid:
            raise ValueError(
                f"--{name.replace('_', '-')} must be one of {', '.join(valid)}, got {value!r}"
            )
    if args.use_sde and args.policy != "mlp":
        raise ValueError(
            f"--use-sde needs --policy mlp: the {args.policy} policy has no state-dependent "
            "noise (pass --policy mlp, or drop --use-sde)"
        )
    if args.advantage == "counterfactual":
        check_counterfactual(args.policy, args.vec_env, args.action_form)
    if args.resume and args.run_dir and RunDir(args.run_dir).is_run:
        old_args = RunDir(args.run_dir).read_args()
        # a run from before PPO-Lagrangian became the default trained on the weighted reward, one
        # from before the shield became the default trained without it, and one from before the
        # pruner without that
        for key, before in (("objective", "weighted"), ("shield", False), ("prune", "never")):
            if key not in given and key not in old_args:
                setattr(args, key, before)
                given.add(key)

    # --- run directory (a new one, or the one to resume with its saved arguments)
    args, run, config, latest = prepare_run(args, given, "ppo", Args)
    counterfactual = args.advantage == "counterfactual"
    if counterfactual:
        check_counterfactual(args.policy, args.vec_env, args.action_form, config)
    algo = CounterfactualPPO if counterfactual else PPO

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
        credit=counterfactual,
        prune=prune_rollouts,
    )
    per_device = args.policy != "mlp"
    lagrangian = None
    if args.objective == "lagrangian":
        if args.accuracy_target is not None or args.select_accuracy is not None:
            raise ValueError(
                "--accuracy-target and --select-accuracy go with the weighted objective; "
                "PPO-Lagrangian already maximises the accuracy and selects the most accurate "
                "evaluation in budget (pass --objective weighted to use them)"
            )
        lagrangian = CostConstraints(
            venv,
            config,
            args.multiplier_lr,
            args.multipliers,
            init=args.multiplier_init,
            ascent=args.multiplier_ascent,
            margin=args.multiplier_margin,
            pid=PIDGains(args.multiplier_kp, args.multiplier_kd, args.multiplier_d_smoothing),
        )
        saved = (
            DualAscentCallback.saved_state(run.path / STATE_FILE) if latest is not None else None
        )
        if saved is not None:
            lagrangian.load_state(saved, str(run.path / STATE_FILE))
        venv = lagrangian
    constraint = None
    if args.accuracy_target is not None:
        constraint = AccuracyConstraint(
            venv,
            args.accuracy_target,
            args.lambda_lr,
            lam=DualAscentCallback.saved_lambda(run.path / "constraint.json"),
        )
        venv = constraint
    if latest is not None:
        venv = load_normalizer(str(latest.normalizer), venv)
        venv.training = True
    else:
        venv = make_normalizer(
            venv,
            per_device=per_device,
            device_features=features.device_features,
            gamma=args.gamma,
            norm_obs=args.norm_obs,
            norm_reward=args.norm_reward,
        )

    # --- model
    tb = str(run.tensorboard) if args.tensorboard else None
    if latest is not None:
        model = algo.load(latest.model, env=venv, device=args.device, tensorboard_log=tb)
        print(
            f"[resume] {run.path}: continuing from step {model.num_timesteps:,d} ({latest.label})",
            flush=True,
        )
    else:
        lr = args.learning_rate
        schedule = (lambda progress: progress * lr) if args.lr_schedule == "linear" else lr
        model = algo(
            policy_class(args.policy),
            venv,
            learning_rate=schedule,
            n_steps=args.n_steps,
            batch_size=args.batch_size,
            n_epochs=args.n_epochs,
            gamma=args.gamma,
            gae_lambda=args.gae_lambda,
            clip_range=args.clip_range,
            ent_coef=args.ent_coef,
            vf_coef=args.vf_coef,
            max_grad_norm=args.max_grad_norm,
            target_kl=args.target_kl,
            use_sde=args.use_sde,
            sde_sample_freq=args.sde_sample_freq,
            policy_kwargs={
                "net_arch": list(args.net_arch)
                if per_device
                else {"pi": list(args.net_arch), "vf": list(args.net_arch)},
                **({"device_features": features.device_features} if per_device else {}),
                "activation_fn": th.nn.Tanh if args.activation == "tanh" else th.nn.ReLU,
                "log_std_init": args.log_std_init,
                "ortho_init": args.ortho_init,
            },
            tensorboard_log=tb,
            seed=args.seed,
            device=args.device,
            verbose=0,
        )

    # --- optional behaviour-cloning warm start from the Lyapunov policy (a new run only)
    if args.bc_steps > 0 and latest is None:
        from agents.bc import clone, lyapunov_demonstrations

        if actions.stateful:
            raise ValueError(
                f"--bc-steps imitates the Lyapunov policy, which the {args.action_form} "
                "action form already plays; use one or the other"
            )
        demo_obs, demo_act = lyapunov_demonstrations(
            venv, config, actions, args.bc_steps, v=args.bc_v
        )
        loss = clone(model.policy, demo_obs, demo_act, epochs=args.bc_epochs, seed=args.seed)
        print(
            f"[bc] imitated the Lyapunov policy on {len(demo_obs):,d} env steps: action MSE "
            f"{loss:.4f}",
            flush=True,
        )

    # --- callbacks: env metrics to TensorBoard, held-out evaluation (best model), checkpoints
    # the best model: on the constrained problem the most accurate evaluation in budget
    # (agents.callbacks.SelectionRule), on the weighted reward the best return
    selection = (
        SelectionRule("constrained")
        if lagrangian is not None
        else SelectionRule(
            "return",
            args.accuracy_target if args.select_accuracy is None else args.select_accuracy,
        )
    )
    evaluator = HeldOutEvalCallback(
        config,
        run,
        args.eval_freq,
        episode_seeds(args.eval_seed, args.eval_episodes),
        features,
        actions,
        name="ppo",
        selection=selection,
        extras=lagrangian.record if lagrangian is not None else None,
    )
    callbacks = CallbackList(
        [
            EnvMetricsCallback(config.budgets.energy_budget_j),
            evaluator,
            checkpoint_callback(run, args.checkpoint_freq),
            *(
                [DualAscentCallback(constraint, run.path / "constraint.json")]
                if constraint is not None
                else []
            ),
            *(
                [DualAscentCallback(lagrangian, run.path / STATE_FILE, prefix="lagrangian")]
                if lagrangian is not None
                else []
            ),
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
            tb_log_name="ppo",
        )
    wall = time.perf_counter() - t0

    # --- final model + normaliser, a last evaluation, metrics.json
    finish_run(
        run, model, venv, evaluator, algo="ppo", args=args, start_steps=start_steps, wall_s=wall
    )
    venv.close()
    return run.path


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
