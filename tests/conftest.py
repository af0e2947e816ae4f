"""Shared fixtures: the real third-party tables and images in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real metadata and pixels (see its README); the tests need it."""
    if not SHARED_DATA.exists():
        pytest.fail(f"real test data not found at {SHARED_DATA}; clone next to shared/")
    return SHARED_DATA
