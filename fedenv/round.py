"""One federated round's physics (docs/model.md §1.1 steps 4-5, §2, §3), shared by every caller.

The single env, the batched vector env and the Lyapunov policy all evaluate a decision with
:func:`play_round`, so a formula exists once. Everything is vectorised over leading axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from numpy.typing import NDArray

from fedenv import channel, costs
from fedenv.actions import Decision
from fedenv.config import EnvConfig

__all__ = [
    "EpisodeTables",
    "EpisodeTablesCache",
    "RoundPhysics",
    "episode_tables",
    "play_round",
    "time_left",
]

F = NDArray[np.float64]


@dataclass(frozen=True)
class EpisodeTables:
    """Per-episode constants: cost of every module on every device (rounds only look them up)."""

    rank_of_module: NDArray[np.int64]
    """Rank of module index 0..M, shape (M + 1,); module 0 (not scheduled) has rank 0 and, in
    every table below, zero time, energy and payload."""
    compute_time_s: F
    """Time before the upload can start, shape (..., K, M + 1): local computation (split:
    device part + server encoder + gradient downlink)."""
    compute_energy_j: F
    """Device computation energy, shape (..., K, M + 1)."""
    payload_bits: F
    """Dense upload size per module, shape (M + 1,) (ignored when ``sparse``)."""
    sparse: bool
    """Whether the payload depends on the sparsification ratio (soft, unified)."""
    params_per_rank: float
    head_params: int
    time_left_s: F | None = None
    """Time left for the upload, max(T_max - compute time, 0), shape (..., K, M + 1), when
    tabulated (:func:`episode_tables` does; :func:`play_round` computes it otherwise)."""

    @cached_property
    def row_offsets(self) -> NDArray[np.int64]:
        """Flat offset of every (..., k) row of the cost tables (all of one shape):
        ``table.take(module + row_offsets)`` looks a module up per device, broadcasting the
        leading axes of ``module`` and of the tables."""
        shape = self.compute_time_s.shape
        return _row_offsets(shape[:-1], shape[-1])


def episode_tables(
    config: EnvConfig, cpu_freq_hz: F, params_per_rank: float, head_params: int
) -> EpisodeTables:
    """Tabulate computation time/energy of each module per device, and payloads (docs/model.md
    §3.1-3.3, §3.6)."""
    dev, cst, model = config.devices, config.costs, config.model
    rank = np.array((0, *model.ranks), dtype=np.int64)
    f = np.asarray(cpu_freq_hz, dtype=np.float64)[..., None]
    if config.paradigm == "split":
        device_cycles = costs.local_cycles(rank, dev, cst.split_device_cycles_per_sample, 0.0)
        server_cycles = costs.local_cycles(
            rank, dev, cst.cycles_per_sample, cst.cycles_per_sample_per_rank
        )
        downlink_s = np.where(
            rank > 0,
            costs.split_downlink_bits(model, dev, cst) / config.channel.downlink_rate_bps,
            0.0,
        )
        compute_time = (
            costs.computation_latency(device_cycles, f)
            + server_cycles / cst.split_server_freq_hz
            + downlink_s
        )
        compute_energy = costs.computation_energy(device_cycles, f, dev)
        payload = np.where(rank > 0, costs.split_uplink_bits(model, dev, cst, head_params), 0.0)
    else:
        cycles = costs.local_cycles(
            rank, dev, cst.cycles_per_sample, cst.cycles_per_sample_per_rank
        )
        compute_time = costs.computation_latency(cycles, f)
        compute_energy = costs.computation_energy(cycles, f, dev)
        payload = costs.lora_payload_bits(rank, model, params_per_rank, head_params)
    return EpisodeTables(
        rank_of_module=rank,
        compute_time_s=np.ascontiguousarray(compute_time),
        compute_energy_j=np.ascontiguousarray(compute_energy),
        payload_bits=payload,
        sparse=config.sparsifies,
        params_per_rank=params_per_rank,
        head_params=head_params,
        time_left_s=time_left(compute_time, config),
    )


class EpisodeTablesCache:
    """:func:`episode_tables` for a policy that reads the episode's CPU frequencies from ``info``
    every round (``info["cpu_freq_hz"]``): built with the config's model sizes, and rebuilt only
    when the frequencies change (a new episode).

    The Lyapunov policy, the heuristics and the budget shield each hold one.
    """

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.tables: EpisodeTables | None = None
        """The tables last returned (None before the first call and after :meth:`clear`)."""
        self._cpu: F | None = None

    def __call__(self, cpu_freq_hz: F) -> EpisodeTables:
        """The tables of these CPU frequencies (shape (..., K); the tables' leading axes)."""
        if self.tables is None or self._cpu is None or not np.array_equal(self._cpu, cpu_freq_hz):
            model = self.config.model
            self.tables = episode_tables(
                self.config, cpu_freq_hz, float(model.lora_params_per_rank), int(model.head_params)
            )
            self._cpu = np.array(cpu_freq_hz, dtype=np.float64)
        return self.tables

    def clear(self) -> None:
        self.tables, self._cpu = None, None


def time_left(compute_time_s: F, config: EnvConfig) -> F:
    """max(T_max - t_cmp, 0): the time a device has left for its upload (docs/model.md §3.4),
    C-contiguous."""
    return np.ascontiguousarray(_time_left(config.costs.round_deadline_s, compute_time_s))


def _time_left(deadline: float, compute_time_s: F) -> F:
    return np.maximum(deadline - compute_time_s, 0.0)


@dataclass(frozen=True)
class RoundPhysics:
    """Outcome of a round's computation and uploads, arrays of shape (..., K) unless noted."""

    rank: NDArray[np.int64]
    scheduled: NDArray[np.bool_]
    rate_bps: F
    packet_error: F
    compute_time_s: F
    upload_time_s: F
    """Full upload time S / R (may exceed the deadline; inf without rate)."""
    latency_s: F
    """Device finish time, capped at the deadline; 0 for idle devices."""
    energy_j: F
    payload_bits: F
    on_time: NDArray[np.bool_]
    success: NDArray[np.bool_]
    """Realised: scheduled, on time and u >= q (all False when no uniforms were given)."""
    round_latency_s: F
    """T(t) = max over scheduled devices of their capped finish time, shape (...)."""

    @cached_property
    def success_prob(self) -> F:
        """P(update aggregated) = scheduled x on time x (1 - q) (computed when first read: the
        Lyapunov policy needs it, an env step does not)."""
        return self.on_time * (1.0 - self.packet_error)


@lru_cache(maxsize=32)
def _row_offsets(shape: tuple[int, ...], columns: int) -> NDArray[np.int64]:
    """Flat offset of the first entry of every row of a C-contiguous table of ``shape`` rows."""
    out = np.arange(0, math.prod(shape) * columns, columns, dtype=np.int64).reshape(shape)
    out.flags.writeable = False
    return out


def _lookups(tables: EpisodeTables, module: NDArray[np.int64], deadline: float) -> tuple[F, F, F]:
    """Computation time, energy and time left for the upload of each device's module:
    ``table[..., k, module[..., k]]``, broadcasting the leading axes of both (the Lyapunov
    policy's candidates are many decisions on one episode's tables)."""
    flat = module + tables.row_offsets
    t_cmp, e_cmp = tables.compute_time_s.take(flat), tables.compute_energy_j.take(flat)
    if tables.time_left_s is None:
        return t_cmp, e_cmp, _time_left(deadline, t_cmp)
    return t_cmp, e_cmp, tables.time_left_s.take(flat)


def play_round(
    decision: Decision,
    gain: F,
    tables: EpisodeTables,
    config: EnvConfig,
    success_uniform: F | None = None,
) -> RoundPhysics:
    """Evaluate a decision on a channel realisation (docs/model.md §1.1 steps 4-5).

    An update is aggregated iff its device was scheduled, computation + upload finished by the
    deadline T_max, and the packet survived (u >= q with the trace's uniform u).
    """
    module = np.asarray(decision.module)
    power = decision.power_w
    scheduled = np.greater(module, 0)  # (module 0: not scheduled)
    rank = tables.rank_of_module.take(module)
    deadline = config.costs.round_deadline_s
    t_cmp, e_cmp, left = _lookups(tables, module, deadline)
    if tables.sparse:
        bits = costs.sparse_payload_bits(
            rank, decision.ratio, config.model, tables.params_per_rank, tables.head_params
        )
    else:
        bits = tables.payload_bits.take(module)
    rate, per = channel.link(power, gain, decision.share, config.channel)
    per = np.where(scheduled, per, 0.0)  # idle devices have no packet to lose
    # on time: t_up <= max(T_max - t_cmp, 0). A scheduled device sends at least one bit at a
    # finite rate (t_up > 0), so a computation past the deadline is never on time.
    t_up, e_up, on_time = costs.upload(bits, rate, power, left)
    on_time &= scheduled
    # Module 0 computes and sends nothing (the tables' column 0 is 0, so t_up = 0 and E_up = 0):
    # idle devices get a zero finish time and energy without masking.
    latency = np.minimum(t_cmp + t_up, deadline)
    success = (
        on_time & (success_uniform >= per)
        if success_uniform is not None
        else np.zeros_like(on_time)
    )
    return RoundPhysics(
        rank=rank,
        scheduled=scheduled,
        rate_bps=rate,
        packet_error=per,
        compute_time_s=t_cmp,
        upload_time_s=t_up,
        latency_s=latency,
        energy_j=e_cmp + e_up,
        payload_bits=bits,
        on_time=on_time,
        success=success,
        round_latency_s=np.maximum.reduce(latency, axis=-1),
    )
