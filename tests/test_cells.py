"""Single-cell mode: locations table -> one crop row per cell -> shards holding the cells."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile
import webdataset as wds

from cytodata.curate.cells import cell_rows, read_locations
from cytodata.errors import SchemaError
from cytodata.schema import conform, make_key, validate


def _fields(tmp_path, n=3, h=40, w=50) -> pd.DataFrame:
    rows = []
    for i in range(n):
        image = np.full((2, h, w), i, np.uint16)
        paths = []
        for c in range(2):
            p = tmp_path / f"f{i}_c{c}.tif"
            tifffile.imwrite(p, image[c])
            paths.append(str(p))
        rows.append(dict(source="s", image_id=f"P1_A0{i}_s1", plate="P1", well=f"A0{i}", site=1,
                         compound=["dmso", "taxol", "taxol"][i], concentration=[0.0, 0.3, 3.0][i],
                         split="train", channels=["c0", "c1"], channel_paths=paths))
    t = pd.DataFrame(rows)
    t["key"] = [make_key(s, i) for s, i in zip(t["source"], t["image_id"], strict=True)]
    return validate(conform(t))


LOCS = pd.DataFrame({
    "Metadata_Plate": ["P1"] * 7 + ["P9"],
    "Metadata_Well": ["A00", "A00", "A00", "A01", "A01", "A01", "A01", "A00"],
    "Metadata_Site": [1, 1, 1, 1, 1, 1, 1, 1],
    "Nuclei_Location_Center_X": [25.2, 2.0, 48.9, 10.0, 60.0, 10.4, np.nan, 5.0],
    "Nuclei_Location_Center_Y": [20.0, 3.0, 39.0, 10.0, 5.0, 9.8, 4.0, 5.0],
})


def test_cells_windows_numbering_and_ledger(tmp_path):
    fields = _fields(tmp_path)
    cells, ledger = cell_rows(fields, LOCS, 16)
    # field A00: cells numbered by (y, x): (2, 3) -> 0, (25.2, 20) -> 1, (48.9, 39) -> 2
    a0 = cells[cells["parent_id"] == "P1_A00_s1"].set_index("image_id")
    assert list(a0.index) == [f"P1_A00_s1-cell000{k}" for k in range(3)]
    windows = a0[["x_min", "x_max", "y_min", "y_max"]].astype(int).values.tolist()
    assert windows == [[0, 16, 0, 16],        # near the corner: moved inside
                       [17, 33, 12, 28],      # centred: round(25.2) - 8 = 17
                       [34, 50, 24, 40]]      # over the bottom-right edge: moved inside
    assert (cells["crop"]).all() and set(cells["split"]) == {"train"}
    assert (cells["key"] == [make_key("s", i) for i in cells["image_id"]]).all()
    assert (cells["compound"].notna()).all() and (cells["plate"] == "P1").all()
    reasons = ledger.to_frame().groupby("reason")["input_id"].apply(sorted).to_dict()
    assert reasons == {
        "no field": ["location row 7"],                       # plate P9 is not in the manifest
        # A01 by y: (NaN, 4) -> 0, (60, 5) -> 1 (x outside), (10.4, 9.8) -> 2, (10, 10) -> 3
        "bad location": ["P1_A01_s1-cell0000", "P1_A01_s1-cell0001"],
        "duplicate window": ["P1_A01_s1-cell0003"],           # (10.4, 9.8) rounds to (10, 10)
        "no cells": ["P1_A02_s1"],
    }
    assert len(cells) == 4


def test_cells_do_not_depend_on_row_order_or_column_names(tmp_path):
    fields = _fields(tmp_path)
    a, _ = cell_rows(fields, LOCS, 16)
    plain = LOCS.rename(columns={"Metadata_Plate": "plate", "Metadata_Well": "well",
                                 "Metadata_Site": "site", "Nuclei_Location_Center_X": "x",
                                 "Nuclei_Location_Center_Y": "y"})
    plain["site"] = plain["site"].astype(str)     # sites as text join the Int64 manifest sites
    b, _ = cell_rows(fields.sample(frac=1, random_state=1), plain.sample(frac=1, random_state=2),
                     16)
    pd.testing.assert_frame_equal(a, b)


def test_join_by_key_and_labels(tmp_path):
    fields = _fields(tmp_path)
    locs = pd.DataFrame({"key": [fields["key"][1], fields["key"][2], "s__nope"],
                         "x": [20.0, 30.0, 1.0], "y": [20.0, 20.0, 1.0]})
    cells, ledger = cell_rows(fields, locs, 8, label_columns=("compound", "concentration"))
    assert cells["label"].tolist() == ["taxol@0.3", "taxol@3"]
    assert (cells["category"] == "compound+concentration").all()
    frame = ledger.to_frame()
    assert sorted(frame["reason"]) == ["no cells", "no field"]


def test_window_larger_than_field_goes_to_the_ledger(tmp_path):
    fields = _fields(tmp_path, n=1)
    cells, ledger = cell_rows(fields, LOCS.iloc[:3], 45)      # field is 50 x 40
    assert len(cells) == 0
    frame = ledger.to_frame()
    cells_dropped = frame.loc[frame["input_id"] != "P1_A00_s1", "reason"]
    assert (cells_dropped == "window does not fit").sum() == 3
    assert frame.set_index("input_id").loc["P1_A00_s1", "reason"] == "no cells"


def test_max_cells_per_field_is_seeded_and_order_free(tmp_path):
    fields = _fields(tmp_path, n=1, h=200, w=200)
    rng = np.random.default_rng(0)
    locs = pd.DataFrame({"plate": "P1", "well": "A00", "site": 1,
                         "x": rng.uniform(0, 199, 40).round(1),
                         "y": rng.uniform(0, 199, 40).round(1)})
    a, la = cell_rows(fields, locs, 8, max_cells_per_field=10, seed=1)
    b, _ = cell_rows(fields, locs.iloc[::-1], 8, max_cells_per_field=10, seed=1)
    c, _ = cell_rows(fields, locs, 8, max_cells_per_field=10, seed=2)
    assert len(a) == 10 and a["key"].tolist() == b["key"].tolist()
    assert a["key"].tolist() != c["key"].tolist()
    dropped = la.to_frame()
    assert len(a) + len(dropped) == 40 + int((dropped["reason"] == "no cells").sum())
    assert set(dropped["reason"]) <= {"not sampled", "duplicate window"}


def test_locations_errors_name_the_columns(tmp_path):
    with pytest.raises(SchemaError, match="Nuclei_Location_Center_X"):
        read_locations(pd.DataFrame({"a": [1], "b": [2]}))
    with pytest.raises(SchemaError, match="plate/well/site"):
        read_locations(pd.DataFrame({"x": [1.0], "y": [2.0], "plate": ["p"]}))
    with pytest.raises(SchemaError, match="not numeric"):
        read_locations(pd.DataFrame({"x": ["a"], "y": ["1"], "key": ["k"]}))


def test_deepprofiler_folder(tmp_path):
    fields = _fields(tmp_path, n=2)
    folder = tmp_path / "locations" / "P1"
    folder.mkdir(parents=True)
    pd.DataFrame({"Nuclei_Location_Center_X": [20.0], "Nuclei_Location_Center_Y": [20.0]}).to_csv(
        folder / "A01-1-Nuclei.csv", index=False)
    cells, _ = cell_rows(fields, tmp_path / "locations", 8)
    assert cells["parent_id"].tolist() == ["P1_A01_s1"]


def test_cli_on_the_synthetic_screen_shards_real_cells(tmp_path):
    """Synthetic BBBC021 layout -> manifest -> `cytodata cells` -> shards whose samples are the
    field's pixels around each true nucleus centre."""
    from cytodata.manifest import build
    from cytodata.shards import decode, write
    from cytodata.synthetic import SyntheticScreen, write_bbbc021_layout

    cfg = SyntheticScreen(n_batches=1, plates_per_batch=1, wells_per_plate=4,
                          dmso_wells_per_plate=1, sites_per_well=1, image_size=64, seed=2,
                          moas=("Actin disruptors", "DNA damage"), single_batch_moa=None,
                          unannotated_compounds=0)
    screen = write_bbbc021_layout(tmp_path / "screen", cfg)
    recipe = {"name": "cells-test", "sources": [{"adapter": "bbbc021", "source": "synth",
                                                  "params": {"root": str(screen["root"])}}]}
    build(recipe, tmp_path / "fields", progress=False)
    out = tmp_path / "cells"
    proc = subprocess.run([sys.executable, "-m", "cytodata", "cells", str(tmp_path / "fields"),
                           str(screen["locations_csv"]), "-o", str(out), "--size", "24",
                           "--label", "compound,concentration"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "cells from 4/4 fields" in proc.stdout
    cells = pd.read_parquet(out / "manifest.parquet")
    locs = pd.read_csv(screen["locations_csv"])
    prov = json.loads((out / "provenance.json").read_text())
    # every location row is a cell or a ledger row (plus "no cells" rows for fields, none here)
    assert prov["counts"]["cells"] == len(cells)
    assert len(cells) + prov["counts"]["dropped"] == len(locs)
    assert cells["label"].str.contains("@").all()
    write(out, tmp_path / "shards", scheduler="synchronous", progress=False)
    fields = {r.image_id: r for r in pd.read_parquet(tmp_path / "fields" / "manifest.parquet")
              .itertuples(index=False)}
    n = 0
    for sample in wds.WebDataset(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")),
                                 shardshuffle=False):
        image, meta = decode(sample)
        field = np.stack([tifffile.imread(p) for p in fields[meta["parent_id"]].channel_paths])
        y0, x0 = meta["y_min"], meta["x_min"]
        assert image.shape == (3, 24, 24)
        assert np.array_equal(image, field[:, y0:y0 + 24, x0:x0 + 24])
        n += 1
    assert n == len(cells)
