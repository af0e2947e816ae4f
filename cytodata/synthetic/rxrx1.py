"""The RxRx1 layout (rxrx.ai release): ``metadata.csv`` + 6-channel 8-bit PNG sites."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._files import write_png
from .acquisition import acquisitions, hard_plates, plates_table
from .cells import make_cells
from .config import PLATE_WELLS, SyntheticScreen, screen_rng
from .hard_cells import render_hard_field
from .morphology import draw_cell_states, moa_states
from .phenotypes import phenotype_for
from .truth import cell_rows, oracle_columns, oracle_table, write_ground_truth

RXRX1_COLUMNS: tuple[str, ...] = ("site_id", "well_id", "cell_type", "dataset", "experiment",
                                  "plate", "well", "site", "well_type", "sirna", "sirna_id")
RXRX1_NEGATIVE_SIRNA_ID = 1138   # sirna "EMPTY"
RXRX1_FIRST_POSITIVE_ID = 1108   # positive controls are 1108-1137


def rxrx1_sirnas(config: SyntheticScreen) -> pd.DataFrame:
    """siRNAs: ``sirna`` (ThermoFisher-like ``s<5 digits>``), ``sirna_id``, ``well_type``, ``group``.

    Treatment siRNAs (ids ``0..rxrx_sirnas - 1``) are split into ``rxrx_sirna_groups`` fixed
    groups of equal size (``group`` 1..G, a seeded shuffle, as the real 1,108 siRNAs fall into
    4 groups of 277); controls (positive ids from 1108, ``EMPTY`` 1138) have ``group`` 0: they
    are on every plate.
    """
    rng = screen_rng(config, 2, 0)
    n = config.rxrx_sirnas + config.rxrx_positive_controls
    numbers = rng.choice(np.arange(10_000, 99_999), size=n, replace=False)
    per_group = config.rxrx_sirnas // config.rxrx_sirna_groups
    groups = rng.permutation(np.repeat(np.arange(1, config.rxrx_sirna_groups + 1), per_group))
    rows = [(f"s{numbers[i]}", i, "treatment", int(groups[i])) for i in range(config.rxrx_sirnas)]
    rows += [(f"s{numbers[config.rxrx_sirnas + j]}", RXRX1_FIRST_POSITIVE_ID + j,
              "positive_control", 0) for j in range(config.rxrx_positive_controls)]
    rows.append(("EMPTY", RXRX1_NEGATIVE_SIRNA_ID, "negative_control", 0))
    return pd.DataFrame(rows, columns=["sirna", "sirna_id", "well_type", "group"])


def rxrx1_plate_map(config: SyntheticScreen) -> pd.DataFrame:
    """Which siRNA is in which well: one row per (experiment, plate, well).

    Columns ``experiment_index``, ``experiment``, ``plate`` (1..G), ``group`` (the siRNA group
    of the plate), ``well``, ``sirna_index`` (row of :func:`rxrx1_sirnas`). Plate ``p`` of
    experiment ``e`` holds group ``(p + e) mod G + 1`` (the group -> plate number assignment
    rotates between experiments), its siRNAs and the controls at shuffled well positions.
    """
    sirnas = rxrx1_sirnas(config)
    rng = screen_rng(config, 2, 1)
    n_groups = config.rxrx_sirna_groups
    controls = sirnas.index[sirnas["group"] == 0].to_numpy()
    rows = []
    for e, experiment in enumerate(config.rxrx_experiments):
        for p in range(n_groups):
            group = (p + e) % n_groups + 1
            members = sirnas.index[sirnas["group"] == group].to_numpy()
            content = rng.permutation(np.concatenate([members, controls]))
            rows += [(e, experiment, p + 1, group, PLATE_WELLS[w], int(s_idx))
                     for w, s_idx in enumerate(content)]
    return pd.DataFrame(rows, columns=["experiment_index", "experiment", "plate", "group", "well",
                                       "sirna_index"])


def write_rxrx1_layout(root: str | os.PathLike, config: SyntheticScreen | None = None) -> dict:
    """Write an RxRx1 (rxrx.ai release) layout: ``metadata.csv`` + 6-channel 8-bit PNG sites.

    ``metadata.csv``: one row per site, columns :data:`RXRX1_COLUMNS`; ``well_id`` =
    ``<experiment>_<plate>_<well>``, ``site_id`` = ``<well_id>_<site>``, sites 1 and 2,
    ``cell_type`` = experiment prefix, ``dataset`` test for ``rxrx_test_experiments``.
    Plates follow :func:`rxrx1_plate_map`: one siRNA group per plate (each siRNA once per
    experiment), the positive controls (ids from 1108) and one negative control well (sirna
    ``EMPTY``, sirna_id 1138) on every plate. Images:
    ``images/{experiment}/Plate{plate}/{well}_s{site}_w{1..6}.png`` (uint8, mode L).
    Returns ``{"root", "metadata_csv", "image_root", "sites"}`` (``sites``: the metadata rows plus
    ``group``, the plate's siRNA group (0 for control wells), and ``paths``, the six absolute
    PNG paths).
    """
    config = config or SyntheticScreen()
    root = Path(root).resolve()
    image_root = root / "images"
    size = (config.image_size, config.image_size)
    sirnas = rxrx1_sirnas(config)
    plate_map = rxrx1_plate_map(config)
    background, peak = 10.0, 140.0
    hard = config.difficulty == "hard"
    n_exp = len(config.rxrx_experiments)
    if hard:
        plates = hard_plates(config, 2, 6, n_exp, config.rxrx_sirna_groups, size, background)
        cell_tables, field_rows = [], []
    else:
        acq = acquisitions(config, 2, 6, n_exp, config.rxrx_sirna_groups, size, background)
    rows = []
    well_index = {w: i for i, w in enumerate(PLATE_WELLS)}
    for row in plate_map.itertuples(index=False):
        e, p, experiment = int(row.experiment_index), int(row.plate) - 1, row.experiment
        cell_type = experiment.split("-")[0]
        base = phenotype_for(cell_type)
        dataset = "test" if experiment in config.rxrx_test_experiments else "train"
        si = sirnas.loc[row.sirna_index]
        pheno = (base if si["well_type"] == "negative_control"
                 else base.blend(phenotype_for("sirna:" + si["sirna"]), 0.6))
        states, respond = hard_sirna(config, si["sirna"], si["well_type"])
        well_id = f"{experiment}_{p + 1}_{row.well}"
        for site in (1, 2):
            rng = screen_rng(config, 2, e, p, well_index[row.well], site)
            if hard:
                image, cells = render_hard_field(
                    rng, 6, size, lambda r, n, st=states, re=respond: draw_cell_states(
                        r, n, st, re, 1.0, config.spontaneous_fraction),
                    background=background, peak=peak, bit_depth=8, plate=plates[e, p],
                    intensities=base.intensities)
                cell_tables.append(cell_rows(f"{experiment}_{p + 1}", row.well, site, cells))
                field_rows.append({"plate": f"{experiment}_{p + 1}", "well": row.well,
                                   "site": site, "image": f"{row.well}_s{site}_w1.png"})
            else:
                image = make_cells(rng, (6, *size), pheno, background=background, peak=peak,
                                   bit_depth=8, acquisition=acq[e, p])
            image = image.astype(np.uint8)
            folder = image_root / experiment / f"Plate{p + 1}"
            paths = [folder / f"{row.well}_s{site}_w{c}.png" for c in range(1, 7)]
            for c, path in enumerate(paths):
                write_png(path, image[c])
            rows.append({
                "site_id": f"{well_id}_{site}", "well_id": well_id, "cell_type": cell_type,
                "dataset": dataset, "experiment": experiment, "plate": p + 1,
                "well": row.well, "site": site, "well_type": si["well_type"],
                "sirna": si["sirna"], "sirna_id": int(si["sirna_id"]),
                "group": int(si["group"]),
                "paths": [str(x) for x in paths],
            })
    sites = pd.DataFrame(rows)
    metadata_csv = root / "metadata.csv"
    sites[list(RXRX1_COLUMNS)].to_csv(metadata_csv, index=False, lineterminator="\n")
    out = {"root": root, "metadata_csv": metadata_csv, "image_root": image_root, "sites": sites}
    if hard:
        cells = pd.concat(cell_tables, ignore_index=True)
        fields = pd.DataFrame(field_rows).merge(oracle_table(cells), on=["plate", "well", "site"],
                                                how="left")
        fields[oracle_columns()] = fields[oracle_columns()].fillna(0.0)
        found = [hard_sirna(config, s, w) for s, w in zip(sirnas["sirna"], sirnas["well_type"],
                                                          strict=True)]
        treatments = sirnas.assign(
            response=[r for _, r in found],
            states=[";".join(f"{k}={v}" for k, v in sorted(st.items())) for st, _ in found])
        names = {(e, p): (exp, f"{exp}_{p + 1}") for e, exp in enumerate(config.rxrx_experiments)
                 for p in range(config.rxrx_sirna_groups)}
        tables = {"cells": cells, "fields": fields, "treatments": treatments,
                  "plates": plates_table(plates, names)}
        out.update(ground_truth=tables, ground_truth_dir=write_ground_truth(root, tables))
    return out


def hard_sirna(config: SyntheticScreen, sirna: str, well_type: str) -> tuple[dict[str, str], float]:
    """Hard screen: (states of the responding cells, share responding) of an siRNA.

    ``EMPTY`` (the negative control): none; others: states drawn from the siRNA's name
    (:func:`.morphology.moa_states`) and ``response_fraction``.
    """
    if well_type == "negative_control":
        return {}, 0.0
    return moa_states("sirna:" + sirna), config.response_fraction

