"""Source adapters: raw dataset metadata -> the harmonized table (one row per image).

An adapter is a function ``adapter(**params) -> DataFrame`` registered in :data:`SOURCES`.
It returns schema columns it knows (at least ``image_id``, ``channels``, ``channel_paths``)
plus any extra columns; it may set ``frame.attrs["source_file"]`` to the file it read so
errors name it. :func:`read` does the rest the same way for every adapter: label
harmonization, ``source``/``key``/``parent_id``, typing and validation, and the handling of
duplicate ids and empty required metadata (ledger or error). ``read`` opens no image and
does not check that files exist (that is metadata QC's and image QC's job).

Adapters: ``bbbc021``, ``rxrx1``, ``jump``, ``cytoimagenet``, ``csv``, ``folder``; each module
documents its parameters. Adding one is one new module imported below.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .. import schema
from ..errors import SchemaError, preview
from ..ledger import Ledger
from ..vocab import TEXT_COLUMNS, harmonize_labels
from ._registry import SOURCES, Adapter  # noqa: F401  (Adapter: the adapters' type)


def available() -> list[str]:
    """Names of the registered source adapters."""
    return SOURCES.names()


def _blank(series: pd.Series) -> np.ndarray:
    s = series.astype("string")
    return (s.isna() | (s.str.strip() == "")).to_numpy(dtype=bool)


def _bad_paths(paths: pd.Series, channels: pd.Series) -> np.ndarray:
    def bad(ps, cs) -> bool:
        if not isinstance(ps, (list, tuple, np.ndarray)) or len(ps) == 0:
            return True
        if not isinstance(cs, (list, tuple, np.ndarray)) or len(cs) != len(ps):
            return True
        return any(p is None or p is pd.NA or (isinstance(p, float) and np.isnan(p))
                   or not str(p).strip() for p in ps)

    return np.fromiter((bad(p, c) for p, c in zip(paths, channels)), dtype=bool, count=len(paths))


def _drop_or_raise(table: pd.DataFrame, mask: np.ndarray, *, ledger: Ledger | None, where: str,
                   reason: str, detail: str, fix: str) -> pd.DataFrame:
    if not mask.any():
        return table
    if ledger is None:
        bad = table[mask]
        ids = bad["image_id"].astype("string").tolist()
        raise SchemaError(
            f"{where}: {reason} in rows {preview(bad.index)} (image ids {preview(ids)}): "
            f"{detail}. {fix}, or pass a Ledger to record and skip them."
        )
    ledger.drop(table[mask], stage="read", reason=reason, detail=detail)
    return table[~mask]


def _keys(sources: pd.Series, ids: pd.Series) -> pd.Series:
    """Vectorized :func:`cytodata.schema.make_key` (same result, one regex pass per column)."""
    bad = schema._KEY_BAD.pattern
    return (sources.str.replace(bad, "-", regex=True) + "__"
            + ids.str.replace(bad, "-", regex=True).str.strip("-"))


#: parameters of :func:`read` itself (not the adapter's): a recipe sets them elsewhere
_READ_PARAMS = ("ledger", "synonyms", "source")


def check_params(name: str, params: Mapping[str, object], *, where: str = "source") -> None:
    """Raise :class:`RecipeError` when ``params`` do not fit adapter ``name``'s signature.

    Unknown names (a typo such as ``id_colum``) list the valid ones; required parameters
    that are missing are named. Unknown adapters are left to :func:`read` (its registry error).
    """
    import difflib
    import inspect

    from ..errors import RecipeError

    if name not in SOURCES:
        return
    sig = inspect.signature(SOURCES.get(name))
    accepted = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    valid = [p.name for p in accepted]
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = [k for k in params if k not in valid]
        if unknown:
            hints = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
            hint = "; ".join(f"{k!r} -> did you mean {h[0]!r}?" for k, h in hints.items() if h)
            raise RecipeError(f"{where}: adapter {name!r} has no parameter(s) {unknown}"
                              f"{' (' + hint + ')' if hint else ''}; valid parameters: {valid}")
    missing = [p.name for p in accepted if p.default is p.empty and p.name not in params]
    if missing:
        raise RecipeError(f"{where}: adapter {name!r} needs parameter(s) {missing}; "
                          f"valid parameters: {valid}")


def read(name: str, *, ledger: Ledger | None = None, synonyms=None, source: str | None = None,
         **params) -> pd.DataFrame:
    """Read source ``name`` with the adapter's ``params``; return the harmonized, validated table.

    ``source`` names the source in keys (default: ``name``). ``synonyms``: a table from
    :func:`cytodata.vocab.load_synonyms` or a mapping extending the shipped one. Rows with an
    empty image id or channel path ("bad metadata") and repeated image ids ("duplicate id",
    first kept) are recorded in ``ledger`` (stage "read") when one is given, else raise
    :class:`SchemaError` naming the file and rows. Row labels are the adapter's row index
    (0-based data rows of the file for table-driven adapters).
    """
    adapter = SOURCES.get(name)
    raw = adapter(**params)
    where = str(raw.attrs.get("source_file", f"source {name!r}"))
    table = raw.copy()
    table.attrs = {}
    for col in ("image_id", "channels", "channel_paths"):
        if col not in table.columns:
            raise SchemaError(f"adapter {name!r} returned no {col!r} column (a bug: please report)")
    table["source"] = source or name
    bad = _blank(table["image_id"]) | _bad_paths(table["channel_paths"], table["channels"])
    table = _drop_or_raise(
        table, bad, ledger=ledger, where=where, reason="bad metadata",
        detail="empty image id or channel path, or channel/path count mismatch",
        fix="Fill the image id and one file per channel")
    dup = table["image_id"].astype("string").duplicated(keep="first").to_numpy(dtype=bool)
    table = _drop_or_raise(
        table, dup, ledger=ledger, where=where, reason="duplicate id",
        detail="image id already used by an earlier row",
        fix="Make image ids unique (e.g. add the site or plate)")
    table = harmonize_labels(table, columns=TEXT_COLUMNS, synonyms=synonyms)
    ids = table["image_id"].astype("string")
    table["key"] = _keys(table["source"].astype("string"), ids)
    if "parent_id" in table.columns:
        table["parent_id"] = table["parent_id"].where(~_blank(table["parent_id"]), ids)
    else:
        table["parent_id"] = ids
    return schema.validate(schema.conform(table), where=where)


# adapters register on import
from . import bbbc021, csv, cytoimagenet, folder, jump, rxrx1  # noqa: E402,F401

__all__ = ["SOURCES", "available", "check_params", "read"]
