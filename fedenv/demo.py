"""Short rollout of the default environment with a summary table (``python -m fedenv.demo``)."""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import fedenv  # noqa: F401  (registers the env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="switching", help="switching, split, soft or unified")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=None, help="episode length (default: the preset's)"
    )
    args = parser.parse_args(argv)
    overrides = {"num_rounds": args.rounds} if args.rounds else {}
    env = gym.make("FedLoRAWireless-v0", preset=args.preset, **overrides)
    obs, info = env.reset(seed=args.seed)
    env.action_space.seed(args.seed)
    print(f"FedLoRAWireless-v0 preset={args.preset} seed={args.seed}: random policy")
    print(
        f"{'round':>5} {'sched':>5} {'ok':>3} {'acc':>6} {'energy J':>9} {'latency s':>9} "
        f"{'reward':>8}"
    )
    total = 0.0
    while True:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total += float(reward)
        print(
            f"{info['round']:>5} {int((info['module'] > 0).sum()):>5} "
            f"{int(info['success'].sum()):>3} "
            f"{info['accuracy']:>6.3f} {info['energy_j'].sum():>9.3f} "
            f"{info['round_latency_s']:>9.2f} {reward:>8.3f}"
        )
        if terminated or truncated:
            break
    print(
        f"return {total:.2f}; final accuracy {info['accuracy']:.3f}; "
        f"mean backlog {np.mean(info['energy_backlog']):.3f} J"
    )


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
