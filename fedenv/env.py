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
from fedenv.actions import ActionCodec, Decision
from fedenv.config import PRESETS, ConfigError, EnvConfig, resolve_config
from fedenv.learning import make_learner
from fedenv.learning.base import DevicePartition, Learner
from fedenv.operands import const
from fedenv.queues import update_queue
from fedenv.round import EpisodeTables, RoundPhysics, episode_tables, play_round
from fedenv.trace import Trace, generate_trace

__all__ = [
    "FedLoRAWirelessEnv",
    "DEVICE_FEATURES",
    "GLOBAL_FEATURES",
    "EnvConstants",
    "observation_bounds",
    "observation_template",
    "write_observation",
    "update_backlogs",
    "reward_terms",
    "round_info",
    "check_seed",
    "resolve_env_config",
]

#: Per-device observation features, in order (see the class docstring for units and bounds).
DEVICE_FEATURES = (
    "channel_quality",
    "distance",
    "cpu_frequency",
    "data_share",
    "energy_backlog",
    "last_module",
    "last_success",
)
#: Global observation features, after the K x 7 device block.
GLOBAL_FEATURES = ("round_fraction", "accuracy", "loss", "latency_backlog")

_CHANNEL_DB_SCALE = 20.0
_BACKLOG_SCALE = 10.0
_BOUNDS = {
    "channel_quality": (-4.0, 4.0),
    "distance": (0.0, 1.0),
    "cpu_frequency": (0.0, 1.0),
    "data_share": (0.0, 1.0),
    "energy_backlog": (0.0, 10.0),
    "last_module": (0.0, 1.0),
    "last_success": (0.0, 1.0),
    "round_fraction": (0.0, 1.0),
    "accuracy": (0.0, 1.0),
    "loss": (0.0, 5.0),
    "latency_backlog": (0.0, 10.0),
}


_ENERGY_HI_0D = const(_BOUNDS["energy_backlog"][1])
#: Traces generated ahead for an env continuing its episodes (see
#: FedLoRAWirelessEnv._episode_trace),
#: when an episode's trace has at most _AHEAD_MAX_SIZE rounds x devices (beyond, batching saves
#: nothing)
_TRACES_AHEAD, _AHEAD_MAX_SIZE = 8, 20_000
_LOSS_LO, _LOSS_HI = _BOUNDS["loss"]
_LAT_LO, _LAT_HI = _BOUNDS["latency_backlog"]


def observation_bounds(num_devices: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Low and high bounds of the flat observation for K devices."""
    dev_lo = np.array([_BOUNDS[f][0] for f in DEVICE_FEATURES], dtype=np.float32)
    dev_hi = np.array([_BOUNDS[f][1] for f in DEVICE_FEATURES], dtype=np.float32)
    glo_lo = np.array([_BOUNDS[f][0] for f in GLOBAL_FEATURES], dtype=np.float32)
    glo_hi = np.array([_BOUNDS[f][1] for f in GLOBAL_FEATURES], dtype=np.float32)
    low = np.concatenate([np.tile(dev_lo, num_devices), glo_lo])
    high = np.concatenate([np.tile(dev_hi, num_devices), glo_hi])
    return low, high


class EnvConstants:
    """Config-derived constants of the observation and the reward, computed once per env."""

    __slots__ = (
        "num_devices", "num_modules", "num_rounds", "energy_budget", "latency_budget",
        "energy_scale", "latency_scale", "initial_loss", "snr_ref", "mode", "accuracy_weight",
        "energy_weight", "energy_ref", "overshoot_weight", "dpp_tradeoff_v", "dpp_scale",
        "target_accuracy", "module_feature",
    )  # fmt: skip

    def __init__(self, config: EnvConfig) -> None:
        ch, rw = config.channel, config.reward
        self.num_devices = config.devices.num_devices
        self.num_modules = config.model.num_modules
        self.num_rounds = config.num_rounds
        self.energy_budget = config.budgets.energy_budget_j
        self.latency_budget = config.budgets.latency_budget_s
        #: the energy-backlog feature's scale 10 E_bar, as a 0-d array (it divides a K-array per
        #: step)
        self.energy_scale = (
            None if self.energy_budget is None else const(_BACKLOG_SCALE * self.energy_budget)
        )
        self.latency_scale = (
            None if self.latency_budget is None else _BACKLOG_SCALE * self.latency_budget
        )
        self.initial_loss = config.learning.surrogate.initial_loss
        self.snr_ref = ch.max_tx_power_w / (ch.bandwidth_hz * ch.noise_psd_w_per_hz)
        self.mode = rw.mode
        self.accuracy_weight = rw.accuracy_weight
        self.energy_weight = rw.energy_weight
        self.energy_ref = config.energy_ref_j
        self.overshoot_weight = rw.overshoot_weight
        self.dpp_tradeoff_v = rw.dpp_tradeoff_v
        self.dpp_scale = rw.dpp_scale
        self.target_accuracy = config.target_accuracy
        #: the last_module feature m / M of each module index, in float32 as in the observation
        #: (looked up, not divided, per step)
        self.module_feature = (np.arange(self.num_modules + 1) / self.num_modules).astype(
            np.float32
        )


def observation_template(
    config: EnvConfig,
    gain: NDArray[np.float64],
    distance_m: NDArray[np.float64],
    cpu_freq_hz: NDArray[np.float64],
    data_share: NDArray[np.float64],
) -> NDArray[np.float32]:
    """The policy-independent part of every observation of an episode.

    Args:
        gain, distance_m: the trace, shape (..., T + 1, K).
        cpu_freq_hz, data_share: shape (..., K).

    Returns:
        float32 array of shape (..., T + 1, 7 K + 4): row t is the observation of round t with
        channel quality, distance, CPU frequency, data share and the round fraction filled in,
        and the policy-dependent features 0 (see :func:`write_observation`).
    """
    k = config.devices.num_devices
    ch = config.channel
    rows = config.num_rounds + 1
    lead = np.shape(cpu_freq_hz)[:-1]
    obs = np.zeros(lead + (rows, 7 * k + 4), dtype=np.float32)
    snr_ref = ch.max_tx_power_w / (ch.bandwidth_hz * ch.noise_psd_w_per_hz)
    quality = np.log10(snr_ref * gain)
    quality *= 10.0
    quality /= _CHANNEL_DB_SCALE
    obs[..., 0 : 7 * k : 7] = np.minimum(np.maximum(quality, -4.0, out=quality), 4.0, out=quality)
    distance = np.divide(distance_m, ch.cell_radius_m)
    obs[..., 1 : 7 * k : 7] = np.minimum(np.maximum(distance, 0.0, out=distance), 1.0, out=distance)
    obs[..., 2 : 7 * k : 7] = (np.asarray(cpu_freq_hz) / config.devices.cpu_freq_max_hz)[
        ..., None, :
    ]
    obs[..., 3 : 7 * k : 7] = np.asarray(data_share)[..., None, :]
    obs[..., 7 * k] = np.arange(rows) / config.num_rounds
    return obs


def _clip(x: Any, lo: float, hi: float) -> Any:
    if isinstance(x, np.ndarray):
        return np.clip(x, lo, hi)
    return min(max(x, lo), hi)


def write_observation(
    obs: NDArray[np.float32],
    c: EnvConstants,
    energy_backlog: NDArray[np.float64],
    last_module: NDArray[np.int64],
    last_success: NDArray[np.bool_],
    accuracy: Any,
    loss: Any,
    latency_backlog: Any,
) -> NDArray[np.float32]:
    """Fill the policy-dependent features into ``obs`` (a row of :func:`observation_template`).

    Vectorised over leading axes: ``obs`` (..., 7 K + 4), per-device arguments (..., K),
    scalars (...). Features are clipped to their documented bounds.
    """
    k7 = 7 * c.num_devices
    if c.energy_scale is not None:
        # in float64, then one conversion (the same float32 values: rounding is monotonic and
        # the bound is a float32)
        z = np.divide(energy_backlog, c.energy_scale)
        obs[..., 4:k7:7] = np.minimum(z, _ENERGY_HI_0D, out=z)
    obs[..., 5:k7:7] = c.module_feature[last_module]  # last_module / M
    obs[..., 6:k7:7] = last_success
    obs[..., k7 + 1] = accuracy
    obs[..., k7 + 2] = _clip(loss / c.initial_loss, _LOSS_LO, _LOSS_HI)
    if c.latency_scale is not None:
        obs[..., k7 + 3] = _clip(latency_backlog / c.latency_scale, _LAT_LO, _LAT_HI)
    return obs


def update_backlogs(
    c: EnvConstants, energy_backlog: Any, latency_backlog: Any, energy_j: Any, round_latency_s: Any
) -> tuple[Any, Any]:
    """Virtual queues after a round (docs/model.md §4): Z_k for the energy budget, Y for the latency
    budget.

    A disabled budget leaves its queue at 0. Vectorised over leading axes.
    """
    z = (
        update_queue(energy_backlog, energy_j, c.energy_budget)
        if c.energy_budget is not None
        else energy_backlog.copy()
    )
    y = (
        update_queue(latency_backlog, round_latency_s, c.latency_budget)
        if c.latency_budget is not None
        else latency_backlog
    )
    return z, y


def round_info(
    decision: Decision, phys: RoundPhysics, round_channel_gain: NDArray[np.float64], c: EnvConstants
) -> dict[str, Any]:
    """The ``info`` entries of the round just played (the class docstring's Info section): the
    decision, its physics, the channel it met and the round's costs, arrays (..., K).
    Vectorised over leading axes.

    The costs follow the safe-RL convention (Safety-Gymnasium, OmniSafe: the step's cost in
    ``info["cost"]``): ``cost_per_device`` is each device's energy E_k (J), ``cost`` their sum,
    ``cost_limit_per_device`` the per-round energy budget E_bar of each device (inf without an
    energy budget: unconstrained); where the config budgets latency, ``cost_latency`` is the
    round latency T(t) (s) and ``cost_limit_latency`` its budget T_bar. Energy and latency are
    kept apart (their units differ); a Lagrangian learner prices each against its own limit.
    """
    scheduled, on_time = phys.scheduled, phys.on_time
    energy = phys.energy_j
    total = np.add.reduce(energy, axis=-1)
    info = {
        "module": decision.module,
        "rank": phys.rank,
        "tx_power_w": decision.power_w,  # (decoded: 0 for idle devices)
        "bandwidth_share": decision.share,
        "sparsity_ratio": decision.ratio,
        "rate_bps": phys.rate_bps,
        "packet_error_prob": phys.packet_error,
        "success": phys.success,
        "straggler": np.greater(scheduled, on_time),  # scheduled and not on time (bools)
        "packet_lost": np.greater(on_time, phys.success),  # on time and not aggregated
        "compute_time_s": phys.compute_time_s,
        "upload_time_s": phys.upload_time_s,
        "latency_s": phys.latency_s,
        "round_latency_s": phys.round_latency_s,
        "energy_j": phys.energy_j,
        "payload_bits": phys.payload_bits,
        "round_channel_gain": round_channel_gain,
        "cost": float(total) if energy.ndim == 1 else total,
        "cost_per_device": energy,
        "cost_limit_per_device": np.full(
            energy.shape, np.inf if c.energy_budget is None else c.energy_budget
        ),
    }
    if c.latency_budget is not None:
        latency = phys.round_latency_s
        info["cost_latency"] = latency
        info["cost_limit_latency"] = (
            c.latency_budget if energy.ndim == 1 else np.full(np.shape(latency), c.latency_budget)
        )
    return info


def reward_terms(
    c: EnvConstants,
    energy_backlog: Any,
    new_energy_backlog: Any,
    latency_backlog: Any,
    new_latency_backlog: Any,
    energy_j: Any,
    round_latency_s: Any,
    gap: Any,
    accuracy: Any,
    last_accuracy: Any,
) -> dict[str, Any]:
    """The named reward terms of a round (docs/model.md §7); the reward is their sum.

    ``accuracy_energy``: w_acc 100 (acc_t - acc_{t-1}), -w_E sum_k E_k / E_ref and -w_Q x
    overshoot, the growth of the budget-normalised backlogs. ``accuracy``: the accuracy term
    alone (the budgets are left to a constrained learner, e.g. the energy costs of
    :func:`round_info`). ``dpp``: -V Phi / scale, -sum_k Z_k E_k / scale, -Y T / scale.
    Vectorised over leading axes (devices last).
    """
    if c.mode == "accuracy":
        return {"accuracy": c.accuracy_weight * 100.0 * (accuracy - last_accuracy)}
    if c.mode == "dpp":
        scale = c.dpp_scale
        return {
            "penalty": -c.dpp_tradeoff_v * gap / scale,
            "energy_drift": -np.add.reduce(energy_backlog * energy_j, axis=-1) / scale,
            "latency_drift": -latency_backlog * round_latency_s / scale,
        }
    overshoot: Any = 0.0
    if c.energy_budget is not None:
        # the mean over devices, as sum / K (what ndarray.mean computes)
        overshoot = (
            overshoot
            + np.add.reduce(new_energy_backlog - energy_backlog, axis=-1)
            / c.num_devices
            / c.energy_budget
        )
    if c.latency_budget is not None:
        overshoot = overshoot + (new_latency_backlog - latency_backlog) / c.latency_budget
    return {
        "accuracy": c.accuracy_weight * 100.0 * (accuracy - last_accuracy),
        "energy": -c.energy_weight * np.add.reduce(energy_j, axis=-1) / c.energy_ref,
        "overshoot": -c.overshoot_weight * overshoot,
    }


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
    ``energy_backlog``, ``latency_backlog``, ``accuracy``, ``loss``, ``loss_gap``. After a
    ``step`` also the round just played: ``module``, ``rank``, ``tx_power_w``,
    ``bandwidth_share``, ``sparsity_ratio``, ``rate_bps``, ``packet_error_prob``, ``success``,
    ``straggler``, ``packet_lost``, ``compute_time_s``, ``upload_time_s``, ``latency_s``,
    ``round_latency_s``, ``energy_j``, ``payload_bits``, ``round_channel_gain``,
    ``reward_terms``, the costs ``cost``, ``cost_per_device``, ``cost_limit_per_device`` and,
    with a latency budget, ``cost_latency`` and ``cost_limit_latency``. The env never writes an
    observation or an ``info`` array after returning
    it, and returns new ones on every call; ``channel_gain`` and ``distance_m`` are read-only
    views of the episode's trace.

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
        """Everything that depends on the config: spaces, codec, learner, constants (no episode)."""
        learner = make_learner(cfg)  # first: a learner that fails to build leaves the env as it was
        old: Learner | None = getattr(self, "learner", None)
        self._config = cfg
        self.num_devices = k = cfg.devices.num_devices
        self.codec = ActionCodec(cfg)
        self.action_space = spaces.Box(-1.0, 1.0, shape=self.codec.shape, dtype=np.float32)
        low, high = observation_bounds(k)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self._obs_low, self._obs_high = low, high
        self.learner: Learner = learner
        self._c = EnvConstants(cfg)
        self._energy_budget = cfg.budgets.energy_budget_j
        self._latency_budget = cfg.budgets.latency_budget_s
        self._snr_ref = self._c.snr_ref
        self._t: int | None = None
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
        return float(self._c.snr_ref)

    @property
    def device_positions_m(self) -> NDArray[np.float64]:
        """Device positions (x, y) relative to the BS for the coming round, m, shape (K, 2),
        read-only."""
        if self._t is None:
            raise gym.error.ResetNeeded("call reset() before reading the device positions")
        return self._trace.position_m[0, self._t]

    # ------------------------------------------------------------------ reset
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        seed = check_seed(seed)
        super().reset(seed=seed)
        cfg = self.config
        k = self.num_devices
        trace_key, learn_key = streams.draw_keys(self.np_random, 2)
        self.trace_key = int(trace_key)
        batch = self._episode_trace(self.trace_key, continuing=seed is None)
        # Read-only: info hands out rows of the trace as views (a different row on every call).
        batch.gain.flags.writeable = False
        batch.distance_m.flags.writeable = False
        batch.position_m.flags.writeable = False
        self._trace: Trace = batch
        self._gain = batch.gain[0]
        self._distance = batch.distance_m[0]
        self._uniform = batch.success_uniform[0]
        self._cpu = batch.cpu_freq_hz[0]
        self.partition: DevicePartition = self.learner.reset(
            k, np.random.default_rng(int(learn_key))
        )
        self._tables: EpisodeTables = episode_tables(
            cfg, self._cpu, self.learner.params_per_rank, self.learner.head_params
        )
        # The observation features that do not depend on the policy, for every round at once;
        # row t becomes the observation of round t (each row is handed out once).
        self._obs_rows = observation_template(
            cfg, self._gain, self._distance, self._cpu, self.partition.data_share
        )
        self._t = 0
        self._done = False
        self._energy_backlog = np.zeros(k)
        self._latency_backlog = 0.0
        self._last_module = np.zeros(k, dtype=np.int64)
        self._last_success = np.zeros(k, dtype=bool)
        report = self.learner.initial_report()
        self._accuracy, self._loss, self._gap = report.accuracy, report.loss, report.gap
        info = self._state_info()
        info["data_notes"] = dict(self.partition.notes)
        self._last_info = info
        return self._observation(), info

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
        t = self._t
        if t is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self._done:
            raise gym.error.ResetNeeded("the episode has ended; call reset() before step()")
        c = self._c
        decision = self.codec.decode(self.codec.check(action))
        gain = self._gain[t]
        phys = play_round(decision, gain, self._tables, self.config, self._uniform[t])
        report = self.learner.train_round(phys.rank, decision.ratio, phys.success)
        z_old, y_old = self._energy_backlog, self._latency_backlog
        z_new, y_new = update_backlogs(c, z_old, y_old, phys.energy_j, phys.round_latency_s)
        # NumPy float64 scalars here (a subclass of float)
        terms = reward_terms(
            c,
            z_old,
            z_new,
            y_old,
            y_new,
            phys.energy_j,
            phys.round_latency_s,
            report.gap,
            report.accuracy,
            self._accuracy,
        )
        self._energy_backlog, self._latency_backlog = z_new, float(y_new)
        self._accuracy, self._loss, self._gap = report.accuracy, report.loss, report.gap
        self._last_module = decision.module
        self._last_success = phys.success
        self._t = t = t + 1
        target = c.target_accuracy
        terminated = target is not None and report.accuracy >= target
        truncated = t >= c.num_rounds and not terminated
        self._done = terminated or truncated
        info = self._state_info()
        # (round_channel_gain a copy: the previous info's channel_gain is a view of this row)
        info.update(round_info(decision, phys, gain.copy(), c))
        info["reward_terms"] = terms
        if report.extra:
            info["learner"] = report.extra
        self._last_info = info
        return self._observation(), float(sum(terms.values())), terminated, truncated, info

    # ------------------------------------------------------------ components
    def _terminated(self) -> bool:
        target = self.config.target_accuracy
        return target is not None and self._accuracy >= target

    def _observation(self) -> NDArray[np.float32]:
        t = self._t
        assert t is not None
        return write_observation(
            self._obs_rows[t],
            self._c,
            self._energy_backlog,
            self._last_module,
            self._last_success,
            self._accuracy,
            self._loss,
            self._latency_backlog,
        )

    def _state_info(self) -> dict[str, Any]:
        t = self._t
        assert t is not None
        p = self.partition
        return {
            "round": t,
            "channel_gain": self._gain[t],
            "distance_m": self._distance[t],
            "cpu_freq_hz": self._cpu.copy(),
            "data_size": p.data_sizes.copy(),
            "label_distribution": p.label_distribution.copy(),
            "global_label_distribution": p.global_label_distribution.copy(),
            "energy_backlog": self._energy_backlog,
            "latency_backlog": self._latency_backlog,
            "last_module": self._last_module,
            "accuracy": self._accuracy,
            "loss": self._loss,
            "loss_gap": self._gap,
        }

    # ---------------------------------------------------------------- render
    def render(self) -> str | NDArray[np.uint8] | None:
        if self.render_mode is None:
            gym.logger.warn(
                "render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'"
            )
            return None
        if self._t is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        from fedenv import rendering

        if self.render_mode == "ansi":
            return rendering.render_ansi(self)
        return rendering.render_rgb(self)

    def close(self) -> None:
        self.learner.close()
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
