"""JUMP / Cell Painting Gallery adapter on real pe2loaddata LoadData CSVs and JUMP tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from cytodata import sources
from cytodata.errors import SchemaError, SourceError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
JUMP = DATA / "jump"
LOAD = JUMP / "load_data"
PHENIX = DATA / "images" / "pe2loaddata_BR00121482"
TABLES = dict(plates=JUMP / "plate.csv.gz", wells=JUMP / "well.csv.gz",
              compounds=JUMP / "compound_source.csv.gz", orf=JUMP / "orf.csv.gz",
              controls=JUMP / "perturbation_control.csv")


def test_cpg_plate_one_row_per_site():
    t = sources.read("jump", load_data=LOAD / "loaddata_cpg.csv.gz",
                     image_root="s3://cellpainting-gallery")
    assert len(t) == 3_456 and t["well"].nunique() == 384 and set(t["site"]) == set(range(1, 10))
    assert t["channels"].iloc[0] == ["RNA", "ER", "AGP", "Mito", "Brightfield", "DNA"]
    assert t["image_id"].iloc[0] == "BR00113255_A01_s1" and set(t["plate"]) == {"BR00113255"}
    assert t["channel_paths"].iloc[0][5] == (
        "s3://cellpainting-gallery/cpg0001-cellpainting-protocol/source_4/images/"
        "2020_06_19_Stain2_Batch1/images/BR00113255__2020-06-19T11_13_27-Measurement2/Images/"
        "r01c01f01p01-ch5sk1fk1fl1.tiff")
    assert "Metadata_ExposureTime" not in t.columns   # acquisition details dropped by default
    assert t["control_type"].isna().all()             # no well table: unknown
    full = sources.read("jump", load_data=LOAD / "loaddata_cpg.csv.gz", keep_metadata=True)
    assert full["Metadata_ChannelName"].iloc[0] == "HOECHST 33342"
    assert full["channel_paths"].iloc[0][0].startswith(str(LOAD) + "/cpg0001-cellpainting-protocol/")


@pytest.mark.parametrize("name, channels, image_id", [
    ("load_data_version5.csv", ["RNA", "ER", "AGP", "Mito", "Brightfield", "DPC"], "BR00122249_A01_s1"),
    ("load_data_version7.csv", ["Actin", "ER", "RNA", "AGP", "Mito", "Brightfield", "DNA"],
     "240624_WES_Perturbs_n_densities_1.1_A01_s1"),
])
def test_channel_discovery_differs_between_versions(name, channels, image_id):
    t = sources.read("jump", load_data=LOAD / name, image_root="/data/pe2loaddata")
    assert t["channels"].iloc[0] == channels and t["image_id"].iloc[0] == image_id
    assert t["key"].iloc[0] == "jump__" + image_id.replace(".", "-")
    assert t["channel_paths"].iloc[0][0].startswith("/data/pe2loaddata/tests/data/Version")


def test_version1_paths_exist_after_rewrite(tmp_path):
    t = pd.read_csv(PHENIX / "load_data_version1.csv", dtype=str)
    for col in [c for c in t.columns if c.startswith("PathName_")]:
        t[col] = str(PHENIX)
    t.to_csv(tmp_path / "load_data.csv", index=False)
    out = sources.read("jump", load_data=tmp_path / "load_data.csv")
    row = out.iloc[0]
    assert row["channels"] == ["RNA", "ER", "AGP", "Mito", "Brightfield", "DNA"]
    assert row["channel_paths"][5] == str(PHENIX / "r01c01f01p01-ch5sk1fk1fl1.tiff")  # DNA = ch5
    assert all(Path(p).is_file() for p in row["channel_paths"])


def _derived(tmp_path: Path) -> Path:
    """LoadData for two plates of well.csv.gz, derived from loaddata_cpg.csv.gz: the rows of
    wells A01-A04, site 1 of the real plate BR00113255 are copied twice, once with Metadata_Plate
    set to BR00117035 (ORF, source_4) and once to Dest210531-152149 (COMPOUND, source_10)."""
    t = pd.read_csv(LOAD / "loaddata_cpg.csv.gz", dtype=str)
    t = t[t["Metadata_Well"].isin(["A01", "A02", "A03", "A04"]) & (t["Metadata_Site"] == "1")]
    both = pd.concat([t.assign(Metadata_Plate="BR00117035"),
                      t.assign(Metadata_Plate="Dest210531-152149")])
    both.to_csv(tmp_path / "load_data.csv.gz", index=False)
    return tmp_path / "load_data.csv.gz"


def test_join_with_jump_tables(tmp_path):
    t = sources.read("jump", load_data=_derived(tmp_path), **TABLES).set_index("image_id")
    orf = t.loc[[f"BR00117035_A0{i}_s1" for i in range(1, 5)]]
    assert orf["gene"].tolist() == ["cdk9 targeted", "hmgb4 targeted", "cebpe targeted",
                                    "hcred targeted"]
    assert orf["control_type"].tolist() == ["trt", "trt", "trt", "negcon"]
    assert orf["compound"].isna().all()
    assert set(orf["batch"]) == {"2021_04_26_Batch1"} and set(orf["Metadata_Source"]) == {"source_4"}
    assert set(orf["Metadata_PlateType"]) == {"ORF"}
    cpd = t.loc[[f"Dest210531-152149_A0{i}_s1" for i in range(1, 4)]]
    assert cpd["compound"].tolist() == ["jcp2022_085227", "jcp2022_033924", "jcp2022_056163"]
    assert cpd["Metadata_JCP2022"].tolist()[1] == "JCP2022_033924"
    assert cpd["control_type"].tolist() == ["poscon", "negcon", "trt"]   # aloxistatin, DMSO, trt
    assert cpd["Metadata_Compound_Source"].tolist()[:2] == [
        "source_3|source_4|source_7|source_9", "source_4"]
    assert set(cpd["batch"]) == {"2021_05_31_U2OS_48_hr_run1"} and cpd["gene"].isna().all()
    assert pd.isna(t.loc["Dest210531-152149_A04_s1", "compound"]) is False


def test_several_files_and_inconsistent_channels(tmp_path):
    t = pd.read_csv(LOAD / "loaddata_cpg.csv.gz", dtype=str).head(3)
    t.to_csv(tmp_path / "a.csv", index=False)
    cols = list(t.columns)
    swapped = cols[2:4] + cols[:2] + cols[4:]                 # ER before RNA: same set
    t.assign(Metadata_Plate="P2")[swapped].to_csv(tmp_path / "b.csv", index=False)
    out = sources.read("jump", load_data=[tmp_path / "a.csv", tmp_path / "b.csv"])
    assert len(out) == 6 and all(c[:2] == ["RNA", "ER"] for c in out["channels"])
    assert out["channel_paths"].iloc[3][0].endswith("ch3sk1fk1fl1.tiff")   # RNA is ch3
    t.drop(columns=["FileName_OrigDNA", "PathName_OrigDNA"]).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(SourceError, match=r"c\.csv: channels .* differ from .* in .*a\.csv"):
        sources.read("jump", load_data=[tmp_path / "a.csv", tmp_path / "c.csv"])
    with pytest.raises(SchemaError, match="duplicate id"):
        sources.read("jump", load_data=[tmp_path / "a.csv", tmp_path / "a.csv"])


def test_bad_load_data(tmp_path):
    t = pd.read_csv(LOAD / "loaddata_cpg.csv.gz", dtype=str).head(2)
    t.drop(columns="Metadata_Site").to_csv(tmp_path / "nosite.csv", index=False)
    with pytest.raises(SourceError, match=r"nosite\.csv: missing column\(s\) \['Metadata_Site'\]"):
        sources.read("jump", load_data=tmp_path / "nosite.csv")
    t.drop(columns="PathName_OrigER").to_csv(tmp_path / "nopath.csv", index=False)
    with pytest.raises(SourceError, match=r"missing column\(s\) \['PathName_OrigER'\]"):
        sources.read("jump", load_data=tmp_path / "nopath.csv")
    t[[c for c in t.columns if c.startswith("Metadata_")]].to_csv(tmp_path / "meta.csv", index=False)
    with pytest.raises(SourceError, match=r"meta\.csv: no FileName_Orig<Channel> columns"):
        sources.read("jump", load_data=tmp_path / "meta.csv")
    shutil.copy(JUMP / "plate.csv.gz", tmp_path / "plate.csv.gz")
    with pytest.raises(SourceError, match=r"missing column\(s\) \['Metadata_Well', 'Metadata_Site'\]"):
        sources.read("jump", load_data=tmp_path / "plate.csv.gz")
