"""Computation, upload, latency and energy (docs/model.md §3), and payload sizes from the model's
shape.

Pure functions, vectorised over devices; SI units (cycles, Hz, s, J, bit).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedenv.config import CostConfig, DeviceConfig, ModelConfig

__all__ = [
    "lora_payload_bits",
    "sparse_payload_bits",
    "split_uplink_bits",
    "split_downlink_bits",
    "local_cycles",
    "computation_latency",
    "computation_energy",
    "upload",
    "kept_components",
]

F = NDArray[np.float64]


def lora_payload_bits(
    rank: ArrayLike,
    model: ModelConfig,
    params_per_rank: float | None = None,
    head_params: int | None = None,
) -> F:
    """Upload size of a rank-r LoRA module: bits x params(r) (+ the task head if ``send_head``).

    params(r) = layers x targets x r x (d_in + d_out) (docs/model.md §3.2): 9,216 r for MiniLM-L6
    with
    LoRA on query and value. ``params_per_rank`` / ``head_params`` override the shape-derived
    counts (the lora backend passes the loaded model's real counts). Rank 0 sends nothing.
    """
    per_rank = model.lora_params_per_rank if params_per_rank is None else params_per_rank
    head = model.head_params if head_params is None else head_params
    r = np.asarray(rank, dtype=np.float64)
    bits = r * per_rank * model.bits_per_param
    if model.send_head:
        bits = bits + np.where(r > 0, head * model.bits_per_param, 0.0)
    return bits


def kept_components(rank: ArrayLike, ratio: ArrayLike) -> NDArray[np.float64]:
    """ceil(rho r) rank components kept by SOFT sparsification (at least one when r > 0)."""
    r = np.asarray(rank, dtype=np.float64)
    # The small epsilon keeps ceil(0.5 * 4) == 2 robust to rounding in rho.
    k = np.ceil(np.asarray(ratio) * r - 1e-9)
    return np.where(r > 0, np.clip(k, 1.0, r), 0.0)


def sparse_payload_bits(
    rank: ArrayLike,
    ratio: ArrayLike,
    model: ModelConfig,
    params_per_rank: float | None = None,
    head_params: int | None = None,
) -> F:
    """SOFT payload (docs/model.md §3.3): the ceil(rho r) kept components plus their indices.

    Every LoRA target of every layer sends its kept components and one index of
    ceil(log2 r) bits (at least 1) per component.
    """
    r = np.asarray(rank, dtype=np.float64)
    k = kept_components(r, ratio)
    per_rank = model.lora_params_per_rank if params_per_rank is None else params_per_rank
    index_bits = np.maximum(np.ceil(np.log2(np.maximum(r, 2.0))), 1.0)
    targets = model.num_layers * len(model.target_modules)
    bits = k * (per_rank * model.bits_per_param + targets * index_bits)
    if model.send_head:
        head = model.head_params if head_params is None else head_params
        bits = bits + np.where(r > 0, head * model.bits_per_param, 0.0)
    return bits


def split_uplink_bits(
    model: ModelConfig, devices: DeviceConfig, costs: CostConfig, head_params: int | None = None
) -> float:
    """Split paradigm uplink per round (docs/model.md §3.6): tau x n_b x L_seq x d activations, plus
    the head.

    The device-side task head is federated (FedAvg), so it is uploaded once per round.
    """
    act = (
        devices.local_steps
        * devices.batch_size
        * model.seq_len
        * model.hidden_size
        * costs.activation_bits
    )
    head = model.head_params if head_params is None else head_params
    return float(act + head * model.bits_per_param)


def split_downlink_bits(model: ModelConfig, devices: DeviceConfig, costs: CostConfig) -> float:
    """Split paradigm downlink per round: the activations' gradients, same size as the
    activations."""
    return float(
        devices.local_steps
        * devices.batch_size
        * model.seq_len
        * model.hidden_size
        * costs.activation_bits
    )


def local_cycles(
    rank: ArrayLike,
    devices: DeviceConfig,
    cycles_per_sample: float,
    cycles_per_sample_per_rank: float,
) -> F:
    """Local work C = tau n_b (c_0 + c_1 r) CPU cycles (docs/model.md §3.1); rank 0 (not scheduled)
    costs 0."""
    r = np.asarray(rank, dtype=np.float64)
    c = (
        devices.local_steps
        * devices.batch_size
        * (cycles_per_sample + cycles_per_sample_per_rank * r)
    )
    return np.where(r > 0, c, 0.0)


def computation_latency(cycles: ArrayLike, freq_hz: ArrayLike) -> F:
    """t_cmp = C / f (docs/model.md §3.1)."""
    return np.asarray(cycles) / np.asarray(freq_hz)


def computation_energy(cycles: ArrayLike, freq_hz: ArrayLike, devices: DeviceConfig) -> F:
    """E_cmp = kappa C f^2 (docs/model.md §3.1)."""
    f = np.asarray(freq_hz)
    return devices.effective_capacitance * np.asarray(cycles) * f * f


def upload(
    bits: ArrayLike, rate_bps: ArrayLike, power_w: ArrayLike, time_left_s: ArrayLike
) -> tuple[F, F, NDArray[np.bool_]]:
    """Upload latency and energy, with the round deadline (docs/model.md §3.4).

    t_up = S / R and E_up = p min(t_up, t_left). A device transmits at most until the deadline
    closes the round (``time_left_s`` = T_max - t_cmp, clipped at 0 here): a late upload is
    dropped, and the energy spent until the deadline is still spent. Zero bits take no time.

    Returns:
        (t_up, E_up, on_time): the full upload time (inf if the rate is 0), the energy
        actually spent, and whether the upload finished by the deadline. A device with a zero rate
        cannot transmit: it spends no upload energy and is not on time (unless it sends nothing).
    """
    s = np.asarray(bits, dtype=np.float64)
    rate = np.asarray(rate_bps, dtype=np.float64)
    left = np.maximum(time_left_s, 0.0)
    # S / R: inf when there are bits but no rate, 0 without bits (0 / 0 included)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_up = np.where(s > 0.0, s / rate, 0.0)
    # With no rate (no band) nothing can be sent, so nothing is spent on the uplink.
    energy = np.where(rate > 0.0, np.multiply(power_w, np.minimum(t_up, left)), 0.0)
    return t_up, energy, t_up <= left
