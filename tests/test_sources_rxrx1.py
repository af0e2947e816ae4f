"""RxRx1 adapter: the real competition files, a release-layout metadata.csv, real PNGs."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from cytodata import sources
from cytodata.errors import SourceError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RXRX = DATA / "rxrx1"
PNGS = DATA / "images" / "rxrx1_HEPG2-01_Plate1"
RELEASE_HEADER = "site_id,well_id,cell_type,dataset,experiment,plate,well,site,well_type,sirna,sirna_id"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """A tree where ``{experiment}/Plate{plate}`` resolves: HEPG2-01/Plate1 -> the real PNGs."""
    root = tmp_path_factory.mktemp("rxrx1_images")
    (root / "HEPG2-01").mkdir()
    (root / "HEPG2-01" / "Plate1").symlink_to(PNGS, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def table(image_root) -> pd.DataFrame:
    return sources.read("rxrx1", root=RXRX, image_root=image_root)


def test_competition_layout_counts(table):
    wells = 36_515 + 4_097 + 19_897 + 2_246
    assert len(table) == 2 * wells                       # sites 1 and 2 expanded
    assert table["site"].value_counts().to_dict() == {1: wells, 2: wells}
    assert table["dataset"].value_counts().to_dict() == {"train": 2 * 40_612, "test": 2 * 22_143}
    assert table["control_type"].value_counts().to_dict() == {
        "trt": 2 * (36_515 + 19_897), "poscon": 2 * (3_944 + 2_153), "negcon": 2 * (153 + 93)}
    assert set(table["cell_type"]) == {"hepg2", "huvec", "rpe", "u2os"}
    assert table["batch"].nunique() == 51                 # 33 train + 18 test experiments
    assert table.loc[table["dataset"] == "test", "sirna"].isna().sum() == 2 * 19_897
    assert table["sirna_id"].max() == 1138 and table["key"].is_unique


def test_control_wells_match_their_counts():
    ctl = pd.read_csv(RXRX / "test_controls.csv.gz")
    assert (ctl["well_type"] == "negative_control").sum() == 93
    assert (ctl["well_type"] == "positive_control").sum() == 2_153


def test_negative_control_maps_to_real_pngs(table, image_root):
    row = table.set_index("image_id").loc["HEPG2-01_1_B02_1"]
    assert (row["control_type"], row["sirna"], row["cell_type"]) == ("negcon", "1138", "hepg2")
    assert (row["batch"], row["plate"], row["well"], row["site"]) == ("HEPG2-01", "HEPG2-01_1", "B02", 1)
    assert row["channel_paths"] == [str(image_root / f"HEPG2-01/Plate1/B02_s1_w{c}.png")
                                    for c in range(1, 7)]
    assert all(Path(p).is_file() for p in row["channel_paths"])
    assert row["channels"] == ["Hoechst", "ConA", "Phalloidin", "SYTO14", "MitoTracker", "WGA"]
    site2 = table.set_index("image_id").loc["HEPG2-01_1_B02_2"]
    assert not Path(site2["channel_paths"][0]).exists()   # only site 1 is in the sample


def test_release_metadata_csv(tmp_path, image_root):
    """A metadata.csv in the official rxrx.ai header, derived row by row from real competition
    rows (wells HEPG2-01_1_B02/B03/C03, sites 1-2). Not a release file: the release's ThermoFisher
    ``sirna`` ids are unknown here, so ``sirna`` is left empty and ``sirna_id`` holds the
    competition's integer."""
    wells = pd.concat([pd.read_csv(RXRX / "train_controls.csv.gz").head(2),
                       pd.read_csv(RXRX / "train.csv.gz").head(1).assign(well_type="treatment")])
    lines = [RELEASE_HEADER]
    for w in wells.itertuples():
        for site in (1, 2):
            lines.append(f"{w.id_code}_{site},{w.id_code},{w.experiment.split('-')[0]},train,"
                         f"{w.experiment},{w.plate},{w.well},{site},{w.well_type},,{w.sirna}")
    (tmp_path / "metadata.csv").write_text("\n".join(lines) + "\n")
    t = sources.read("rxrx1", root=tmp_path, image_root=image_root)
    assert t["image_id"].tolist() == ["HEPG2-01_1_B02_1", "HEPG2-01_1_B02_2", "HEPG2-01_1_C03_1",
                                      "HEPG2-01_1_C03_2", "HEPG2-01_1_B03_1", "HEPG2-01_1_B03_2"]
    assert t["control_type"].tolist() == ["negcon"] * 2 + ["poscon"] * 2 + ["trt"] * 2
    assert t["sirna_id"].tolist() == [1138, 1138, 1109, 1109, 513, 513]
    assert t["cell_type"].tolist() == ["hepg2"] * 6 and t["dataset"].tolist() == ["train"] * 6
    assert all(Path(p).is_file() for p in t["channel_paths"].iloc[0])


def test_release_metadata_missing_column(tmp_path):
    (tmp_path / "metadata.csv").write_text(RELEASE_HEADER.replace(",well_type", "") + "\n")
    with pytest.raises(SourceError, match=r"metadata\.csv: missing column\(s\) \['well_type'\]"):
        sources.read("rxrx1", root=tmp_path)


def test_competition_subset_and_bad_well_type(tmp_path):
    with gzip.open(RXRX / "train_controls.csv.gz", "rt") as f:
        lines = f.read().splitlines()[:4]
    lines[2] = lines[2].replace("positive_control", "weird")
    (tmp_path / "train_controls.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=r"unknown well_type 'weird' in rows 1;"):
        sources.read("rxrx1", root=tmp_path)
    with pytest.raises(SourceError, match="no metadata in"):
        sources.read("rxrx1", root=tmp_path / "nothing")
