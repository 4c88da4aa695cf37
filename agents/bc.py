"""Behaviour-cloning warm start: PPO's policy first imitates the Lyapunov policy.

``python -m agents.train_ppo --bc-steps 20000`` plays the Lyapunov policy
(:class:`baselines.lyapunov.LyapunovPolicy`, V = ``DEFAULT_V``) in the training envs for that
many env steps before PPO starts, records the (normalised) observations the agent sees and the
Lyapunov decisions written in the agent's action form (:meth:`ActionAdapter.encode`), and fits
the policy's action means to them by mean squared error. The rollouts also warm the observation
normaliser. PPO then starts at the baseline's operating point (its accuracy) instead of at a
random policy. The env and its reward are unchanged; the steps played for cloning are not
counted in PPO's ``total_timesteps``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.vec_env import VecEnv

from agents.actions import ActionAdapter
from fedenv.config import EnvConfig

__all__ = ["lyapunov_demonstrations", "clone"]


def lyapunov_demonstrations(
    venv: VecEnv, config: EnvConfig, actions: ActionAdapter, steps: int, v: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(observations, agent actions) of the Lyapunov policy (trade-off ``v``; None = its
    default) played for ``steps`` env steps in ``venv``."""
    from agents.envs import BatchedAgentVecEnv
    from baselines.lyapunov import DEFAULT_V, LyapunovPolicy

    n = venv.num_envs
    experts = [LyapunovPolicy(config, DEFAULT_V if v is None else v) for _ in range(n)]
    obs = venv.reset()
    inner = venv.unwrapped  # the base VecEnv, whose reset_infos hold the new episodes' infos
    batched = isinstance(
        inner, BatchedAgentVecEnv
    )  # its infos are lean: read the state from the batched env
    infos = _state_infos(inner) if batched else list(inner.reset_infos)
    xs, ys = [], []
    for _ in range(max(1, steps // n)):
        x = np.asarray(obs, dtype=np.float32).copy()
        # The Lyapunov policy decides from info alone (what the BS knows); the observation it is
        # handed for the Policy protocol's sake is the agent's (normalised) one, which it ignores.
        act = np.stack([actions.encode(experts[i].act(x[i], infos[i])) for i in range(n)])
        xs.append(x)
        ys.append(act)
        obs, _, dones, step_infos = venv.step(act)
        infos = (
            _state_infos(inner)
            if batched
            else [inner.reset_infos[i] if dones[i] else step_infos[i] for i in range(n)]
        )
    return np.concatenate(xs), np.concatenate(ys).reshape(len(xs) * n, -1)


def _state_infos(venv: Any) -> list[dict[str, Any]]:
    """Per-env state ``info`` dicts (what the Lyapunov policy reads) of a batched training env."""
    state = venv.venv.state_info()
    keys = [key for key in state if not key.startswith("_")]
    return [{key: state[key][i] for key in keys} for i in range(venv.num_envs)]


def clone(
    policy: Any,
    obs: np.ndarray,
    target: np.ndarray,
    *,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
) -> float:
    """Fit ``policy``'s action means to ``target`` (MSE); returns the final mean loss."""
    gen = th.Generator().manual_seed(seed)
    x = th.as_tensor(obs, device=policy.device)
    y = th.as_tensor(target, dtype=th.float32, device=policy.device)
    opt = th.optim.Adam(policy.parameters(), lr=lr)
    policy.set_training_mode(True)
    loss_value = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in th.randperm(len(x), generator=gen).split(batch_size):
            mean = policy.get_distribution(x[idx]).distribution.mean
            loss = th.nn.functional.mse_loss(mean.reshape(len(idx), -1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        loss_value = total / count
    policy.set_training_mode(False)
    return loss_value
