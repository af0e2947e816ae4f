"""Single-cell mode: one manifest row per cell, a fixed-size window centred on its nucleus.

The Cell Painting CNN (Moshkov et al. 2024) and DeepProfiler train on single-cell crops from a
locations table (one row per cell: the image, ``Nuclei_Location_Center_X/Y``). Here cells are
cut **at sharding time**: :func:`cell_rows` turns every located cell into a crop row
(``crop=True``, window columns, ``parent_id`` = the field's ``image_id``), and the shard
writers cut each row to its window (``cytodata.shards._samples.cut_window``), so a training
sample is one small, already-cut crop. Splits copy the field's ``split`` and group by
``parent_id``, so the cells of one field never land on both sides.

Why at sharding time, not at load time from full fields (measured with
``cytodata.shards.codecs`` on a synthetic 5 x 1080 x 1080 uint16 field with 866 cells,
blosc-lz4, one shared CPU core): decoding the field takes 19.4 ms and reads 8.32 MB, decoding
one 5 x 96 x 96 crop takes 0.20 ms and reads 66.8 kB. Cutting at load time costs every training
sample a whole field (~99x the decode time and ~125x the bytes of a stored crop) unless the
loader keeps all cells of a field together, which puts one field's cells side by side in a
batch and defeats shuffling. The price of cutting at sharding time is disk: crops overlap, so
at 866 cells per field they take ~7x the field's bytes (57.9 MB vs 8.3 MB); at the ~100-300
cells of a real Cell Painting field it is ~1-2x. Re-sharding is needed to change the crop size.

Locations tables: a CSV/TSV/Parquet file, a DataFrame, or a DeepProfiler folder
(``LOCATIONS/<plate>/<well>-<site>-Nuclei.csv``). Cells join their field by ``key`` (or
``image_id``) when the table has that column, else by plate, well and site (``Metadata_Plate``
or ``plate``, ...). Centres: ``Nuclei_Location_Center_X/Y`` (DeepProfiler, CellProfiler's
Nuclei table), ``Location_Center_X/Y`` or ``x``/``y``; x is the column, y the row, in pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ImageReadError, SchemaError, preview
from ..ledger import Ledger
from ..schema import make_key

__all__ = ["cell_rows", "read_locations", "LOCATION_NAMES"]

STAGE = "cells"
#: accepted column names, in order of preference, for each location field
LOCATION_NAMES: dict[str, tuple[str, ...]] = {
    "x": ("Nuclei_Location_Center_X", "Location_Center_X", "x", "X", "center_x"),
    "y": ("Nuclei_Location_Center_Y", "Location_Center_Y", "y", "Y", "center_y"),
    "key": ("key", "Metadata_Key"),
    "image_id": ("image_id", "Metadata_ImageId", "Metadata_image_id"),
    "plate": ("Metadata_Plate", "plate", "Image_Metadata_Plate", "Metadata_plate"),
    "well": ("Metadata_Well", "well", "Image_Metadata_Well", "Metadata_well"),
    "site": ("Metadata_Site", "site", "Image_Metadata_Site", "Metadata_Field", "Metadata_site"),
}


def _pick(columns: Sequence[str], what: str) -> str | None:
    return next((c for c in LOCATION_NAMES[what] if c in columns), None)


def read_locations(locations: "str | os.PathLike | pd.DataFrame") -> pd.DataFrame:
    """Read a locations table into columns ``x``, ``y`` (float px) and the join columns.

    Join columns: ``key``, else ``image_id``, else ``plate``, ``well``, ``site`` (strings;
    ``site`` as a whole number). Also ``row``: the input row number (for the ledger).
    Raises :class:`SchemaError` naming the columns found and the names accepted.
    """
    where = "locations DataFrame"
    if isinstance(locations, pd.DataFrame):
        table = locations.copy()
    else:
        path = Path(locations)
        where = str(path)
        if path.is_dir():
            table = _read_deepprofiler_folder(path)
        elif not path.exists():
            raise SchemaError(f"locations {path}: no such file or folder; pass a CSV/Parquet table "
                              "with one row per cell, or a DeepProfiler locations folder")
        elif path.suffix == ".parquet":
            table = pd.read_parquet(path)
        else:
            sep = "\t" if path.suffix in (".tsv", ".txt") else ","
            table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=True)
    cols = list(table.columns)
    x, y = _pick(cols, "x"), _pick(cols, "y")
    if x is None or y is None:
        raise SchemaError(f"{where}: no cell centre columns; found {preview(cols, 12)}. Expected "
                          f"x in {list(LOCATION_NAMES['x'])} and y in {list(LOCATION_NAMES['y'])}")
    out = pd.DataFrame(index=table.index)
    for axis, col in (("x", x), ("y", y)):
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna() & (table[col].astype(str).str.strip() != "")
        if bad.any():
            raise SchemaError(f"{where}: column {col!r} is not numeric in rows "
                              f"{preview(table.index[bad])}: "
                              f"{preview(table.loc[bad, col].unique())}")
        out[axis] = values.astype("float64")
    join = [c for c in ("key", "image_id") if _pick(cols, c)]
    if join:
        out[join[0]] = table[_pick(cols, join[0])].astype("string").str.strip()
    else:
        names = {k: _pick(cols, k) for k in ("plate", "well", "site")}
        missing = [k for k, v in names.items() if v is None]
        if missing:
            accepted = ", ".join(f"{m} as one of {list(LOCATION_NAMES[m])}" for m in missing)
            raise SchemaError(
                f"{where}: cannot tell which field each cell belongs to; found "
                f"{preview(cols, 12)}. Give a 'key' (or 'image_id') column matching the manifest, "
                f"or plate/well/site columns (missing: {accepted})")
        out["plate"] = table[names["plate"]].astype("string").str.strip()
        out["well"] = table[names["well"]].astype("string").str.strip()
        out["site"] = _site_strings(table[names["site"]], f"{where} column {names['site']!r}")
    out["row"] = np.arange(len(table))
    return out.reset_index(drop=True)


def _site_strings(values: pd.Series, where: str) -> pd.Series:
    num = pd.to_numeric(values, errors="coerce")
    bad = num.isna() & values.notna() | (num.notna() & (num != np.round(num)))
    if bad.any():
        raise SchemaError(f"{where}: site must be a whole number; bad rows "
                          f"{preview(values.index[bad])}: {preview(values[bad].unique())}")
    return num.astype("Int64").astype("string")


def _read_deepprofiler_folder(folder: Path) -> pd.DataFrame:
    """DeepProfiler's layout: ``<plate>/<well>-<site>-Nuclei.csv`` with the centre columns."""
    parts = []
    files = sorted(folder.glob("*/*-*-Nuclei.csv"))
    if not files:
        raise SchemaError(f"locations folder {folder}: no <plate>/<well>-<site>-Nuclei.csv files "
                          "(DeepProfiler layout); pass a single table instead")
    for f in files:
        well, site = f.name[: -len("-Nuclei.csv")].rsplit("-", 1)
        t = pd.read_csv(f, dtype=str)
        t["Metadata_Plate"], t["Metadata_Well"], t["Metadata_Site"] = f.parent.name, well, site
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def _field_sizes(fields: pd.DataFrame, sizes, ledger: Ledger) -> dict[int, tuple[int, int]]:
    """``{position: (H, W)}`` per field; fields whose size cannot be read go to the ledger."""
    from ..images.io import image_shape

    out: dict[int, tuple[int, int]] = {}
    for pos, (key, image_id, paths) in enumerate(zip(fields["key"], fields["image_id"],
                                                     fields["channel_paths"], strict=True)):
        if isinstance(sizes, Mapping):
            hw = sizes.get(key, sizes.get(image_id))
            if hw is None:
                ledger.drop(fields.iloc[[pos]], stage=STAGE, reason="unknown size",
                            detail=f"{key}: not in sizes; pass the field's (H, W)")
                continue
            out[pos] = (int(hw[0]), int(hw[1]))
        elif isinstance(sizes, tuple):
            h, w = fields[sizes[0]].iloc[pos], fields[sizes[1]].iloc[pos]
            if pd.isna(h) or pd.isna(w):
                ledger.drop(fields.iloc[[pos]], stage=STAGE, reason="unknown size",
                            detail=f"{key}: {sizes} are empty")
                continue
            out[pos] = (int(h), int(w))
        else:
            try:
                _, h, w = image_shape(list(paths))   # headers only: no pixel decode
            except ImageReadError as exc:
                ledger.drop(fields.iloc[[pos]], stage=STAGE, reason=exc.reason, detail=str(exc))
                continue
            out[pos] = (h, w)
    return out


def _rank(seed: int, keys: Sequence[str]) -> np.ndarray:
    """Return a seeded pseudo-random rank per key (order-free: the key decides, not the row)."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8)
                                    .digest(), "little") for k in keys], dtype=np.uint64)


def _labels(table: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    def part(v) -> str | None:
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return None
        return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)

    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SchemaError(f"label_columns {missing} are not manifest columns; valid: "
                          f"{preview(list(table.columns), 40)}")
    out = []
    for values in table[list(columns)].itertuples(index=False, name=None):
        parts = [part(v) for v in values]
        out.append(None if any(p is None for p in parts) else "@".join(parts))
    return pd.Series(out, index=table.index, dtype="string")


def cell_rows(
    manifest: pd.DataFrame,
    locations: "str | os.PathLike | pd.DataFrame",
    size: int,
    *,
    max_cells_per_field: int | None = None,
    seed: int = 0,
    label_columns: Sequence[str] | None = None,
    sizes: "Mapping[str, tuple[int, int]] | tuple[str, str] | None" = None,
) -> tuple[pd.DataFrame, Ledger]:
    """Expand field rows into one crop row per located cell; returns ``(cells, ledger)``.

    ``manifest``: harmonized field rows. ``locations``: see :func:`read_locations`. ``size``:
    the crop side in pixels; the window is ``[round(x) - size // 2, + size)`` (same in y),
    moved inside the field when it hangs over an edge (cells near the border keep a full-size
    crop, no longer centred). ``sizes``: each field's ``(H, W)`` as a mapping by key/image_id
    or a column pair; default: read from the image headers (no pixel decode).

    Cell rows copy their field's row and set ``crop=True``, the window columns,
    ``parent_id`` = the field's ``image_id``, ``image_id`` = ``<field image_id>-cell<NNNN>`` (cells
    numbered 0.. by (y, x) within the field, so the numbering does not depend on the table's row
    order) and ``key``. ``max_cells_per_field``: keep that many cells per field, chosen by a
    seeded hash of the cell key (order-free). ``label_columns``: set ``label`` to the values
    joined by ``@`` (floats as ``%g``, e.g. ``taxol@0.3`` for ``("compound", "concentration")``:
    the treatment, the Cell Painting CNN's weak label) and ``category`` to the names joined by
    ``+``; rows with an empty part get no label.

    The ledger (stage ``cells``) gets: location rows matching no field ("no field", input_id
    ``location row N``), cells with a missing centre or one outside the field ("bad location"),
    cells whose window is larger than the field ("window does not fit"), cells whose window
    repeats another's ("duplicate window"), cells left out by ``max_cells_per_field`` ("not
    sampled"), fields whose size cannot be read (the read error's reason) and fields left with no
    cell ("no cells"). Every location row and every field is either kept or in the ledger
    (checked).
    """
    from ..schema import conform, validate

    if int(size) < 1:
        raise SchemaError(f"size={size}; the crop side must be >= 1 pixel")
    if max_cells_per_field is not None and int(max_cells_per_field) < 1:
        raise SchemaError(f"max_cells_per_field={max_cells_per_field}; must be >= 1 (or None: all)")
    size = int(size)
    fields = conform(manifest).reset_index(drop=True)
    locs = read_locations(locations)
    field_ledger, cell_ledger = Ledger(), Ledger()

    # which field each location row belongs to
    if "key" in locs.columns or "image_id" in locs.columns:
        col = "key" if "key" in locs.columns else "image_id"
        lookup = {v: i for i, v in enumerate(fields[col].astype(str))}
        pos = locs[col].map(lambda v: lookup.get(str(v), -1) if pd.notna(v) else -1)
    else:
        site = fields["site"].astype("Int64").astype("string")
        lookup = {}
        for i, k in enumerate(zip(fields["plate"].astype("string"), fields["well"].astype("string"),
                                  site, strict=True)):
            if not any(v is pd.NA for v in k):
                lookup.setdefault(tuple(str(v).strip() for v in k), i)
        pos = pd.Series([lookup.get((str(p), str(w), str(s)), -1) if not any(
            v is pd.NA for v in (p, w, s)) else -1 for p, w, s in zip(
            locs["plate"], locs["well"], locs["site"], strict=True)], index=locs.index)
    locs["field"] = pos.astype(int).to_numpy()
    unmatched = locs[locs["field"] < 0]
    if len(unmatched):
        join = [c for c in ("key", "image_id", "plate", "well", "site") if c in locs.columns]
        where = unmatched[join].astype(str).agg("/".join, axis=1)
        ids = pd.DataFrame({"source": pd.NA,
                            "image_id": "location row " + unmatched["row"].astype(str)})
        detail = "no manifest field with " + "/".join(join) + " = " + where
        cell_ledger.drop(ids, stage=STAGE, reason="no field", detail=detail.tolist())
    locs = locs[locs["field"] >= 0]

    hw = _field_sizes(fields, sizes, field_ledger)
    records = []
    for f, group in locs.groupby("field", sort=True):
        field = fields.iloc[f]
        base = field.to_dict()
        # numbering by position, not by table order (NaN centres last)
        group = group.sort_values(["y", "x", "row"], na_position="last")
        image_ids = [f"{field['image_id']}-cell{n:04d}" for n in range(len(group))]
        keys = [make_key(field["source"], i) for i in image_ids]
        cells = pd.DataFrame({"source": field["source"], "image_id": image_ids, "key": keys,
                              "x": group["x"].to_numpy(), "y": group["y"].to_numpy()})
        if f not in hw:   # size unknown: the field is in the ledger, its cells with it
            cell_ledger.drop(cells, stage=STAGE, reason="field not readable",
                             detail=f"field {field['key']} is in the ledger")
            continue
        h, w = hw[f]
        cx, cy = np.floor(cells["x"] + 0.5), np.floor(cells["y"] + 0.5)
        bad = cells["x"].isna() | cells["y"].isna() | (cx < 0) | (cx >= w) | (cy < 0) | (cy >= h)
        where = zip(cells.loc[bad, "x"], cells.loc[bad, "y"], strict=True)
        cell_ledger.drop(cells[bad], stage=STAGE, reason="bad location",
                         detail=[f"centre ({x}, {y}) is missing or outside the {w} x {h} px field"
                                 for x, y in where])
        cells = cells[~bad].copy()
        if size > h or size > w:
            cell_ledger.drop(cells, stage=STAGE, reason="window does not fit",
                             detail=f"{size} px window is larger than the {w} x {h} px field")
            continue
        x0 = (np.floor(cells["x"] + 0.5).astype(int) - size // 2).clip(0, w - size)
        y0 = (np.floor(cells["y"] + 0.5).astype(int) - size // 2).clip(0, h - size)
        cells["x_min"], cells["y_min"] = x0, y0
        dup = cells.duplicated(["x_min", "y_min"], keep="first")
        cell_ledger.drop(cells[dup], stage=STAGE, reason="duplicate window",
                         detail="the window of an earlier cell of this field (same place)")
        cells = cells[~dup]
        if max_cells_per_field is not None and len(cells) > max_cells_per_field:
            order = np.argsort(_rank(seed, cells["key"].tolist()), kind="stable")
            keep = np.zeros(len(cells), dtype=bool)
            keep[order[:max_cells_per_field]] = True
            cell_ledger.drop(cells[~keep], stage=STAGE, reason="not sampled",
                             detail=f"max_cells_per_field={max_cells_per_field} (seed {seed})")
            cells = cells[keep]
        for c in cells.itertuples(index=False):
            rec = dict(base)
            rec.update(key=c.key, image_id=c.image_id, parent_id=field["image_id"], crop=True,
                       x_min=int(c.x_min), x_max=int(c.x_min) + size, y_min=int(c.y_min),
                       y_max=int(c.y_min) + size, scaling=pd.NA)
            records.append(rec)
    out = pd.DataFrame.from_records(records, columns=list(fields.columns)) if records else \
        fields.iloc[:0].copy()
    out = conform(out)
    if label_columns:
        out["label"] = _labels(out, label_columns)
        out["category"] = pd.Series("+".join(label_columns), index=out.index, dtype="string")
    out = out.sort_values("key", kind="stable").reset_index(drop=True)
    kept_fields = set(zip(out["source"].astype(str), out["parent_id"].astype(str), strict=True))
    readable = [i for i in range(len(fields)) if i in hw]
    ids = list(zip(fields["source"].astype(str), fields["image_id"].astype(str), strict=True))
    empty = fields.iloc[[i for i in readable if ids[i] not in kept_fields]]
    has_locs = set(locs["field"].tolist())
    field_ledger.drop(empty, stage=STAGE, reason="no cells",
                      detail=["no cell kept (see the cell rows of this field)" if i in has_locs
                              else "no cell in the locations table" for i in empty.index])
    field_ledger.check(len(fields), len(kept_fields), where="cell_rows fields")
    cell_ledger.check(len(locs) + len(unmatched), len(out), where="cell_rows locations")
    ledger = Ledger()
    ledger.extend(field_ledger)
    ledger.extend(cell_ledger)
    return validate(out, where="cell manifest"), ledger


# ---------------------------------------------------------------- CLI
def build_cells(manifest_dir: "str | os.PathLike", locations: "str | os.PathLike",
                out: "str | os.PathLike", size: int, **options) -> dict:
    """Run :func:`cell_rows` on a manifest folder and write a manifest folder to ``out``.

    Writes ``manifest.parquet``, ``ledger.parquet`` (the input folder's ledger + this stage's)
    and ``provenance.json``; returns the provenance dict.
    """
    from .. import __version__, schema
    from .._files import file_sha256, save_json

    t0 = time.time()
    src = Path(manifest_dir)
    fields = schema.read_manifest(src)
    cells, ledger = cell_rows(fields, locations, size, **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    full = Ledger()
    parent_ledger = (src if src.is_dir() else src.parent) / "ledger.parquet"
    if parent_ledger.exists():
        full.extend(pd.read_parquet(parent_ledger))
    full.extend(ledger)
    schema.write_manifest(cells, out / "manifest.parquet")
    full.write(out / "ledger.parquet")
    loc = Path(locations)
    frame = ledger.to_frame()
    prov = {
        "stage": "cells", "cytodata_version": __version__,
        "manifest": str(src), "locations": str(loc),
        "locations_sha256": file_sha256(loc) if loc.is_file() else None,
        "size": int(size), "options": {k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in options.items()},
        "counts": {"fields": len(fields), "fields_with_cells": int(cells["parent_id"].nunique()),
                   "cells": len(cells), "dropped": len(frame)},
        "ledger_by_reason": {str(k): int(v) for k, v in frame["reason"].value_counts().items()},
        "seconds": round(time.time() - t0, 3),
    }
    parent_prov = (src if src.is_dir() else src.parent) / "provenance.json"
    if parent_prov.exists():
        prov["parent_provenance"] = json.loads(parent_prov.read_text())
    save_json(out / "provenance.json", prov, indent=2)
    return prov


def _cmd(args) -> int:
    options = {"max_cells_per_field": args.max_cells_per_field, "seed": args.seed}
    if args.label:
        options["label_columns"] = tuple(c.strip() for c in args.label.split(",") if c.strip())
    prov = build_cells(args.manifest, args.locations, args.out, args.size, **options)
    c = prov["counts"]
    print(f"{c['cells']} cells from {c['fields_with_cells']}/{c['fields']} fields "
          f"({args.size} px windows) -> {args.out}")
    if not args.quiet:
        for reason, n in prov["ledger_by_reason"].items():
            print(f"  dropped: {reason:<20} {n}")
    return 0
