"""Behaviour-cloning warm start: PPO's policy first imitates the Lyapunov policy.

``python -m agents.train_ppo --bc-steps 20000`` plays the Lyapunov policy
(:class:`baselines.lyapunov.LyapunovPolicy`, V = ``DEFAULT_V``) in the training envs for that
many env steps before PPO starts, records the (normalised) observations the agent sees and the
Lyapunov decisions written in the agent's action form (:meth:`ActionAdapter.encode`), and fits
the policy's action means to them by mean squared error. The rollouts also warm the observation
normaliser. PPO then starts at the baseline's operating point (its accuracy) instead of at a
random policy. The env and its reward are unchanged; the steps played for cloning are not
counted in PPO's ``total_timesteps``.

``python -m agents.bc`` measures how well a policy network *can* imitate the Lyapunov policy,
without PPO: it plays the Lyapunov policy in the agents' training envs, standardises the
observations, fits a fresh network (``--policy``, ``--net-arch``) on the first part of the
steps and reports, on the fit steps and on the held-out rest, the action MSE per component and
the share of device-rounds on which the network schedules a device exactly when the Lyapunov
policy does (paradigms that can idle a device):

    python -m agents.bc --config switching --steps 8000 --epochs 100

A network that cannot reproduce the baseline's decisions from what the agent observes starts
below it however it is warm-started (docs/agent-experiments.md#lagrangian-bc).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.vec_env import VecEnv

from agents.actions import ActionAdapter
from fedenv.config import EnvConfig

__all__ = ["lyapunov_demonstrations", "imitated_means", "clone", "imitation_fit", "main"]


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


def imitated_means(policy: Any, obs: th.Tensor, target: th.Tensor) -> th.Tensor:
    """The action means that behaviour cloning fits to ``target`` in ``obs``: an autoregressive
    policy's devices given the demonstrated actions of the devices before them (teacher
    forcing), any other policy's means."""
    dist = policy.get_distribution(obs)
    conditional = getattr(dist, "conditional_mean", None)
    return dist.distribution.mean if conditional is None else conditional(target)


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
    """Fit ``policy``'s action means (:func:`imitated_means`) to ``target`` (MSE); returns the
    final mean loss. :func:`imitation_fit` scores what the policy then plays."""
    gen = th.Generator().manual_seed(seed)
    x = th.as_tensor(obs, device=policy.device)
    y = th.as_tensor(target, dtype=th.float32, device=policy.device)
    opt = th.optim.Adam(policy.parameters(), lr=lr)
    policy.set_training_mode(True)
    loss_value = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in th.randperm(len(x), generator=gen).split(batch_size):
            mean = imitated_means(policy, x[idx], y[idx])
            loss = th.nn.functional.mse_loss(mean.reshape(len(idx), -1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        loss_value = total / count
    policy.set_training_mode(False)
    return loss_value


def imitation_fit(
    config: EnvConfig,
    *,
    steps: int = 8000,
    holdout: float = 0.25,
    epochs: int = 100,
    policy: str = "per_device",
    net_arch: Sequence[int] = (64, 64),
    obs_features: str = "label_mix_budget",
    action_form: str = "factored",
    v: float | None = None,
    n_envs: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit a fresh policy network to the Lyapunov policy's decisions (module docstring).

    Returns:
        ``fit`` and ``held_out``, each with ``mse`` (all components), ``mse_per_component``,
        ``target_variance_per_component`` and ``schedule_agreement`` (NaN where the paradigm
        cannot idle a device), and the run's settings.

    Raises:
        ValueError: ``holdout`` outside (0, 1), or ``steps`` too few to hold any out.
    """
    from stable_baselines3.common.policies import ActorCriticPolicy

    from agents.envs import make_vec_env
    from agents.features import ObservationFeatures
    from agents.policies import policy_class
    from fedenv.actions import ActionCodec

    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    venv = make_vec_env(
        config, n_envs, "auto", seed=seed, obs_features=obs_features, action_form=action_form
    )
    actions = ActionAdapter(config, action_form)
    obs, target = lyapunov_demonstrations(venv, config, actions, steps, v=v)
    venv.close()
    cut = int(round(len(obs) * (1.0 - holdout)))
    if not 0 < cut < len(obs):
        raise ValueError(f"steps={steps} leaves nothing to fit or to hold out; take more steps")
    mean, std = obs[:cut].mean(axis=0), obs[:cut].std(axis=0) + 1e-8
    x = ((obs - mean) / std).astype(np.float32)
    kind = policy_class(policy)
    kwargs: dict[str, Any] = {"net_arch": list(net_arch)}
    if not isinstance(kind, str):
        kwargs["device_features"] = ObservationFeatures(config, obs_features).device_features
    th.manual_seed(seed)
    net: Any = (ActorCriticPolicy if isinstance(kind, str) else kind)(
        venv.observation_space, venv.action_space, lambda _: 3e-4, **kwargs
    )
    clone(net, x[:cut], target[:cut], epochs=epochs, seed=seed)
    with th.no_grad():
        pred = net.get_distribution(th.as_tensor(x)).mode().numpy()
    shape = (len(x), *actions.shape)
    pred, target = pred.reshape(shape), target.reshape(shape)
    codec = ActionCodec(config)

    def scheduled(a: np.ndarray) -> np.ndarray:
        canonical = actions(np.clip(a, -1.0, 1.0))  # a batch (N, K, C')
        return np.asarray(codec.decode(canonical).module) > 0

    def report(part: slice) -> dict[str, Any]:
        err = (pred[part] - target[part]) ** 2
        agree = (
            float(np.mean(scheduled(pred[part]) == scheduled(target[part])))
            if codec.idle_column is not None
            else float("nan")
        )
        return {
            "steps": int(err.shape[0]),
            "mse": float(err.mean()),
            "mse_per_component": err.mean(axis=(0, 1)).tolist(),
            "target_variance_per_component": target[part].var(axis=(0, 1)).tolist(),
            "schedule_agreement": agree,
        }

    return {
        "config": config.paradigm,
        "policy": policy,
        "net_arch": list(net_arch),
        "obs_features": obs_features,
        "action_form": action_form,
        "V": v,
        "epochs": epochs,
        "fit": report(slice(0, cut)),
        "held_out": report(slice(cut, None)),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from agents.features import OBS_FEATURES
    from agents.policies import POLICIES
    from fedenv.scenarios import named_config

    parser = argparse.ArgumentParser(
        prog="python -m agents.bc",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="switching", help="preset, scenario or YAML file")
    parser.add_argument("--steps", type=int, default=8000, help="env steps of the Lyapunov policy")
    parser.add_argument("--holdout", type=float, default=0.25, help="share of the steps held out")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of the fit")
    parser.add_argument("--policy", choices=sorted(POLICIES), default="per_device")
    parser.add_argument("--net-arch", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--obs-features", choices=OBS_FEATURES, default="label_mix_budget")
    parser.add_argument("--action-form", choices=("env", "factored"), default="factored")
    parser.add_argument("--V", dest="v", type=float, default=None, help="the Lyapunov policy's V")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    try:
        config = named_config(args.config)
        report = imitation_fit(
            config,
            steps=args.steps,
            holdout=args.holdout,
            epochs=args.epochs,
            policy=args.policy,
            net_arch=args.net_arch,
            obs_features=args.obs_features,
            action_form=args.action_form,
            v=args.v,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    for part in ("fit", "held_out"):
        r = report[part]
        per = ", ".join(
            f"{m:.3f}/{v:.3f}"
            for m, v in zip(r["mse_per_component"], r["target_variance_per_component"])
        )
        print(
            f"{part:9s} {r['steps']:6,d} steps: action MSE {r['mse']:.3f} (per component, MSE/"
            f"variance of the target: {per}); schedule agreement {r['schedule_agreement']:.3f}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
