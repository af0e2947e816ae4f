"""The harmonized manifest schema: one row per image (or crop), typed, validated on load.

Columns follow CytoImageNet's release metadata, plus screen columns (source, batch, plate,
well, site, concentration, moa, control_type), per-channel names/paths and the split.
Label-bearing text columns hold lower-case tokens; several tokens are joined by ``|``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .errors import SchemaError, preview

#: text columns (pandas ``string`` dtype, NA for missing)
STRING_COLUMNS: tuple[str, ...] = (
    "key", "source", "image_id", "parent_id",
    "label", "category", "database", "name", "dir_name", "path", "filename",
    "organism", "cell_type", "cell_visible", "phenotype", "compound", "sirna", "gene",
    "microscopy", "batch", "plate", "well", "moa", "control_type", "split",
)
INT_COLUMNS: tuple[str, ...] = ("idx", "site", "x_min", "x_max", "y_min", "y_max")
FLOAT_COLUMNS: tuple[str, ...] = ("concentration", "scaling")
BOOL_COLUMNS: tuple[str, ...] = ("crop",)
#: list columns: channel names and their absolute file paths, same order
LIST_COLUMNS: tuple[str, ...] = ("channels", "channel_paths")

#: CytoImageNet's label-bearing columns (weak-label candidates), in its order
LABEL_COLUMNS: tuple[str, ...] = (
    "organism", "cell_type", "cell_visible", "phenotype", "compound", "gene", "sirna",
)
#: every harmonized column, in output order
COLUMNS: tuple[str, ...] = (
    "key", "source", "image_id", "parent_id",
    "label", "category", "database", "name", "dir_name", "path", "filename", "idx",
    "organism", "cell_type", "cell_visible", "phenotype", "compound", "sirna", "gene",
    "microscopy", "crop", "scaling", "x_min", "x_max", "y_min", "y_max",
    "batch", "plate", "well", "site", "concentration", "moa", "control_type",
    "channels", "channel_paths", "split",
)
REQUIRED: tuple[str, ...] = ("key", "source", "image_id", "channels", "channel_paths")
CONTROL_TYPES: frozenset[str] = frozenset({"trt", "negcon", "poscon", "empty"})
SPLITS: frozenset[str] = frozenset({"train", "val", "test"})

_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]+")


def make_key(source: str, image_id: str) -> str:
    """A WebDataset-safe sample key: ``source__image_id`` with no dots, slashes or spaces.

    WebDataset splits a member name at the first dot of its base name, so keys must not
    contain ``.`` or ``/``; uniqueness of the result is checked by :func:`validate`.
    """
    return f"{_KEY_BAD.sub('-', str(source))}__{_KEY_BAD.sub('-', str(image_id)).strip('-')}"


def empty_frame(n: int = 0) -> pd.DataFrame:
    """An all-NA harmonized frame with ``n`` rows and the right dtypes."""
    return conform(pd.DataFrame(index=pd.RangeIndex(n)))


def _as_list(value, row, column) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [v for v in value.split("|") if v]
    raise SchemaError(f"column {column!r} row {row!r}: expected a list of strings, got {value!r}")


def conform(table: pd.DataFrame, *, keep_extra: bool = True) -> pd.DataFrame:
    """Return ``table`` with every schema column present, typed, in schema order.

    Missing columns are added as NA; extra columns are kept after the schema columns
    (or dropped with ``keep_extra=False``). Raises :class:`SchemaError` naming the column
    and the first offending rows when a value cannot be converted.
    """
    out = pd.DataFrame(index=table.index)
    for col in COLUMNS:
        src = table[col] if col in table.columns else pd.Series(pd.NA, index=table.index)
        try:
            if col in STRING_COLUMNS:
                s = src.astype("object").where(src.notna(), None)
                out[col] = pd.Series(
                    [None if v is None else str(v) for v in s], index=table.index, dtype="string"
                )
            elif col in INT_COLUMNS:
                out[col] = pd.to_numeric(src, errors="raise").astype("Int64")
            elif col in FLOAT_COLUMNS:
                out[col] = pd.to_numeric(src, errors="raise").astype("float64")
            elif col in BOOL_COLUMNS:
                out[col] = src.astype("boolean")
            elif col in LIST_COLUMNS:
                out[col] = pd.Series(
                    [_as_list(v, i, col) for i, v in zip(table.index, src)],
                    index=table.index, dtype="object",
                )
        except (ValueError, TypeError) as exc:
            bad = _bad_rows(src, col)
            raise SchemaError(
                f"column {col!r} cannot be converted ({exc}); offending rows: {preview(bad)}. "
                "Fix the values in the source table or map another column onto it in the recipe."
            ) from None
    if keep_extra:
        for col in table.columns:
            if col not in out.columns:
                out[col] = table[col]
    return out


def _bad_rows(src: pd.Series, col: str) -> list:
    if col in INT_COLUMNS or col in FLOAT_COLUMNS:
        num = pd.to_numeric(src, errors="coerce")
        return [f"row {i}: {v!r}" for i, v in src[num.isna() & src.notna()].items()]
    return []


def validate(table: pd.DataFrame, *, where: str = "manifest") -> pd.DataFrame:
    """Check a harmonized table; raise :class:`SchemaError` naming column and rows.

    Checks: required columns present and non-empty, keys unique, (source, image_id) unique,
    (source, plate, well, site, crop window) unique where all present, one path per
    channel, control_type and split vocabularies.
    """
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise SchemaError(
            f"{where}: missing required column(s) {missing}; present: {list(table.columns)}. "
            "Build tables through cytodata.sources.read or cytodata.schema.conform."
        )
    for col in ("key", "source", "image_id"):
        null = table.index[table[col].isna() | (table[col].astype("string") == "")]
        if len(null):
            raise SchemaError(f"{where}: column {col!r} is empty in rows {preview(null)}")
    dup = table["key"].duplicated(keep=False)
    if dup.any():
        raise SchemaError(
            f"{where}: duplicate keys {preview(table.loc[dup, 'key'].unique())} in rows "
            f"{preview(table.index[dup])}; image ids must be unique within a source"
        )
    dup = table.duplicated(["source", "image_id"], keep=False)
    if dup.any():
        raise SchemaError(
            f"{where}: duplicate (source, image_id) in rows {preview(table.index[dup])}"
        )
    pk = [c for c in ("source", "plate", "well", "site", "x_min", "y_min", "x_max", "y_max")
          if c in table.columns]
    if {"plate", "well", "site"} <= set(pk):
        full = table[["plate", "well", "site"]].notna().all(axis=1)
        dup = table[full].duplicated(pk, keep=False)
        if dup.any():
            rows = table[full].index[dup]
            raise SchemaError(
                f"{where}: several images share (source, plate, well, site) in rows "
                f"{preview(rows)}; give each field of view its own site number"
            )
    lens = [(i, len(c), len(p)) for i, c, p in
            zip(table.index, table["channels"], table["channel_paths"]) if len(c) != len(p)]
    if lens:
        raise SchemaError(
            f"{where}: 'channels' and 'channel_paths' differ in length in rows "
            f"{preview(lens)} (row, n_channels, n_paths); list one file per channel"
        )
    for col, vocab in (("control_type", CONTROL_TYPES), ("split", SPLITS)):
        if col in table.columns:
            vals = table[col].dropna()
            bad = vals[~vals.isin(vocab)]
            if len(bad):
                raise SchemaError(
                    f"{where}: column {col!r} has values {preview(bad.unique())} in rows "
                    f"{preview(bad.index)}; valid: {sorted(vocab)}"
                )
    return table


def to_jump_names(table: pd.DataFrame) -> pd.DataFrame:
    """Rename harmonized columns to JUMP-style ``Metadata_*`` names (``plate`` -> ``Metadata_Plate``)."""
    def jump(col: str) -> str:
        return "Metadata_" + "".join(part.capitalize() for part in col.split("_"))

    # A JUMP source already carries Metadata_Source/Metadata_Batch: keep those (JUMP's own
    # values); a harmonized column whose JUMP name is taken is dropped when it holds the same
    # values, else kept as Metadata_<Name>_harmonized, so no column name is ever duplicated.
    out = table.copy()
    renames: dict[str, str] = {}
    for col in [c for c in table.columns if c in COLUMNS]:
        target = jump(col)
        if target in table.columns:
            if table[col].astype("string").equals(table[target].astype("string")):
                out = out.drop(columns=col)
                continue
            target += "_harmonized"
        renames[col] = target
    return out.rename(columns=renames)


def read_manifest(path) -> pd.DataFrame:
    """Read ``manifest.parquet`` (a file or the folder holding it) and validate it."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        p = p / "manifest.parquet"
    if not p.exists():
        raise SchemaError(f"no manifest at {p}; build one with `cytodata manifest build RECIPE -o DIR`")
    return validate(conform(pd.read_parquet(p)), where=str(p))


def write_manifest(table: pd.DataFrame, path) -> None:
    """Write a validated manifest to Parquet atomically (temp file, then rename)."""
    from ._files import save_parquet

    save_parquet(path, conform(table).reset_index(drop=True))
