"""Calibration of the surrogate against the real LoRA backend, and its fidelity (docs/model.md
§5.2).

    python -m fedenv.calibrate collect   run policies on the lora backend, record per-round traces
    python -m fedenv.calibrate pack      copy finished traces, gzip-compressed, into
                                         configs/calibration/traces/
    python -m fedenv.calibrate fit       fit the surrogate's constants, write a calibration YAML
    python -m fedenv.calibrate report    measure the fitted surrogate on held-out seeds
                                         (docs/fidelity.md)
    python -m fedenv.calibrate inventory list the complete episodes of trace files
                                         (docs/fidelity.md)

See docs/fidelity.md for the shipped calibrations (configs/calibration/) and their measured
fidelity.
"""

from __future__ import annotations

from fedenv.calibrate.fit import FitResult, fit_surrogate
from fedenv.calibrate.report import FidelityReport, fidelity_report, kendall_tau
from fedenv.calibrate.traces import EpisodeTrace, TraceWriter, load_traces, pack_trace

__all__ = [
    "EpisodeTrace",
    "TraceWriter",
    "load_traces",
    "pack_trace",
    "FitResult",
    "fit_surrogate",
    "FidelityReport",
    "fidelity_report",
    "kendall_tau",
]
