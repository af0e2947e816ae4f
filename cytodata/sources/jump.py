"""JUMP Cell Painting / Cell Painting Gallery: CellProfiler LoadData CSVs + the JUMP tables.

Params:
    load_data: a LoadData CSV (``.gz`` ok) or a list of them; one row per (Plate, Well, Site)
        with ``FileName_Orig<Channel>``/``PathName_Orig<Channel>`` pairs and ``Metadata_Plate``,
        ``Metadata_Well``, ``Metadata_Site`` (``Metadata_Source``/``Metadata_Batch`` if present).
        Channels are discovered from the ``FileName_Orig*`` columns; every file of one source
        must have the same channel set (the order of the first file is used).
        ``FileName_Illum*``/``PathName_Illum*`` columns are kept as extra columns.
    plates: ``plate.csv[.gz]`` (Metadata_Source, Metadata_Batch, Metadata_Plate,
        Metadata_PlateType): fills Source/Batch when the LoadData lacks them.
    wells: ``well.csv[.gz]`` (Metadata_Source, Metadata_Plate, Metadata_Well, Metadata_JCP2022).
    compounds: ``compound_source.csv[.gz]``: adds ``Metadata_Compound_Source`` (``|``-joined).
    orf: ``orf.csv[.gz]``: wells whose JCP2022 id is an ORF get ``gene`` = Metadata_Symbol
        (and its Metadata_pert_type as control type) instead of ``compound``.
    controls: ``perturbation_control.csv``: JCP2022 id -> negcon / poscon / empty.
    image_root: prefix for relative PathName values (a folder or an ``s3://bucket`` URL; URLs
        stay strings). Default: the LoadData file's folder. Absolute/URL PathNames are kept.
    cell_type: cell line of the screen (default ``u2os``: JUMP cpg0016 and cpg0001).
    keep_metadata: keep every other ``Metadata_*`` LoadData column (default False: acquisition
        details such as per-channel exposure are dropped to keep manifests small).

Output: ``image_id`` ``<plate>_<well>_s<site>``, ``compound`` the JCP2022 id, ``control_type``
(trt unless listed as a control; NA without a well table), ``batch`` Metadata_Batch, extra
columns ``Metadata_Source``, ``Metadata_Batch``, ``Metadata_PlateType``, ``Metadata_JCP2022``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import SourceError, preview
from ._io import PathLike, channel_lists, join_paths, read_table
from ._registry import SOURCES

_ORIG = re.compile(r"^FileName_Orig(?P<channel>.+)$")
_KEYS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
_KEEP = ("Metadata_Source", "Metadata_Batch")
PERT_TYPES: dict[str, str] = {"negcon": "negcon", "poscon": "poscon", "empty": "empty",
                              "trt": "trt"}


def _channels(table: pd.DataFrame, where: str) -> list[str]:
    names = [m.group("channel") for c in table.columns if (m := _ORIG.match(c))]
    if not names:
        raise SourceError(f"{where}: no FileName_Orig<Channel> columns; available: "
                          f"{list(table.columns)}. Is this a CellProfiler LoadData CSV?")
    missing = [f"PathName_Orig{n}" for n in names if f"PathName_Orig{n}" not in table.columns]
    if missing:
        raise SourceError(f"{where}: missing column(s) {missing} (FileName_Orig* need them); "
                          f"available: {list(table.columns)}")
    return names


def _one_file(path: Path, image_root, first: list[str] | None, first_file: str | None,
              keep_metadata: bool) -> tuple[pd.DataFrame, list[str]]:
    where = str(path)
    t = read_table(path, required=_KEYS, what="LoadData CSV")
    names = _channels(t, where)
    if first is not None:
        if set(names) != set(first):
            raise SourceError(
                f"{where}: channels {names} differ from {first} in {first_file}; one source must "
                "have one channel set: read the files as separate sources")
        names = list(first)
    base = image_root if image_root is not None else path.parent.absolute()
    paths = [join_paths(base, [t[f"PathName_Orig{n}"], t[f"FileName_Orig{n}"]]) for n in names]
    plate, well = t["Metadata_Plate"].str.strip(), t["Metadata_Well"].str.strip()
    site = pd.to_numeric(t["Metadata_Site"], errors="coerce").astype("Int64")
    out = pd.DataFrame({
        "image_id": plate + "_" + well + "_s" + site.astype("string"),
        "plate": plate, "well": well, "site": site,
    })
    keep = [c for c in t.columns if c.startswith(("FileName_Illum", "PathName_Illum"))
            or c in _KEEP
            or (keep_metadata and c.startswith("Metadata_") and c not in _KEYS)]
    for c in keep:
        out[c] = t[c]
    out["channels"], out["channel_paths"] = channel_lists(names, paths)
    out["load_data"] = where
    return out, names


def _unique_lookup(table: pd.DataFrame, keys: list[str], where: str) -> pd.DataFrame:
    dup = table.duplicated(keys, keep=False)
    if dup.any():
        raise SourceError(f"{where}: {keys} repeated in rows {preview(table.index[dup])}")
    return table


def _warn_unmatched(out: pd.DataFrame, miss, path: PathLike, what: str, effect: str) -> None:
    """Warn (naming the table, the count and examples) when LoadData rows match no table row."""
    import warnings

    n = int(miss.sum())
    if n:
        cols = ["plate"] + (["well"] if "well" in what else [])
        examples = out.loc[miss, cols].drop_duplicates().head(3).astype(str).agg("/".join, axis=1)
        warnings.warn(
            f"jump: {n} of {len(out)} LoadData rows match no {what} in {path} (e.g. "
            f"{', '.join(examples)}); {effect}. Check that the table covers these plates "
            "(a subset table?) or filter the LoadData CSV", UserWarning, stacklevel=4)


def _join_plates(out: pd.DataFrame, path: PathLike) -> pd.DataFrame:
    plates = read_table(path, required=("Metadata_Source", "Metadata_Batch", "Metadata_Plate"),
                        what="JUMP plate table")
    cols = ["Metadata_Plate"] + [c for c in ("Metadata_Source", "Metadata_Batch",
                                             "Metadata_PlateType") if c in plates.columns]
    plates = _unique_lookup(plates[cols], ["Metadata_Plate"], str(path))
    merged = out.merge(plates, how="left", left_on="plate", right_on="Metadata_Plate",
                       suffixes=("", "_plate"))
    _warn_unmatched(out, merged["Metadata_Plate"].isna().to_numpy(), path, "plate",
                    "their batch and plate type stay NA")
    for c in cols[1:]:
        if c + "_plate" in merged.columns:  # LoadData values win; the plate table fills gaps
            merged[c] = merged[c].fillna(merged.pop(c + "_plate"))
    return merged.drop(columns="Metadata_Plate").set_axis(out.index)


def _join_wells(out: pd.DataFrame, path: PathLike) -> pd.DataFrame:
    wells = read_table(path, required=("Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"),
                       what="JUMP well table")
    wells = wells[["Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"]]
    wells = _unique_lookup(wells, ["Metadata_Plate", "Metadata_Well"], str(path))
    merged = out.merge(wells, how="left", left_on=["plate", "well"],
                       right_on=["Metadata_Plate", "Metadata_Well"])
    _warn_unmatched(out, merged["Metadata_Plate"].isna().to_numpy(), path, "(plate, well)",
                    "their compound/gene and control type stay NA")
    return merged.drop(columns=["Metadata_Plate", "Metadata_Well"]).set_axis(out.index)


def _lookup(path: PathLike, value: str, what: str) -> pd.Series:
    t = read_table(path, required=("Metadata_JCP2022", value), what=what)
    t = _unique_lookup(t, ["Metadata_JCP2022"], str(path))
    return pd.Series(t[value].to_numpy(), index=t["Metadata_JCP2022"].to_numpy())


@SOURCES.register("jump")
def read_jump(load_data: PathLike | Sequence[PathLike], plates: PathLike | None = None,
              wells: PathLike | None = None, compounds: PathLike | None = None,
              orf: PathLike | None = None, controls: PathLike | None = None,
              image_root: PathLike | None = None, cell_type: str = "u2os",
              keep_metadata: bool = False) -> pd.DataFrame:
    """LoadData CSV(s) joined with the JUMP tables -> one row per site (see module docstring)."""
    files = [load_data] if isinstance(load_data, (str, Path)) else list(load_data)
    if not files:
        raise SourceError("jump: 'load_data' is empty; give one or more LoadData CSV paths")
    frames, first = [], None
    for f in files:
        frame, names = _one_file(Path(f), image_root, first, str(files[0]), keep_metadata)
        first = first or names
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    for c in _KEEP:
        if c not in out.columns:
            out[c] = pd.Series(pd.NA, index=out.index, dtype="string")
    if plates is not None:
        out = _join_plates(out, plates)
    out["batch"] = out["Metadata_Batch"]
    if wells is not None:
        out = _join_wells(out, wells)
        jcp = out["Metadata_JCP2022"].astype("string").str.strip()
        control = pd.Series(pd.NA, index=out.index, dtype="string")
        control[jcp.notna()] = "trt"
        gene = pd.Series(pd.NA, index=out.index, dtype="string")
        is_orf = pd.Series(False, index=out.index)
        if orf is not None:
            symbols = _lookup(orf, "Metadata_Symbol", "JUMP ORF table")
            gene = jcp.map(symbols).astype("string")
            is_orf = jcp.isin(symbols.index)
            orf_t = read_table(orf, required=("Metadata_JCP2022",), what="JUMP ORF table")
            if "Metadata_pert_type" in orf_t.columns:
                types = pd.Series(orf_t["Metadata_pert_type"].to_numpy(),
                                  index=orf_t["Metadata_JCP2022"].to_numpy())
                control = jcp.map(types).map(PERT_TYPES).astype("string").fillna(control)
        if controls is not None:
            types = _lookup(controls, "Metadata_pert_type", "JUMP perturbation_control table")
            control = jcp.map(types).map(PERT_TYPES).astype("string").fillna(control)
        out["compound"] = jcp.where(~is_orf, pd.NA)
        out["gene"] = gene
        out["control_type"] = control
        if compounds is not None:
            src = read_table(compounds, required=("Metadata_Compound_Source", "Metadata_JCP2022"),
                             what="JUMP compound_source table")
            by = src.groupby("Metadata_JCP2022")["Metadata_Compound_Source"].agg(
                lambda s: "|".join(sorted(set(s.dropna()))))
            out["Metadata_Compound_Source"] = jcp.map(by).astype("string")
    out["organism"] = "human"
    out["cell_type"] = cell_type
    out["microscopy"] = "fluorescence"
    out["database"] = "Cell Painting Gallery"
    out["name"] = "JUMP Cell Painting"
    out["dir_name"] = "jump"
    out.attrs["source_file"] = ", ".join(str(f) for f in files)
    return out
