import pandas as pd
import pytest

from cytodata import schema
from cytodata.curate.ledger import Ledger
from cytodata.errors import LedgerError, SchemaError


def frame(**cols):
    n = len(next(iter(cols.values()))) if cols else 2
    base = {"source": ["s"] * n, "image_id": [f"i{k}" for k in range(n)],
            "channels": [["DNA"]] * n, "channel_paths": [[f"/x/{k}.tif"] for k in range(n)]}
    base.update(cols)
    df = pd.DataFrame(base)
    df["key"] = [schema.make_key(s, i) for s, i in zip(df.source, df.image_id)]
    return schema.conform(df)


def test_conform_types_and_order():
    t = frame(site=[1, None], concentration=["0.5", 1])
    assert list(t.columns[: len(schema.COLUMNS)]) == list(schema.COLUMNS)
    assert str(t["site"].dtype) == "Int64" and t["site"].isna().tolist() == [False, True]
    assert t["concentration"].tolist() == [0.5, 1.0]
    assert t["label"].dtype == "string"


def test_conform_names_column_and_row():
    with pytest.raises(SchemaError, match=r"'site'.*row 1: 'two'"):
        frame(site=[1, "two"])


def test_make_key_is_webdataset_safe():
    k = schema.make_key("bbbc021", "Week1/G10 s1.tif")
    assert "." not in k and "/" not in k and " " not in k
    assert k.startswith("bbbc021__")


def test_validate_duplicates_and_plate_well_site():
    t = frame(image_id=["a", "a"])
    with pytest.raises(SchemaError, match="duplicate keys"):
        schema.validate(t)
    t = frame(plate=["p", "p"], well=["A01", "A01"], site=[1, 1])
    with pytest.raises(SchemaError, match=r"share \(source, plate, well, site\)"):
        schema.validate(t)
    t = frame(plate=["p", "p"], well=["A01", "A01"], site=[1, 2])
    assert len(schema.validate(t)) == 2


def test_validate_channel_lists_and_vocabularies():
    t = frame()
    t.at[0, "channel_paths"] = ["/a", "/b"]
    with pytest.raises(SchemaError, match="differ in length"):
        schema.validate(t)
    with pytest.raises(SchemaError, match="control_type"):
        schema.validate(frame(control_type=["dmso", "trt"]))


def test_manifest_round_trip_and_jump_names(tmp_path):
    t = frame(plate=["p1", "p2"], well=["A01", "B02"], site=[1, 1])
    schema.write_manifest(t, tmp_path / "manifest.parquet")
    back = schema.read_manifest(tmp_path)
    assert back["channel_paths"].tolist() == [["/x/0.tif"], ["/x/1.tif"]]
    jump = schema.to_jump_names(back)
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ControlType"} <= set(jump.columns)


def test_ledger_invariant():
    t = frame(plate=["p1", "p2", "p3"])
    led = Ledger()
    led.drop(t.iloc[[0]], stage="read", reason="missing file", detail="/x/0.tif")
    assert led.to_frame()[["input_id", "reason"]].values.tolist() == [["i0", "missing file"]]
    led.check(3, 2)
    with pytest.raises(LedgerError, match="unaccounted"):
        led.check(3, 1)
