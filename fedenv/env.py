"""FedLoRAWireless-v0: wireless federated LoRA fine-tuning as a Gymnasium environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from fedenv import streams
from fedenv.actions import ActionCodec
from fedenv.config import PRESETS, ConfigError, EnvConfig, resolve_config
from fedenv.episodes import Episodes
from fedenv.learning import make_learner
from fedenv.learning.base import Learner
from fedenv.learning.surrogate import SurrogateLearner
from fedenv.observation import DEVICE_FEATURES, GLOBAL_FEATURES, observation_bounds
from fedenv.trace import Trace, generate_trace

__all__ = [
    "FedLoRAWirelessEnv",
    "DEVICE_FEATURES",
    "GLOBAL_FEATURES",
    "observation_bounds",
    "check_seed",
    "resolve_env_config",
]

#: Traces generated ahead for an env continuing its episodes (see
#: FedLoRAWirelessEnv._episode_trace), when an episode's trace has at most _AHEAD_MAX_SIZE
#: rounds x devices (beyond, batching saves nothing)
_TRACES_AHEAD, _AHEAD_MAX_SIZE = 8, 20_000
_ROW0 = np.zeros(1, dtype=np.intp)
_EPISODE_CONSTANTS = frozenset(
    ("cpu_freq_hz", "data_size", "label_distribution", "global_label_distribution")
)


def _row0(*batched: Mapping[str, Any]) -> dict[str, Any]:
    """Episode 0 of batched ``info`` entries (arrays (N, ...)), the mappings merged in order: an
    array (a view) per device, a Python number per episode. The per-episode constants, the same
    arrays all episode long, are copied: every call returns new ones."""
    info = {
        key: value[0] if value.ndim > 1 else value.item(0)
        for values in batched
        for key, value in values.items()
    }
    for key in _EPISODE_CONSTANTS:
        if key in info:
            info[key] = info[key].copy()
    return info


class FedLoRAWirelessEnv(gym.Env[NDArray[np.float32], NDArray[np.float32]]):
    """Wireless federated LoRA fine-tuning of a foundation model, one federated round per step.

    ## Description
    K edge devices fine-tune LoRA adapters of a pre-trained transformer with a base station
    (BS) over an FDMA uplink (docs/model.md). Each step the agent decides, per device, which LoRA
    module (rank) it trains, its transmit power, its share of the band and (soft paradigm) the
    sparsification ratio of its update. Devices train, upload over fading channels, and may
    lose the packet (waterfall packet error) or miss the round deadline; the BS aggregates what
    arrived. The agent trades the accuracy gained against the energy spent, under long-term
    per-device energy budgets (and a latency budget in the soft paradigm) tracked by virtual
    queues. Paradigms (presets): ``switching`` [A] (default), ``split`` [B], ``soft`` [C] and
    ``unified``. Learning runs on a fast surrogate (default) or on real LoRA fine-tuning
    (``backend="lora"``).

    ## Action space
    ``Box(-1, 1, shape=(K, C), float32)``; the C components depend on the paradigm:

    | paradigm  | components (last axis)              |
    |-----------|-------------------------------------|
    | switching | module, power, bandwidth            |
    | split     | schedule, bandwidth                 |
    | soft      | ratio, bandwidth                    |
    | unified   | module, power, bandwidth, ratio     |

    | component | physical meaning                              | mapping of a in [-1, 1]          |
    |-----------|-----------------------------------------------|----------------------------------|
    | module    | module m in {0..M}; 0 = not scheduled, m >= 1 | m = min(floor((a+1)/2 (M+1)), M) |
    |           | trains rank ``ranks[m-1]``                    |                                  |
    | schedule  | (split) train this round                      | a > 0                            |
    | power     | transmit power, W                             | p_min + (a+1)/2 (P_max - p_min)  |
    | bandwidth | weight w = (a+1)/2; share beta_k = w_k / sum  |                                  |
    |           | of scheduled w (equal if all 0)               |                                  |
    | ratio     | sparsification ratio rho                      | rho_min + (a+1)/2 (1 - rho_min)  |

    Missing components default to P_max, rho = 1 and (split, soft) the structural rank
    ``fixed_rank``. Finite values outside [-1, 1] are clipped; NaN, inf or a wrong shape raise
    ``ValueError`` and leave the env unchanged. Other forms (:mod:`fedenv.wrappers`):
    ``FactoredAction`` (schedule and rank apart; the form SB3 learns on), ``FlatAction`` (1-D
    Box), ``DiscreteAction`` (1-D ``MultiDiscrete``) and ``DictAction`` (RLlib).

    ## Observation space
    ``Box(float32, shape=(7 K + 4,))``: a device-major block of 7 features per device, then 4
    global features. All are normalised with finite bounds:

    | index  | feature         | meaning, unit                                  | bounds  |
    |--------|-----------------|------------------------------------------------|---------|
    | 7k + 0 | channel_quality | full-band SNR at P_max for this round, dB / 20 | [-4, 4] |
    | 7k + 1 | distance        | distance to BS / cell radius                   | [0, 1]  |
    | 7k + 2 | cpu_frequency   | f_k / f_max                                    | [0, 1]  |
    | 7k + 3 | data_share      | n_k / sum n                                    | [0, 1]  |
    | 7k + 4 | energy_backlog  | Z_k / (10 E_bar) (0 without energy budget)     | [0, 10] |
    | 7k + 5 | last_module     | last module index / M                          | [0, 1]  |
    | 7k + 6 | last_success    | 1 if its last update was aggregated            | {0, 1}  |
    | 7K + 0 | round_fraction  | t / T                                          | [0, 1]  |
    | 7K + 1 | accuracy        | held-out accuracy of the global model          | [0, 1]  |
    | 7K + 2 | loss            | held-out loss / initial loss                   | [0, 5]  |
    | 7K + 3 | latency_backlog | Y / (10 T_bar) (0 without latency budget)      | [0, 10] |

    The channel quality is that of the round the next action will play (the BS has estimated
    the channels before deciding). Raw, unnormalised values are in ``info``.

    ## Rewards
    ``accuracy_energy`` (default, docs/model.md §7):
    r = w_acc 100 (acc_t - acc_{t-1}) - w_E sum_k E_k / E_ref - w_Q overshoot_t, where
    overshoot_t = mean_k (Z_k(t+1) - Z_k(t)) / E_bar + (Y(t+1) - Y(t)) / T_bar is the growth of
    the budget-normalised backlogs (it telescopes: its episode sum is the final backlog in units
    of budget, so a policy inside its budgets pays nothing overall). ``dpp``:
    r = -(V Phi_t + sum_k Z_k E_k + Y T) / scale with Phi_t the normalised loss gap after the
    round. ``accuracy``: r = w_acc 100 (acc_t - acc_{t-1}) alone, the objective of a constrained
    learner that keeps the budgets through the costs below (``agents/lagrangian.py``).
    ``info["reward_terms"]`` holds the named terms; they sum to the reward.

    ## Costs
    Next to the reward, as safe-RL libraries expect (Safety-Gymnasium, OmniSafe): after every
    ``step``, ``info["cost"]`` is the round's total energy sum_k E_k (J, float),
    ``info["cost_per_device"]`` each device's energy E_k (J, float64 (K,)) and
    ``info["cost_limit_per_device"]`` its per-round energy budget E_bar (inf without one): the
    constraint is mean_t E_k(t) <= E_bar for every device. Where the config budgets latency
    (soft, unified), ``info["cost_latency"]`` is the round latency T(t) (s) and
    ``info["cost_limit_latency"]`` its budget T_bar. The costs never enter the ``accuracy``
    reward; the other modes price them through their own terms.

    ## Starting state
    Devices uniform in the annulus [d_min, R]; CPU frequencies U[f_min, f_max]; Dirichlet data
    partition; empty queues; the pre-trained model with a fresh head.

    ## Episode end
    Truncation exactly after ``num_rounds`` rounds; termination when the accuracy reaches
    ``target_accuracy`` (if set).

    ## Randomness
    ``reset(seed)`` seeds ``self.np_random``, which draws two keys: one for the exogenous trace
    (placement, mobility, CPU, fading, packet-error uniforms; :mod:`fedenv.trace`) and one for
    learning (data partition, evaluation noise, training). The trace never depends on the
    actions: every policy meets the same channels under the same seed. While episodes continue
    (``reset()`` without a seed), the traces of the next 8 are generated ahead in one batch, from
    keys read without moving ``np_random``: the same numbers, at half the cost. Round t's trace
    depends on (seed, t, device) only, so two horizons meet the same channels in the rounds they
    share. A seed is None or an integer >= 0, a NumPy integer included; bools and floats are
    rejected (:func:`check_seed`, shared with the vector env).

    ## Arguments
    ``gym.make("FedLoRAWireless-v0", config=None, preset=None, render_mode=None, **overrides)``
    with ``config`` an :class:`~fedenv.config.EnvConfig`, a mapping (RLlib ``env_config``) or a
    YAML path; ``preset`` one of switching, split, soft, unified; overrides such as
    ``backend="lora"``, ``task="qnli"`` or ``devices={"num_devices": 20}``. Each preset has its
    id: ``FedLoRAWireless-v0`` (switching), ``FedLoRAWireless-Split-v0``, ``-Soft-v0`` and
    ``-Unified-v0`` (``fedenv.ENV_IDS``); a full ``EnvConfig`` given to a variant id must have
    its paradigm (:func:`resolve_env_config`).

    ``env.config`` is read-only: the spaces, codec, learner and per-episode tables are built
    from it. :meth:`configure` changes it (``env.unwrapped.configure(num_rounds=20)``): it
    rebuilds them at once, ends the episode in progress, and the next ``reset`` plays the new
    config; an invalid change raises and leaves the env as it was.

    ## Info
    After ``reset`` and every ``step``: ``round``, ``channel_gain`` (linear, next round),
    ``distance_m``, ``cpu_freq_hz``, ``data_size``, ``label_distribution``,
    ``energy_backlog``, ``energy_spent_j`` (each device's energy so far this episode, J),
    ``latency_backlog``, ``accuracy``, ``loss``, ``loss_gap``. After a
    ``step`` also the round just played: ``module``, ``rank``, ``tx_power_w``,
    ``bandwidth_share``, ``sparsity_ratio``, ``rate_bps``, ``packet_error_prob``, ``success``,
    ``straggler``, ``packet_lost``, ``compute_time_s``, ``upload_time_s``, ``latency_s``,
    ``round_latency_s``, ``energy_j``, ``payload_bits``, ``round_channel_gain``,
    ``reward_terms``, the costs ``cost``, ``cost_per_device``, ``cost_limit_per_device`` and,
    with a latency budget, ``cost_latency`` and ``cost_limit_latency``. The env never writes an
    observation or an ``info`` array after returning it, and returns new ones on every call;
    the state arrays (``channel_gain``, ``distance_m``, the backlogs, ``last_module``) are
    read-only.

    ## Implementation
    The env is a shell over :class:`fedenv.episodes.Episodes`, the core that the batched vector
    env (:class:`fedenv.vector.FedLoRAWirelessVectorEnv`) also holds: here with one episode,
    whose row 0 it hands out (docs/architecture.md).

    ## Version history
    * v0: initial release; ``config`` read-only with ``configure``, variant ids per preset and
      scenario; the ``accuracy`` reward mode and the safe-RL costs in ``info``.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 2}

    def __init__(
        self,
        config: EnvConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        preset: str | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got "
                f"{render_mode!r}"
            )
        self.render_mode = render_mode
        self._build(resolve_env_config(config, preset, **overrides))

    def _build(self, cfg: EnvConfig) -> None:
        """Everything that depends on the config: spaces, codec, learner, the core (no
        episode)."""
        learner = make_learner(cfg)  # first: a learner that fails to build leaves the env as it was
        old: Episodes | None = getattr(self, "_episodes", None)
        self._config = cfg
        self.num_devices = k = cfg.devices.num_devices
        self.learner: SurrogateLearner | Learner = learner
        self._episodes = Episodes(cfg, 1, learner)
        self.codec: ActionCodec = self._episodes.codec
        self.action_space = spaces.Box(-1.0, 1.0, shape=self.codec.shape, dtype=np.float32)
        low, high = observation_bounds(k)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self._started = False
        self._done = False
        self._last_info: dict[str, Any] | None = None
        self._traces_ahead: dict[int, Trace] = {}
        self._ahead = _TRACES_AHEAD if (cfg.num_rounds + 1) * k <= _AHEAD_MAX_SIZE else 0
        if old is not None:
            old.close()

    # ----------------------------------------------------------------- config
    @property
    def config(self) -> EnvConfig:
        """The env's :class:`~fedenv.config.EnvConfig` (read-only: change it
        with :meth:`configure`)."""
        return self._config

    @config.setter
    def config(self, value: object) -> None:
        raise AttributeError(
            "FedLoRAWirelessEnv.config is read-only: the spaces, action codec, learner and "
            "per-episode tables are "
            "built from it. Use env.unwrapped.configure(**overrides) (e.g. "
            "configure(num_rounds=20) or "
            "configure(config=new_config)), then reset()"
        )

    def configure(
        self,
        config: EnvConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        preset: str | None = None,
        **overrides: Any,
    ) -> EnvConfig:
        """Change the config and rebuild everything that depends on it; the next episode uses it.

        ``configure(**overrides)`` applies keyword overrides (as ``gym.make`` takes them:
        ``num_rounds=20``, ``devices={"num_devices": 5}``, ``reward={"energy_weight": 2.0}``,
        ``backend="lora"``) to the current config; ``configure(config=..., preset=...)`` starts
        from a new config instead, in any form the constructor accepts.

        The action and observation spaces, the action codec, the learner (a new one; the old
        one is closed) and the reward and observation constants are rebuilt at once, and any
        episode in progress ends: ``step`` and ``render`` raise ``ResetNeeded`` until the next
        ``reset``, which plays the new config. An invalid override raises (``ConfigError``,
        ``ConfigTypeError``) and leaves the env, its episode included, unchanged. Wrappers of
        :mod:`fedenv.wrappers` follow the change at their next ``reset``, or raise there if it
        changes the shape of their spaces (rebuild them then); other wrappers and vector envs
        keep the spaces they were built with.

        Returns:
            The new config (also ``env.config``).
        """
        if config is None and preset is None:
            cfg = resolve_config(self._config, None, **overrides)
        else:
            cfg = resolve_env_config(config, preset, **overrides)
        self._build(cfg)
        return cfg

    # ---------------------------------------------------------- public state
    @property
    def last_info(self) -> Mapping[str, Any] | None:
        """A read-only view of the ``info`` the last ``reset`` or ``step`` returned (None before a
        reset)."""
        return None if self._last_info is None else MappingProxyType(self._last_info)

    @property
    def reference_snr(self) -> float:
        """P_max / (B N_0), linear: the full-band SNR at full power per unit channel gain.

        The observation's channel quality is 10 log10(reference_snr x gain) / 20 (clipped).
        """
        ch = self._config.channel
        return float(ch.max_tx_power_w / (ch.bandwidth_hz * ch.noise_psd_w_per_hz))

    @property
    def device_positions_m(self) -> NDArray[np.float64]:
        """Device positions (x, y) relative to the BS for the coming round, m, shape (K, 2),
        read-only."""
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before reading the device positions")
        return self._trace.position_m[0, self._episodes.t[0]]

    # ------------------------------------------------------------------ reset
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        seed = check_seed(seed)
        super().reset(seed=seed)
        keys = streams.draw_keys(self.np_random, 2)  # (trace key, learning key)
        self.trace_key = int(keys[0])
        self._trace: Trace = self._episode_trace(self.trace_key, continuing=seed is None)
        self._trace.position_m.flags.writeable = False  # (device_positions_m hands out rows)
        notes = self._episodes.start(_ROW0, self._trace, keys[1:])
        self._started, self._done = True, False
        info = _row0(self._episodes.state_info())
        info["data_notes"] = notes
        self._last_info = info
        return self._episodes.observation()[0], info

    def _episode_trace(self, key: int, continuing: bool) -> Trace:
        """``generate_trace([key])``, from traces generated ahead while the env continues its
        generator's episodes (``reset`` without a seed).

        The keys of the next resets are read from ``np_random`` without moving it, and their
        traces generated in one batch: about half the cost per episode of one at a time, and
        each the same numbers (:func:`fedenv.trace.generate_trace`). A trace is used only for the
        key it was made for, so a reseed, or draws from ``np_random`` between resets, only
        waste the traces made ahead.
        """
        trace = self._traces_ahead.pop(key, None)
        if trace is None:
            self._traces_ahead.clear()
            trace = generate_trace(np.array([key], dtype=np.uint64), self.config)
        if continuing and self._ahead and not self._traces_ahead:
            bits = self.np_random.bit_generator
            state = bits.state
            keys = streams.draw_keys(self.np_random, 2 * self._ahead)[
                0::2
            ]  # each reset draws (trace key, learning key)
            bits.state = state
            ahead = generate_trace(keys, self.config)
            self._traces_ahead = {k: ahead.episode(i) for i, k in enumerate(keys.tolist())}
        return trace

    # ------------------------------------------------------------------- step
    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], SupportsFloat, bool, bool, dict[str, Any]]:
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self._done:
            raise gym.error.ResetNeeded("the episode has ended; call reset() before step()")
        played = self._episodes.step(self.codec.check(action)[None])
        terminated, truncated = bool(played.terminated[0]), bool(played.truncated[0])
        self._done = terminated or truncated
        info = _row0(self._episodes.state_info(), played.info)
        info["reward_terms"] = _row0(played.terms)
        if played.extra:
            info["learner"] = played.extra
        self._last_info = info
        obs = self._episodes.observation()[0]
        return obs, float(played.reward[0]), terminated, truncated, info

    # ---------------------------------------------------------------- render
    def render(self) -> str | NDArray[np.uint8] | None:
        if self.render_mode is None:
            gym.logger.warn(
                "render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'"
            )
            return None
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before render()")
        from fedenv import rendering

        if self.render_mode == "ansi":
            return rendering.render_ansi(self)
        return rendering.render_rgb(self)

    def close(self) -> None:
        self._episodes.close()
        super().close()


def resolve_env_config(
    config: EnvConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    preset: str | None = None,
    **overrides: Any,
) -> EnvConfig:
    """:func:`fedenv.config.resolve_config`, where ``preset`` may also name the paradigm of a full
    ``EnvConfig``.

    The registered variants (``FedLoRAWireless-Split-v0``, ...) pass their preset as a keyword,
    so ``gym.make("FedLoRAWireless-Split-v0", config=cfg)`` reaches the env with both. A full
    :class:`EnvConfig` of that paradigm is taken as it is (the preset only names its paradigm);
    one of another paradigm raises. Mappings and YAML files are overrides of the preset, as in
    ``resolve_config``.

    Raises:
        ConfigError: an EnvConfig whose paradigm is not the preset's, or any error of
            ``resolve_config``.
    """
    if isinstance(config, EnvConfig) and isinstance(preset, str) and preset in PRESETS:
        paradigm = PRESETS[preset]["paradigm"]
        if config.paradigm != paradigm:
            raise ConfigError(
                f"preset={preset!r} (a registered variant passes it) asks for the "
                f"{paradigm!r} paradigm, but the EnvConfig "
                f"passed as config has paradigm {config.paradigm!r}; use "
                "gym.make('FedLoRAWireless-v0', config=...) for any "
                f"config, or pass a mapping of overrides"
            )
        preset = None
    return resolve_config(config, preset, **overrides)


def check_seed(seed: object, name: str = "seed") -> int | None:
    """A reset seed as :func:`gymnasium.utils.seeding.np_random` takes it: None or an int >= 0.

    One rule for the single and the vector env. A NumPy integer is the int it holds (Gymnasium
    itself rejects ``np.int64(5)``, but seeds read from arrays are common and mean the same
    key). A bool is rejected although Python counts it as an int (Gymnasium would take
    ``True`` as seed 1), and so is a float, even an integral one: a seed is a key, and 2.5
    has no key.

    Raises:
        TypeError: ``seed`` is not None, an int or a NumPy integer.
        ValueError: ``seed`` is negative.
    """
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(
            f"{name} must be None or an integer >= 0 (Python or NumPy int), got {seed!r} of "
            f"type {type(seed).__name__}"
        )
    value = int(seed)
    if value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value}")
    return value
