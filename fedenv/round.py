"""One federated round's physics (SPEC §1 steps 4-5, §2, §3), shared by every caller.

The single env, the batched vector env and the Lyapunov policy all evaluate a decision with
:func:`play_round`, so a formula exists once. Everything is vectorised over leading axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedenv import channel, costs
from fedenv.actions import Decision
from fedenv.config import EnvConfig

__all__ = ["EpisodeTables", "RoundPhysics", "episode_tables", "play_round"]

F = NDArray[np.float64]


@dataclass(frozen=True)
class EpisodeTables:
    """Per-episode constants: cost of every module on every device (rounds only look them up)."""

    rank_of_module: NDArray[np.int64]
    """Rank of module index 0..M, shape (M + 1,); module 0 has rank 0."""
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


def episode_tables(config: EnvConfig, cpu_freq_hz: F, params_per_rank: float, head_params: int) -> EpisodeTables:
    """Tabulate computation time/energy of each module per device, and payloads (SPEC §3, §5)."""
    dev, cst, model = config.devices, config.costs, config.model
    rank = np.array((0, *model.ranks), dtype=np.int64)
    f = np.asarray(cpu_freq_hz, dtype=np.float64)[..., None]
    if config.paradigm == "split":
        device_cycles = costs.local_cycles(rank, dev, cst.split_device_cycles_per_sample, 0.0)
        server_cycles = costs.local_cycles(rank, dev, cst.cycles_per_sample, cst.cycles_per_sample_per_rank)
        downlink_s = np.where(rank > 0, costs.split_downlink_bits(model, dev, cst) / config.channel.downlink_rate_bps, 0.0)
        compute_time = costs.computation_latency(device_cycles, f) + server_cycles / cst.split_server_freq_hz + downlink_s
        compute_energy = costs.computation_energy(device_cycles, f, dev)
        payload = np.where(rank > 0, costs.split_uplink_bits(model, dev, cst, head_params), 0.0)
    else:
        cycles = costs.local_cycles(rank, dev, cst.cycles_per_sample, cst.cycles_per_sample_per_rank)
        compute_time = costs.computation_latency(cycles, f)
        compute_energy = costs.computation_energy(cycles, f, dev)
        payload = costs.lora_payload_bits(rank, model, params_per_rank, head_params)
    return EpisodeTables(
        rank_of_module=rank,
        compute_time_s=np.ascontiguousarray(compute_time),
        compute_energy_j=np.ascontiguousarray(compute_energy),
        payload_bits=payload,
        sparse=config.paradigm in ("soft", "unified"),
        params_per_rank=params_per_rank,
        head_params=head_params,
    )


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
    success_prob: F
    """P(update aggregated) = scheduled x on time x (1 - q)."""
    success: NDArray[np.bool_]
    """Realised: scheduled, on time and u >= q (all False when no uniforms were given)."""
    round_latency_s: F
    """T(t) = max over scheduled devices of their capped finish time, shape (...)."""


def _lookup(table: F, module: NDArray[np.int64]) -> F:
    return np.take_along_axis(table, module[..., None], axis=-1)[..., 0]


def play_round(
    decision: Decision,
    gain: F,
    tables: EpisodeTables,
    config: EnvConfig,
    success_uniform: F | None = None,
) -> RoundPhysics:
    """Evaluate a decision on a channel realisation (SPEC §1 steps 4-5).

    An update is aggregated iff its device was scheduled, computation + upload finished by the
    deadline T_max, and the packet survived (u >= q with the trace's uniform u).
    """
    module = decision.module
    scheduled = module > 0
    rank = tables.rank_of_module[module]
    t_cmp = _lookup(tables.compute_time_s, module)
    e_cmp = _lookup(tables.compute_energy_j, module)
    if tables.sparse:
        bits = costs.sparse_payload_bits(rank, decision.ratio, config.model, tables.params_per_rank, tables.head_params)
    else:
        bits = tables.payload_bits[module]
    ch = config.channel
    share = decision.share
    rate = channel.uplink_rate(decision.power_w, gain, share, ch)
    per = np.where(scheduled, channel.packet_error_rate(decision.power_w, gain, np.maximum(share, 1e-300), ch), 0.0)
    deadline = config.costs.round_deadline_s
    t_up, e_up, on_time = costs.upload(bits, rate, decision.power_w, deadline - t_cmp)
    on_time = on_time & scheduled & (t_cmp <= deadline)
    latency = np.where(scheduled, np.minimum(t_cmp + t_up, deadline), 0.0)
    success_prob = on_time * (1.0 - per)
    success = on_time & (success_uniform >= per) if success_uniform is not None else np.zeros_like(on_time)
    return RoundPhysics(
        rank=rank,
        scheduled=scheduled,
        rate_bps=rate,
        packet_error=per,
        compute_time_s=t_cmp,
        upload_time_s=t_up,
        latency_s=latency,
        energy_j=e_cmp + np.where(scheduled, e_up, 0.0),
        payload_bits=bits,
        on_time=on_time,
        success_prob=success_prob,
        success=success,
        round_latency_s=latency.max(axis=-1),
    )
