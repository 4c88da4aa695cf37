"""FedLoRAWireless-v0: wireless federated LoRA fine-tuning as a Gymnasium environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from fedenv.actions import ActionCodec
from fedenv.config import EnvConfig, resolve_config
from fedenv.learning import make_learner
from fedenv.learning.base import DevicePartition, Learner, RoundReport
from fedenv.queues import update_queue
from fedenv.round import EpisodeTables, RoundPhysics, episode_tables, play_round
from fedenv.trace import Trace, generate_trace

__all__ = ["FedLoRAWirelessEnv", "DEVICE_FEATURES", "GLOBAL_FEATURES", "observation_bounds"]

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


def observation_bounds(num_devices: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Low and high bounds of the flat observation for K devices."""
    dev_lo = np.array([_BOUNDS[f][0] for f in DEVICE_FEATURES], dtype=np.float32)
    dev_hi = np.array([_BOUNDS[f][1] for f in DEVICE_FEATURES], dtype=np.float32)
    glo_lo = np.array([_BOUNDS[f][0] for f in GLOBAL_FEATURES], dtype=np.float32)
    glo_hi = np.array([_BOUNDS[f][1] for f in GLOBAL_FEATURES], dtype=np.float32)
    low = np.concatenate([np.tile(dev_lo, num_devices), glo_lo])
    high = np.concatenate([np.tile(dev_hi, num_devices), glo_hi])
    return low, high


class FedLoRAWirelessEnv(gym.Env[NDArray[np.float32], NDArray[np.float32]]):
    """Wireless federated LoRA fine-tuning of a foundation model, one federated round per step.

    ## Description
    K edge devices fine-tune LoRA adapters of a pre-trained transformer with a base station
    (BS) over an FDMA uplink (SPEC.md). Each step the agent decides, per device, which LoRA
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

    | component | physical meaning                        | mapping of a in [-1, 1]                      |
    |-----------|-----------------------------------------|----------------------------------------------|
    | module    | module m in {0..M}; 0 = not scheduled, m >= 1 trains rank ``ranks[m-1]`` | m = min(floor((a+1)/2 (M+1)), M) |
    | schedule  | (split) train this round                | a > 0                                        |
    | power     | transmit power, W                       | p_min + (a+1)/2 (P_max - p_min)              |
    | bandwidth | weight w = (a+1)/2; share beta_k = w_k / sum of scheduled w (equal if all 0) | |
    | ratio     | sparsification ratio rho                | rho_min + (a+1)/2 (1 - rho_min)              |

    Missing components default to P_max, rho = 1 and (split, soft) the structural rank
    ``fixed_rank``. Finite values outside [-1, 1] are clipped; NaN, inf or a wrong shape raise
    ``ValueError`` and leave the env unchanged. Wrappers: :class:`fedenv.wrappers.DictAction`
    (RLlib) and :class:`fedenv.wrappers.DiscreteAction` (``MultiDiscrete``).

    ## Observation space
    ``Box(float32, shape=(7 K + 4,))``: a device-major block of 7 features per device, then 4
    global features. All are normalised with finite bounds:

    | index      | feature         | meaning, unit                                          | bounds  |
    |------------|-----------------|--------------------------------------------------------|---------|
    | 7k + 0     | channel_quality | full-band SNR at P_max for this round, dB / 20          | [-4, 4] |
    | 7k + 1     | distance        | distance to BS / cell radius                           | [0, 1]  |
    | 7k + 2     | cpu_frequency   | f_k / f_max                                            | [0, 1]  |
    | 7k + 3     | data_share      | n_k / sum n                                            | [0, 1]  |
    | 7k + 4     | energy_backlog  | Z_k / (10 E_bar) (0 without energy budget)             | [0, 10] |
    | 7k + 5     | last_module     | last module index / M                                  | [0, 1]  |
    | 7k + 6     | last_success    | 1 if its last update was aggregated                    | {0, 1}  |
    | 7K + 0     | round_fraction  | t / T                                                  | [0, 1]  |
    | 7K + 1     | accuracy        | held-out accuracy of the global model                  | [0, 1]  |
    | 7K + 2     | loss            | held-out loss / initial loss                           | [0, 5]  |
    | 7K + 3     | latency_backlog | Y / (10 T_bar) (0 without latency budget)              | [0, 10] |

    The channel quality is that of the round the next action will play (the BS has estimated
    the channels before deciding). Raw, unnormalised values are in ``info``.

    ## Rewards
    ``accuracy_energy`` (default, SPEC §7):
    r = w_acc 100 (acc_t - acc_{t-1}) - w_E sum_k E_k / E_ref - w_Q overshoot_t, where
    overshoot_t = mean_k (Z_k(t+1) - Z_k(t)) / E_bar + (Y(t+1) - Y(t)) / T_bar is the growth of
    the budget-normalised backlogs (it telescopes: its episode sum is the final backlog in units
    of budget, so a policy inside its budgets pays nothing overall). ``dpp``:
    r = -(V Phi_t + sum_k Z_k E_k + Y T) / scale with Phi_t the normalised loss gap after the
    round. ``info["reward_terms"]`` holds the named terms; they sum to the reward.

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
    actions: every policy meets the same channels under the same seed.

    ## Arguments
    ``gym.make("FedLoRAWireless-v0", config=None, preset=None, render_mode=None, **overrides)``
    with ``config`` an :class:`~fedenv.config.EnvConfig`, a mapping (RLlib ``env_config``) or a
    YAML path; ``preset`` one of switching, split, soft, unified; overrides such as
    ``backend="lora"``, ``task="qnli"`` or ``devices={"num_devices": 20}``.

    ## Info
    After ``reset`` and every ``step``: ``round``, ``channel_gain`` (linear, next round),
    ``distance_m``, ``cpu_freq_hz``, ``data_size``, ``label_distribution``,
    ``energy_backlog``, ``latency_backlog``, ``accuracy``, ``loss``, ``loss_gap``. After a
    ``step`` also the round just played: ``module``, ``rank``, ``tx_power_w``,
    ``bandwidth_share``, ``sparsity_ratio``, ``rate_bps``, ``packet_error_prob``, ``success``,
    ``straggler``, ``packet_lost``, ``compute_time_s``, ``upload_time_s``, ``latency_s``,
    ``round_latency_s``, ``energy_j``, ``payload_bits``, ``round_channel_gain``,
    ``reward_terms``.

    ## Version history
    * v0: initial release.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 2}

    def __init__(
        self,
        config: EnvConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        preset: str | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        self.config = resolve_config(config, preset, **overrides)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        cfg = self.config
        self.num_devices = k = cfg.devices.num_devices
        self.codec = ActionCodec(cfg)
        self.action_space = spaces.Box(-1.0, 1.0, shape=self.codec.shape, dtype=np.float32)
        low, high = observation_bounds(k)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self._obs_low, self._obs_high = low, high
        self.learner: Learner = make_learner(cfg)
        self._energy_budget = cfg.budgets.energy_budget_j
        self._latency_budget = cfg.budgets.latency_budget_s
        self._snr_ref = cfg.channel.max_tx_power_w / (cfg.channel.bandwidth_hz * cfg.channel.noise_psd_w_per_hz)
        self._arange = np.arange(k)
        self._t: int | None = None

    # ------------------------------------------------------------------ reset
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        cfg = self.config
        k = self.num_devices
        trace_key, learn_key = self.np_random.integers(0, 2**63, size=2, dtype=np.uint64)
        self.trace_key = int(trace_key)
        batch = generate_trace(np.array([trace_key], dtype=np.uint64), cfg)
        self._trace: Trace = batch
        self._gain = batch.gain[0]
        self._uniform = batch.success_uniform[0]
        self._cpu = batch.cpu_freq_hz[0]
        self.partition: DevicePartition = self.learner.reset(k, np.random.default_rng(int(learn_key)))
        self._tables: EpisodeTables = episode_tables(cfg, self._cpu, self.learner.params_per_rank, self.learner.head_params)
        # Observation features that do not depend on the policy, for every round at once.
        exo = np.empty((cfg.num_rounds + 1, k, 4), dtype=np.float32)
        exo[..., 0] = np.clip(10.0 * np.log10(self._snr_ref * self._gain) / _CHANNEL_DB_SCALE, -4.0, 4.0)
        exo[..., 1] = np.clip(batch.distance_m[0] / cfg.channel.cell_radius_m, 0.0, 1.0)
        exo[..., 2] = self._cpu / cfg.devices.cpu_freq_max_hz
        exo[..., 3] = self.partition.data_share
        self._exo_features = exo
        self._t = 0
        self._energy_backlog = np.zeros(k)
        self._latency_backlog = 0.0
        self._last_module = np.zeros(k, dtype=np.int64)
        self._last_success = np.zeros(k, dtype=bool)
        report = self.learner.initial_report()
        self._accuracy, self._loss, self._gap = report.accuracy, report.loss, report.gap
        self._last_round: dict[str, Any] | None = None
        info = self._state_info()
        info["data_notes"] = dict(self.partition.notes)
        return self._observation(), info

    # ------------------------------------------------------------------- step
    def step(self, action: NDArray[np.float32]) -> tuple[NDArray[np.float32], SupportsFloat, bool, bool, dict[str, Any]]:
        if self._t is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self._t >= self.config.num_rounds or self._terminated():
            raise gym.error.ResetNeeded("the episode has ended; call reset() before step()")
        a = self.codec.validate(action)
        decision = self.codec.decode(a)
        t = self._t
        phys = play_round(decision, self._gain[t], self._tables, self.config, self._uniform[t])
        report = self.learner.train_round(phys.rank, decision.ratio, phys.success)
        terms, energy_backlog, latency_backlog = self._reward_terms(phys, report)
        self._energy_backlog, self._latency_backlog = energy_backlog, latency_backlog
        self._accuracy, self._loss, self._gap = report.accuracy, report.loss, report.gap
        self._last_module = decision.module
        self._last_success = phys.success
        self._t = t + 1
        terminated = self._terminated()
        truncated = self._t >= self.config.num_rounds and not terminated
        info = self._state_info()
        info.update(self._step_info(decision, phys, terms, t))
        if report.extra:
            info["learner"] = report.extra
        self._last_round = info
        return self._observation(), float(sum(terms.values())), terminated, truncated, info

    # ------------------------------------------------------------ components
    def _terminated(self) -> bool:
        target = self.config.target_accuracy
        return target is not None and self._accuracy >= target

    def _reward_terms(self, phys: RoundPhysics, report: RoundReport) -> tuple[dict[str, float], NDArray[np.float64], float]:
        """Reward terms (SPEC §7) and the updated virtual queues (SPEC §4)."""
        cfg = self.config
        rw = cfg.reward
        z_old, y_old = self._energy_backlog, self._latency_backlog
        z_new = update_queue(z_old, phys.energy_j, self._energy_budget) if self._energy_budget is not None else z_old.copy()
        latency = float(phys.round_latency_s)
        y_new = float(update_queue(y_old, latency, self._latency_budget)) if self._latency_budget is not None else y_old
        if rw.mode == "dpp":
            scale = rw.dpp_scale
            terms = {
                "penalty": -rw.dpp_tradeoff_v * report.gap / scale,
                "energy_drift": -float(np.dot(z_old, phys.energy_j)) / scale,
                "latency_drift": -y_old * latency / scale,
            }
        else:
            overshoot = 0.0
            if self._energy_budget is not None:
                overshoot += float((z_new - z_old).mean()) / self._energy_budget
            if self._latency_budget is not None:
                overshoot += (y_new - y_old) / self._latency_budget
            terms = {
                "accuracy": rw.accuracy_weight * 100.0 * (report.accuracy - self._accuracy),
                "energy": -rw.energy_weight * float(phys.energy_j.sum()) / cfg.energy_ref_j,
                "overshoot": -rw.overshoot_weight * overshoot,
            }
        return terms, z_new, y_new

    def _observation(self) -> NDArray[np.float32]:
        k = self.num_devices
        t = self._t
        assert t is not None
        obs = np.empty(7 * k + 4, dtype=np.float32)
        dev = obs[: 7 * k].reshape(k, 7)
        dev[:, :4] = self._exo_features[t]
        dev[:, 4] = self._energy_backlog / (_BACKLOG_SCALE * self._energy_budget) if self._energy_budget is not None else 0.0
        dev[:, 5] = self._last_module / self.codec.num_modules
        dev[:, 6] = self._last_success
        lat = self._latency_backlog / (_BACKLOG_SCALE * self._latency_budget) if self._latency_budget is not None else 0.0
        obs[7 * k :] = (t / self.config.num_rounds, self._accuracy, self._loss / self.config.learning.surrogate.initial_loss, lat)
        return np.clip(obs, self._obs_low, self._obs_high, out=obs)

    def _state_info(self) -> dict[str, Any]:
        t = self._t
        assert t is not None
        return {
            "round": t,
            "channel_gain": self._gain[t].copy(),
            "distance_m": self._trace.distance_m[0, t].copy(),
            "cpu_freq_hz": self._cpu.copy(),
            "data_size": self.partition.data_sizes.copy(),
            "label_distribution": self.partition.label_distribution.copy(),
            "global_label_distribution": self.partition.global_label_distribution.copy(),
            "energy_backlog": self._energy_backlog,
            "latency_backlog": self._latency_backlog,
            "last_module": self._last_module,
            "accuracy": self._accuracy,
            "loss": self._loss,
            "loss_gap": self._gap,
        }

    def _step_info(self, decision: Any, phys: RoundPhysics, terms: dict[str, float], t: int) -> dict[str, Any]:
        scheduled = phys.scheduled
        return {
            "module": decision.module,
            "rank": phys.rank,
            "tx_power_w": np.where(scheduled, decision.power_w, 0.0),
            "bandwidth_share": decision.share,
            "sparsity_ratio": decision.ratio,
            "rate_bps": phys.rate_bps,
            "packet_error_prob": phys.packet_error,
            "success": phys.success,
            "straggler": scheduled & ~phys.on_time,
            "packet_lost": phys.on_time & ~phys.success,
            "compute_time_s": phys.compute_time_s,
            "upload_time_s": phys.upload_time_s,
            "latency_s": phys.latency_s,
            "round_latency_s": float(phys.round_latency_s),
            "energy_j": phys.energy_j,
            "payload_bits": phys.payload_bits,
            "round_channel_gain": self._gain[t].copy(),
            "reward_terms": terms,
        }

    # ---------------------------------------------------------------- render
    def render(self) -> str | NDArray[np.uint8] | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'")
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
