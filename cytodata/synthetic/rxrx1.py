"""The RxRx1 layout (rxrx.ai release): ``metadata.csv`` + 6-channel 8-bit PNG sites."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._files import write_png
from .acquisition import acquisitions
from .cells import make_cells
from .config import PLATE_WELLS, SyntheticScreen, screen_rng
from .phenotypes import phenotype_for

RXRX1_COLUMNS: tuple[str, ...] = ("site_id", "well_id", "cell_type", "dataset", "experiment",
                                  "plate", "well", "site", "well_type", "sirna", "sirna_id")
RXRX1_NEGATIVE_SIRNA_ID = 1138   # sirna "EMPTY"
RXRX1_FIRST_POSITIVE_ID = 1108   # positive controls are 1108-1137


def rxrx1_sirnas(config: SyntheticScreen) -> pd.DataFrame:
    """siRNAs: ``sirna`` (ThermoFisher-like ``s<5 digits>``), ``sirna_id``, ``well_type``."""
    rng = screen_rng(config, 2, 0)
    n = config.rxrx_sirnas + config.rxrx_positive_controls
    numbers = rng.choice(np.arange(10_000, 99_999), size=n, replace=False)
    rows = [(f"s{numbers[i]}", i, "treatment") for i in range(config.rxrx_sirnas)]
    rows += [(f"s{numbers[config.rxrx_sirnas + j]}", RXRX1_FIRST_POSITIVE_ID + j,
              "positive_control") for j in range(config.rxrx_positive_controls)]
    rows.append(("EMPTY", RXRX1_NEGATIVE_SIRNA_ID, "negative_control"))
    return pd.DataFrame(rows, columns=["sirna", "sirna_id", "well_type"])


def write_rxrx1_layout(root: str | os.PathLike, config: SyntheticScreen | None = None) -> dict:
    """Write an RxRx1 (rxrx.ai release) layout: ``metadata.csv`` + 6-channel 8-bit PNG sites.

    ``metadata.csv``: one row per site, columns :data:`RXRX1_COLUMNS`; ``well_id`` =
    ``<experiment>_<plate>_<well>``, ``site_id`` = ``<well_id>_<site>``, sites 1 and 2,
    ``cell_type`` = experiment prefix, ``dataset`` test for ``rxrx_test_experiments``.
    Per plate: one negative control well (sirna ``EMPTY``, sirna_id 1138), the positive controls
    (ids from 1108), treatments in the other wells. Images:
    ``images/{experiment}/Plate{plate}/{well}_s{site}_w{1..6}.png`` (uint8, mode L).
    Returns ``{"root", "metadata_csv", "image_root", "sites"}`` (``sites``: the metadata rows plus
    ``paths``, the six absolute PNG paths).
    """
    config = config or SyntheticScreen()
    root = Path(root).resolve()
    image_root = root / "images"
    size = (config.image_size, config.image_size)
    sirnas = rxrx1_sirnas(config)
    treat = sirnas[sirnas["well_type"] == "treatment"].index.to_numpy()
    controls = sirnas[sirnas["well_type"] != "treatment"].index.to_numpy()
    background, peak = 10.0, 140.0
    acq = acquisitions(config, 2, 6, len(config.rxrx_experiments), config.rxrx_plates, size,
                        background)
    rows = []
    rng_map = screen_rng(config, 2, 1)
    for e, experiment in enumerate(config.rxrx_experiments):
        cell_type = experiment.split("-")[0]
        base = phenotype_for(cell_type)
        dataset = "test" if experiment in config.rxrx_test_experiments else "train"
        for p in range(config.rxrx_plates):
            n_trt = config.rxrx_wells_per_plate - len(controls)
            content = np.concatenate([controls, np.resize(rng_map.permutation(treat), n_trt)])
            content = rng_map.permutation(content)
            for w, s_idx in enumerate(content):
                well = PLATE_WELLS[w]
                si = sirnas.loc[s_idx]
                pheno = (base if si["well_type"] == "negative_control"
                         else base.blend(phenotype_for("sirna:" + si["sirna"]), 0.6))
                well_id = f"{experiment}_{p + 1}_{well}"
                for site in (1, 2):
                    rng = screen_rng(config, 2, e, p, w, site)
                    image = make_cells(rng, (6, *size), pheno, background=background, peak=peak,
                                       bit_depth=8, acquisition=acq[e, p]).astype(np.uint8)
                    folder = image_root / experiment / f"Plate{p + 1}"
                    paths = [folder / f"{well}_s{site}_w{c}.png" for c in range(1, 7)]
                    for c, path in enumerate(paths):
                        write_png(path, image[c])
                    rows.append({
                        "site_id": f"{well_id}_{site}", "well_id": well_id, "cell_type": cell_type,
                        "dataset": dataset, "experiment": experiment, "plate": p + 1,
                        "well": well, "site": site, "well_type": si["well_type"],
                        "sirna": si["sirna"], "sirna_id": int(si["sirna_id"]),
                        "paths": [str(x) for x in paths],
                    })
    sites = pd.DataFrame(rows)
    metadata_csv = root / "metadata.csv"
    sites[list(RXRX1_COLUMNS)].to_csv(metadata_csv, index=False, lineterminator="\n")
    return {"root": root, "metadata_csv": metadata_csv, "image_root": image_root, "sites": sites}

