"""The ledger: every input row that does not reach the output, with the stage and reason.

The invariant ``inputs == kept + dropped`` is checked at the end of every stage that drops
rows, so nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ._files import save_parquet
from .errors import LedgerError

LEDGER_COLUMNS: tuple[str, ...] = ("source", "input_id", "stage", "reason", "detail")


class Ledger:
    """Accumulates dropped rows; ``to_frame()`` gives one row per dropped input row."""

    def __init__(self) -> None:
        self._parts: list[pd.DataFrame] = []

    def drop(
        self,
        rows: pd.DataFrame,
        *,
        stage: str,
        reason: str,
        detail: str | Iterable[str] | pd.Series | None = None,
        id_column: str = "image_id",
    ) -> None:
        """Record ``rows`` (harmonized rows or any frame with ``source``/``id_column``) as dropped."""
        if len(rows) == 0:
            return
        ids = rows[id_column] if id_column in rows.columns else pd.Series(rows.index, index=rows.index)
        src = rows["source"] if "source" in rows.columns else pd.Series(pd.NA, index=rows.index)
        if detail is None or isinstance(detail, str):
            det = pd.Series(detail, index=rows.index, dtype="object")
        else:
            det = pd.Series(list(detail), index=rows.index, dtype="object")
        self._parts.append(pd.DataFrame({
            "source": src.astype("string").to_numpy(),
            "input_id": ids.astype("string").to_numpy(),
            "stage": stage,
            "reason": reason,
            "detail": det.astype("string").to_numpy(),
        }))

    def extend(self, other: "Ledger | pd.DataFrame") -> None:
        """Append another ledger (or a ledger-shaped frame)."""
        frame = other.to_frame() if isinstance(other, Ledger) else other
        if len(frame):
            self._parts.append(frame[list(LEDGER_COLUMNS)])

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def to_frame(self) -> pd.DataFrame:
        """All dropped rows as a DataFrame with ``LEDGER_COLUMNS`` (string dtypes)."""
        if not self._parts:
            return pd.DataFrame({c: pd.Series(dtype="string") for c in LEDGER_COLUMNS})
        out = pd.concat(self._parts, ignore_index=True)
        return out.astype({c: "string" for c in LEDGER_COLUMNS})

    def counts(self) -> pd.DataFrame:
        """Dropped rows counted by stage and reason."""
        return self.to_frame().groupby(["stage", "reason"], dropna=False).size().rename("rows").reset_index()

    def check(self, n_inputs: int, n_kept: int, *, where: str = "") -> None:
        """Raise :class:`LedgerError` unless ``n_inputs == n_kept + len(self)``."""
        n_dropped = len(self)
        if n_inputs != n_kept + n_dropped:
            raise LedgerError(
                f"{where or 'pipeline'}: {n_inputs} input rows != {n_kept} kept + {n_dropped} "
                f"dropped; {n_inputs - n_kept - n_dropped} rows unaccounted for (a bug: please report)"
            )

    def write(self, path: str | Path) -> None:
        """Write ``ledger.parquet`` atomically."""
        save_parquet(path, self.to_frame())
