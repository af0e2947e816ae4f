"""RxRx1 (Recursion, 2019): siRNA screen, 6 channels, 4 cell types, one row per site.

Two metadata layouts are read:

(a) rxrx.ai release ``metadata.csv``, one row per SITE:
    ``site_id,well_id,cell_type,dataset,experiment,plate,well,site,well_type,sirna,sirna_id``
    (``sirna`` a ThermoFisher id such as ``s21721``; ``sirna_id`` an integer).
(b) the NeurIPS 2019 competition files ``train.csv``, ``train_controls.csv``, ``test.csv``,
    ``test_controls.csv`` (``.gz`` ok), one row per WELL:
    ``id_code,experiment,plate,well[,sirna][,well_type]``; sites 1 and 2 are implicit and are
    expanded here. Their ``sirna`` is the integer id: it goes to ``sirna`` (as text) and
    ``sirna_id``. Wells without ``well_type`` (train/test.csv) are treatments.

Params:
    root: folder with ``metadata.csv`` (layout a, preferred when present) or the competition
        files (layout b).
    image_root: folder holding ``{experiment}/Plate{plate}/{well}_s{site}_w{1..6}.png``
        (default ``root/images``).
    metadata: file name of layout (a) under ``root`` (default ``metadata.csv``).
    tables: competition file stems to read in layout (b) (default all four that exist).
    sites: sites per well in layout (b) (default ``(1, 2)``).

Output: ``image_id`` ``<experiment>_<plate>_<well>_<site>`` (the release ``site_id``),
``plate`` ``<experiment>_<plate>`` (plate numbers 1-4 repeat in every experiment; the bare
number is kept in ``plate_number``),
``batch`` = experiment, ``cell_type`` from the ``cell_type`` column or the experiment prefix
(``HEPG2-01`` -> hepg2), ``control_type`` from ``well_type`` (negative_control -> negcon,
positive_control -> poscon, treatment -> trt), extra columns ``dataset`` (train/test: the
official split hint), ``experiment``, ``well_type``, ``sirna_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import SourceError, preview
from ._io import PathLike, read_table
from ._registry import SOURCES

#: RxRx1 stains in file order w1..w6 (Hoechst nuclei, ConA ER, phalloidin actin, SYTO14
#: nucleoli/RNA, MitoTracker mitochondria, WGA Golgi/plasma membrane)
CHANNELS: tuple[str, ...] = ("Hoechst", "ConA", "Phalloidin", "SYTO14", "MitoTracker", "WGA")
WELL_TYPES: dict[str, str] = {
    "treatment": "trt", "negative_control": "negcon", "positive_control": "poscon",
}
RELEASE_COLUMNS: tuple[str, ...] = ("site_id", "well_id", "cell_type", "dataset", "experiment",
                                    "plate", "well", "site", "well_type", "sirna", "sirna_id")
COMPETITION_TABLES: tuple[str, ...] = ("train", "train_controls", "test", "test_controls")


def _find(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (root / name).is_file():
            return root / name
    return None


def _check_well_types(table: pd.DataFrame, where: Path) -> None:
    well_type = table["well_type"].astype("string").str.strip().str.lower()
    unknown = well_type.notna() & ~well_type.isin(list(WELL_TYPES))
    if unknown.any():
        raise SourceError(f"{where}: unknown well_type {preview(well_type[unknown].unique())} in "
                          f"rows {preview(well_type.index[unknown])}; valid: {list(WELL_TYPES)}")


def _release(path: Path) -> pd.DataFrame:
    table = read_table(path, required=RELEASE_COLUMNS, what="RxRx1 metadata")
    _check_well_types(table, path)
    out = table[list(RELEASE_COLUMNS)].copy()
    out["sirna_id"] = pd.to_numeric(out["sirna_id"], errors="coerce").astype("Int64")
    return out


def _competition(root: Path, stems: Sequence[str],
                 sites: Sequence[int]) -> tuple[pd.DataFrame, str]:
    frames, files = [], []
    for stem in stems:
        path = _find(root, stem)
        if path is None:
            continue
        t = read_table(path, required=("id_code", "experiment", "plate", "well"),
                       what="RxRx1 competition table")
        if "well_type" not in t.columns:
            t["well_type"] = "treatment"
        _check_well_types(t, path)
        if "sirna" not in t.columns:
            t["sirna"] = pd.NA
        t["dataset"] = stem.split("_")[0]
        frames.append(t[["id_code", "experiment", "plate", "well", "sirna", "well_type",
                         "dataset"]])
        files.append(str(path))
    if not frames:
        raise SourceError(
            f"RxRx1: no metadata in {root}: expected metadata.csv or competition files "
            f"{[s + '.csv[.gz]' for s in stems]}")
    wells = pd.concat(frames, ignore_index=True)
    n = len(wells)
    out = wells.loc[wells.index.repeat(len(sites))].reset_index(drop=True)
    out["site"] = list(sites) * n
    out["well_id"] = out["id_code"]
    out["site_id"] = out["well_id"] + "_" + out["site"].astype(str)
    out["sirna_id"] = pd.to_numeric(out["sirna"], errors="coerce").astype("Int64")
    out["cell_type"] = pd.NA
    return out.drop(columns="id_code"), ", ".join(files)


@SOURCES.register("rxrx1")
def read_rxrx1(root: PathLike, image_root: PathLike | None = None,
               metadata: str = "metadata.csv", tables: Sequence[str] = COMPETITION_TABLES,
               sites: Sequence[int] = (1, 2)) -> pd.DataFrame:
    """RxRx1 metadata (release or competition layout) -> one row per site."""
    root = Path(root)
    release = root / metadata
    if release.is_file():
        sites_t, where = _release(release), str(release)
    else:
        sites_t, where = _competition(root, tables, sites)
    image_root = Path(image_root) if image_root is not None else root / "images"
    base = str(image_root.absolute())
    site_num = pd.to_numeric(sites_t["site"], errors="coerce").astype("Int64")
    experiment = sites_t["experiment"].astype("string").str.strip()
    plate = sites_t["plate"].astype("string").str.strip()
    well = sites_t["well"].astype("string").str.strip()
    well_type = sites_t["well_type"].astype("string").str.strip().str.lower()
    cell_type = sites_t["cell_type"].astype("string")
    cell_type = cell_type.fillna(experiment.str.split("-", n=1).str[0])
    stem = (base + "/" + experiment + "/Plate" + plate + "/" + well + "_s"
            + site_num.astype("string"))
    paths = [(stem + f"_w{c}.png") for c in range(1, len(CHANNELS) + 1)]
    out = pd.DataFrame({
        "image_id": sites_t["site_id"].astype("string"),
        "batch": experiment, "plate": experiment + "_" + plate, "well": well, "site": site_num,
        "cell_type": cell_type, "sirna": sites_t["sirna"].astype("string"),
        "control_type": well_type.map(WELL_TYPES).astype("string"),
        "organism": "human", "microscopy": "fluorescence", "database": "Recursion",
        "name": "RxRx1", "dir_name": "rxrx1",
        "dataset": sites_t["dataset"].astype("string"), "experiment": experiment,
        "well_type": well_type, "sirna_id": sites_t["sirna_id"],
        "plate_number": pd.to_numeric(plate, errors="coerce").astype("Int64"),
    })
    rows = zip(*[p.astype(object).where(p.notna(), None).tolist() for p in paths])
    out["channel_paths"] = [list(r) for r in rows]
    out["channels"] = [list(CHANNELS) for _ in range(len(out))]
    out.attrs["source_file"] = where
    return out
