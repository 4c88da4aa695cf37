"""Unit conversions (pure, vectorised). Linear SI units inside the package, dB only at the edges."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["db_to_linear", "linear_to_db", "dbm_to_w", "w_to_dbm"]


def db_to_linear(db: ArrayLike) -> NDArray[np.float64]:
    """10^(dB/10)."""
    return np.power(10.0, np.asarray(db, dtype=np.float64) / 10.0)


def linear_to_db(x: ArrayLike) -> NDArray[np.float64]:
    """10 log10(x); x must be positive."""
    return 10.0 * np.log10(np.asarray(x, dtype=np.float64))


def dbm_to_w(dbm: ArrayLike) -> NDArray[np.float64]:
    """Power in dBm to watts: 10^((dBm - 30)/10)."""
    return db_to_linear(np.asarray(dbm, dtype=np.float64) - 30.0)


def w_to_dbm(w: ArrayLike) -> NDArray[np.float64]:
    """Power in watts to dBm."""
    return linear_to_db(w) + 30.0
