"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDENV_DATA_DIR", ROOT.parent / "shared" / "data" / "glue"))


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip(f"GLUE data not found at {SHARED_DATA} (set FEDENV_DATA_DIR)")
    return SHARED_DATA
