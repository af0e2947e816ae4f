"""Warnings and input checks shared by the evaluation modules (errors name columns and rows)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..errors import preview


class EvaluationWarning(UserWarning):
    """A result is computed but something about the input changes what it means."""


def warn(message: str) -> None:
    """Emit an :class:`EvaluationWarning` pointing at the caller's caller."""
    warnings.warn(message, EvaluationWarning, stacklevel=3)


def constant_columns(x: np.ndarray, cols: Sequence[str], rtol: float = 1e-12) -> list[str]:
    """Columns of the (n, d) matrix ``x`` whose spread is 0 (up to ``rtol`` of their scale)."""
    if len(x) == 0:
        return []
    spread = x.max(axis=0) - x.min(axis=0)
    scale = np.maximum(np.abs(x).max(axis=0), 1e-300)
    return [c for c, s, m in zip(cols, spread, scale, strict=False) if s <= rtol * m]


def name_columns(cols: Sequence[str], limit: int = 8) -> str:
    """Render column names as ``'a', 'b' (and 3 more)``."""
    return preview(cols, limit)
