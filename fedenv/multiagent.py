"""The multi-agent form of FedLoRAWireless-v0: a PettingZoo ``ParallelEnv`` with one agent per
device.

It wraps :class:`fedenv.env.FedLoRAWirelessEnv` and nothing else: the agents' actions are
stacked into the single env's (K, C) action, the single env plays the round (decoding, physics,
learning, reward), and its observation, reward and ``info`` are split per device. PettingZoo
is an optional dependency (the ``pettingzoo`` extra)::

    from fedenv.multiagent import parallel_env

    env = parallel_env(preset="switching", agent_reward="per_device")
    obs, infos = env.reset(seed=0)
    actions = {agent: env.action_space(agent).sample() for agent in env.agents}
    obs, rewards, terminations, truncations, infos = env.step(actions)

See :class:`FedLoRAWirelessParallelEnv` and docs/multiagent.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from fedenv.config import EnvConfig
from fedenv.env import FedLoRAWirelessEnv
from fedenv.observation import DEVICE_FEATURES, GLOBAL_FEATURES, observation_bounds
from fedenv.reward import reward_terms

try:
    from pettingzoo import ParallelEnv
except ImportError as _err:  # pragma: no cover - the extra installs it
    raise ImportError(
        f"fedenv.multiagent needs PettingZoo ({_err}); install the extra: pip install "
        "'fedenv[pettingzoo]'"
    ) from _err

__all__ = [
    "AGENT_FEATURES",
    "AGENT_REWARDS",
    "FedLoRAWirelessParallelEnv",
    "parallel_env",
    "agent_names",
    "agent_observations",
    "device_reward_terms",
]

#: One agent's observation features, in order: its device's 7 features, then the 4 global ones.
AGENT_FEATURES = DEVICE_FEATURES + GLOBAL_FEATURES
#: ``shared``: every agent gets the env's reward; ``per_device``: a split that sums to it.
AGENT_REWARDS = ("shared", "per_device")
#: ``info`` entries that describe the whole system (never split per device), even when their
#: first axis happens to have K entries (``global_label_distribution`` with K labels).
_GLOBAL_INFO = frozenset({
    "round", "latency_backlog", "accuracy", "loss", "loss_gap", "round_latency_s",
    "global_label_distribution", "data_notes", "learner", "reward_terms",
})  # fmt: skip


def agent_names(num_devices: int) -> list[str]:
    """The agents' names, ``device_0 .. device_{K-1}`` (agent k controls device k)."""
    return [f"device_{k}" for k in range(num_devices)]


def agent_observations(obs: NDArray[np.float32], num_devices: int) -> NDArray[np.float32]:
    """The single env's observation (..., 7 K + 4) as one row per agent, (..., K, 11).

    Row k is device k's 7 features followed by the 4 global features (:data:`AGENT_FEATURES`).
    Vectorised over leading axes (a vector env's batch). Returns a new array.
    """
    obs = np.asarray(obs)
    f, g = len(DEVICE_FEATURES), len(GLOBAL_FEATURES)
    lead = obs.shape[:-1]
    if obs.shape[-1] != f * num_devices + g:
        raise ValueError(
            f"expected an observation of size {f} x {num_devices} + {g} = "
            f"{f * num_devices + g} for K={num_devices}, got shape {obs.shape}"
        )
    out = np.empty(lead + (num_devices, f + g), dtype=obs.dtype)
    out[..., :f] = obs[..., : f * num_devices].reshape(lead + (num_devices, f))
    out[..., f:] = obs[..., None, f * num_devices :]
    return out


def device_reward_terms(
    config: EnvConfig,
    terms: Mapping[str, float],
    energy_backlog: NDArray[np.float64],
    new_energy_backlog: NDArray[np.float64],
    energy_j: NDArray[np.float64],
) -> dict[str, NDArray[np.float64]]:
    """The env's named reward terms of a round split over the K devices; each sums to the env's
    term.

    A device's own part of a term is what the env's reward formula
    (:func:`fedenv.reward.reward_terms`) gives for that device's energy and energy backlog
    alone, with every system-wide quantity (accuracy change, loss gap, latency, latency backlog)
    set to 0: its energy cost -w_E E_k / E_ref, its share -w_Q (Z_k(t+1) - Z_k(t)) / (K E_bar)
    of the overshoot (``dpp``: its drift -Z_k E_k / scale). The rest of each term (the accuracy
    gain, the latency overshoot; ``dpp``: the penalty and the latency drift) is shared equally:
    1/K to each device.

    Args:
        config: the env's config.
        terms: ``info["reward_terms"]`` of the round.
        energy_backlog, new_energy_backlog: Z before and after the round (K,).
        energy_j: the devices' energy in the round (K,).

    Returns:
        The term names of ``terms``, each an array (K,) summing to the env's term (up to rounding).
    """
    k = config.devices.num_devices
    zero = np.zeros(k)
    # devices as a leading axis of one-device rounds; the system-wide arguments 0
    own = reward_terms(
        config,
        energy_j=np.asarray(energy_j, dtype=np.float64)[:, None],
        round_latency_s=zero,
        gap=zero,
        accuracy=zero,
        last_accuracy=zero,
        energy_backlog=np.asarray(energy_backlog, dtype=np.float64)[:, None],
        next_energy_backlog=np.asarray(new_energy_backlog, dtype=np.float64)[:, None],
        latency_backlog=zero,
        next_latency_backlog=zero,
    )
    out = {}
    for name, total in terms.items():
        mine = np.broadcast_to(np.asarray(own[name], dtype=np.float64), (k,))
        out[name] = mine + (float(total) - float(mine.sum())) / k
    return out


class FedLoRAWirelessParallelEnv(ParallelEnv[str, NDArray[np.float32], NDArray[np.float32]]):
    """FedLoRAWireless-v0 as a cooperative multi-agent env: one agent per device (PettingZoo
    Parallel API).

    ## Description
    The single env's round (:class:`fedenv.env.FedLoRAWirelessEnv`, whose docstring is the manual
    for the physics and learning), decided by K agents at once: agent ``device_k`` decides its
    own device's components of the action and sees its own device's features plus the global
    ones. The base station assembles the K decisions into the single env's (K, C) action and
    plays it; nothing of the single env is copied, so the two forms give the same rounds for the
    same decisions (tested).

    ## Agents
    ``possible_agents = ["device_0", ..., "device_{K-1}"]``; all of them act in every round of an
    episode (``agents`` is the full list from ``reset`` until the episode ends, then empty).

    ## Action space (per agent)
    ``Box(-1, 1, shape=(C,), float32)``, row k of the single env's action: the preset's
    per-device components, decoded exactly as the single env decodes them
    (:class:`fedenv.actions.ActionCodec`):

    | preset    | components                       |
    |-----------|----------------------------------|
    | switching | module, power, bandwidth         |
    | split     | schedule, bandwidth              |
    | soft      | ratio, bandwidth                 |
    | unified   | module, power, bandwidth, ratio  |

    ``bandwidth`` is a *request* w_k = (a + 1) / 2: the base station normalises the requests of
    the scheduled devices into shares beta_k = w_k / sum_j w_j (equal shares if all are 0), so
    an agent's share depends on the others' requests. Every agent in ``agents`` must act; a
    missing or unknown agent, a wrong shape or a non-finite value raise ``ValueError`` and leave
    the env unchanged.

    ## Observation space (per agent)
    ``Box(float32, shape=(11,))`` with the single env's bounds:

    | index | feature         | from the single env's observation |
    |-------|-----------------|-----------------------------------|
    | 0     | channel_quality | 7k + 0                            |
    | 1     | distance        | 7k + 1                            |
    | 2     | cpu_frequency   | 7k + 2                            |
    | 3     | data_share      | 7k + 3                            |
    | 4     | energy_backlog  | 7k + 4                            |
    | 5     | last_module     | 7k + 5                            |
    | 6     | last_success    | 7k + 6                            |
    | 7     | round_fraction  | 7K + 0                            |
    | 8     | accuracy        | 7K + 1                            |
    | 9     | loss            | 7K + 2                            |
    | 10    | latency_backlog | 7K + 3                            |

    ``state()`` returns the single env's full observation (``state_space``, 7 K + 4), for
    centralised critics.

    ## Rewards
    ``agent_reward="shared"`` (default): every agent gets the env's reward r (a fully cooperative
    team). ``agent_reward="per_device"``: agent k gets r_k = sum over the env's named terms of
    :func:`device_reward_terms`: its own energy term and its own part of the energy overshoot
    (``dpp``: its energy drift), plus 1/K of the system-wide rest (the accuracy gain and the
    latency overshoot; ``dpp``: the loss penalty and the latency drift). The r_k sum to r.

    ## Episode end
    As the single env: every agent is truncated after ``num_rounds`` rounds, or terminated when
    the accuracy reaches ``target_accuracy`` (if set).

    ## Info (per agent)
    Each agent's ``info`` holds the single env's ``info`` entries with per-device arrays
    replaced by the agent's own entry (``energy_j``, ``energy_backlog``, ``channel_gain``,
    ``module``, ``bandwidth_share``, ``success``, a row of ``label_distribution``, ...) and the
    system-wide entries as they are (``round``, ``accuracy``, ``loss``, ``latency_backlog``,
    ``round_latency_s``, ...); ``device`` (k); after a step ``reward_terms`` are the agent's
    terms (the env's terms under ``shared``, the split under ``per_device``; they sum to the
    agent's reward).

    ## Arguments
    ``FedLoRAWirelessParallelEnv(config=None, preset=None, render_mode=None, agent_reward="shared",
    **overrides)``; ``config``, ``preset``, ``render_mode`` and ``overrides`` as for the single
    env (``reward={"mode": "dpp"}`` is the env's reward config, ``agent_reward`` the split).
    ``reset(seed=...)`` seeds the single env (the same trace and learning draws for the same
    seed); ``render`` and ``close`` are the single env's. ``config`` is the single env's: after
    ``env.env.configure(...)`` the next ``reset`` plays the new config (horizon, reward weights,
    budgets, per-device reward split included), and raises ``RuntimeError`` if the change would
    alter the agents or their spaces (another K or paradigm: build a new parallel env).

    ## Version history
    * v0: initial release.
    """

    metadata = {
        "name": "fedlora_wireless_v0",
        "render_modes": ["ansi", "rgb_array"],
        "render_fps": 2,
        "is_parallelizable": True,
    }

    def __init__(
        self,
        config: EnvConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        preset: str | None = None,
        render_mode: str | None = None,
        agent_reward: str = "shared",
        **overrides: Any,
    ) -> None:
        if agent_reward not in AGENT_REWARDS:
            raise ValueError(
                f"agent_reward must be one of {', '.join(AGENT_REWARDS)}, got {agent_reward!r}"
            )
        self.env = FedLoRAWirelessEnv(config, preset, render_mode, **overrides)
        self.render_mode = render_mode
        self.agent_reward = agent_reward
        self.agents: list[str] = []
        self._bind(self.env.config)
        self._obs: NDArray[np.float32] | None = None
        self._energy_backlog: NDArray[np.float64] | None = None

    @property
    def config(self) -> EnvConfig:
        """The single env's config (``self.env.config``), the new one after
        ``self.env.configure(...)``."""
        return self.env.config

    def _bind(self, config: EnvConfig) -> None:
        """Build the agents, their spaces and the reward constants from ``config`` (the single
        env's)."""
        self._config = config
        self.num_devices = k = config.devices.num_devices
        self.components = self.env.codec.components
        self.possible_agents: list[str] = agent_names(k)
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        low, high = observation_bounds(k)
        f = len(DEVICE_FEATURES)
        agent_low, agent_high = (
            np.concatenate([low[:f], low[f * k :]]),
            np.concatenate([high[:f], high[f * k :]]),
        )
        # one space object per agent, so that each can be seeded on its own
        self.observation_spaces = {
            a: spaces.Box(agent_low, agent_high, dtype=np.float32) for a in self.possible_agents
        }
        self.action_spaces = {
            a: spaces.Box(-1.0, 1.0, shape=(len(self.components),), dtype=np.float32)
            for a in self.possible_agents
        }
        self.state_space = self.env.observation_space

    def _follow_config(self) -> None:
        """After ``self.env.configure(...)``: take the new config, or raise if it changes the agents
        or their spaces.

        As the wrappers of :mod:`fedenv.wrappers` do: a new horizon, reward weights or budgets
        are followed; another number of devices or paradigm (other agents, other action
        components) is not, since PettingZoo code reads ``possible_agents`` and the spaces once.
        """
        config = self.env.config
        if config is self._config:
            return
        k, components = config.devices.num_devices, self.env.codec.components
        if k != self.num_devices or components != self.components:
            raise RuntimeError(
                "FedLoRAWirelessParallelEnv: the single env was reconfigured "
                f"(env.configure) from {self.num_devices} "
                f"devices with components {list(self.components)} to {k} devices with "
                f"components {list(components)}, "
                "which changes the agents or their spaces; build a new parallel env with the "
                "new config"
            )
        self._bind(config)

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        return self.observation_spaces[self._agent(agent)]

    def action_space(self, agent: str) -> spaces.Space[Any]:
        return self.action_spaces[self._agent(agent)]

    def _agent(self, agent: str) -> str:
        if agent not in self._index:
            raise KeyError(
                f"unknown agent {agent!r}; the agents are device_0 .. device_{self.num_devices - 1}"
            )
        return agent

    # ------------------------------------------------------------------ reset
    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[np.float32]], dict[str, dict[str, Any]]]:
        self._follow_config()  # before the single env's reset: raising leaves the env as it was
        obs, info = self.env.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        self._obs = obs
        self._energy_backlog = info["energy_backlog"]
        return self._split_obs(obs), self._split_info(info, None)

    # ------------------------------------------------------------------- step
    def step(self, actions: Mapping[str, Any]) -> tuple[
        dict[str, NDArray[np.float32]], dict[str, float], dict[str, bool], dict[str, bool],
        dict[str, dict[str, Any]],
    ]:  # fmt: skip
        if not self.agents:
            raise RuntimeError(
                "the episode has ended (or reset() was not called); call reset() before step()"
            )
        action = self.joint_action(actions)
        obs, reward, terminated, truncated, info = self.env.step(action)
        r = float(reward)
        terms: dict[str, Any] | None = None
        if self.agent_reward == "per_device":
            assert self._energy_backlog is not None
            split = device_reward_terms(
                self.env.config,
                info["reward_terms"],
                self._energy_backlog,
                info["energy_backlog"],
                info["energy_j"],
            )
            per_device = np.add.reduce(np.stack(list(split.values())), axis=0)
            rewards = {a: float(per_device[i]) for i, a in enumerate(self.agents)}
            terms = split
        else:
            rewards = dict.fromkeys(self.agents, r)
        self._obs = obs
        self._energy_backlog = info["energy_backlog"]
        agents = self.agents
        terminations = dict.fromkeys(agents, bool(terminated))
        truncations = dict.fromkeys(agents, bool(truncated))
        out = (
            self._split_obs(obs),
            rewards,
            terminations,
            truncations,
            self._split_info(info, terms),
        )
        if terminated or truncated:
            self.agents = []
        return out

    def joint_action(self, actions: Mapping[str, Any]) -> NDArray[Any]:
        """The single env's (K, C) action from the agents' actions (row k = agent ``device_k``).

        Raises:
            ValueError: an agent is missing or unknown, or an action does not have shape (C,).
        """
        if not isinstance(actions, Mapping):
            raise ValueError(
                f"actions must be a mapping agent -> action, got {type(actions).__name__}"
            )
        missing = [a for a in self.agents if a not in actions]
        unknown = [a for a in actions if a not in self._index or a not in self.agents]
        if missing or unknown:
            raise ValueError(
                f"actions must name every live agent once: missing {missing}, unknown {unknown}"
            )
        c = len(self.components)
        rows = []
        for agent in self.possible_agents:
            a = np.asarray(actions[agent])
            if a.shape != (c,):
                raise ValueError(
                    f"action of {agent} must have shape ({c},) (components "
                    f"{list(self.components)}), got {a.shape}"
                )
            rows.append(a)
        # the dtype as given: the single env checks and clips it (ActionCodec.check)
        return np.stack(rows)

    # ------------------------------------------------------------ components
    def state(self) -> NDArray[np.float32]:
        """The single env's current observation (7 K + 4,), a copy."""
        if self._obs is None:
            raise RuntimeError("call reset() before state()")
        return self._obs.copy()

    def _split_obs(self, obs: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        rows = agent_observations(obs, self.num_devices)
        return {a: rows[i] for i, a in enumerate(self.possible_agents)}

    def _split_info(
        self, info: dict[str, Any], terms: dict[str, NDArray[np.float64]] | None
    ) -> dict[str, dict[str, Any]]:
        k = self.num_devices
        per_device = {
            key: value
            for key, value in info.items()
            if key not in _GLOBAL_INFO
            and isinstance(value, np.ndarray)
            and value.ndim >= 1
            and value.shape[0] == k
        }
        shared = {key: value for key, value in info.items() if key not in per_device}
        out = {}
        for i, agent in enumerate(self.possible_agents):
            mine = dict(shared)
            mine["device"] = i
            for key, value in per_device.items():
                mine[key] = value[i]
            if terms is not None:
                mine["reward_terms"] = {name: float(v[i]) for name, v in terms.items()}
            out[agent] = mine
        return out

    # ---------------------------------------------------------------- render
    def render(self) -> str | NDArray[np.uint8] | None:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


def parallel_env(**kwargs: Any) -> FedLoRAWirelessParallelEnv:
    """A :class:`FedLoRAWirelessParallelEnv` (PettingZoo's factory convention); keyword arguments as
    its constructor."""
    return FedLoRAWirelessParallelEnv(**kwargs)
