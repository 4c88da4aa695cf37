"""The env's core: N episodes of one config, advanced by one set of array operations.

Both env forms are shells over :class:`Episodes`: the single env
(:class:`fedenv.env.FedLoRAWirelessEnv`) holds one with N = 1 and hands out row 0, the vector env
(:class:`fedenv.vector.FedLoRAWirelessVectorEnv`) one with N = ``num_envs``, adding autoreset and
the ``info`` masks. So a step, its state and its ``info`` are written once::

    decode the action -> play_round (physics) -> learner.train_round -> update_backlogs
    -> reward_terms -> advance the state -> write_observation

Every array the core hands out (state, ``info``, observation) is new or read-only and never
written afterwards: the state is replaced, not updated in place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedenv.actions import ActionCodec, Decision
from fedenv.config import EnvConfig
from fedenv.learning.base import BatchLearner, Learner, OneEpisode
from fedenv.observation import observation_template, write_observation
from fedenv.queues import update_backlogs
from fedenv.reward import reward_terms
from fedenv.round import RoundPhysics, episode_tables, play_round
from fedenv.trace import Trace

__all__ = ["Episodes", "Round", "STATE_KEYS", "round_info"]

#: ``info`` keys that describe the state (present after reset and step), in order.
STATE_KEYS = (
    "round",
    "channel_gain",
    "distance_m",
    "cpu_freq_hz",
    "data_size",
    "label_distribution",
    "global_label_distribution",
    "energy_backlog",
    "energy_spent_j",
    "latency_backlog",
    "last_module",
    "accuracy",
    "loss",
    "loss_gap",
)


@dataclass(frozen=True)
class Round:
    """What one step of the N episodes gives, arrays with a leading episode axis."""

    reward: NDArray[np.float64]
    """The sum of the terms, (N,)."""
    terms: dict[str, NDArray[np.float64]]
    """The named reward terms (:func:`fedenv.reward.reward_terms`), each (N,)."""
    terminated: NDArray[np.bool_]
    truncated: NDArray[np.bool_]
    info: dict[str, Any]
    """The round's ``info`` entries (:func:`round_info`), each (N, ...)."""
    extra: dict[str, Any]
    """The learner's extras (a one-episode learner's ``info["learner"]``)."""


def round_info(
    config: EnvConfig, decision: Decision, phys: RoundPhysics, round_channel_gain: NDArray[Any]
) -> dict[str, Any]:
    """The ``info`` entries of the round just played (the env docstring's Info section): the
    decision, its physics, the channel it met and the round's costs, arrays (..., K).

    The costs follow the safe-RL convention (Safety-Gymnasium, OmniSafe: the step's cost in
    ``info["cost"]``): ``cost_per_device`` is each device's energy E_k (J), ``cost`` their sum,
    ``cost_limit_per_device`` the per-round energy budget E_bar of each device (inf without an
    energy budget: unconstrained); where the config budgets latency, ``cost_latency`` is the
    round latency T(t) (s) and ``cost_limit_latency`` its budget T_bar. Energy and latency are
    kept apart (their units differ); a Lagrangian learner prices each against its own limit.
    """
    energy_budget = config.budgets.energy_budget_j
    latency_budget = config.budgets.latency_budget_s
    energy = phys.energy_j
    info = {
        "module": decision.module,
        "rank": phys.rank,
        "tx_power_w": decision.power_w,  # (decoded: 0 for idle devices)
        "bandwidth_share": decision.share,
        "sparsity_ratio": decision.ratio,
        "rate_bps": phys.rate_bps,
        "packet_error_prob": phys.packet_error,
        "success": phys.success,
        "straggler": np.greater(phys.scheduled, phys.on_time),  # scheduled and not on time
        "packet_lost": np.greater(phys.on_time, phys.success),  # on time and not aggregated
        "compute_time_s": phys.compute_time_s,
        "upload_time_s": phys.upload_time_s,
        "latency_s": phys.latency_s,
        "round_latency_s": phys.round_latency_s,
        "energy_j": energy,
        "payload_bits": phys.payload_bits,
        "round_channel_gain": round_channel_gain,
        "cost": np.add.reduce(energy, axis=-1),
        "cost_per_device": energy,
        "cost_limit_per_device": np.full(
            energy.shape, np.inf if energy_budget is None else energy_budget
        ),
    }
    if latency_budget is not None:
        info["cost_latency"] = phys.round_latency_s
        info["cost_limit_latency"] = np.full(np.shape(phys.round_latency_s), latency_budget)
    return info


class Episodes:
    """N episodes of one config: their state, and the one step that advances them together.

    Args:
        config: the config every episode plays.
        num_envs: N.
        learner: a :class:`~fedenv.learning.base.BatchLearner` of N episodes (the surrogate), or
            a one-episode :class:`~fedenv.learning.base.Learner` (the lora backend; N = 1).

    :meth:`start` begins episodes on rows of the batch; :meth:`step` plays a round of every
    episode; :meth:`observation` and :meth:`state_info` read the state. Episodes past their
    last round (the vector env resets them on its next step) replay their last round's
    channels, and the caller discards what they give.
    """

    def __init__(self, config: EnvConfig, num_envs: int, learner: BatchLearner | Learner) -> None:
        self.config = config
        self.num_envs = n = num_envs
        self.num_devices = k = config.devices.num_devices
        self.codec = ActionCodec(config)
        self.learner: BatchLearner = (
            learner if isinstance(learner, BatchLearner) else OneEpisode(learner, k)
        )
        self._sparse = config.sparsifies  # (ratios count only there)
        rows = config.num_rounds + 1
        self._first_row = np.arange(n, dtype=np.int64) * rows
        self._gain = np.zeros((n, rows, k))
        self._distance = np.zeros((n, rows, k))
        self._uniform = np.zeros((n, rows, k))
        self._obs_rows = np.zeros((n, rows, 7 * k + 4), dtype=np.float32)
        self._flat_views()
        m1 = config.model.num_modules + 1
        template = episode_tables(
            config,
            np.full((n, k), config.devices.cpu_freq_max_hz),
            self.learner.params_per_rank,
            self.learner.head_params,
        )
        self.tables = dataclasses.replace(
            template,
            compute_time_s=np.zeros((n, k, m1)),
            compute_energy_j=np.zeros((n, k, m1)),
            time_left_s=np.zeros((n, k, m1)),
        )
        c = config.model.num_labels
        # the state that info exposes (replaced, never written in place)
        self.t = np.zeros(n, dtype=np.int64)
        self.cpu_freq_hz = np.zeros((n, k))
        self.data_size = np.zeros((n, k))
        self.data_share = np.zeros((n, k))
        self.label_distribution = np.zeros((n, k, c))
        self.global_label_distribution = np.zeros((n, c))
        self.energy_backlog = np.zeros((n, k))
        self.energy_spent = np.zeros((n, k))
        self.latency_backlog = np.zeros(n)
        self.last_module = np.zeros((n, k), dtype=np.int64)
        self.last_success = np.zeros((n, k), dtype=bool)
        self.accuracy = np.zeros(n)
        self.loss = np.zeros(n)
        self.gap = np.zeros(n)

    # ------------------------------------------------------------------ start
    def start(
        self, index: NDArray[np.intp], trace: Trace, learning_keys: NDArray[np.uint64]
    ) -> dict[str, Any]:
        """Start episodes on the rows ``index`` with their traces (a batch of ``index.size``)
        and learning keys; returns the learner's notes (``info["data_notes"]``)."""
        cfg, m = self.config, index.size
        start = self.learner.start(index, learning_keys)
        tables = episode_tables(
            cfg, trace.cpu_freq_hz, self.learner.params_per_rank, self.learner.head_params
        )
        obs_rows = observation_template(
            cfg, trace.gain, trace.distance_m, trace.cpu_freq_hz, start.data_share
        )
        if m == self.num_envs:
            # every episode starts anew: take the new arrays instead of copying them in
            self._gain = np.ascontiguousarray(trace.gain)
            self._distance = np.ascontiguousarray(trace.distance_m)
            self._uniform = np.ascontiguousarray(trace.success_uniform)
            self._obs_rows = np.ascontiguousarray(obs_rows)
            self.tables = dataclasses.replace(
                self.tables,
                compute_time_s=np.ascontiguousarray(tables.compute_time_s),
                compute_energy_j=np.ascontiguousarray(tables.compute_energy_j),
                time_left_s=tables.time_left_s,
            )
            self._flat_views()
        else:
            self._gain[index] = trace.gain
            self._distance[index] = trace.distance_m
            self._uniform[index] = trace.success_uniform
            self._obs_rows[index] = obs_rows
            self.tables.compute_time_s[index] = tables.compute_time_s
            self.tables.compute_energy_j[index] = tables.compute_energy_j
            assert self.tables.time_left_s is not None and tables.time_left_s is not None
            self.tables.time_left_s[index] = tables.time_left_s
        for name, value in (
            ("t", 0),
            ("cpu_freq_hz", trace.cpu_freq_hz),
            ("data_size", start.data_sizes),
            ("data_share", start.data_share),
            ("label_distribution", start.label_distribution),
            ("global_label_distribution", start.global_label_distribution),
            ("energy_backlog", 0.0),
            ("energy_spent", 0.0),
            ("latency_backlog", 0.0),
            ("last_module", 0),
            ("last_success", False),
            ("accuracy", start.accuracy),
            ("loss", start.loss),
            ("gap", start.gap),
        ):
            array = getattr(self, name).copy()
            array[index] = value
            array.setflags(write=False)
            setattr(self, name, array)
        return start.notes

    # ------------------------------------------------------------------- step
    def step(self, actions: NDArray[np.floating]) -> Round:
        """Play a round of every episode with checked actions (N, K, C) (``codec.check``)."""
        cfg = self.config
        t = np.minimum(self.t, cfg.num_rounds - 1)
        decision = self.codec.decode(actions)
        at = self._first_row + t
        gain = self._gain_rows.take(at, axis=0)
        phys = play_round(decision, gain, self.tables, cfg, self._uniform_rows.take(at, axis=0))
        report = self.learner.train_round(phys.rank, decision.ratio, phys.success)
        z_new, y_new = update_backlogs(
            cfg,
            energy_backlog=self.energy_backlog,
            latency_backlog=self.latency_backlog,
            energy_j=phys.energy_j,
            round_latency_s=phys.round_latency_s,
        )
        terms = reward_terms(
            cfg,
            energy_j=phys.energy_j,
            round_latency_s=phys.round_latency_s,
            gap=report.gap,
            accuracy=report.accuracy,
            last_accuracy=self.accuracy,
            energy_backlog=self.energy_backlog,
            next_energy_backlog=z_new,
            latency_backlog=self.latency_backlog,
            next_latency_backlog=y_new,
        )
        reward = np.asarray(sum(terms.values()), dtype=np.float64)
        target = cfg.target_accuracy
        terminated = (
            report.accuracy >= target if target is not None else np.zeros(self.num_envs, bool)
        )
        next_t = t + 1
        truncated = (next_t >= cfg.num_rounds) & ~terminated
        # advance the state
        self.t = next_t
        self.energy_backlog, self.latency_backlog = z_new, y_new
        self.energy_spent = self.energy_spent + phys.energy_j
        self.accuracy, self.loss, self.gap = report.accuracy, report.loss, report.gap
        self.last_module, self.last_success = decision.module, phys.success
        for array in (
            self.t,
            self.energy_backlog,
            self.energy_spent,
            self.latency_backlog,
            self.accuracy,
            self.loss,
            self.gap,
            self.last_module,
            self.last_success,
        ):
            array.setflags(write=False)
        return Round(
            reward=reward,
            terms=terms,
            terminated=terminated,
            truncated=truncated,
            info=round_info(cfg, decision, phys, gain),
            extra=report.extra,
        )

    # ------------------------------------------------------------------- read
    def observation(self) -> NDArray[np.float32]:
        """The current observation of every episode (N, 7 K + 4), a new array."""
        return write_observation(
            self._obs_flat.take(self._first_row + self.t, axis=0),
            self.config,
            energy_backlog=self.energy_backlog,
            last_module=self.last_module,
            last_success=self.last_success,
            accuracy=self.accuracy,
            loss=self.loss,
            latency_backlog=self.latency_backlog,
        )

    def state_info(self) -> dict[str, Any]:
        """The state keys of ``info`` (:data:`STATE_KEYS`) of every episode, arrays (N, ...)."""
        at = self._first_row + self.t
        gain, distance = self._gain_rows.take(at, axis=0), self._distance_rows.take(at, axis=0)
        gain.setflags(write=False)
        distance.setflags(write=False)
        return {
            "round": self.t,
            "channel_gain": gain,
            "distance_m": distance,
            "cpu_freq_hz": self.cpu_freq_hz,
            "data_size": self.data_size,
            "label_distribution": self.label_distribution,
            "global_label_distribution": self.global_label_distribution,
            "energy_backlog": self.energy_backlog,
            "energy_spent_j": self.energy_spent,
            "latency_backlog": self.latency_backlog,
            "last_module": self.last_module,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "loss_gap": self.gap,
        }

    def _flat_views(self) -> None:
        """Flat (N (T + 1), ...) views of the per-round arrays: one gather per step picks every
        episode's round."""
        n, k = self.num_envs, self.num_devices
        rows = self.config.num_rounds + 1
        self._gain_rows = self._gain.reshape(n * rows, k)
        self._distance_rows = self._distance.reshape(n * rows, k)
        self._uniform_rows = self._uniform.reshape(n * rows, k)
        self._obs_flat = self._obs_rows.reshape(n * rows, 7 * k + 4)

    def close(self) -> None:
        self.learner.close()
