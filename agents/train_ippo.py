"""Independent PPO with one shared policy (parameter-shared IPPO) on the multi-agent env, CleanRL
style.

    python -m agents.train_ippo --run-dir runs/ippo                   # ~60k rounds, a few minutes
    python -m agents.train_ippo --agent-reward per_device --run-dir runs/ippo_pd
    python -m agents.train_ippo --run-dir runs/ippo --compare-only \\
        --compare lyapunov ppo:runs/ppo_demo --compare-episodes 20 --compare-seed 1000

Every device is an agent of :class:`fedenv.multiagent.FedLoRAWirelessParallelEnv`: it sees its
own device's 7 features and the 4 global ones, and decides its own module, power and bandwidth
request. One SB3 PPO policy (actor and critic on the agent's 11 features) acts for every agent:
:class:`AgentVecEnv` presents N multi-agent envs with K agents each to SB3 as N x K
single-agent envs, so each round gives the policy K samples. Each agent's critic sees only its
own observation (independent learners, decentralised critic); with ``--agent-reward shared``
every agent is trained on the team's reward.

At the end the trained policy is evaluated on held-out test seeds by the project's one
evaluation loop (:func:`baselines.evaluation.evaluate_policies`) next to ``--compare`` (specs of
:mod:`baselines.registry`: ``lyapunov``, ``ppo:<run dir>``, ...), through :class:`IPPOPolicy`,
the :class:`baselines.Policy` adapter that plays the shared policy in the single env (agent k's
observation cut out of the env's, the K actions stacked: the same rounds as the multi-agent
env). The run directory holds ``args.yaml``, ``env_config.yaml``, ``meta.json`` (seed, git
commit), ``model.zip``, ``vecnormalize.pkl``, ``metrics.json``, ``comparison.md`` (the table)
and ``comparison.json``. See docs/multiagent.md.
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3 import PPO
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.actions import ActionAdapter
from agents.runs import (
    RunDir,
    arg_help,
    default_run_name,
    parse_args,
    save_model,
    save_normalizer,
    write_file,
)
from fedenv.config import EnvConfig, Range
from fedenv.multiagent import AGENT_FEATURES, FedLoRAWirelessParallelEnv, agent_observations
from fedenv.scenarios import named_config

__all__ = ["Args", "AgentVecEnv", "IPPOPolicy", "ippo_policy", "load_ippo_policy", "main"]


@dataclass
class Args:
    """IPPO training arguments."""

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
        metadata=arg_help("run directory (default runs/ippo_<config>_shared_s<seed>_<time>)"),
    )
    seed: int = field(
        default=0, metadata=arg_help("seed of torch, numpy and the training envs", Range(ge=0))
    )
    total_timesteps: int = field(
        default=60_000,
        metadata=arg_help("env rounds to train for (each gives K agent samples)", Range(ge=1)),
    )
    # --- environment
    n_envs: int = field(
        default=8,
        metadata=arg_help(
            "parallel multi-agent envs (N x K single-agent envs for SB3)", Range(ge=1)
        ),
    )
    agent_reward: str = field(
        default="shared",
        metadata=arg_help(
            "shared (the env's reward to every agent) or per_device "
            "(fedenv.multiagent.device_reward_terms)"
        ),
    )
    action_form: str = field(
        default="factored",
        metadata=arg_help(
            "env (the agent's row of the env action) or factored (schedule and rank apart, "
            "agents/actions.py)"
        ),
    )
    norm_obs: bool = field(
        default=True,
        metadata=arg_help("normalise observations (VecNormalize, saved with the model)"),
    )
    norm_reward: bool = field(
        default=True, metadata=arg_help("normalise rewards by the running return's std")
    )
    # --- network and PPO
    net_arch: list[int] = field(
        default_factory=lambda: [64, 64],
        metadata=arg_help("hidden layer widths of the actor and of the critic"),
    )
    log_std_init: float = field(
        default=-0.5, metadata=arg_help("initial log standard deviation of the Gaussian policy")
    )
    learning_rate: float = field(
        default=3e-4, metadata=arg_help("Adam learning rate (decays linearly to 0)", Range(gt=0))
    )
    n_steps: int = field(
        default=128, metadata=arg_help("rollout rounds per env per update", Range(ge=1))
    )
    batch_size: int = field(
        default=1024, metadata=arg_help("minibatch size (agent samples)", Range(ge=2))
    )
    n_epochs: int = field(default=10, metadata=arg_help("epochs per update", Range(ge=1)))
    gamma: float = field(default=0.99, metadata=arg_help("discount factor", Range(ge=0, le=1)))
    gae_lambda: float = field(default=0.95, metadata=arg_help("GAE lambda", Range(ge=0, le=1)))
    clip_range: float = field(default=0.2, metadata=arg_help("PPO clip range", Range(gt=0)))
    ent_coef: float = field(default=0.0, metadata=arg_help("entropy bonus", Range(ge=0)))
    torch_threads: int = field(default=1, metadata=arg_help("torch CPU threads", Range(ge=1)))
    progress_bar: bool = field(default=False, metadata=arg_help("show a progress bar"))
    # --- held-out comparison (the project's evaluation loop)
    compare: list[str] = field(
        default_factory=lambda: ["lyapunov"],
        metadata=arg_help(
            "policy specs evaluated next to IPPO (baselines.registry), e.g. lyapunov "
            "ppo:runs/x; 'none' for IPPO alone"
        ),
    )
    compare_episodes: int = field(
        default=20, metadata=arg_help("held-out test episodes (0 = no comparison)", Range(ge=1))
    )
    compare_seed: int = field(
        default=1000,
        metadata=arg_help("first test seed (seeds compare_seed .. + episodes - 1)", Range(ge=0)),
    )
    compare_only: bool = field(
        default=False, metadata=arg_help("skip training: evaluate the model in --run-dir")
    )


# -------------------------------------------------------------------------- the vectorising adapter
class AgentVecEnv(VecEnv):
    """N multi-agent envs as N x K single-agent envs for SB3 (agent k of env i is SB3 env i K + k).

    Every agent of an env acts each round, so the N x K actions of a step are one round of each
    env; the agents' actions go through ``adapter`` (the ``factored`` form per device) as a
    (K, C') block. The end of the horizon is reported as a termination (the round fraction is
    observed; as in :mod:`agents.train_ppo`), so no value is bootstrapped past the last round.
    Env i is seeded ``seed + i`` at its first reset and continues its own episodes after that.
    """

    def __init__(
        self,
        config: EnvConfig,
        n_envs: int,
        *,
        seed: int,
        agent_reward: str = "shared",
        action_form: str = "factored",
    ) -> None:
        self.envs = [
            FedLoRAWirelessParallelEnv(config, agent_reward=agent_reward) for _ in range(n_envs)
        ]
        self.adapter = ActionAdapter(config, action_form)
        if self.adapter.stateful:
            raise ValueError(
                f"action_form must be env or factored (a stateless form), got {action_form!r}"
            )
        self.k = config.devices.num_devices
        self.agents = self.envs[0].possible_agents
        self._seed = int(seed)
        self._seeded = False
        first = self.agents[0]
        obs_space = self.envs[0].observation_space(first)
        act_space = spaces.Box(-1.0, 1.0, shape=self.adapter.shape[1:], dtype=np.float32)
        super().__init__(n_envs * self.k, obs_space, act_space)
        self._actions: NDArray[np.float32] | None = None
        self._returns = np.zeros(n_envs * self.k)
        self._lengths = np.zeros(n_envs, dtype=np.int64)

    def _obs(self, env_obs: dict[str, NDArray[np.float32]]) -> NDArray[np.float32]:
        return np.stack([env_obs[a] for a in self.agents])

    def reset(self) -> NDArray[np.float32]:
        rows = []
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=None if self._seeded else self._seed + i)
            rows.append(self._obs(obs))
        self._seeded = True
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return np.concatenate(rows)

    def step_async(self, actions: NDArray[np.float32]) -> None:
        self._actions = np.asarray(actions, dtype=np.float32)

    def step_wait(
        self,
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_], list[dict[str, Any]]]:
        assert self._actions is not None
        joint = self.adapter(self._actions.reshape(len(self.envs), self.k, -1))  # (N, K, C)
        k = self.k
        obs_rows, rewards, dones, infos = (
            [],
            np.zeros(self.num_envs, dtype=np.float32),
            np.zeros(self.num_envs, dtype=bool),
            [],
        )
        for i, env in enumerate(self.envs):
            obs, rew, term, trunc, info = env.step(
                {a: joint[i, j] for j, a in enumerate(self.agents)}
            )
            block = slice(i * k, (i + 1) * k)
            rewards[block] = [rew[a] for a in self.agents]
            self._returns[block] += rewards[block]
            self._lengths[i] += 1
            rows = self._obs(obs)
            done = term[self.agents[0]] or trunc[self.agents[0]]
            agent_infos = [dict(info[a]) for a in self.agents]
            if done:
                for j, agent_info in enumerate(agent_infos):
                    agent_info["terminal_observation"] = rows[j]
                    agent_info["episode"] = {
                        "r": float(self._returns[i * k + j]),
                        "l": int(self._lengths[i]),
                    }
                self._returns[block] = 0.0
                self._lengths[i] = 0
                obs, _ = env.reset()
                rows = self._obs(obs)
            dones[block] = done
            obs_rows.append(rows)
            infos.extend(agent_infos)
        return np.concatenate(obs_rows), rewards, dones, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self.envs[i // self.k], attr_name) for i in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        for i in self._indices(indices):
            setattr(self.envs[i // self.k], attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        return [
            getattr(self.envs[i // self.k], method_name)(*method_args, **method_kwargs)
            for i in self._indices(indices)
        ]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._indices(indices)]


# --------------------------------------------------------------------------- the Policy adapter
class IPPOPolicy:
    """The shared IPPO policy behind the :class:`baselines.Policy` protocol, in the single env.

    ``act`` cuts each device's 11 features out of the env's observation
    (:func:`fedenv.multiagent.agent_observations`, as the multi-agent env does), normalises
    them with the statistics frozen at the end of training, asks the policy for every agent's
    deterministic action in one batch and stacks them into the env's (K, C) action.
    """

    def __init__(
        self,
        model: PPO,
        normalizer: VecNormalize | None,
        config: EnvConfig,
        action_form: str,
        name: str = "ippo",
    ) -> None:
        self.model, self.name = model, name
        self.k = config.devices.num_devices
        self.actions = ActionAdapter(config, action_form)
        self._policy = model.policy
        self._policy.set_training_mode(False)
        self._norm = normalizer is not None and normalizer.norm_obs
        if normalizer is not None and self._norm:
            stats: Any = normalizer.obs_rms  # a RunningMeanStd (the observation is a Box)
            self._mean = np.asarray(stats.mean, dtype=np.float64)
            self._scale = 1.0 / np.sqrt(
                np.asarray(stats.var, dtype=np.float64) + normalizer.epsilon
            )
            self._clip = float(normalizer.clip_obs)

    def reset(self, seed: int | None = None) -> None:
        """Deterministic and memoryless: nothing to reset."""

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        x = agent_observations(obs, self.k).astype(np.float64)
        if self._norm:
            x = np.clip((x - self._mean) * self._scale, -self._clip, self._clip)
        with th.no_grad():
            action, _ = self._policy.predict(x.astype(np.float32), deterministic=True)
        return self.actions(np.asarray(action, dtype=np.float32))


def load_ippo_policy(run_dir: str | Path, config: EnvConfig | None = None) -> IPPOPolicy:
    """The :class:`IPPOPolicy` of a run directory written by this script."""
    run = RunDir(run_dir)
    if not run.model.is_file():
        raise FileNotFoundError(
            f"{run.path} holds no model.zip (train one with python -m agents.train_ippo "
            f"--run-dir {run.path})"
        )
    saved = run.read_args()
    cfg = config if config is not None else run.env_config()
    model = PPO.load(str(run.model), device="cpu")
    norm = None
    if run.normalizer.is_file():
        with run.normalizer.open("rb") as fh:
            norm = pickle.load(fh)
    return IPPOPolicy(
        model, norm, cfg, saved.get("action_form", "factored"), name=f"ippo:{run.path.name}"
    )


def ippo_policy(spec: str, config: EnvConfig) -> IPPOPolicy:
    """``ippo:<run dir>`` -> :func:`load_ippo_policy`; the ``fedenv.policies`` entry point of
    ``ippo``
    (pyproject.toml), through which ``baselines.registry.make_policy`` builds it."""
    kind, _, path = spec.partition(":")
    if kind.strip().lower() != "ippo" or not path.strip():
        raise ValueError(f"bad IPPO spec {spec!r}: expected ippo:<run dir>, e.g. ippo:runs/ippo")
    return load_ippo_policy(path.strip(), config)


# --------------------------------------------------------------------------- main
def compare(args: Args, run: RunDir, config: EnvConfig) -> str:
    """Evaluate the run's policy next to ``args.compare`` on the test seeds; write
    comparison.md/.json."""
    from baselines.evaluation import evaluate_policies, format_table, summarize

    specs = [s for s in args.compare if s.lower() != "none"]
    comparison = evaluate_policies(
        [load_ippo_policy(run.path, config), *specs],
        config,
        episodes=args.compare_episodes,
        seed=args.compare_seed,
    )
    table = format_table(
        comparison,
        [
            "final_accuracy",
            "energy_j",
            "devices_within_budget",
            "max_budget_use",
            "episode_return",
            "scheduled",
        ],
    )
    seeds = f"{args.compare_seed}..{args.compare_seed + args.compare_episodes - 1}"
    write_file(
        run.path / "comparison.md",
        f"Test seeds {seeds}, preset {args.config}, mean ± 95% CI over episodes.\n\n{table}\n",
    )
    write_file(
        run.path / "comparison.json",
        json.dumps(
            {"seeds": comparison.seeds, "rows": summarize(comparison)}, indent=2, default=float
        ),
    )
    return table


def main(argv: list[str] | None = None) -> Path:
    args, _ = parse_args(Args, argv, description=__doc__)
    if args.agent_reward not in ("shared", "per_device"):
        raise ValueError(f"--agent-reward must be shared or per_device, got {args.agent_reward!r}")
    if args.action_form not in ("env", "factored"):
        raise ValueError(f"--action-form must be env or factored, got {args.action_form!r}")

    if args.compare_only:
        if not args.run_dir:
            raise ValueError("--compare-only needs --run-dir <a trained IPPO run>")
        run = RunDir(args.run_dir)
        saved = run.read_args()
        args.config = saved.get("config", args.config)
        print(compare(args, run, run.env_config()), flush=True)
        return run.path

    # --- run directory
    config = named_config(args.config)
    run = RunDir(
        args.run_dir
        or Path("runs") / default_run_name("ippo", args.config, args.agent_reward, args.seed)
    )
    if run.model.exists():
        raise FileExistsError(
            f"{run.path} already holds a run; pass another --run-dir (or --compare-only to "
            "evaluate it)"
        )
    run.write_start("ippo", args, config)

    # --- seeding: python, numpy and torch, the model (seed=) and the envs
    set_random_seed(args.seed)
    th.set_num_threads(args.torch_threads)

    # --- environments: N multi-agent envs as N x K single-agent envs, normalised
    venv = AgentVecEnv(
        config,
        args.n_envs,
        seed=args.seed * 1_000_003,
        agent_reward=args.agent_reward,
        action_form=args.action_form,
    )
    norm = VecNormalize(
        venv, norm_obs=args.norm_obs, norm_reward=args.norm_reward, gamma=args.gamma
    )

    # --- model: one actor-critic shared by every agent
    lr = args.learning_rate
    model = PPO(
        "MlpPolicy",
        norm,
        learning_rate=lambda progress: progress * lr,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        clip_range=args.clip_range,
        ent_coef=args.ent_coef,
        policy_kwargs={
            "net_arch": {"pi": list(args.net_arch), "vf": list(args.net_arch)},
            "activation_fn": th.nn.Tanh,
            "log_std_init": args.log_std_init,
        },
        seed=args.seed,
        device="cpu",
        verbose=0,
    )

    # --- train (total_timesteps counts rounds; SB3 counts agent samples, K per round)
    t0 = time.perf_counter()
    model.learn(args.total_timesteps * venv.k, progress_bar=args.progress_bar)
    wall = time.perf_counter() - t0
    rounds = model.num_timesteps // venv.k

    # --- model + normaliser, metrics, then the held-out comparison
    save_normalizer(norm, run.normalizer, model.num_timesteps)
    save_model(model, run.model)
    metrics: dict[str, Any] = {
        "algo": "ippo",
        "agent_reward": args.agent_reward,
        "rounds": rounds,
        "agent_samples": int(model.num_timesteps),
        "wall_s": wall,
        "rounds_per_s": rounds / wall if wall > 0 else None,
        "observation_features": list(AGENT_FEATURES),
    }
    run.record_session()
    run.write_metrics(metrics)
    norm.close()
    print(
        f"[done] {run.path}: {rounds:,d} rounds ({model.num_timesteps:,d} agent samples) in "
        f"{wall:.0f} s",
        flush=True,
    )
    if args.compare_episodes > 0:
        print(compare(args, run, config), flush=True)
    return run.path


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
