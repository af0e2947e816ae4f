"""Shared fixtures: the real third-party tables and images in ../shared/data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real metadata and pixels (see its README); the tests need it."""
    if not SHARED_DATA.exists():
        pytest.fail(f"real test data not found at {SHARED_DATA}; clone next to shared/")
    return SHARED_DATA


@pytest.fixture(scope="session")
def benchmark_module():
    """``load(name)`` -> the module ``benchmarks/<name>.py`` (tests use the benchmarks' own helpers)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module      # dataclasses look their module up while being defined
        spec.loader.exec_module(module)
        return module
    return load
