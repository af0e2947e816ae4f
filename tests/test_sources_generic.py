"""csv and folder adapters, the registry, and bad-input handling shared by all adapters."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cytodata import sources
from cytodata.curate.ledger import Ledger
from cytodata.errors import SchemaError, SourceError
from cytodata.sources._io import SourceEncodingWarning


def test_available_lists_every_adapter():
    assert sources.available() == ["bbbc021", "csv", "cytoimagenet", "folder", "jump", "rxrx1"]
    with pytest.raises(ValueError, match="unknown source 'nope'; valid names: bbbc021, csv"):
        sources.read("nope")


def _csv(tmp_path: Path, text: str, name: str = "t.csv", encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_csv_adapter_mapping_root_values(tmp_path):
    p = _csv(tmp_path, "id,dna,actin,Drug,Cells\n"
                       "a,img/a_1.tif,img/a_2.tif,Taxol,HeLa\n"
                       "b,/abs/b_1.tif,img/b_2.tif,,U-2 OS\n")
    t = sources.read("csv", path=p, channels={"DNA": "dna", "Actin": "actin"}, id_column="id",
                     columns={"compound": "Drug", "cell_type": "Cells"},
                     values={"organism": "Human", "plate": "P1"}, root="/data", source="mine")
    assert t["key"].tolist() == ["mine__a", "mine__b"]
    assert t["channels"].tolist() == [["DNA", "Actin"]] * 2
    assert t["channel_paths"].tolist() == [["/data/img/a_1.tif", "/data/img/a_2.tif"],
                                           ["/abs/b_1.tif", "/data/img/b_2.tif"]]
    assert t["compound"].tolist()[0] == "taxol" and pd.isna(t["compound"].iloc[1])  # NaN label ok
    assert t["cell_type"].tolist() == ["hela", "u2os"] and set(t["organism"]) == {"human"}
    assert set(t["plate"]) == {"P1"}
    default = sources.read("csv", path=p, channels=["dna"])
    assert default["image_id"].tolist() == ["img/a_1.tif", "/abs/b_1.tif"]
    assert default["channel_paths"].iloc[0] == [str(tmp_path / "img/a_1.tif")]


def test_missing_columns_name_file_and_columns(tmp_path):
    p = _csv(tmp_path, "id,dna\na,x.tif\n")
    with pytest.raises(SourceError, match=r"t\.csv: missing column\(s\) \['Drug'\]; "
                                          r"available: \['id', 'dna'\]"):
        sources.read("csv", path=p, channels={"DNA": "dna"}, columns={"compound": "Drug"})
    with pytest.raises(SourceError, match="give 'channels'"):
        sources.read("csv", path=p)
    with pytest.raises(SourceError, match="not found"):
        sources.read("csv", path=tmp_path / "absent.csv", channels=["dna"])


def test_empty_csv(tmp_path):
    with pytest.raises(SourceError, match=r"empty\.csv is empty \(no header line\)"):
        sources.read("csv", path=_csv(tmp_path, "", "empty.csv"), channels=["dna"])
    with pytest.raises(SourceError, match=r"header\.csv has a header but no data rows"):
        sources.read("csv", path=_csv(tmp_path, "id,dna\n", "header.csv"), channels=["dna"])


def test_non_utf8_falls_back_to_latin1_with_warning(tmp_path):
    p = _csv(tmp_path, "dna,phen\nx.tif,Zellkern grün\n", "latin.csv", encoding="latin-1")
    with pytest.warns(SourceEncodingWarning, match=r"latin\.csv is not valid UTF-8"):
        t = sources.read("csv", path=p, channels=["dna"], columns={"phenotype": "phen"})
    assert t["phenotype"].iloc[0] == "zellkern grün"
    ok = _csv(tmp_path, "dna,phen\nx.tif,grün\n", "utf8.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sources.read("csv", path=ok, channels=["dna"],
                            columns={"phenotype": "phen"})["phenotype"].iloc[0] == "grün"


def test_regex_characters_and_slash_kept_verbatim(tmp_path):
    p = _csv(tmp_path, 'dna,phen\na.tif,"G2/M (arrest)*"\nb.tif,a+b|c.d?\nc.tif,[x]\n')
    t = sources.read("csv", path=p, channels=["dna"], columns={"phenotype": "phen"})
    assert t["phenotype"].tolist() == ["g2/m (arrest)*", "a+b|c.d", "[x]"]


def test_duplicates_and_bad_rows_ledger_or_error(tmp_path):
    p = _csv(tmp_path, "id,dna\na,1.tif\nb,\na,3.tif\n,4.tif\nc,5.tif\n")
    with pytest.raises(SchemaError, match=r"t\.csv: bad metadata in rows 1, 3"):
        sources.read("csv", path=p, channels=["dna"], id_column="id")
    ledger = Ledger()
    t = sources.read("csv", path=p, channels=["dna"], id_column="id", ledger=ledger)
    assert t["image_id"].tolist() == ["a", "c"]
    led = ledger.to_frame()
    assert list(zip(led["input_id"].fillna("<NA>"), led["reason"])) == [
        ("b", "bad metadata"), ("<NA>", "bad metadata"), ("a", "duplicate id")]
    assert set(led["stage"]) == {"read"} and set(led["source"]) == {"csv"}
    ledger.check(5, len(t))


def _tif(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros((4, 4), np.uint16))


def test_folder_single_channel(tmp_path):
    for cls, n in (("mitosis", 2), ("G2 M", 1)):
        for i in range(n):
            _tif(tmp_path / cls / f"img_{i}.tif")
    (tmp_path / "mitosis" / "notes.txt").write_text("ignored: not an image extension")
    t = sources.read("folder", root=tmp_path)
    assert t["image_id"].tolist() == ["G2 M/img_0.tif", "mitosis/img_0.tif", "mitosis/img_1.tif"]
    assert t["phenotype"].tolist() == ["g2 m", "mitosis", "mitosis"]
    assert t["channels"].tolist() == [["gray"]] * 3
    assert t["channel_paths"].iloc[1] == [str(tmp_path / "mitosis/img_0.tif")]
    t2 = sources.read("folder", root=tmp_path, label_column="cell_type")
    assert t2["cell_type"].tolist()[1] == "mitosis" and t2["phenotype"].isna().all()


def test_folder_channel_pattern(tmp_path):
    for cls in ("a", "b"):
        for c in (1, 2, 10):
            _tif(tmp_path / cls / f"f1_w{c}.tif")
    t = sources.read("folder", root=tmp_path, channel_pattern=r"(?P<id>.+)_w(?P<channel>\d+)\.tif")
    assert t["image_id"].tolist() == ["a/f1", "b/f1"]
    assert t["channels"].iloc[0] == ["1", "2", "10"]
    assert t["channel_paths"].iloc[0][2] == str(tmp_path / "a/f1_w10.tif")
    nameless = sources.read("folder", root=tmp_path, channel_pattern=r".+_w(?P<channel>\d+)\.tif")
    assert nameless["image_id"].tolist() == ["a/f1_w.tif", "b/f1_w.tif"]
    (tmp_path / "b" / "f1_w10.tif").unlink()
    for c in (1, 2, 10):
        _tif(tmp_path / "c" / f"f1_w{c}.tif")
    with pytest.raises(SourceError, match=r"inconsistent channels: most fields have \['1', '2', '10'\]"
                                          r", but .b/f1: \['1', '2'\]"):
        sources.read("folder", root=tmp_path, channel_pattern=r"(?P<id>.+)_w(?P<channel>\d+)\.tif")
    _tif(tmp_path / "b" / "thumb.tif")
    with pytest.raises(SourceError, match="do not match channel_pattern"):
        sources.read("folder", root=tmp_path, channel_pattern=r"(?P<id>.+)_w(?P<channel>\d+)\.tif")
    with pytest.raises(SourceError, match=r"needs a named group \(\?P<channel>"):
        sources.read("folder", root=tmp_path, channel_pattern=r"(.+)\.tif")


def test_folder_bad_roots(tmp_path):
    with pytest.raises(SourceError, match="is not a folder"):
        sources.read("folder", root=tmp_path / "absent")
    with pytest.raises(SourceError, match="no .* files in class folders"):
        sources.read("folder", root=tmp_path)
    with pytest.raises(SourceError, match="label_column 'klass' is not a schema column"):
        sources.read("folder", root=tmp_path, label_column="klass")
