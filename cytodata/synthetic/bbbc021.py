"""The BBBC021 layout: per-channel 16-bit TIFFs, the image and MOA CSVs, cell locations."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from ._files import csv_line, slug, uuid_name, write_tiff
from .acquisition import acquisitions, hard_plates, plates_table
from .cells import make_cells
from .config import PLATE_WELLS, SyntheticScreen, screen_rng
from .hard_cells import render_hard_field
from .morphology import draw_cell_states, moa_states
from .phenotypes import PHENOTYPES, Phenotype, phenotype_for
from .truth import cell_rows, oracle_columns, oracle_table, write_ground_truth

BBBC021_CHANNELS: tuple[tuple[str, int], ...] = (("DAPI", 1), ("Tubulin", 2), ("Actin", 4))
#: the real BBBC021_v1_image.csv columns, and which of them are quoted text
BBBC021_IMAGE_COLUMNS: tuple[str, ...] = (
    "TableNumber", "ImageNumber",
    "Image_FileName_DAPI", "Image_PathName_DAPI", "Image_FileName_Tubulin",
    "Image_PathName_Tubulin", "Image_FileName_Actin", "Image_PathName_Actin",
    "Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI", "Replicate",
    "Image_Metadata_Compound", "Image_Metadata_Concentration",
)
_BBBC021_NUMERIC = frozenset({"TableNumber", "ImageNumber", "Replicate",
                              "Image_Metadata_Concentration"})



def bbbc021_header() -> str:
    """Return the header line of the real ``BBBC021_v1_image.csv`` (its quoting, LF end)."""
    return csv_line(BBBC021_IMAGE_COLUMNS,
                     [c not in _BBBC021_NUMERIC for c in BBBC021_IMAGE_COLUMNS])


def _compound_homes(config: SyntheticScreen) -> dict[str, int]:
    """Batch index of every compound: each compound lives in ONE week, as in the real BBBC021.

    ``single_batch_moa``'s compounds go to week 1; the compounds of every other MOA go to
    distinct weeks (the least loaded first), so those MOAs span several weeks through
    different compounds, which is what NSCB needs.
    """
    load = np.zeros(config.n_batches, dtype=int)
    homes: dict[str, int] = {}
    ordered = sorted(config.moas, key=lambda m: m != config.single_batch_moa)
    for moa in ordered:
        names = [f"{slug(moa)}-{k + 1}" for k in range(config.compounds_per_moa)]
        if moa == config.single_batch_moa:
            batches = [0] * len(names)
        else:
            by_load = sorted(range(config.n_batches), key=lambda b: (load[b], b))
            batches = [by_load[k % config.n_batches] for k in range(len(names))]
        for name, b in zip(names, batches, strict=True):
            homes[name] = b
            load[b] += 1
    for k in range(config.unannotated_compounds):
        b = int(np.argmin(load))
        homes[f"unannotated-{k + 1}"] = b
        load[b] += 1
    return homes


def bbbc021_treatments(config: SyntheticScreen) -> pd.DataFrame:
    """Treatments: one row per (compound, concentration) with moa, dose strength and home week.

    Compound names are ``<moa slug>-<k>``; unannotated compounds are ``unannotated-<k>`` with
    moa NA. ``strength`` (0.6-1.0) is how far the phenotype moves from DMSO's at that dose;
    ``batch_index`` is the compound's week (0-based, see :func:`_compound_homes`).
    """
    concs = sorted(config.concentrations)
    strength = np.linspace(0.6, 1.0, len(concs)) if len(concs) > 1 else np.ones(1)
    homes = _compound_homes(config)
    rows = []
    for moa in config.moas:
        for k in range(config.compounds_per_moa):
            name = f"{slug(moa)}-{k + 1}"
            for c, s in zip(concs, strength, strict=True):
                rows.append((name, float(c), moa, float(s), homes[name]))
    for k in range(config.unannotated_compounds):
        name = f"unannotated-{k + 1}"
        rows.append((name, float(concs[-1]), pd.NA, 1.0, homes[name]))
    out = pd.DataFrame(rows, columns=["compound", "concentration", "moa", "strength",
                                      "batch_index"])
    return out.astype({"compound": "string", "moa": "string"})


def _treatment_phenotype(config: SyntheticScreen, compound: str, moa, strength: float) -> Phenotype:
    """DMSO's phenotype moved towards the compound's (MOA phenotype + compound jitter)."""
    rng = np.random.default_rng(zlib.crc32(compound.encode("utf-8")) ^ (config.seed & 0xFFFF))
    if moa is pd.NA or moa is None:
        target = phenotype_for("compound:" + compound)
    else:
        target = phenotype_for(str(moa)).jitter(rng, 0.04)
    return PHENOTYPES["DMSO"].blend(target, strength)


def hard_treatment(config: SyntheticScreen, compound: str, moa, strength: float
                   ) -> tuple[dict[str, str], float]:
    """Hard screen: (states of the responding cells, share of cells responding) of a treatment.

    DMSO: no state, nobody responds. Otherwise the MOA's states (unannotated compounds: states
    drawn from the compound's name) and ``response_fraction * strength`` (the dose's strength,
    0.6-1.0) times a per-compound factor ``exp(N(0, 0.1))``, at most 1.
    """
    if compound == "DMSO":
        return {}, 0.0
    rng = np.random.default_rng(zlib.crc32(("hard:" + compound).encode("utf-8"))
                                ^ (config.seed & 0xFFFF))
    annotated = not (moa is pd.NA or moa is None)
    states = moa_states(str(moa) if annotated else "compound:" + compound)
    respond = min(1.0, config.response_fraction * strength * float(np.exp(rng.normal(0, 0.1))))
    return states, respond


def bbbc021_plate_map(config: SyntheticScreen) -> pd.DataFrame:
    """Which treatment is in which well: one row per (batch, plate, well).

    Each week's treatments (those whose compound lives there) fill the week's non-DMSO wells
    in shuffled round-robin order, so with enough wells each is on several plates of its
    week; DMSO wells (in every week, the cross-batch reference) sit at random positions.
    """
    trt = bbbc021_treatments(config)
    rng = screen_rng(config, 1, 0)
    rows = []
    n_trt = config.wells_per_plate - config.dmso_wells_per_plate
    for b in range(config.n_batches):
        here = trt.index[trt["batch_index"] == b].to_numpy()
        slots = np.resize(rng.permutation(here), n_trt * config.plates_per_batch)
        for p in range(config.plates_per_batch):
            positions = rng.permutation(config.wells_per_plate)
            dmso = set(positions[: config.dmso_wells_per_plate].tolist())
            chosen = iter(slots[p * n_trt:(p + 1) * n_trt])
            for i, well in enumerate(PLATE_WELLS[: config.wells_per_plate]):
                if i in dmso or len(here) == 0:
                    rows.append((b, p, well, "DMSO", 0.0, "DMSO", 0.0))
                else:
                    t = trt.loc[next(chosen)]
                    rows.append((b, p, well, t["compound"], t["concentration"], t["moa"],
                                 t["strength"]))
    return pd.DataFrame(rows, columns=["batch_index", "plate_index", "well", "compound",
                                       "concentration", "moa", "strength"])


def write_bbbc021_layout(root: str | os.PathLike, config: SyntheticScreen | None = None) -> dict:
    """Write a BBBC021-layout screen under ``root``; returns paths and the ground truth.

    Files: ``<Week>/<Week>_<plate>/<Well>_s<site>_w<1|2|4><UUID>.tif`` (uint16, one per channel
    DAPI/Tubulin/Actin), ``BBBC021_v1_image.csv`` (the real header and quoting; TableNumber =
    week number mod 10, ImageNumber counted per table, Replicate = plate number in the week,
    concentrations in uM as ``%.6f``) and ``BBBC021_v1_moa.csv`` (``compound,concentration,moa``;
    DMSO at 0.0 with moa ``DMSO``; unannotated compounds left out).

    ``BBBC021_cell_locations.csv`` (:data:`BBBC021_LOCATIONS_FILE`) holds the true nucleus
    centre of every cell, one row per cell, with CellProfiler/DeepProfiler column names
    (:data:`BBBC021_LOCATION_COLUMNS`: ``Metadata_Plate, Metadata_Well, Metadata_Site,
    Image_FileName_DAPI, ObjectNumber, Nuclei_Location_Center_X, Nuclei_Location_Center_Y``;
    x = column, y = row, in pixels) for single-cell mode (``cytodata cells``).

    Returns ``{"root", "image_csv", "moa_csv", "images", "single_batch_moa", "locations_csv"}``
    where ``images`` has one row per site: table_number, image_number, batch, plate, replicate,
    well, site, compound, concentration, moa (NA if unannotated), paths (DAPI, Tubulin, Actin;
    absolute).
    """
    config = config or SyntheticScreen()
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    size = (config.image_size, config.image_size)
    plate_map = bbbc021_plate_map(config)
    hard = config.difficulty == "hard"
    if hard:
        plates = hard_plates(config, 1, len(BBBC021_CHANNELS), config.n_batches,
                             config.plates_per_batch, size, config.background)
        plate_names: dict = {}
        cell_tables: list[pd.DataFrame] = []
        field_rows: list[dict] = []
    else:
        acq = acquisitions(config, 1, len(BBBC021_CHANNELS), config.n_batches,
                           config.plates_per_batch, size, config.background)
    lines = [bbbc021_header()]
    quoted = [c not in _BBBC021_NUMERIC for c in BBBC021_IMAGE_COLUMNS]
    truth = []
    cells = [",".join(BBBC021_LOCATION_COLUMNS) + "\n"]
    image_number: dict[int, int] = {}
    for row in plate_map.itertuples(index=False):
        b, p = int(row.batch_index), int(row.plate_index)
        week = f"Week{b + 1}"
        plate = f"{week}_{22000 + 2000 * b + 20 * (p + 1) + 1}"
        rel = f"{week}/{plate}"
        strength = float(row.strength)
        if hard:
            plate_names[b, p] = (week, plate)
            states, respond = hard_treatment(config, str(row.compound), row.moa, strength)
        else:
            pheno = (PHENOTYPES["DMSO"] if row.compound == "DMSO" else
                     _treatment_phenotype(config, str(row.compound), row.moa, strength))
        well_idx = PLATE_WELLS.index(row.well)
        for site in range(1, config.sites_per_well + 1):
            rng = screen_rng(config, 1, b, p, well_idx, site)
            if hard:
                image, field_cells = render_hard_field(
                    rng, 3, size, lambda r, n, st=states, re=respond, s=strength: draw_cell_states(
                        r, n, st, re, s, config.spontaneous_fraction),
                    background=config.background, peak=config.peak, bit_depth=config.bit_depth,
                    plate=plates[b, p], intensities=HARD_INTENSITIES)
                centres = np.stack([field_cells["x"], field_cells["y"]], axis=1)
                cell_tables.append(cell_rows(plate, row.well, site, field_cells))
            else:
                image, centres = make_cells(rng, (3, *size), pheno, background=config.background,
                                            peak=config.peak, bit_depth=config.bit_depth,
                                            acquisition=acq[b, p], return_centres=True)
            names = []
            for c, (_, w) in enumerate(BBBC021_CHANNELS):
                name = f"{row.well}_s{site}_w{w}{uuid_name(rng)}.tif"
                write_tiff(root / rel / name, image[c])
                names.append(name)
            if hard:
                field_rows.append({"plate": plate, "well": row.well, "site": site,
                                   "image": names[0]})
            cells.extend(_location_line(plate, row.well, site, names[0], k, x, y)
                         for k, (x, y) in enumerate(centres, 1))
            table = (b + 1) % 10
            image_number[table] = image_number.get(table, 0) + 1
            values = [table, image_number[table], names[0], rel, names[1], rel, names[2], rel,
                      plate, row.well, p + 1, row.compound, f"{float(row.concentration):.6f}"]
            lines.append(csv_line(values, quoted))
            truth.append({
                "table_number": table, "image_number": image_number[table], "batch": week,
                "plate": plate, "replicate": p + 1, "well": row.well, "site": site,
                "compound": row.compound, "concentration": float(row.concentration),
                "moa": row.moa, "paths": [str(root / rel / n) for n in names],
            })
    image_csv = root / "BBBC021_v1_image.csv"
    image_csv.write_text("".join(lines), encoding="utf-8", newline="\n")
    moa_csv = root / "BBBC021_v1_moa.csv"
    trt = bbbc021_treatments(config).dropna(subset=["moa"])
    moa_lines = ['"compound",concentration,"moa"\n']
    moa_lines += [csv_line([t.compound, f"{t.concentration:.6f}", t.moa], [True, False, True])
                  for t in trt.itertuples(index=False)]
    moa_lines.append(csv_line(["DMSO", f"{0.0:.6f}", "DMSO"], [True, False, True]))
    moa_csv.write_text("".join(moa_lines), encoding="utf-8", newline="\n")
    locations_csv = root / BBBC021_LOCATIONS_FILE
    locations_csv.write_text("".join(cells), encoding="utf-8", newline="\n")
    images = pd.DataFrame(truth).astype({"batch": "string", "plate": "string", "well": "string",
                                         "compound": "string", "moa": "string"})
    out = {"root": root, "image_csv": image_csv, "moa_csv": moa_csv, "images": images,
           "single_batch_moa": config.single_batch_moa, "locations_csv": locations_csv}
    if hard:
        tables = _hard_truth(config, cell_tables, field_rows, plates_table(plates, plate_names))
        out.update(ground_truth=tables, ground_truth_dir=write_ground_truth(root, tables))
    return out


#: per-channel peak fractions (DAPI, Tubulin, Actin) of the hard screen: one for all treatments
HARD_INTENSITIES = (0.5, 0.4, 0.4)


def _hard_truth(config: SyntheticScreen, cell_tables: list, field_rows: list,
                plates: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The hard screen's ground-truth tables (:mod:`.truth`)."""
    cells = pd.concat(cell_tables, ignore_index=True)
    fields = pd.DataFrame(field_rows).merge(oracle_table(cells), on=["plate", "well", "site"],
                                            how="left")
    fields[oracle_columns()] = fields[oracle_columns()].fillna(0.0)
    trt = bbbc021_treatments(config)
    states, response = [], []
    for t in trt.itertuples(index=False):
        st, resp = hard_treatment(config, str(t.compound), t.moa, float(t.strength))
        states.append(";".join(f"{k}={v}" for k, v in sorted(st.items())))
        response.append(resp)
    trt = trt.assign(response=response, states=states)
    dmso = pd.DataFrame([{"compound": "DMSO", "concentration": 0.0, "moa": "DMSO",
                          "strength": 0.0, "batch_index": -1, "response": 0.0, "states": ""}])
    treatments = pd.concat([trt, dmso.astype(trt.dtypes.to_dict())], ignore_index=True)
    return {"cells": cells, "fields": fields, "treatments": treatments, "plates": plates}


#: the cell locations table written beside the BBBC021 CSVs (CellProfiler/DeepProfiler names)
BBBC021_LOCATIONS_FILE = "BBBC021_cell_locations.csv"
BBBC021_LOCATION_COLUMNS: tuple[str, ...] = (
    "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Image_FileName_DAPI", "ObjectNumber",
    "Nuclei_Location_Center_X", "Nuclei_Location_Center_Y",
)


def _location_line(plate: str, well: str, site: int, dapi: str, number: int, x: float,
                   y: float) -> str:
    # 3 decimals: CellProfiler prints centres as floats; sub-pixel digits carry no information
    return f"{plate},{well},{site},{dapi},{number},{x:.3f},{y:.3f}\n"

