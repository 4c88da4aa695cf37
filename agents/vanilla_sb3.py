"""Train your own agent: vanilla stable-baselines3 PPO on FedLoRAWireless-v0, in one readable file.

No project machinery beyond the env and its wrappers: SB3's ``PPO("MlpPolicy")`` with its
default hyperparameters, ``VecNormalize``, a ``DummyVecEnv`` of a few envs, and the env with
the factored action (:class:`fedenv.wrappers.FactoredAction`: schedule and rank as separate
components; on the raw action PPO stays near a random policy). The trained policy is then
scored next to the Lyapunov policy by the project's evaluation loop
(:func:`baselines.evaluation.evaluate`) on held-out seeds, under the env's own reward (the
weighted accuracy-versus-energy reward of the preset)::

    python -m agents.vanilla_sb3                       # 100k steps, a few minutes on one CPU core
    python -m agents.vanilla_sb3 --preset split --total-timesteps 50000 --run-dir runs/my_split

The run directory holds ``args.json``, ``env_config.yaml``, ``model.zip`` and
``vecnormalize.pkl``, ``learning_curve.csv`` (per evaluation: steps, mean training return,
held-out return of the current policy), ``learning_curve.png`` and ``result.json`` (the final
returns on the test seeds, their ratio, and uniform random factored actions as a reference:
the factored form alone already scores well, so the learned part is PPO minus that). The learning
curve is measured on validation seeds
and the final score on separate test seeds; the final model is scored (no model selection).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from numpy.typing import NDArray
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import fedenv
from baselines.evaluation import evaluate, mean_ci
from baselines.lyapunov import LyapunovPolicy
from fedenv.config import EnvConfig, resolve_config
from fedenv.wrappers import FactoredAction, FactoredCodec, LabelSkewObservation, ObservationFeatures


@dataclass
class Args:
    """Arguments (every field is a flag: ``--total-timesteps 50000``)."""

    preset: str = "switching"
    """env preset (one registered id each: fedenv.ENV_IDS)"""
    total_timesteps: int = 100_000
    """env steps (federated rounds) to train for"""
    n_envs: int = 4
    """training envs in the DummyVecEnv"""
    seed: int = 0
    """seed of torch, numpy and the training envs"""
    observation: str = "env"
    """env (the env's observation) or label_mix (+ each device's label skew:
    LabelSkewObservation)"""
    eval_every: int = 10_000
    """steps between points of the learning curve"""
    curve_episodes: int = 5
    """validation episodes per point of the learning curve (seeds 5000, 5001, ...)"""
    test_episodes: int = 20
    """held-out test episodes of the final comparison (seeds 10000, 10001, ...)"""
    threads: int = 1
    """torch threads"""
    run_dir: str = ""
    """run directory (default runs/vanilla_sb3_<preset>_s<seed>)"""


VALIDATION_SEED, TEST_SEED = 5_000, 10_000


def make_env(preset: str, observation: str) -> gym.Env[Any, Any]:
    """One training env: the registered id of the preset, the factored action, SB3's Monitor."""
    env = gym.make(fedenv.ENV_IDS[preset])
    if observation != "env":
        env = LabelSkewObservation(env, observation)
    return Monitor(FactoredAction(env))


class TrainedPolicy:
    """The PPO model behind the :class:`baselines.Policy` protocol,
    for :func:`baselines.evaluation.evaluate`.

    The evaluation loop plays the bare env and hands the policy its ``(obs, info)``; the policy
    applies the training wrappers' mappings itself: the observation features, the normaliser's
    statistics as they are now, the model's deterministic action, the factored-to-env mapping.
    """

    def __init__(
        self, model: PPO, norm: VecNormalize, config: EnvConfig, observation: str, name: str = "ppo"
    ) -> None:
        self.name = name
        self.model = model
        self.features = ObservationFeatures(config, observation)
        self.to_env = FactoredCodec(config).to_env
        stats = norm.obs_rms
        assert isinstance(stats, RunningMeanStd)  # (a Box observation: one set of statistics)
        self.mean: NDArray[np.float64] = np.array(stats.mean, dtype=np.float64)
        self.std: NDArray[np.float64] = np.sqrt(
            np.asarray(stats.var, dtype=np.float64) + norm.epsilon
        )
        self.clip: float = float(norm.clip_obs)

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        x = np.clip(
            (self.features(obs, info) - self.mean) / self.std, -self.clip, self.clip
        ).astype(np.float32)
        action, _ = self.model.predict(x, deterministic=True)
        return self.to_env(action)


class RandomFactoredPolicy:
    """Uniform random actions in the factored form: how much of the score the action form alone
    gives."""

    name = "random_factored"

    def __init__(self, config: EnvConfig) -> None:
        self.codec = FactoredCodec(config)
        self.rng = np.random.default_rng()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        return self.codec.to_env(self.rng.uniform(-1.0, 1.0, self.codec.shape))


class LearningCurve(BaseCallback):
    """Every ``every`` steps: the mean return of the last training episodes and of the current
    policy on validation seeds."""

    def __init__(self, config: EnvConfig, observation: str, every: int, seeds: list[int]) -> None:
        super().__init__()
        self.config, self.observation, self.every, self.seeds = config, observation, every, seeds
        self.rows: list[dict[str, float]] = []
        self.next = every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next:
            self.next += self.every
            self.record()
        return True

    def record(self) -> None:
        norm = self.model.get_vec_normalize_env()
        assert isinstance(self.model, PPO) and norm is not None
        policy = TrainedPolicy(self.model, norm, self.config, self.observation)
        held_out = evaluate(policy, self.config, self.seeds).metric("episode_return")
        recent = [ep["r"] for ep in self.model.ep_info_buffer or []]
        self.rows.append(
            {
                "steps": self.num_timesteps,
                "train_return": float(np.mean(recent)) if recent else float("nan"),
                "validation_return": float(held_out.mean()),
            }
        )


def parse(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for f in dataclasses.fields(Args):
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=type(f.default), default=f.default
        )
    return Args(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    run = Path(args.run_dir or f"runs/vanilla_sb3_{args.preset}_s{args.seed}")
    run.mkdir(parents=True, exist_ok=True)
    config = resolve_config(args.preset)  # the config of the preset's registered id

    # seeding: torch, numpy, python; training env i starts from reset(seed=seed + i)
    th.set_num_threads(args.threads)
    set_random_seed(args.seed)

    venv = VecNormalize(
        DummyVecEnv([lambda: make_env(args.preset, args.observation) for _ in range(args.n_envs)])
    )
    venv.seed(args.seed)
    model = PPO("MlpPolicy", venv, seed=args.seed, device="cpu", verbose=0)
    curve = LearningCurve(
        config,
        args.observation,
        args.eval_every,
        list(range(VALIDATION_SEED, VALIDATION_SEED + args.curve_episodes)),
    )
    start = time.perf_counter()
    model.learn(args.total_timesteps, callback=curve)
    train_s = time.perf_counter() - start
    model.save(run / "model.zip")
    venv.save(str(run / "vecnormalize.pkl"))

    # the final comparison on held-out test seeds, under the env's reward
    seeds = list(range(TEST_SEED, TEST_SEED + args.test_episodes))
    ppo = evaluate(TrainedPolicy(model, venv, config, args.observation), config, seeds)
    lyapunov = evaluate(LyapunovPolicy(config), config, seeds)
    random = evaluate(RandomFactoredPolicy(config), config, seeds)
    ppo_return, ppo_ci = mean_ci(ppo.metric("episode_return"))
    lyap_return, lyap_ci = mean_ci(lyapunov.metric("episode_return"))
    # paired over the seeds (same channels and data for every policy)
    gain, gain_ci = mean_ci(ppo.metric("episode_return") - random.metric("episode_return"))
    result = {
        "command": "python -m agents.vanilla_sb3 "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "preset": args.preset,
        "steps": args.total_timesteps,
        "train_seconds": round(train_s, 1),
        "test_seeds": [seeds[0], seeds[-1]],
        "ppo_return": ppo_return,
        "ppo_return_ci95": ppo_ci,
        "lyapunov_return": lyap_return,
        "lyapunov_return_ci95": lyap_ci,
        "return_ratio": ppo_return / lyap_return,
        "random_factored_return": float(random.metric("episode_return").mean()),
        "ppo_minus_random_factored": gain,
        "ppo_minus_random_factored_ci95": gain_ci,
        "ppo_final_accuracy": float(ppo.metric("final_accuracy").mean()),
        "lyapunov_final_accuracy": float(lyapunov.metric("final_accuracy").mean()),
        "ppo_energy_j": float(ppo.metric("energy_j").mean()),
        "lyapunov_energy_j": float(lyapunov.metric("energy_j").mean()),
    }

    (run / "args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2) + "\n")
    config.to_yaml(run / "env_config.yaml")
    (run / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    with (run / "learning_curve.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["steps", "train_return", "validation_return"])
        writer.writeheader()
        writer.writerows(curve.rows)
    plot(
        curve.rows,
        lyap_return,
        float(random.metric("episode_return").mean()),
        run / "learning_curve.png",
        args.preset,
    )
    print(json.dumps(result, indent=2))
    return result


def plot(
    rows: list[dict[str, float]], reference: float, random_return: float, path: Path, preset: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["steps"] for r in rows]
    ax.plot(steps, [r["train_return"] for r in rows], "o-", label="PPO, training episodes")
    ax.plot(
        steps,
        [r["validation_return"] for r in rows],
        "s-",
        label="PPO, validation seeds (deterministic)",
    )
    ax.axhline(reference, color="k", ls="--", label="Lyapunov policy (test seeds)")
    ax.axhline(
        random_return, color="tab:red", ls="-.", label="random factored actions (test seeds)"
    )
    ax.axhline(0.9 * reference, color="0.5", ls=":", label="90% of Lyapunov")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(f"vanilla SB3 PPO + VecNormalize, factored action ({preset})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
