"""Shared plumbing for source adapters: reading metadata tables and building paths.

Tables are read with every column as text (``dtype=str``): plate names such as ``1053601756``
and wells such as ``A01`` must not turn into numbers; adapters convert numeric columns
explicitly. Encoding policy: UTF-8 first; a file that is not valid UTF-8 is read as latin-1
(every byte sequence decodes) with a :class:`SourceEncodingWarning` naming the file, because
older per-source tables (e.g. exported from Excel on Windows) are often cp1252/latin-1.
"""

from __future__ import annotations

import os
import posixpath
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ..errors import SourceError, preview

PathLike = str | os.PathLike


class SourceEncodingWarning(UserWarning):
    """A metadata file was not UTF-8 and was decoded as latin-1."""


def _read_csv(path: Path, encoding: str, **kwargs) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, encoding=encoding, keep_default_na=True, **kwargs)


def read_table(path: PathLike, *, required: Iterable[str] = (), what: str = "table",
               allow_empty: bool = False, **kwargs) -> pd.DataFrame:
    """Read a CSV (``.gz`` ok) as text columns; check it exists, has rows and ``required`` columns.

    Raises :class:`SourceError` naming the file, the missing columns and the available ones.
    """
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"{what} {p} not found; check the path in the recipe")
    try:
        try:
            table = _read_csv(p, "utf-8", **kwargs)
        except UnicodeDecodeError as exc:
            warnings.warn(
                f"{p} is not valid UTF-8 ({exc.reason} at byte {exc.start}); read as latin-1. "
                "Re-save it as UTF-8 to silence this warning.",
                SourceEncodingWarning, stacklevel=3,
            )
            table = _read_csv(p, "latin-1", **kwargs)
    except pd.errors.EmptyDataError:
        raise SourceError(f"{what} {p} is empty (no header line); expected a CSV table") from None
    except pd.errors.ParserError as exc:
        raise SourceError(f"{what} {p} is not a well-formed CSV: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise SourceError(
            f"{what} {p}: missing column(s) {missing}; available: {list(table.columns)}. "
            "Rename the columns or pass the right file."
        )
    if len(table) == 0 and not allow_empty:
        raise SourceError(f"{what} {p} has a header but no data rows")
    return table


def resolve(base: PathLike | None, path: PathLike) -> str:
    """``path`` if absolute or a URL, else joined onto ``base``; absolute, without touching disk."""
    text = str(path)
    if "://" in text or os.path.isabs(text):
        return text
    if base is None:
        return os.path.abspath(text)
    base_text = str(base)
    if "://" in base_text:
        return base_text.rstrip("/") + "/" + text.lstrip("/")
    return os.path.abspath(os.path.join(base_text, text))


def join_paths(base: PathLike | None, parts: Sequence[pd.Series]) -> pd.Series:
    """Vectorized ``resolve(base, part0/part1/...)`` over rows; NA in any part gives NA."""
    joined = parts[0].astype("string")
    for part in parts[1:]:
        joined = joined.str.rstrip("/") + "/" + part.astype("string").str.lstrip("/")
    uniq = {v: resolve(base, v if "://" in v else posixpath.normpath(v))
            for v in joined.dropna().unique()}
    return joined.map(uniq, na_action="ignore").astype("string")


def channel_lists(names: Sequence[str], paths: Sequence[pd.Series]) -> tuple[list, list]:
    """Per-row (channels, channel_paths) lists from one path column per channel."""
    names = list(names)
    rows = zip(*[p.astype(object).where(p.notna(), None).tolist() for p in paths]) if paths else []
    path_lists = [list(r) for r in rows]
    return [list(names) for _ in path_lists], path_lists


def check_unique_channels(names: Sequence[str], where: str) -> None:
    """Raise when a channel name repeats."""
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise SourceError(f"{where}: channel name(s) {preview(dup)} appear more than once")
