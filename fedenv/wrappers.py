"""Action and observation forms for FedLoRAWireless-v0, as Gymnasium wrappers.

Each wrapper maps back to the canonical forms of :class:`fedenv.env.FedLoRAWirelessEnv` (an
action ``Box(-1, 1, (K, C))``; a flat observation of 7 K + 4 features):

| wrapper                       | action / observation                    | for                  |
|-------------------------------|-----------------------------------------|----------------------|
| :class:`FactoredAction`       | ``Box(-1, 1, (K, C + 1))``: schedule    | SB3 PPO/SAC/A2C (the |
|                               | and rank apart                          | form that learns)    |
| :class:`FlatAction`           | the wrapped ``Box`` action flattened to | CleanRL-style code,  |
|                               | 1-D                                     | any Box action       |
| :class:`DiscreteAction`       | 1-D ``MultiDiscrete`` of K x C          | SB3 PPO/A2C,         |
|                               | quantised levels                        | DQN-style, tabular   |
| :class:`DictAction`           | ``{component: Box(-1, 1, (K,))}``       | RLlib                |
| :class:`LabelSkewObservation` | + each device's label skew (and         | agents that balance  |
|                               | time-to-go ramps)                       | participation        |
| :class:`DictObservation`      | ``{"devices": (K, 7), "global": (4,)}`` | per-device networks  |
| :class:`HorizonIsTermination` | the T-round horizon reported as a       | training envs (no    |
|                               | termination                             | bootstrap past T)    |
| :class:`BudgetShieldAction`   | the canonical action, with every device | constrained agents   |
|                               | idled whose round would overspend its   | (a safety shield)    |
|                               | episode energy budget                   |                      |
| :class:`ArrivalPrunerAction`  | the canonical action, with every device | agents that maximise |
|                               | idled whose update is predicted to      | the final accuracy   |
|                               | raise the loss gap                      |                      |

Every wrapper records its constructor arguments (``gymnasium.utils.RecordConstructorArgs``), so
``gym.make(wrapped.spec)`` rebuilds the stack and Gymnasium's and SB3's ``check_env`` pass on
each. A wrapper reads the env's config when built and again at each ``reset``: after
``env.unwrapped.configure(...)`` it follows the new config (a new horizon, new reward weights),
and raises ``RuntimeError`` at that reset if the change alters its spaces (another K or
paradigm: build the wrapper again).

Training stack of ``agents/`` (and of ``agents/vanilla_sb3.py``)::

    env = gym.make("FedLoRAWireless-v0")
    env = FactoredAction(LabelSkewObservation(env))     # or FactoredAction(env)

The pure mappings behind the wrappers (:class:`FactoredCodec`, :class:`ObservationFeatures`,
:class:`BudgetShield`, :class:`ArrivalPruner`)
work on batches too; ``agents/`` applies them to whole batches of the batched vector env and
in its evaluation adapters, so training and evaluation cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import RecordConstructorArgs
from numpy.typing import NDArray

from fedenv.actions import ActionCodec
from fedenv.config import EnvConfig
from fedenv.env import DEVICE_FEATURES, GLOBAL_FEATURES
from fedenv.learning.surrogate import arrival_what_ifs, next_gap, round_progress
from fedenv.queues import energy_budget_left
from fedenv.round import EpisodeTablesCache, play_round

__all__ = [
    "OBS_FEATURES",
    "TIME_HORIZONS",
    "BUDGET_FEATURES",
    "ArrivalPruner",
    "ArrivalPrunerAction",
    "BudgetShield",
    "BudgetShieldAction",
    "DictAction",
    "DictObservation",
    "DiscreteAction",
    "FactoredAction",
    "FactoredCodec",
    "FlatAction",
    "HorizonIsTermination",
    "LabelSkewObservation",
    "ObservationFeatures",
]

_F = len(DEVICE_FEATURES)
_G = len(GLOBAL_FEATURES)


def _config_of(env: gym.Env[Any, Any]) -> EnvConfig:
    config = getattr(env.unwrapped, "config", None)
    if not isinstance(config, EnvConfig):
        raise TypeError(
            f"expected a FedLoRAWireless-v0 environment, got {type(env.unwrapped).__name__}"
        )
    return config


class _FollowsConfig:
    """Rebinds a wrapper to the env's config at reset (after ``configure``); raises if its spaces
    change."""

    env: gym.Env[Any, Any]
    _config: EnvConfig
    _action_space: Any
    _observation_space: Any

    def _bind(self, config: EnvConfig) -> None:
        raise NotImplementedError

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """The env's reset, then the wrapper follows its config (a wrapper whose reset transforms
        the observation calls :meth:`_follow_config` itself, before transforming)."""
        out = self.env.reset(seed=seed, options=options)
        self._follow_config()
        return out

    def _follow_config(self) -> None:
        config = _config_of(self.env)
        if config is self._config:
            return
        before = (self._action_space, self._observation_space)
        self._bind(config)
        self._config = config
        if (self._action_space, self._observation_space) != before:
            raise RuntimeError(
                f"{type(self).__name__}: the env was reconfigured (env.unwrapped.configure) "
                "in a way that changes this "
                "wrapper's spaces (another number of devices or paradigm); build the wrapper "
                "stack again"
            )


# -------------------------------------------------------------------- factored action
class FactoredCodec:
    """The factored action of one config (see :class:`FactoredAction`), as a pure mapping.

    Attributes:
        shape: the factored action's shape, (K, C + 1) where the env has a ``module`` component,
            else the env's (K, C).
        env_shape: the env's action shape (K, C).
        components: the factored action's components (last axis), e.g.
            ``("schedule", "rank", "power", "bandwidth")``.
        factored: whether the mapping is more than clipping (the paradigm has a ``module``).
    """

    def __init__(self, config: EnvConfig) -> None:
        comps = tuple(config.action_components)
        self.num_devices = config.devices.num_devices
        self.num_modules = config.model.num_modules
        self.env_shape = (self.num_devices, len(comps))
        self.factored = "module" in comps
        self.module_index = comps.index("module") if self.factored else -1
        #: env components other than ``module``, in order (the factored action's columns 2..)
        self._others = [i for i in range(len(comps)) if i != self.module_index]
        self.components = (
            ("schedule", "rank", *(comps[i] for i in self._others)) if self.factored else comps
        )
        self.shape = (self.num_devices, len(self.components))
        self._codec = ActionCodec(config)

    @property
    def space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=self.shape, dtype=np.float32)

    def to_env(self, action: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        """The env's canonical action of factored actions of shape (..., K, C'), clipped to [-1, 1]
        first."""
        a = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        if not self.factored:
            return a
        m = self.num_modules
        rank_slot = np.minimum(np.floor((a[..., 1] + 1.0) * 0.5 * m), m - 1)
        module = np.where(a[..., 0] > 0.0, 1.0 + rank_slot, 0.0)
        out = np.empty(a.shape[:-1] + self.env_shape[-1:], dtype=np.float32)
        out[..., self._others] = a[..., 2:]
        out[..., self.module_index] = (module + 0.5) / (m + 1) * 2.0 - 1.0
        return out

    def from_env(self, env_action: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        """A factored action that :meth:`to_env` maps to ``env_action``'s decisions (one action, (K,
        C)).

        Schedule +-0.5, the centre of the rank's slot, the other components unchanged.
        """
        a = np.clip(np.asarray(env_action, dtype=np.float32).reshape(self.env_shape), -1.0, 1.0)
        if not self.factored:
            return a
        module = self._codec.decode(self._codec.validate(a)).module  # the env's own module mapping
        out = np.empty(self.shape, dtype=np.float32)
        out[:, 0] = np.where(module > 0, 0.5, -0.5)
        out[:, 1] = np.where(
            module > 0, (np.maximum(module - 1, 0) + 0.5) / self.num_modules * 2.0 - 1.0, 0.0
        )
        out[:, 2:] = a[:, self._others]
        return out


class FactoredAction(
    _FollowsConfig,
    gym.ActionWrapper[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]],
    RecordConstructorArgs,
):
    """Schedule and rank as separate action components: ``Box(-1, 1, (K, C + 1))``.

    The env encodes a device's LoRA module in one ordinal component (0 = idle, 1..M = ranks
    r_1 < ... < r_M), so a Gaussian policy that wants to idle a device must move its mean down
    through every rank. This form keeps *whether* and *at which rank* a device trains apart:

    | column | component        | meaning                                                       |
    |--------|------------------|---------------------------------------------------------------|
    | 0      | schedule         | the device trains this round if > 0                           |
    | 1      | rank             | module 1 + min(floor((rank + 1) / 2 M), M - 1) when scheduled |
    | 2..    | the env's others | power, bandwidth (and ratio), unchanged                       |

    and hands the env the canonical action of that module (the centre of its interval). Actions
    are clipped to [-1, 1]; an array of the same size in another shape (a flat one) is
    reshaped. Paradigms without a ``module`` component (split: schedule and bandwidth already;
    soft: ratio and bandwidth) keep the env's action (clipped). SB3's PPO with ``MlpPolicy``
    learns on this form (``agents/vanilla_sb3.py``); on the raw env action it stays near a
    random policy.

    Args:
        env: a FedLoRAWireless-v0 env (possibly wrapped, its action the canonical Box).
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        self._config = _config_of(env)
        self._bind(self._config)

    def _bind(self, config: EnvConfig) -> None:
        self.codec = FactoredCodec(config)
        self.action_space = self.codec.space  # type: ignore[assignment]

    def action(self, action: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        a = np.asarray(action, dtype=np.float32)
        if a.size != np.prod(self.codec.shape):
            raise ValueError(
                f"factored action must have shape {self.codec.shape} "
                f"({', '.join(self.codec.components)} per device), got shape {a.shape}"
            )
        return self.codec.to_env(a.reshape(self.codec.shape))

    def reverse_action(self, action: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        return self.codec.from_env(action)


# ------------------------------------------------------------------------ flat action
class FlatAction(
    _FollowsConfig,
    gym.ActionWrapper[Any, NDArray[np.float32], NDArray[np.float32]],
    RecordConstructorArgs,
):
    """The wrapped env's ``Box`` action flattened to 1-D (row-major), for code that expects a
    vector.

    ``FlatAction(env)`` gives ``Box(-1, 1, (K C,))`` (device-major: the C components of device
    0, then device 1, ...); ``FlatAction(FactoredAction(env))`` the factored action as
    ``(K (C + 1),)``. Bounds and dtype are the wrapped space's.

    Args:
        env: an env whose action space is a ``Box`` (FedLoRAWireless-v0, possibly wrapped).
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        self._config = _config_of(env)
        self._bind(self._config)

    def _bind(self, config: EnvConfig) -> None:
        inner = self.env.action_space
        if not isinstance(inner, spaces.Box):
            raise TypeError(f"FlatAction flattens a Box action space, got {inner}")
        self._inner_shape = inner.shape
        self.action_space = spaces.Box(inner.low.ravel(), inner.high.ravel(), dtype=inner.dtype)  # type: ignore[arg-type]

    def action(self, action: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        a = np.asarray(action)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"flat action must have shape {self.action_space.shape}, got {a.shape}"
            )
        return a.reshape(self._inner_shape)

    def reverse_action(self, action: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        return np.asarray(action).reshape(-1)


# -------------------------------------------------------------------- discrete action
class DiscreteAction(
    _FollowsConfig,
    gym.ActionWrapper[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32]],
    RecordConstructorArgs,
):
    """1-D ``MultiDiscrete`` of K x C level indices, device-major (SB3 PPO and A2C train on it).

    Entry ``k C + c`` is device k's level of the env's component c:

    * module: M + 1 levels (0 = not scheduled, j = module j); schedule: 2 levels;
    * power, bandwidth, ratio: ``levels`` evenly spaced values of the canonical [-1, 1]
      (power from p_min to P_max; bandwidth weights from 0 to 1; ratio from rho_min to 1).

    An action of shape (K, C) is accepted as well. Levels outside their range, non-integers or
    another size raise ``ValueError`` before the env is touched.

    Args:
        env: a FedLoRAWireless-v0 env (possibly wrapped, its action the canonical Box).
        power_levels / bandwidth_levels / ratio_levels: quantisation levels, >= 2.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        power_levels: int = 4,
        bandwidth_levels: int = 4,
        ratio_levels: int = 4,
    ) -> None:
        RecordConstructorArgs.__init__(
            self,
            power_levels=power_levels,
            bandwidth_levels=bandwidth_levels,
            ratio_levels=ratio_levels,
        )
        gym.ActionWrapper.__init__(self, env)
        for name, n in (
            ("power_levels", power_levels),
            ("bandwidth_levels", bandwidth_levels),
            ("ratio_levels", ratio_levels),
        ):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {n!r}")
        self._sizes = {
            "schedule": 2,
            "power": int(power_levels),
            "bandwidth": int(bandwidth_levels),
            "ratio": int(ratio_levels),
        }
        self._config = _config_of(env)
        self._bind(self._config)

    def _bind(self, config: EnvConfig) -> None:
        self.num_devices = config.devices.num_devices
        self.components = tuple(config.action_components)
        sizes = {**self._sizes, "module": config.model.num_modules + 1}
        self.levels = np.array([sizes[c] for c in self.components], dtype=np.int64)
        self.env_shape = (self.num_devices, len(self.components))
        self.action_space = spaces.MultiDiscrete(np.tile(self.levels, self.num_devices))
        # canonical value of every level, per component (module levels are bin centres)
        self._values = []
        for c, n in zip(self.components, self.levels):
            if c == "module":
                self._values.append((np.arange(n) + 0.5) / n * 2.0 - 1.0)
            else:
                self._values.append(np.linspace(-1.0, 1.0, int(n)))

    def action(self, action: NDArray[np.int64]) -> NDArray[np.float32]:
        a = np.asarray(action)
        if a.shape not in (self.action_space.shape, self.env_shape):
            raise ValueError(
                f"discrete action must have shape {self.action_space.shape} (or "
                f"{self.env_shape}), got {a.shape}"
            )
        a = a.reshape(self.env_shape)
        if not np.issubdtype(a.dtype, np.integer) or (a < 0).any() or (a >= self.levels).any():
            raise ValueError(
                "discrete action levels must be integers in [0, n) with n = "
                f"{list(self.levels)} for {list(self.components)}, got {a.tolist()}"
            )
        out = np.empty(a.shape, dtype=np.float32)
        for i, values in enumerate(self._values):
            out[:, i] = values[a[:, i]]
        return out

    def reverse_action(self, action: NDArray[np.float32]) -> NDArray[np.int64]:
        """Nearest level of each canonical value, flat (K C,)."""
        a = np.asarray(action, dtype=np.float64).reshape(self.env_shape)
        out = np.empty(a.shape, dtype=np.int64)
        for i, values in enumerate(self._values):
            out[:, i] = np.abs(a[:, i, None] - values[None, :]).argmin(axis=-1)
        return out.reshape(-1)


# ------------------------------------------------------------------------ dict action
class DictAction(
    _FollowsConfig,
    gym.ActionWrapper[
        NDArray[np.float32], dict[str, NDArray[np.float32]], NDArray[np.floating[Any]]
    ],
    RecordConstructorArgs,
):
    """Dict action ``{component: Box(-1, 1, (K,))}``; components as in the env's action table.

    Each component is passed on in its own precision (float64 values are not narrowed to
    float32, where a finite 1e39 would become inf): the env clips finite values to [-1, 1] and
    rejects the rest. Anything but a mapping with exactly the component keys, each an array of
    shape (K,) of real numbers, raises ``ValueError`` before the env is touched. SB3 does not
    train on Dict actions (its ``check_env`` warns); use :class:`FactoredAction` or
    :class:`FlatAction` there.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        self._config = _config_of(env)
        self._bind(self._config)

    def _bind(self, config: EnvConfig) -> None:
        self.num_devices = k = config.devices.num_devices
        self.components = tuple(config.action_components)
        self.action_space = spaces.Dict(
            {c: spaces.Box(-1.0, 1.0, shape=(k,), dtype=np.float32) for c in self.components}
        )  # type: ignore[assignment]

    def action(self, action: Mapping[str, Any]) -> NDArray[np.floating[Any]]:
        k, keys = self.num_devices, list(self.components)
        if not isinstance(action, Mapping):
            raise ValueError(
                f"Dict action must be a mapping {{component: array of shape ({k},)}} with "
                f"the keys {keys}, "
                f"got {type(action).__name__}: {action!r}"
            )
        missing = set(self.components) - set(action)
        extra = set(action) - set(self.components)
        if missing or extra:
            raise ValueError(
                f"Dict action must have exactly the keys {keys}; missing {sorted(missing)}, "
                f"unexpected {sorted(extra, key=repr)}"
            )
        parts = []
        for c in self.components:
            part = np.asarray(action[c])
            if part.shape != (k,):
                raise ValueError(
                    f"Dict action[{c!r}] must have shape ({k},) (one value per device), got "
                    f"shape {part.shape}"
                )
            if part.dtype.kind not in "iufO":
                raise ValueError(
                    f"Dict action[{c!r}] must hold real numbers in [-1, 1], got dtype {part.dtype}"
                )
            parts.append(part)
        return np.stack(parts, axis=-1)

    def reverse_action(self, action: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        a = np.asarray(action, dtype=np.float32)
        return {c: a[..., i].copy() for i, c in enumerate(self.components)}


# --------------------------------------------------------------- label-skew features
#: observation feature sets of :class:`ObservationFeatures` (``env`` = the env's observation)
OBS_FEATURES = ("env", "label_mix", "label_mix_time", "label_mix_budget")
#: h of the time-to-go ramps of ``label_mix_time``, rounds
TIME_HORIZONS = (3, 10)
#: names of the per-device budget features of ``label_mix_budget``
BUDGET_FEATURES = ("budget_left", "budget_rate")
#: the budget rate is clipped to [-1, BUDGET_RATE_MAX], then divided by it
BUDGET_RATE_MAX = 4.0


class ObservationFeatures:
    """Layout of an observation with the devices' label skew, for one config
    (:class:`LabelSkewObservation`).

    * ``env``: the env's observation as is, ``(7 K + 4,)``.
    * ``label_mix``: per device the 7 env features then the label skew ``l_k - p`` (L values:
      the device's label distribution minus the global one, in [-1, 1]); then the 4 globals:
      ``(K (7 + L) + 4,)``. The label mix is fixed for an episode.
    * ``label_mix_time``: ``label_mix`` plus, per device, the time-to-go features
      ``max(0, 1 - (T - t) / h)`` for h in :data:`TIME_HORIZONS` (0 until the last h rounds,
      then rising to 1 - 1/h at the last round): ``(K (7 + L + H) + 4,)``. They are the same
      for every device (a global broadcast to each device's row, so a per-device network
      needs no extra global slot).
    * ``label_mix_budget``: ``label_mix`` plus, per device, what is left of its episode's
      energy budget, from ``info["energy_spent_j"]`` S_k and ``info["round"]`` t, with E_bar
      the per-round budget and T the horizon (:data:`BUDGET_FEATURES`): the share left,
      ``clip((T E_bar - S_k) / (T E_bar), -1, 1)``, and the rate it affords per round to go,
      ``clip((T E_bar - S_k) / (max(T - t, 1) E_bar), -1, 4) / 4`` (1 at 4 E_bar a round and
      more): ``(K (7 + L + 2) + 4,)``. The constrained problem's state includes the energy
      already spent (a budget over the episode, not per round: Sauté RL, Sootla et al., ICML
      2022, augments the state with it); the env's observation has only the virtual queue Z_k,
      which forgets a device's slack. Both are 0 without an energy budget.

    Calling it on ``(obs, info)`` gives the observation; batched too (``obs`` (N, 7 K + 4) with
    the batched ``info`` of :class:`fedenv.vector.FedLoRAWirelessVectorEnv`).
    """

    def __init__(self, config: EnvConfig, kind: str = "label_mix") -> None:
        if kind not in OBS_FEATURES:
            raise ValueError(f"obs_features must be one of {', '.join(OBS_FEATURES)}, got {kind!r}")
        self.kind = kind
        self.num_devices = config.devices.num_devices
        self.num_labels = config.model.num_labels if kind != "env" else 0
        self.num_time = len(TIME_HORIZONS) if kind == "label_mix_time" else 0
        self.num_budget = len(BUDGET_FEATURES) if kind == "label_mix_budget" else 0
        self.num_rounds = config.num_rounds
        self.config = config
        self.device_features = _F + self.num_labels + self.num_time + self.num_budget
        self.size = self.num_devices * self.device_features + _G

    def observation_space(self, env_space: spaces.Box) -> spaces.Box:
        """The observation space, from the env's."""
        if self.kind == "env":
            return env_space
        k = self.num_devices
        low = np.asarray(env_space.low, dtype=np.float32)
        high = np.asarray(env_space.high, dtype=np.float32)
        extra_lo = np.concatenate(
            [
                -np.ones((k, self.num_labels), np.float32),
                np.zeros((k, self.num_time), np.float32),
                np.tile(
                    np.array([-1.0, -1.0 / BUDGET_RATE_MAX], np.float32)[: self.num_budget], (k, 1)
                ),
            ],
            axis=1,
        )
        dev_lo = np.concatenate([low[: _F * k].reshape(k, _F), extra_lo], axis=1)
        dev_hi = np.concatenate(
            [
                high[: _F * k].reshape(k, _F),
                np.ones((k, self.num_labels + self.num_time + self.num_budget), np.float32),
            ],
            axis=1,
        )
        return spaces.Box(
            np.concatenate([dev_lo.ravel(), low[_F * k :]]),
            np.concatenate([dev_hi.ravel(), high[_F * k :]]),
            dtype=np.float32,
        )

    def __call__(
        self, obs: NDArray[np.floating[Any]], info: Mapping[str, Any]
    ) -> NDArray[np.float32]:
        """The observation from the env's ``obs`` and ``info`` of the same reset/step."""
        if self.kind == "env":
            return np.asarray(obs, dtype=np.float32)
        k = self.num_devices
        obs = np.asarray(obs, dtype=np.float32)
        lead = obs.shape[:-1]
        glob = np.asarray(info["global_label_distribution"], dtype=np.float32)
        skew = np.asarray(info["label_distribution"], dtype=np.float32) - glob[..., None, :]
        parts = [obs[..., : _F * k].reshape(*lead, k, _F), skew.reshape(*lead, k, self.num_labels)]
        if self.num_time:
            to_go = self.num_rounds - np.asarray(info["round"], dtype=np.float64)
            ramps = np.maximum(
                0.0, 1.0 - to_go[..., None] / np.asarray(TIME_HORIZONS, dtype=np.float64)
            ).astype(np.float32)
            parts.append(np.broadcast_to(ramps[..., None, :], (*lead, k, self.num_time)))
        if self.num_budget:
            parts.append(self._budget(info, lead))
        dev = np.concatenate(parts, axis=-1)
        return np.concatenate(
            [dev.reshape(*lead, k * self.device_features), obs[..., _F * k :]], axis=-1
        )

    def _budget(self, info: Mapping[str, Any], lead: tuple[int, ...]) -> NDArray[np.float32]:
        """The ``label_mix_budget`` features (..., K, 2): share of the budget left, and the rate
        it affords per round to go (class docstring)."""
        left = energy_budget_left(self.config, info["energy_spent_j"])
        if left is None:
            return np.zeros((*lead, self.num_devices, self.num_budget), np.float32)
        per_round, horizon = self.config.budgets.energy_budget_j, self.num_rounds
        assert per_round is not None  # (left is None without it)
        to_go = np.maximum(horizon - np.asarray(info["round"], dtype=np.float64), 1.0)
        share = np.clip(left / (per_round * horizon), -1.0, 1.0)
        rate = np.clip(left / (to_go[..., None] * per_round), -1.0, BUDGET_RATE_MAX)
        return np.stack([share, rate / BUDGET_RATE_MAX], axis=-1).astype(np.float32)


class LabelSkewObservation(
    gym.Wrapper[NDArray[np.float32], Any, NDArray[np.float32], Any],
    RecordConstructorArgs,
    _FollowsConfig,
):
    """The env's observation with each device's label skew (and optionally time-to-go ramps).

    The env's observation carries channels, resources, backlogs and learning progress, but not
    *which labels* each device holds; the Lyapunov policy reads them from
    ``info["label_distribution"]`` (the base station knows the label histograms it partitioned),
    and they decide how biased a round's aggregate is. This wrapper gives a learned agent the
    same ``info``: per device, after its 7 features, the label skew ``l_k - p`` (L values in
    [-1, 1]); ``features="label_mix_time"`` adds time-to-go ramps, ``"label_mix_budget"`` what
    is left of each device's energy budget (:class:`ObservationFeatures` has the layout).

    Args:
        env: a FedLoRAWireless-v0 env (possibly wrapped) whose observation is the env's flat Box.
        features: ``"label_mix"`` (default), ``"label_mix_time"``, ``"label_mix_budget"`` or
            ``"env"`` (no change), or
            an :class:`ObservationFeatures` of the env's config.
    """

    def __init__(
        self, env: gym.Env[Any, Any], features: str | ObservationFeatures = "label_mix"
    ) -> None:
        RecordConstructorArgs.__init__(self, features=features)
        gym.Wrapper.__init__(self, env)
        self._kind = features.kind if isinstance(features, ObservationFeatures) else features
        self._config = _config_of(env)
        if isinstance(features, ObservationFeatures) and (
            features.num_devices,
            features.num_rounds,
        ) != (self._config.devices.num_devices, self._config.num_rounds):
            raise ValueError(
                f"the ObservationFeatures were built for K={features.num_devices}, "
                f"T={features.num_rounds}; the env has "
                f"K={self._config.devices.num_devices}, T={self._config.num_rounds}"
            )
        self._bind(self._config)
        if isinstance(features, ObservationFeatures):
            self.features = features

    def _bind(self, config: EnvConfig) -> None:
        self.features = ObservationFeatures(config, self._kind)
        inner = self.env.observation_space
        if not isinstance(inner, spaces.Box) or inner.shape != (
            _F * config.devices.num_devices + _G,
        ):
            raise TypeError(
                f"LabelSkewObservation extends the env's flat observation Box of shape ({_F} "
                f"K + {_G},), got {inner}"
            )
        self.observation_space = self.features.observation_space(inner)  # type: ignore[assignment]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._follow_config()
        return self.features(obs, info), info

    def step(
        self, action: Any
    ) -> tuple[NDArray[np.float32], SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.features(obs, info), reward, terminated, truncated, info


# ------------------------------------------------------------------ dict observation
class DictObservation(
    gym.ObservationWrapper[dict[str, NDArray[np.float32]], Any, Any],
    RecordConstructorArgs,
    _FollowsConfig,
):
    """``{"devices": Box((K, 7)), "global": Box((4,))}`` view of the flat observation."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        self._config = _config_of(env)
        self._bind(self._config)

    def _bind(self, config: EnvConfig) -> None:
        self.num_devices = k = config.devices.num_devices
        box = self.env.observation_space
        if not isinstance(box, spaces.Box) or box.shape != (_F * k + _G,):
            raise TypeError(
                f"DictObservation splits the env's flat observation Box of shape ({_F} K + "
                f"{_G},), got {box}"
            )
        self.observation_space = spaces.Dict(  # type: ignore[assignment]
            {
                "devices": spaces.Box(
                    box.low[: _F * k].reshape(k, _F),
                    box.high[: _F * k].reshape(k, _F),
                    dtype=np.float32,
                ),
                "global": spaces.Box(box.low[_F * k :], box.high[_F * k :], dtype=np.float32),
            }
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[np.float32]], dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._follow_config()
        return self.observation(obs), info  # type: ignore[arg-type]

    def observation(self, observation: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        k = self.num_devices
        return {
            "devices": observation[: _F * k].reshape(k, _F).copy(),
            "global": observation[_F * k :].copy(),
        }


# ------------------------------------------------------------------------- horizon
class HorizonIsTermination(gym.Wrapper[Any, Any, Any, Any], RecordConstructorArgs):
    """Reports the end of the finite-horizon task (truncation after T rounds) as a termination.

    The observation carries the round fraction t / T and an episode always ends after T rounds,
    so the horizon is part of the task: a learner must not bootstrap a value past the last
    round. Evaluation is unaffected (returns are the same).
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated or truncated, False, info


# ---------------------------------------------------------------------- budget shield
class _DeviceIdler:
    """A pure mapping of canonical actions (one (K, C) or a batch (N, K, C), with the ``info`` of
    the state they act in) that only ever idles devices, by a rule of its subclass
    (:class:`BudgetShield`, :class:`ArrivalPruner`)."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.codec = ActionCodec(config)
        #: the component that idles a device and its idle value (:class:`ActionCodec`'s)
        self.column, self.idle_value = self.codec.idle_column, self.codec.idle_value
        #: whether the mapping can act (soft's paradigm has no component that idles a device)
        self.active = self.column is not None
        self.shape = self.codec.shape
        self._tables = EpisodeTablesCache(config)

    def __call__(
        self, action: NDArray[np.floating[Any]], info: Mapping[str, Any]
    ) -> NDArray[np.float32]:
        """The canonical action(s) with the devices the rule picks idled (float32, clipped to
        [-1, 1]; a new array)."""
        out = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        if not self.active:
            return out
        if out.shape[-2:] != self.shape:
            raise ValueError(f"action must have shape (..., {self.shape}), got {out.shape}")
        self._idle(out, info)
        return out

    def _idle(self, out: NDArray[np.float32], info: Mapping[str, Any]) -> None:
        """Idle the devices of ``out`` (in place) that the rule picks."""
        raise NotImplementedError


class BudgetShield(_DeviceIdler):
    """Idles every device whose round would overspend its episode energy budget, as a pure
    mapping of canonical actions (one (K, C) or a batch (N, K, C), with the ``info`` of the
    state they act in).

    The rule of the Lyapunov policy's budget guard (docs/baselines.md, "The budget guard")
    applied to any action: the round is played on the channel the action will meet
    (``info["channel_gain"]``, with the episode's CPU frequencies ``info["cpu_freq_hz"]``:
    :func:`fedenv.round.play_round`, the env's own physics, so the prediction is exact), and a
    scheduled device whose energy E_k passes what its budget has left, T E_bar minus
    ``info["energy_spent_j"]`` (:func:`fedenv.queues.energy_budget_left`), is idled; the band
    it frees goes to the others, and the round is played again until every scheduled device
    fits (at most K times). A device then never spends more than T E_bar in an episode, so the
    energy constraint holds by construction and a learner's multipliers need not price it.

    No-op (the action unchanged) where the config has no energy budget or its paradigm no
    component that idles a device (soft: every device trains every round).
    """

    def __init__(self, config: EnvConfig) -> None:
        super().__init__(config)
        self.active = config.uses_energy_queue and self.active

    def _idle(self, out: NDArray[np.float32], info: Mapping[str, Any]) -> None:
        left = energy_budget_left(self.config, info["energy_spent_j"])
        assert left is not None and self.column is not None  # (active only with both)
        gain = np.asarray(info["channel_gain"], dtype=np.float64)
        tables = self._tables(np.asarray(info["cpu_freq_hz"], dtype=np.float64))
        column = out[..., self.column]  # a view: idling writes into ``out``
        for _ in range(self.shape[0]):
            phys = play_round(self.codec.decode(out), gain, tables, self.config)
            over = phys.scheduled & (phys.energy_j > left)
            if not over.any():
                break
            column[over] = self.idle_value


class ArrivalPruner(_DeviceIdler):
    """Idles every scheduled device whose update is predicted to pull the model back, as a pure
    mapping of canonical actions (one (K, C) or a batch (N, K, C), with the ``info`` of the
    state they act in).

    A round moves the loss gap G towards its floor F, which grows with the label skew of the
    updates that arrive (docs/model.md §5.2). Once G is low, a round whose arrivals are skewed has
    F > G and *raises* it: the update of a device holding a lopsided share of the labels makes the
    model worse, however much energy it costs. The pruner predicts the round with the surrogate's
    functions, the way the Lyapunov policy scores its candidates: the round is played on the
    channel the action will meet (:func:`fedenv.round.play_round`, as :class:`BudgetShield`), each
    scheduled device arrives with its success probability c_k (certainty-equivalent), and the gap
    after the round G'(c) is compared with G'(c with c_k = 0) for every device at once
    (:func:`fedenv.learning.surrogate.arrival_what_ifs`). The device whose removal lowers G' most
    is idled, the round is played again (the band it freed goes to the others), until no removal
    lowers G' (at most K times). Idling a device never raises another's energy, so after
    :class:`BudgetShield` every budget still holds; each removal lowers the predicted gap and the
    round's energy alike.

    The prediction is the surrogate's, from ``info``'s ``loss_gap``, ``data_size``,
    ``label_distribution`` and ``global_label_distribution``; on the lora backend it is the
    (calibrated) surrogate's model of the real round, as for the Lyapunov policy. No-op where the
    paradigm has no component that idles a device (soft).
    """

    #: a removal counts when it lowers the predicted gap by more than this (rounding)
    TOLERANCE = 1e-12

    def _idle(self, out: NDArray[np.float32], info: Mapping[str, Any]) -> None:
        k = self.shape[0]
        rows = out.reshape(-1, *self.shape)  # a view: idling writes into ``out``
        n = rows.shape[0]
        cfg = self.config.learning.surrogate
        gain = np.asarray(info["channel_gain"], dtype=np.float64).reshape(n, k)
        tables = self._tables(np.asarray(info["cpu_freq_hz"], dtype=np.float64).reshape(n, k))
        sizes = np.asarray(info["data_size"], dtype=np.float64).reshape(n, k)
        share = sizes / sizes.sum(axis=-1, keepdims=True)
        labels = np.asarray(info["label_distribution"], dtype=np.float64).reshape(n, k, -1)
        mix = np.asarray(info["global_label_distribution"], dtype=np.float64).reshape(n, -1)
        gap = np.asarray(info["loss_gap"], dtype=np.float64).reshape(n)
        assert self.column is not None  # (active only with one)
        column = rows[..., self.column]
        every = np.arange(n)
        for _ in range(k):
            decision = self.codec.decode(rows)
            phys = play_round(decision, gain, tables, self.config)
            ratio = decision.ratio if self.config.sparsifies else None
            c, rank = phys.success_prob, phys.rank.astype(np.float64)
            played = next_gap(gap, *round_progress(share, c, rank, ratio, labels, mix, cfg), cfg)
            progress, floor = arrival_what_ifs(
                share, c, rank, ratio, labels, mix[:, None, None, :], cfg
            )
            without = next_gap(gap[:, None], progress[:, 1, :], floor[:, 1, :], cfg)
            gain_of_removal = np.where(phys.scheduled, played[:, None] - without, 0.0)
            worst = np.argmax(gain_of_removal, axis=-1)
            drop = gain_of_removal[every, worst] > self.TOLERANCE
            if not drop.any():
                break
            column[every[drop], worst[drop]] = self.idle_value


class _GuardedAction(
    _FollowsConfig,
    gym.ActionWrapper[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]],
    RecordConstructorArgs,
):
    """The env with a mapping of its canonical action that reads the ``info`` of the state the
    action is for (:class:`BudgetShield`, :class:`ArrivalPruner`)."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        self._config = _config_of(env)
        self._bind(self._config)
        self._info: dict[str, Any] | None = None

    def _bind(self, config: EnvConfig) -> None:
        self.guard = self._guard(config)

    def _guard(self, config: EnvConfig) -> _DeviceIdler:
        raise NotImplementedError

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        self._info = info
        return obs, info

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        self._info = info
        return obs, reward, terminated, truncated, info

    def action(self, action: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        if self._info is None:
            raise RuntimeError("call reset() before step()")
        # checked as the env checks it (shape, finiteness): a bad action gets the env's error
        return self.guard(self.guard.codec.check(action), self._info)


class BudgetShieldAction(_GuardedAction):
    """The env with a :class:`BudgetShield` on its canonical action: a device whose round would
    pass what is left of its episode energy budget T E_bar is idled before the env plays it.

    Every device then keeps its budget in every episode, whatever the policy; ``info`` reports
    the decisions actually played (``module``, ``energy_j``), so a learner sees the shield's
    effect. Wrap it under the action forms (``FactoredAction(BudgetShieldAction(env))``).

    Args:
        env: a FedLoRAWireless-v0 env (possibly wrapped, its action the canonical Box).
    """

    @property
    def shield(self) -> BudgetShield:
        assert isinstance(self.guard, BudgetShield)
        return self.guard

    def _guard(self, config: EnvConfig) -> BudgetShield:
        return BudgetShield(config)


class ArrivalPrunerAction(_GuardedAction):
    """The env with an :class:`ArrivalPruner` on its canonical action: a scheduled device whose
    update is predicted to raise the loss gap is idled before the env plays it. Under a
    :class:`BudgetShieldAction` (``BudgetShieldAction(ArrivalPrunerAction(env))``: the outer
    wrapper maps the action first) it prunes what the shield let through.

    Args:
        env: a FedLoRAWireless-v0 env (possibly wrapped, its action the canonical Box).
    """

    def _guard(self, config: EnvConfig) -> ArrivalPruner:
        return ArrivalPruner(config)
