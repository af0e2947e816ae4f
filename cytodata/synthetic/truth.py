"""Ground truth of a hard synthetic screen, kept beside it, and the oracle features from it.

``<root>/ground_truth/`` holds four Parquet tables (written by the layouts, read back by
:func:`read_ground_truth`, equal to what the writer returned):

- ``cells.parquet``: one row per cell: ``plate, well, site, object_number, x, y`` (nucleus
  centre, px; the row order and numbering of the cell locations table), ``area``,
  ``nucleus_area`` (px), ``responding``, ``strength`` and one state name per morphology axis
  (:data:`.morphology.AXES`);
- ``fields.parquet``: one row per field: ``plate, well, site, image`` (the first channel's file
  name) and the oracle features ``oracle_<axis>_<state>`` (:func:`oracle_table`);
- ``treatments.parquet``: the planted phenotype of every treatment (``response``: share of
  cells responding; ``strength``; ``states``: the responding cells' states as ``axis=state``
  joined by ``;``);
- ``plates.parquet``: the planted batch effects per plate: ``batch, plate, blur`` (focus, px
  sd), ``gradient``, ``gradient_angle``, ``gain_<c>``, ``offset_<c>`` per channel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .morphology import AXES, ORACLE_FEATURES

TRUTH_DIR = "ground_truth"
TABLES: tuple[str, ...] = ("cells", "fields", "treatments", "plates")


def oracle_columns() -> list[str]:
    """Column names of the oracle features (``oracle_<axis>_<state>``)."""
    return ["oracle_" + name.replace(":", "_") for name in ORACLE_FEATURES]


def cell_rows(plate: str, well: str, site: int, cells: dict[str, np.ndarray]) -> pd.DataFrame:
    """The ground-truth rows of one field's cells (from :func:`.hard_cells.render_hard_field`)."""
    n = len(cells["x"])
    out = pd.DataFrame({"plate": [plate] * n, "well": [well] * n, "site": [site] * n,
                        "object_number": np.arange(1, n + 1), "x": cells["x"], "y": cells["y"],
                        "area": cells["area"], "nucleus_area": cells["nucleus_area"],
                        "responding": cells["responding"].astype(bool),
                        "strength": cells["strength"].astype(float)})
    for axis, states in AXES.items():
        out[axis] = np.asarray(states)[cells[axis]]
    return out


def oracle_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per field (plate, well, site): mean over its cells of ``strength * [state == s]``.

    One column per non-DMSO state (:func:`oracle_columns`): what a perfect per-cell phenotype
    classifier, averaged over the field, would report.
    """
    cols = oracle_columns()
    parts = {}
    for name, col in zip(ORACLE_FEATURES, cols, strict=True):
        axis, state = name.split(":")
        parts[col] = cells["strength"] * (cells[axis] == state)
    table = pd.concat([cells[["plate", "well", "site"]], pd.DataFrame(parts)], axis=1)
    return table.groupby(["plate", "well", "site"], sort=False, as_index=False)[cols].mean()


def write_ground_truth(root: str | os.PathLike, tables: dict[str, pd.DataFrame]) -> Path:
    """Write ``tables`` (keys :data:`TABLES`) as ``root/ground_truth/<name>.parquet``."""
    folder = Path(root) / TRUTH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        tables[name].to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def read_ground_truth(root: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read the ground truth written beside a hard screen at ``root`` (the layout's folder)."""
    folder = Path(root) / TRUTH_DIR
    missing = [n for n in TABLES if not (folder / f"{n}.parquet").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: no {', '.join(m + '.parquet' for m in missing)}; ground truth is written "
            "by write_bbbc021_layout / write_rxrx1_layout with SyntheticScreen(difficulty='hard')")
    return {name: pd.read_parquet(folder / f"{name}.parquet") for name in TABLES}


__all__ = ["TABLES", "TRUTH_DIR", "cell_rows", "oracle_columns", "oracle_table",
           "read_ground_truth", "write_ground_truth"]
