"""CytoImageNet adapter on every real per-source table in shared/data/cytoimagenet-harmonized."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cytodata import sources
from cytodata.errors import SourceError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIN = DATA / "cytoimagenet-harmonized"
ROWS = {"bbbc014_metadata.csv": 192, "bbbc026_metadata.csv": 864, "bbbc039_metadata.csv": 200,
        "cil_kinome_metadata.csv": 908, "kag_blood_cell_metadata.csv": 12_373,
        "kag_cell_cycle_metadata.csv": 90, "kag_hpa_singlecell_2021_train.csv": 4 * 21_806,
        "kag_leukemia_metadata.csv": 13_766}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return sources.read("cytoimagenet", path=CIN)


def _by(table, name):
    return table[table["table"] == name]


def test_reads_all_files(table):
    assert table["table"].value_counts().to_dict() == ROWS
    assert table["key"].is_unique and len(table) == sum(ROWS.values())


def test_harmonized_values(table):
    blood = _by(table, "kag_blood_cell_metadata.csv")
    # NEUTROPHIL, "NEUTROPHIL, EOSINOPHIL", "EOSINOPHIL,EOSINOPHIL" ... -> one token; 639 empty cells
    assert set(blood["cell_type"].dropna()) == {"white blood cell"}
    assert blood["cell_type"].isna().sum() == 639
    leuk = _by(table, "kag_leukemia_metadata.csv")
    assert leuk["cell_type"].iloc[0] == "red blood cell|white blood cell"   # list literal
    assert set(_by(table, "bbbc014_metadata.csv")["cell_type"]) == {"mcf7|a549"}
    b26 = _by(table, "bbbc026_metadata.csv")
    assert set(b26["microscopy"]) == {"fluorescence"}                 # "fluorescence (?)"
    assert set(b26["organism"]) == {"human|mouse"}
    b39 = _by(table, "bbbc039_metadata.csv")
    assert set(b39["cell_visible"]) == {"nucleus"} and set(b39["cell_type"]) == {"u2os"}
    kin = _by(table, "cil_kinome_metadata.csv")
    assert kin["channels"].iloc[0] == ["f_nucleus+f_protein"]
    assert kin["channel_paths"].iloc[0] == ["/ferrero/stan_data/cil_kinome/53464.tif"]


def test_paths_and_ids(table):
    blood = _by(table, "kag_blood_cell_metadata.csv").iloc[0]      # M:/ferrero/... Windows path
    assert blood["channel_paths"] == ["/ferrero/stan_data/kag_blood_cell/_0_1022.jpeg"]
    assert blood["image_id"] == "kag_blood_cell/_0_1022.jpeg" == blood["parent_id"]
    assert blood["channels"] == ["brightfield"]
    cyc = _by(table, "kag_cell_cycle_metadata.csv").iloc[0]
    assert cyc["image_id"] == "kag_cell_cycle/nematode cells/nematode cells/interphase/IMG_1667-1.jpg"
    assert cyc["key"] == "cytoimagenet__kag_cell_cycle-nematode-cells-nematode-cells-interphase-IMG_1667-1-jpg"


def test_hpa_class_names(table):
    hpa = _by(table, "kag_hpa_singlecell_2021_train.csv").set_index("image_id")
    field = "kag_hpa_singlecell_2021/train/5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"
    row = hpa.loc[field + "_green"]
    assert row["cell_visible"] == "intermediate filaments|nuclear bodies|nucleoplasm"   # 8|5|0
    assert row["channels"] == ["green"] and row["parent_id"] == field
    green = "train/5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0_green.png"
    assert row["channel_paths"] == [str(CIN / green)]
    # CytoImageNet's per-channel rows: what each reference channel stains
    assert hpa.loc[field + "_blue", "cell_visible"] == "nucleus"
    assert hpa.loc[field + "_red", "cell_visible"] == "microtubules"
    assert hpa.loc[field + "_yellow", "cell_visible"] == "endoplasmic reticulum"
    assert hpa.loc["kag_hpa_singlecell_2021/train/5fb643ee-bb99-11e8-b2b9-ac1f6b6435d0_green",
                   "cell_visible"] == "mitochondria|nucleoplasm"                       # 14|0
    assert hpa["cell_visible"].str.contains("vesicles and punctate cytosolic patterns").any()
    # one canonical actin (class 9 "actin filaments"), class 18 "negative" is no token
    tokens = set(hpa["cell_visible"].dropna().str.split("|").explode())
    assert "actin" in tokens and "actin filaments" not in tokens and "negative" not in tokens
    assert "nucleolus" in tokens and "nucleoli" not in tokens


def test_hpa_stacked_fields(tmp_path):
    (tmp_path / "hpa.csv").write_text("ID,Label\nabc,9|18\nxyz,18\n")
    t = sources.read("cytoimagenet", path=tmp_path / "hpa.csv", hpa_channels="stack")
    assert t["channels"].iloc[0] == ["red", "green", "blue", "yellow"]
    assert t["cell_visible"].tolist()[0] == "actin" and pd.isna(t["cell_visible"].iloc[1])


def test_image_root_reroots_after_dir_name(tmp_path):
    t = sources.read("cytoimagenet", path=CIN / "kag_cell_cycle_metadata.csv", image_root=tmp_path)
    assert t["channel_paths"].iloc[0] == [str(tmp_path / "kag_cell_cycle/nematode cells/"
                                              "nematode cells/interphase/IMG_1667-1.jpg")]


def test_release_metadata_with_crops_and_backslashes(tmp_path):
    cols = ("label,category,database,name,dir_name,path,filename,idx,organism,cell_type,cell_visible,"
            "phenotype,compound,sirna,gene,microscopy,crop,scaling,x_min,x_max,y_min,y_max")
    rows = [
        r"nucleus,cell_visible,BBBC,B39,bbbc039,M:\ferrero\stan_data\bbbc039\images,a.png,1,human,"
        r"U-2 OS,nuclei,,,,ACTB,fluorescence,False,1.0,,,,",
        r"nucleus,cell_visible,BBBC,B39,bbbc039,M:\ferrero\stan_data\bbbc039\images,a.png,2,human,"
        r"U-2 OS,nuclei,,,,ACTB,fluorescence,True,0.5,0,256,256,512",
    ]
    (tmp_path / "metadata.csv").write_text(cols + "\n" + "\n".join(rows) + "\n")
    t = sources.read("cytoimagenet", path=tmp_path / "metadata.csv")
    assert t["image_id"].tolist() == ["bbbc039/images/a.png", "bbbc039/images/a.png@0-256-256-512"]
    assert t["parent_id"].tolist() == ["bbbc039/images/a.png"] * 2
    assert t["crop"].tolist() == [False, True] and t["x_max"].tolist()[1] == 256
    assert t["gene"].tolist() == ["actb targeted"] * 2 and t["cell_type"].tolist() == ["u2os"] * 2
    assert t["channel_paths"].iloc[0] == ["/ferrero/stan_data/bbbc039/images/a.png"]
    assert t["channels"].iloc[0] == ["gray"] and t["label"].iloc[0] == "nucleus"


def test_bad_tables(tmp_path):
    (tmp_path / "x.csv").write_text("database,name,filename\nA,B,c.png\n")
    with pytest.raises(SourceError, match=r"x\.csv: missing column\(s\) \['path'\]; available"):
        sources.read("cytoimagenet", path=tmp_path / "x.csv")
    (tmp_path / "hpa.csv").write_text("ID,Label\nabc,8|19\n")
    with pytest.raises(SourceError, match=r"row 0: Label '8\|19' is not"):
        sources.read("cytoimagenet", path=tmp_path / "hpa.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no \\*.csv tables"):
        sources.read("cytoimagenet", path=tmp_path / "empty")
