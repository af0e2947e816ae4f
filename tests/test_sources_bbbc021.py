"""BBBC021 adapter on the real BBBC021 v1 metadata."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cytodata import schema, sources
from cytodata.curate.ledger import Ledger
from cytodata.errors import SchemaError, SourceError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BBBC = DATA / "bbbc021"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return sources.read("bbbc021", root=BBBC)


def test_counts_match_the_published_set(table):
    assert len(table) == 13_200
    assert table["plate"].nunique() == 55
    assert sorted(table["batch"].unique(), key=lambda w: int(w[4:])) == [f"Week{i}" for i in range(1, 11)]
    assert table["site"].value_counts().to_dict() == {1: 3300, 2: 3300, 3: 3300, 4: 3300}
    trt = table[table["moa"].notna() & (table["control_type"] == "trt")]
    assert trt.groupby(["compound", "concentration"]).ngroups == 103
    assert trt["compound"].nunique() == 38
    assert trt["moa"].nunique() == 12
    assert len(trt) == 2528
    assert (table["control_type"] == "negcon").sum() == 1320
    assert set(table.loc[table["control_type"] == "negcon", "compound"]) == {"dmso"}
    assert set(table.loc[table["control_type"] == "negcon", "moa"]) == {"DMSO"}
    assert table["compound"].nunique() == 113
    assert table["key"].is_unique


def test_first_row_fields(table):
    row = table.iloc[0]
    assert row["image_id"] == "Week4_27481_G10_s1" == row["parent_id"]
    assert row["key"] == "bbbc021__Week4_27481_G10_s1"
    assert (row["plate"], row["well"], row["site"], row["batch"]) == ("Week4_27481", "G10", 1, "Week4")
    assert row["compound"] == "5-fluorouracil" and row["concentration"] == pytest.approx(0.003)
    assert pd.isna(row["moa"])  # 5-FU at 0.003 uM is not among the MOA-annotated treatments
    assert row["channels"] == ["DAPI", "Tubulin", "Actin"]
    assert row["channel_paths"][0] == str(
        BBBC / "Week4/Week4_27481/G10_s1_w1BEDC2073-A983-4B98-95E9-84466707A25D.tif")
    assert all(Path(p).is_absolute() for p in row["channel_paths"])
    assert (row["organism"], row["cell_type"], row["microscopy"]) == ("human", "mcf7", "fluorescence")
    emetine = table[(table["compound"] == "emetine") & (table["concentration"] == 0.3)]
    assert len(emetine) and set(emetine["moa"]) == {"Protein synthesis"}


def test_image_root_reroots_paths(tmp_path):
    t = sources.read("bbbc021", root=BBBC, image_root=tmp_path, source="b21")
    assert t["channel_paths"].iloc[0][2].startswith(str(tmp_path) + "/Week4/Week4_27481/G10_s1_w4")
    assert t["key"].iloc[0] == "b21__Week4_27481_G10_s1" and set(t["source"]) == {"b21"}
    schema.validate(t)


def _small(tmp_path: Path, n: int = 8) -> Path:
    lines = (BBBC / "BBBC021_v1_image.csv").read_text().splitlines(keepends=True)
    (tmp_path / "BBBC021_v1_image.csv").write_text("".join(lines[: n + 1]))
    (tmp_path / "BBBC021_v1_moa.csv").write_text((BBBC / "BBBC021_v1_moa.csv").read_text())
    return tmp_path


def test_duplicate_rows_ledger_or_error(tmp_path):
    root = _small(tmp_path)
    csv = root / "BBBC021_v1_image.csv"
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines + [lines[2], lines[3]]))
    with pytest.raises(SchemaError, match=r"BBBC021_v1_image\.csv.*duplicate id.*rows 8, 9"):
        sources.read("bbbc021", root=root)
    ledger = Ledger()
    t = sources.read("bbbc021", root=root, ledger=ledger)
    assert len(t) == 8
    led = ledger.to_frame()
    assert led["reason"].tolist() == ["duplicate id"] * 2
    assert led["stage"].tolist() == ["read"] * 2
    assert led["input_id"].tolist() == ["Week4_27481_G10_s2", "Week4_27481_G10_s3"]
    ledger.check(10, len(t))


def test_empty_file_name_is_bad_metadata(tmp_path):
    root = _small(tmp_path)
    t = pd.read_csv(root / "BBBC021_v1_image.csv", dtype=str)
    t.loc[3, "Image_FileName_Actin"] = None
    t.to_csv(root / "BBBC021_v1_image.csv", index=False)
    with pytest.raises(SchemaError, match="bad metadata in rows 3"):
        sources.read("bbbc021", root=root)
    ledger = Ledger()
    assert len(sources.read("bbbc021", root=root, ledger=ledger)) == 7
    assert ledger.to_frame()["reason"].tolist() == ["bad metadata"]


def test_renamed_column_names_file_and_columns(tmp_path):
    root = _small(tmp_path)
    t = pd.read_csv(root / "BBBC021_v1_image.csv", dtype=str)
    t.rename(columns={"Image_Metadata_Compound": "Compound"}).to_csv(
        root / "BBBC021_v1_image.csv", index=False)
    with pytest.raises(SourceError, match=r"BBBC021_v1_image\.csv: missing column\(s\) "
                                          r"\['Image_Metadata_Compound'\]; available: .*'Compound'"):
        sources.read("bbbc021", root=root)


def test_moa_join_tolerates_float_formatting(tmp_path):
    root = _small(tmp_path, 2)
    (root / "BBBC021_v1_moa.csv").write_text('compound,concentration,moa\n5-fluorouracil,3e-3,"DNA x"\n')
    t = sources.read("bbbc021", root=root)
    assert t["moa"].tolist() == ["DNA x", "DNA x"]
