"""Shared fixtures: the shared data directory next to the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data samples not found at {DATA_DIR}")
    return DATA_DIR
