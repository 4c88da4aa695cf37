"""Trained agents as :class:`baselines.Policy` objects, and their evaluation on held-out seeds.

``load_policy("ppo:runs/my_run", config)`` returns a policy that ``python -m baselines.compare``
evaluates next to the Lyapunov policy and the heuristics, on the same seeds::

    python -m baselines.compare --config switching --policies lyapunov,greedy,ppo:runs/my_run \\
        --episodes 20 --seed 1000 --out results/my_comparison

Spec: ``<algo>:<run dir>[@best|@final|@latest]`` with algo ``ppo``, ``sac`` or
``recurrentppo``; ``@best`` (default when the run has one) is the model that scored best on
the validation seeds during training, ``@final`` the model at the end of training, ``@latest``
the newest checkpoint. A path to a ``.zip`` model works too (its normaliser is looked up
beside it); a model saved in a run directory (``best/model.zip``,
``checkpoints/ckpt_<steps>_steps.zip``) is read with that run's observation features, action
form and base V. Actions are deterministic (the distribution's mean), so an evaluation is
reproducible under a seed.

Command line (the baselines' evaluation loop, :mod:`baselines.evaluation`)::

    python -m agents.evaluate runs/my_run --episodes 20 --seed 1000 [--config switching]
"""

from __future__ import annotations

import argparse
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch as th
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecNormalize

from agents.actions import ActionAdapter, prune_stages
from agents.features import OBS_FEATURES, ObservationFeatures
from agents.normalization import resize_normalizer
from agents.policies import resize_policy
from agents.runs import RunDir
from fedenv.config import EnvConfig, resolve_config
from fedenv.env import FedLoRAWirelessEnv
from fedenv.scenarios import named_config

__all__ = ["ALGORITHMS", "SB3Policy", "load_policy", "load_model", "parse_spec"]


def _algorithm(name: str) -> type[BaseAlgorithm]:
    if name == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if name == "sac":
        from stable_baselines3 import SAC

        return SAC
    if name == "recurrentppo":
        try:
            from sb3_contrib import RecurrentPPO
        except ImportError as err:  # pragma: no cover - the train extra installs it
            raise ImportError(
                "recurrentppo needs sb3-contrib: pip install 'fedenv[train]'"
            ) from err
        return RecurrentPPO
    raise ValueError(f"unknown algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}")


ALGORITHMS = ("ppo", "sac", "recurrentppo")
_WHICH = ("best", "final", "latest")


@dataclass(frozen=True)
class ModelFiles:
    """Where a trained model and its normaliser live."""

    algo: str
    model: Path
    normalizer: Path | None
    run: RunDir | None
    label: str


def parse_spec(spec: str) -> ModelFiles:
    """Resolve ``<algo>:<run dir or model.zip>[@best|@final|@latest]`` to files (module
    docstring)."""
    algo, sep, rest = spec.partition(":")
    algo = algo.strip().lower()
    if not sep or algo not in ALGORITHMS or not rest:
        raise ValueError(
            f"bad agent spec {spec!r}: expected <algo>:<run dir>[@best|@final|@latest] with "
            "algo one of "
            f"{', '.join(ALGORITHMS)}, e.g. ppo:runs/my_run"
        )
    which = None
    if "@" in rest and rest.rsplit("@", 1)[1] in _WHICH:
        rest, which = rest.rsplit("@", 1)
    path = Path(rest)
    if path.suffix == ".zip":
        if not path.is_file():
            raise FileNotFoundError(f"model file {str(path)!r} does not exist")
        norm = path.with_name("vecnormalize.pkl")
        m = path.name.replace("ckpt_", "ckpt_vecnormalize_").replace(".zip", ".pkl")
        if path.name.startswith("ckpt_"):
            norm = path.with_name(m)
        return ModelFiles(
            algo, path, norm if norm.is_file() else None, _owning_run(path), f"{algo}:{path}"
        )
    if not path.is_dir():
        raise FileNotFoundError(
            f"run directory {str(path)!r} does not exist (train one with python -m "
            f"agents.train_{algo})"
        )
    run = RunDir(path)
    candidates: list[tuple[str, Path, Path]] = []
    if which in (None, "best"):
        candidates.append(("best", run.best_model, run.best_normalizer))
    if which in (None, "final"):
        candidates.append(("final", run.model, run.normalizer))
    if which in (None, "latest"):
        latest = run.latest_checkpoint()
        if latest is not None:
            candidates.append(("latest", latest[1], latest[2]))
    for name, model, norm in candidates:
        if model.is_file():
            label = f"{algo}:{path.resolve().name}" + ("" if name == "best" else f"@{name}")
            return ModelFiles(algo, model, norm if norm.is_file() else None, run, label)
    wanted = which or "best, final or a checkpoint"
    raise FileNotFoundError(
        f"run directory {str(path)!r} holds no {wanted} model (expected best/model.zip, "
        "model.zip or checkpoints/)"
    )


def _owning_run(model: Path) -> RunDir | None:
    """The run directory that a model file was saved in (``model.zip``, ``best/model.zip`` or
    ``checkpoints/ckpt_<steps>_steps.zip``), whose args.yaml names the model's observation
    features, action form and base V; None for a model file outside a run."""
    for directory in (model.parent, model.parent.parent):
        if (run := RunDir(directory)).is_run:
            return run
    return None


def load_model(files: ModelFiles, device: str = "cpu") -> tuple[BaseAlgorithm, VecNormalize | None]:
    """The SB3 model (without an env) and its unpickled normaliser (without a venv)."""
    model = _algorithm(files.algo).load(str(files.model), device=device)
    norm: VecNormalize | None = None
    if files.normalizer is not None:
        with files.normalizer.open("rb") as fh:
            norm = pickle.load(fh)
    return model, norm


class SB3Policy:
    """A trained SB3 model (and its saved normaliser) behind the :class:`baselines.Policy` protocol.

    ``act`` builds the agent's observation from ``(obs, info)`` as in training
    (:class:`agents.features.ObservationFeatures`), normalises it with the statistics frozen at
    the end of training,
    asks the model for its deterministic action and returns it as (K, C) float32 in [-1, 1].
    Recurrent models carry their hidden state through the episode; ``reset`` clears it.
    """

    def __init__(
        self,
        model: BaseAlgorithm,
        normalizer: VecNormalize | None,
        name: str,
        *,
        features: ObservationFeatures,
        actions: ActionAdapter,
        deterministic: bool = True,
        obs_stats: RunningMeanStd | None = None,
    ) -> None:
        self.model = model
        self.features = features
        self.actions = actions
        self.name = name
        self.deterministic = deterministic
        self._policy = model.policy
        self._policy.set_training_mode(False)
        self._norm_obs = normalizer is not None and normalizer.norm_obs
        # SB3 types obs_rms as a RunningMeanStd or, for Dict observations, a dict of them; the
        # agents' observations are Boxes, so it is one RunningMeanStd.
        stats = (
            obs_stats
            if obs_stats is not None
            else (cast(RunningMeanStd, normalizer.obs_rms) if normalizer is not None else None)
        )
        if self._norm_obs and stats is not None and normalizer is not None:
            self._mean = np.asarray(stats.mean, dtype=np.float64)
            self._scale = 1.0 / np.sqrt(
                np.asarray(stats.var, dtype=np.float64) + normalizer.epsilon
            )
            self._clip = float(normalizer.clip_obs)
        self._recurrent = hasattr(self._policy, "lstm_actor")
        self._state: Any = None
        self._episode_start = np.ones((1,), dtype=bool)

    def reset(self, seed: int | None = None) -> None:
        self.actions.reset(seed)
        self._state = None
        self._episode_start = np.ones((1,), dtype=bool)
        if seed is not None and not self.deterministic:
            th.manual_seed(int(seed))

    def normalize(self, obs: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        x = np.asarray(obs, dtype=np.float64)
        if self._norm_obs:
            x = np.clip((x - self._mean) * self._scale, -self._clip, self._clip)
        return x.astype(np.float32)

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        self.actions.observe(info)
        x = self.normalize(self.features(obs, info))
        if self._recurrent:
            action, self._state = self._policy.predict(
                x,
                state=self._state,
                episode_start=self._episode_start,
                deterministic=self.deterministic,
            )
            self._episode_start = np.zeros((1,), dtype=bool)
        else:
            with th.no_grad():
                action, _ = self._policy.predict(x, deterministic=self.deterministic)
        return self.actions(np.asarray(action, dtype=np.float32))


def _compatible(
    model: BaseAlgorithm,
    norm: VecNormalize | None,
    config: EnvConfig,
    features: ObservationFeatures,
    actions: ActionAdapter,
    label: str,
) -> RunningMeanStd | None:
    """Adapt a per-device model to the config's K; raise a clear error when shapes cannot match.

    Returns the observation statistics to use (resized for another K), or None to keep the saved
    ones.
    """
    probe = FedLoRAWirelessEnv(config)
    obs_space, act_space = (
        features.observation_space(cast(spaces.Box, probe.observation_space)),
        actions.space,
    )
    probe.close()
    trained_obs, trained_act = model.observation_space, model.action_space
    assert (
        trained_obs.shape is not None
        and trained_act.shape is not None
        and act_space.shape is not None
    )
    if trained_act.shape[1:] != act_space.shape[1:]:
        raise ValueError(
            f"{label} was trained with {trained_act.shape[1]} action components per device, "
            "but the config's "
            f"paradigm {config.paradigm!r} has {act_space.shape[1]} "
            f"({', '.join(config.action_components)}); "
            "evaluate it on the paradigm it was trained on"
        )
    if trained_obs.shape == obs_space.shape:
        return None
    f = features.device_features
    k_new, k_old = (
        config.devices.num_devices,
        (trained_obs.shape[0] - (obs_space.shape[0] - f * config.devices.num_devices)) // f,
    )
    try:
        model.policy = resize_policy(model.policy, obs_space, act_space)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            f"{label} was trained for K={k_old} devices and the config has K={k_new}; only a "
            "per-device "
            "policy (train with --policy per_device) serves another K"
        ) from None
    model.observation_space, model.action_space = obs_space, act_space
    if norm is not None and norm.norm_obs:
        return resize_normalizer(
            cast(RunningMeanStd, norm.obs_rms), k_new
        )  # a Box observation: one RunningMeanStd
    return None


def load_policy(
    spec: str, config: EnvConfig | str | None = None, *, device: str = "cpu"
) -> SB3Policy:
    """A :class:`baselines.Policy` for a trained agent (spec: ``ppo:<run dir>``, module docstring).

    Args:
        spec: ``<algo>:<run dir or model.zip>[@best|@final|@latest]``.
        config: the env config the policy will act in (an EnvConfig, preset or YAML path);
            None = the run's own training config. A per-device model adapts to another K.
        device: torch device for inference.
    """
    files = parse_spec(spec)
    model, norm = load_model(files, device=device)
    if config is None:
        if files.run is None:
            raise ValueError(f"{spec}: pass the env config the model was trained on")
        cfg = files.run.env_config()
    else:
        cfg = resolve_config(config)
    if files.run is not None and config is not None:
        trained = files.run.env_config()
        if trained != cfg:
            diff = sorted(k for k, v in cfg.to_dict().items() if trained.to_dict().get(k) != v)
            warnings.warn(
                f"{spec} was trained on a different env config (sections differing: "
                f"{', '.join(diff)})",
                stacklevel=2,
            )
    saved = files.run.read_args() if files.run is not None else {}
    features = ObservationFeatures(cfg, saved.get("obs_features") or _infer_features(model, cfg))
    actions = ActionAdapter(
        cfg,
        saved.get("action_form") or _infer_action_form(model, cfg),
        shield=bool(saved.get("shield", False)),
        base_v=saved.get("base_v"),
        prune=prune_stages(saved.get("prune", "never"), f"{spec}: args.yaml's prune")[0],
    )
    stats = _compatible(model, norm, cfg, features, actions, spec)
    return SB3Policy(model, norm, files.label, features=features, actions=actions, obs_stats=stats)


def _infer_features(model: BaseAlgorithm, config: EnvConfig) -> str:
    """The observation features of a bare model file, from its observation size."""
    size = model.observation_space.shape[0] if model.observation_space.shape else -1
    kinds = [kind for kind in OBS_FEATURES if ObservationFeatures(config, kind).size == size]
    if len(kinds) == 1:
        return kinds[0]
    which = f" (any of {', '.join(kinds)})" if kinds else ""
    raise ValueError(
        f"cannot tell the observation features of a model with observation size {size}{which}; "
        "load it from its run directory (or a model file inside one), whose args.yaml names them"
    )


def _infer_action_form(model: BaseAlgorithm, config: EnvConfig) -> str:
    """The action form of a bare model file, from its action shape."""
    shape = model.action_space.shape
    for kind in ("env", "factored"):
        if shape is not None and ActionAdapter(config, kind).shape[1:] == tuple(shape[1:]):
            return kind
    raise ValueError(
        f"cannot tell the action form of a model with action shape {shape}; load it from its "
        "run directory"
    )


def main(argv: list[str] | None = None) -> None:
    from baselines.evaluation import (  # the one loop for every policy
        evaluate_policies,
        format_table,
    )

    parser = argparse.ArgumentParser(
        prog="python -m agents.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run", help="run directory (or model.zip), optionally with @best/@final/@latest"
    )
    parser.add_argument(
        "--algo",
        default=None,
        help="ppo, sac or recurrentppo (default: read from the run's meta.json)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="env preset, registered scenario or YAML (default: the run's training config)",
    )
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument(
        "--seed",
        type=int,
        default=1000,
        help="first held-out seed (seeds seed .. seed + episodes - 1)",
    )
    args = parser.parse_args(argv)
    algo = args.algo
    if algo is None:
        run_path = Path(args.run.rsplit("@", 1)[0])
        algo = RunDir(run_path).read_meta()["algo"] if (run_path / "meta.json").is_file() else "ppo"
    spec = f"{algo}:{args.run}"
    files = parse_spec(spec)
    if args.config:
        cfg = named_config(args.config)
    elif files.run is not None:
        cfg = files.run.env_config()
    else:
        raise SystemExit(
            "error: a bare model file needs --config (the env config it was trained on)"
        )
    comparison = evaluate_policies(
        [load_policy(spec, cfg)], cfg, episodes=args.episodes, seed=args.seed
    )
    print(f"{spec} on seeds {comparison.seeds[0]}..{comparison.seeds[-1]} (mean +- 95% CI):\n")
    print(format_table(comparison))


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
