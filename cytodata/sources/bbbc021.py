"""BBBC021 v1 (Caie et al. 2010; Ljosa et al. 2013): MCF-7 cells, 3 channels, 55 plates.

Params:
    root: folder holding the two metadata CSVs (and, by default, the ``Week*/`` image folders).
    image_csv: image table, relative to ``root`` (default ``BBBC021_v1_image.csv``): one row per
        field with ``Image_FileName_/Image_PathName_{DAPI,Tubulin,Actin}``,
        ``Image_Metadata_Plate_DAPI``, ``Image_Metadata_Well_DAPI``, ``Image_Metadata_Compound``,
        ``Image_Metadata_Concentration`` (uM).
    moa_csv: MOA table ``compound,concentration,moa``, relative to ``root``
        (default ``BBBC021_v1_moa.csv``); joined on (compound, concentration) with a tolerance
        of 6 significant digits, because the two files print concentrations differently.
    image_root: folder holding ``Week*/`` image folders (default ``root``).

Output: ``image_id`` ``<plate>_<well>_s<site>`` (site from ``_s<n>_`` in the DAPI file name),
``batch`` the week (``Week1_22123`` -> ``Week1``), ``control_type`` negcon for DMSO else trt,
``moa`` NA for treatments without MOA annotation, extra column ``replicate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SourceError, preview
from ._io import PathLike, channel_lists, join_paths, read_table
from ._registry import SOURCES

CHANNELS: tuple[str, ...] = ("DAPI", "Tubulin", "Actin")
NEGATIVE_CONTROL = "DMSO"
_SITE = r"_s(\d+)_"


def _conc_key(values: pd.Series, where: str) -> pd.Series:
    num = pd.to_numeric(values, errors="coerce")
    bad = num.isna() & values.notna()
    if bad.any():
        raise SourceError(f"{where}: non-numeric concentration in rows "
                          f"{preview(values.index[bad])}: {preview(values[bad].unique())}")
    return pd.Series([None if np.isnan(v) else f"{v:.6g}" for v in num], index=values.index,
                     dtype="object")


@SOURCES.register("bbbc021")
def read_bbbc021(root: PathLike, image_csv: str = "BBBC021_v1_image.csv",
                 moa_csv: str | None = "BBBC021_v1_moa.csv",
                 image_root: PathLike | None = None) -> pd.DataFrame:
    """BBBC021 image + MOA tables -> one row per field (see module docstring)."""
    root = Path(root)
    image_path = root / image_csv
    cols = [f"Image_{k}_{c}" for c in CHANNELS for k in ("FileName", "PathName")]
    meta = ["Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI", "Image_Metadata_Compound",
            "Image_Metadata_Concentration"]
    images = read_table(image_path, required=cols + meta, what="BBBC021 image table")
    where = str(image_path)
    plate = images["Image_Metadata_Plate_DAPI"].str.strip()
    well = images["Image_Metadata_Well_DAPI"].str.strip()
    site = pd.to_numeric(images["Image_FileName_DAPI"].str.extract(_SITE, expand=False),
                         errors="coerce").astype("Int64")
    compound = images["Image_Metadata_Compound"].str.strip()
    out = pd.DataFrame({
        "image_id": plate + "_" + well + "_s" + site.astype("string"),
        "plate": plate, "well": well, "site": site,
        "batch": plate.str.split("_", n=1).str[0],
        "compound": compound,
        "concentration": pd.to_numeric(images["Image_Metadata_Concentration"], errors="coerce"),
        "control_type": np.where(compound.str.upper() == NEGATIVE_CONTROL, "negcon", "trt"),
        "organism": "human", "cell_type": "mcf7", "microscopy": "fluorescence",
        "database": "Broad Bioimage Benchmark Collection",
        "name": "BBBC021 v1 (Caie et al. 2010)", "dir_name": "bbbc021",
        "filename": images["Image_FileName_DAPI"],
        "path": images["Image_PathName_DAPI"],
    }, index=images.index)
    if "Replicate" in images.columns:
        out["replicate"] = pd.to_numeric(images["Replicate"], errors="coerce").astype("Int64")
    base = image_root if image_root is not None else root
    paths = [join_paths(base, [images[f"Image_PathName_{c}"], images[f"Image_FileName_{c}"]])
             for c in CHANNELS]
    out["channels"], out["channel_paths"] = channel_lists(CHANNELS, paths)
    out["moa"] = pd.Series(pd.NA, index=out.index, dtype="string")
    if moa_csv is not None:
        moa_path = root / moa_csv
        moa = read_table(moa_path, required=("compound", "concentration", "moa"),
                         what="BBBC021 MOA table")
        moa_key = moa["compound"].str.strip() + "@" + _conc_key(moa["concentration"], str(moa_path))
        dup = moa_key.duplicated(keep=False)
        if dup.any():
            raise SourceError(f"{moa_path}: (compound, concentration) repeated in rows "
                              f"{preview(moa.index[dup])}; keep one MOA per treatment")
        lookup = dict(zip(moa_key, moa["moa"].str.strip()))
        key = compound + "@" + _conc_key(images["Image_Metadata_Concentration"], where)
        out["moa"] = key.map(lookup).astype("string")
    out.attrs["source_file"] = where
    return out
