r"""CytoImageNet (Hua et al. 2021): per-source harmonized tables and the release ``metadata.csv``.

Params:
    path: a CSV file, or a folder whose ``*.csv``/``*.csv.gz`` files are all read (each file's
        layout is recognised from its header):
        - per-source tables ``<dir_name>_metadata.csv``: ``database, name, organism, cell_type,
          cell_visible`` (older name ``cell_component``), ``phenotype, channels, microscopy,
          dir_name, path, filename`` (+ optional ``compound, sirna, gene``);
        - the release ``metadata.csv``: ``label, category, database, name, dir_name, path,
          filename, idx, organism, cell_type, cell_visible, phenotype, compound, sirna, gene,
          microscopy, crop, scaling, x_min, x_max, y_min, y_max`` (one row per image or crop);
        - the HPA single-cell 2021 table (``ID,Label``, ``Label`` like ``8|5|0``): class numbers
          become organelle names in ``cell_visible`` (class 18 "negative" becomes no token via
          the synonym table); four channels ``red, green, blue, yellow`` at
          ``<dir>/train/<ID>_<colour>.png``.
    hpa_channels: ``"split"`` (default, as CytoImageNet): one single-channel row per HPA channel,
        green labelled with the protein's classes, red ``microtubules``, blue ``nucleus``,
        yellow ``endoplasmic reticulum`` (image_id ``.../<ID>_<colour>``, parent_id the field);
        ``"stack"``: one 4-channel row per field labelled with the protein's classes.
    image_root: re-root image paths: ``image_root/<dir_name>/<path after dir_name>/<filename>``.
        Default: the table's own paths (Windows drive letters dropped, ``\`` -> ``/``); HPA
        images default to ``train/`` next to the table.

Each file is one image per row (a single channel file, even if it stores several stains):
its channel name is the ``channels`` cell (``['f_nucleus', 'f_protein']`` ->
``f_nucleus+f_protein``) or ``gray``. So channel lists differ between the sub-datasets of this source by design.
``image_id`` = ``<dir_name>/<path after dir_name>/<filename>`` (+ ``@x_min-y_min-x_max-y_max`` for
crops, whose ``parent_id`` is the uncropped image).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import SourceError, preview
from ..vocab import parse_cell
from ._io import PathLike, read_table
from ._registry import SOURCES

#: HPA Single-Cell Classification 2021 class numbers -> names (Kaggle competition labels)
HPA_CLASSES: dict[int, str] = {
    0: "nucleoplasm", 1: "nuclear membrane", 2: "nucleoli", 3: "nucleoli fibrillar center",
    4: "nuclear speckles", 5: "nuclear bodies", 6: "endoplasmic reticulum", 7: "golgi apparatus",
    8: "intermediate filaments", 9: "actin filaments", 10: "microtubules", 11: "mitotic spindle",
    12: "centrosome", 13: "plasma membrane", 14: "mitochondria", 15: "aggresome", 16: "cytosol",
    17: "vesicles and punctate cytosolic patterns", 18: "negative",
}
HPA_CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
#: what the three reference channels of every HPA field show (CytoImageNet labels them so):
#: red = microtubules, blue = nucleus, yellow = endoplasmic reticulum; green is the protein
HPA_CHANNEL_LABELS: dict[str, str] = {
    "red": "microtubules", "blue": "nucleus", "yellow": "endoplasmic reticulum",
}
HPA_DIR = "kag_hpa_singlecell_2021"
_DRIVE = re.compile(r"^[A-Za-z]:(?=/)")
_SLASHES = re.compile(r"/{2,}")
_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def normalize_path(series: pd.Series) -> pd.Series:
    """Windows -> POSIX: backslashes to ``/``, drive letter dropped, repeated ``/`` collapsed."""
    s = series.astype("string").str.strip().str.replace("\\", "/", regex=False)
    s = s.str.replace(_DRIVE, "", regex=True).str.replace(_SLASHES, "/", regex=True)
    return s.str.rstrip("/")


def _relative(path: pd.Series, dir_name: pd.Series) -> pd.Series:
    """Part of ``path`` after its last ``dir_name`` component ("" if at the end or absent)."""
    out = []
    for p, d in zip(path.fillna(""), dir_name.fillna("")):
        parts = [x for x in str(p).split("/") if x]
        hits = [i for i, x in enumerate(parts) if d and x == d]
        out.append("/".join(parts[hits[-1] + 1:]) if hits else None)
    return pd.Series(out, index=path.index, dtype="object")


def _channel_name(cell) -> str:
    toks = parse_cell(cell)
    return "+".join(toks) if toks else "gray"


def _per_source(table: pd.DataFrame, where: Path, image_root) -> pd.DataFrame:
    t = table.rename(columns={"cell_component": "cell_visible"}) \
        if "cell_visible" not in table.columns else table.copy()
    path = normalize_path(t["path"])
    filename = normalize_path(t["filename"]).str.lstrip("/")
    dir_name = (t["dir_name"].astype("string").str.strip() if "dir_name" in t.columns
                else pd.Series(pd.NA, index=t.index, dtype="string"))
    rel = _relative(path, dir_name)
    has_rel = rel.notna().to_numpy()
    rel_file = pd.Series(
        [f"{r}/{f}" if r else f for r, f in zip(rel.fillna(""), filename.fillna(""))],
        index=t.index, dtype="string").where(filename.notna())
    full = (path + "/" + filename)
    found = pd.Series(has_rel, index=t.index) & dir_name.notna()
    image_id = (dir_name + "/" + rel_file).where(found, full.str.lstrip("/"))
    if image_root is not None:
        base = str(Path(image_root).absolute()).rstrip("/")
        ids_file = image_id.where(pd.Series(has_rel, index=t.index),
                                  dir_name.fillna("") + "/" + filename)
        channel_path = base + "/" + ids_file.str.lstrip("/")
    else:
        folder = str(where.parent.absolute())
        channel_path = full.where(full.str.startswith("/"), folder + "/" + full)
    out = pd.DataFrame(index=t.index)
    for col in ("label", "category", "database", "name", "organism", "cell_type", "cell_visible",
                "phenotype", "compound", "sirna", "gene", "microscopy", "idx", "scaling",
                "x_min", "x_max", "y_min", "y_max"):
        if col in t.columns:
            out[col] = t[col]
    for col in ("idx", "x_min", "x_max", "y_min", "y_max"):
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce").round().astype("Int64")
    if "scaling" in out.columns:
        out["scaling"] = pd.to_numeric(out["scaling"], errors="coerce")
    if "crop" in t.columns:
        crop = t["crop"].astype("string").str.strip().str.lower()
        out["crop"] = crop.map(_TRUE).astype("boolean")
    out["dir_name"], out["path"], out["filename"] = dir_name, path, filename
    window = ["x_min", "y_min", "x_max", "y_max"]
    out["parent_id"] = image_id
    if set(window) <= set(out.columns):
        cropped = out[window].notna().all(axis=1)
        suffix = "@" + out["x_min"].astype("string") + "-" + out["y_min"].astype("string") + "-" \
            + out["x_max"].astype("string") + "-" + out["y_max"].astype("string")
        image_id = image_id.where(~cropped, image_id + suffix)
    out["image_id"] = image_id
    names = (t["channels"].map(_channel_name) if "channels" in t.columns
             else pd.Series("gray", index=t.index))
    out["channels"] = [[n] for n in names]
    out["channel_paths"] = [[p] if isinstance(p, str) else [] for p in
                            channel_path.astype(object).where(channel_path.notna(), None)]
    return out


def _hpa(table: pd.DataFrame, where: Path, image_root, channels: str = "split") -> pd.DataFrame:
    ids = table["ID"].astype("string").str.strip()
    names = []
    for row, cell in zip(table.index, table["Label"]):
        toks = [] if pd.isna(cell) else [x.strip() for x in str(cell).split("|") if x.strip()]
        try:
            names.append("|".join(dict.fromkeys(HPA_CLASSES[int(x)] for x in toks)) or None)
        except (ValueError, KeyError):
            raise SourceError(f"{where}: row {row}: Label {cell!r} is not '|'-joined HPA class "
                              f"numbers 0-18") from None
    base = (str(Path(image_root).absolute()) + "/" + HPA_DIR if image_root is not None
            else str(where.parent.absolute()))
    field_id = HPA_DIR + "/train/" + ids
    out = pd.DataFrame({
        "image_id": field_id, "cell_visible": names,
        "database": "Kaggle", "name": "Human Protein Atlas Single Cell Classification 2021",
        "organism": "human", "microscopy": "confocal", "dir_name": HPA_DIR,
        "path": base + "/train", "filename": ids + "_green.png",
    }, index=table.index)
    paths = [[f"{base}/train/{i}_{c}.png" for c in HPA_CHANNELS] if isinstance(i, str) else []
             for i in ids.astype(object).where(ids.notna(), None)]
    if channels == "stack":
        out["channels"] = [list(HPA_CHANNELS) for _ in range(len(out))]
        out["channel_paths"] = paths
        return out
    if channels != "split":
        raise SourceError(f"cytoimagenet: hpa_channels={channels!r}; valid: 'split' (one row per "
                          "channel, CytoImageNet's labels) or 'stack' (one 4-channel row)")
    # CytoImageNet's per-channel rows: the green channel carries the protein's classes, the
    # reference channels what they stain; all four share the field as parent_id (one split)
    parts = []
    for k, colour in enumerate(HPA_CHANNELS):
        part = out.copy()
        part["parent_id"] = field_id
        part["image_id"] = field_id + "_" + colour
        part["filename"] = ids + f"_{colour}.png"
        if colour in HPA_CHANNEL_LABELS:
            part["cell_visible"] = HPA_CHANNEL_LABELS[colour]
        part["channels"] = [[colour] for _ in range(len(part))]
        part["channel_paths"] = [p[k:k + 1] for p in paths]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _read_one(path: Path, image_root, hpa_channels: str = "split") -> pd.DataFrame:
    table = read_table(path, what="CytoImageNet table")
    cols = set(table.columns)
    if {"ID", "Label"} <= cols:
        return _hpa(table, path, image_root, hpa_channels)
    if {"path", "filename"} <= cols:
        return _per_source(table, path, image_root)
    raise SourceError(
        f"CytoImageNet table {path}: missing column(s) "
        f"{sorted({'path', 'filename'} - cols)}; available: {list(table.columns)}. Expected a "
        "per-source table (path, filename, ...) or the HPA table (ID, Label)")


@SOURCES.register("cytoimagenet")
def read_cytoimagenet(path: PathLike, image_root: PathLike | None = None,
                      hpa_channels: str = "split") -> pd.DataFrame:
    """CytoImageNet metadata table(s) -> one row per image or crop (see module docstring)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir()
                       if f.is_file() and f.name.endswith((".csv", ".csv.gz")))
        if not files:
            raise SourceError(f"CytoImageNet: no *.csv tables in folder {p}")
    else:
        files = [p]
    frames = []
    for f in files:
        frame = _read_one(f, image_root, hpa_channels)
        frame["table"] = f.name
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    bad = [i for i, x in enumerate(out["channel_paths"]) if not x]
    if len(bad) == len(out):
        raise SourceError(f"CytoImageNet {p}: no row has a path and filename: {preview(bad)}")
    out.attrs["source_file"] = str(p)
    return out
