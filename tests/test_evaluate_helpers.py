"""Helpers for the evaluation tests: the real BBBC021 metadata and synthetic screens.

Imported by the other ``test_evaluate_*`` modules; its own tests check the helpers.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BBBC021 = SHARED_DATA / "bbbc021"


def bbbc021_metadata() -> pd.DataFrame:
    """Harmonized-style BBBC021 image table (one row per image) from the two real CSVs.

    Uses ``cytodata.sources.read("bbbc021", root=...)`` when that adapter exists; otherwise
    joins image and MOA tables on (compound, concentration); batch = plate's week prefix.
    """
    try:
        from cytodata.sources import read

        table = read("bbbc021", root=BBBC021)
        if {"compound", "concentration", "moa", "batch", "plate", "well"} <= set(table.columns):
            return table.reset_index(drop=True)
    except Exception:  # noqa: BLE001 - the adapter is being written in parallel
        pass
    img = pd.read_csv(BBBC021 / "BBBC021_v1_image.csv")
    moa = pd.read_csv(BBBC021 / "BBBC021_v1_moa.csv")
    table = img.merge(moa, how="left",
                      left_on=["Image_Metadata_Compound", "Image_Metadata_Concentration"],
                      right_on=["compound", "concentration"])
    site = table["Image_FileName_DAPI"].map(lambda f: int(re.search(r"_s(\d+)_", f).group(1)))
    plate = table["Image_Metadata_Plate_DAPI"].astype(str)
    out = pd.DataFrame({
        "image_id": plate + "_" + table["Image_Metadata_Well_DAPI"] + "_s" + site.astype(str),
        "plate": plate,
        "well": table["Image_Metadata_Well_DAPI"],
        "site": site,
        "batch": plate.str.split("_").str[0],
        "compound": table["Image_Metadata_Compound"].str.lower(),
        "concentration": table["Image_Metadata_Concentration"].astype(float),
        "moa": table["moa"].str.lower(),
        "control_type": np.where(table["Image_Metadata_Compound"].str.lower() == "dmso",
                                 "negcon", "trt"),
    })
    out.insert(0, "key", "bbbc021__" + out["image_id"])
    return out


def random_embeddings(meta: pd.DataFrame, dim: int = 16, seed: int = 0) -> pd.DataFrame:
    """A key column + ``emb_*`` Gaussian features, one row per metadata row."""
    rng = np.random.default_rng(seed)
    emb = pd.DataFrame(rng.normal(size=(len(meta), dim)),
                       columns=[f"emb_{i:02d}" for i in range(dim)])
    emb.insert(0, "key", meta["key"].to_numpy())
    return emb


def simulate_screen(n_moa: int = 4, compounds_per_moa: int = 3, n_batches: int = 3,
                    plates_per_batch: int = 2, wells_per_treatment: int = 2,
                    dmso_wells: int = 8, sites: int = 2, dim: int = 12, signal: float = 1.5,
                    batch_offset: float = 6.0, batch_scale: float = 3.0, seed: int = 0
                    ) -> tuple[pd.DataFrame, list[str]]:
    """Image-level screen: MOA-dependent means, compound jitter, strong per-batch offset/scale.

    Compound i lies in batch i % n_batches (its wells on different plates of that batch), so
    each MOA spans several batches and NSCB can run; each batch applies
    x -> x * scale_b + offset_b (per feature) to every image, DMSO included.
    Returns (table, feature columns); the ground-truth MOA is in ``moa``.
    """
    rng = np.random.default_rng(seed)
    cols = [f"f{i:02d}" for i in range(dim)]
    moa_means = rng.normal(size=(n_moa, dim)) * signal
    offsets = rng.normal(size=(n_batches, dim)) * batch_offset
    scales = np.exp(rng.uniform(-np.log(batch_scale), np.log(batch_scale), (n_batches, dim)))
    rows, feats = [], []

    def add(batch, plate, well, compound, conc, moa, mean):
        for s in range(sites):
            x = mean + rng.normal(size=dim)
            feats.append(x * scales[batch] + offsets[batch])
            rows.append({"image_id": f"{plate}_{well}_s{s}", "batch": f"B{batch}", "plate": plate,
                         "well": well, "site": s, "compound": compound, "concentration": conc,
                         "moa": moa, "control_type": "trt" if moa else "negcon"})

    comp_i = 0
    for m in range(n_moa):
        for _c in range(compounds_per_moa):
            jitter = rng.normal(size=dim) * 0.3 * signal
            b = comp_i % n_batches
            for r in range(wells_per_treatment):
                plate = f"B{b}_P{r % plates_per_batch}"
                add(b, plate, f"T{comp_i:02d}r{r}", f"cmp{comp_i:02d}", 1.0, f"moa{m}",
                    moa_means[m] + jitter)
            comp_i += 1
    for b in range(n_batches):
        for p in range(plates_per_batch):
            for w in range(dmso_wells):
                add(b, f"B{b}_P{p}", f"D{w:02d}", "dmso", 0.0, None, np.zeros(dim))
    table = pd.DataFrame(rows)
    table.insert(0, "key", "sim__" + table["image_id"])
    return pd.concat([table, pd.DataFrame(feats, columns=cols)], axis=1), cols


def test_bbbc021_metadata_has_103_treatments():
    meta = bbbc021_metadata()
    assert len(meta) == 13200
    trt = meta[meta["moa"].notna() & (meta["compound"].str.lower() != "dmso")]
    assert len(trt[["compound", "concentration"]].drop_duplicates()) == 103
    assert trt["moa"].nunique() == 12
    assert meta["batch"].nunique() == 10


def test_simulated_screen_layout():
    table, cols = simulate_screen()
    assert len(cols) == 12
    trt = table[table["compound"] != "dmso"]
    assert (trt.groupby("compound")["batch"].nunique() == 1).all()
    assert (trt.groupby("moa")["batch"].nunique() == 3).all()
    assert table["key"].is_unique
