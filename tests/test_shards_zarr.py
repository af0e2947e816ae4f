"""Zarr v3 training array and OME-Zarr HCS export, read back with plain zarr and ome_zarr."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import tifffile
import zarr
from test_shards_webdataset import PHENIX, RXRX, kill_after, make_manifest, real_rows, synthetic_rows

from cytodata.images import read_image
from cytodata.shards import write


def test_zarr_array_round_trip_and_ledger(tmp_path):
    rows = synthetic_rows(tmp_path, 5, size=64)
    (tmp_path / "trunc.tif").write_bytes(open(rows[0]["channel_paths"][0], "rb").read()[:100])
    rows.append(dict(source="bad", image_id="trunc", plate="p9", well="A01", site=1, channels=["a", "b"],
                     channel_paths=[str(tmp_path / "trunc.tif"), rows[0]["channel_paths"][1]]))
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((80, 80), np.uint16))
    rows.append(dict(source="bad", image_id="big", plate="p9", well="A02", site=1, channels=["a"],
                     channel_paths=[str(tmp_path / "big.tif")]))
    out = tmp_path / "z"
    summary = write(make_manifest(rows), out, format="zarr", chunk=32, n_workers=2, progress=False)
    arr = zarr.open_array(out / "image", mode="r")
    assert arr.shape[1:] == (2, 64, 64) and arr.dtype == np.uint16 and arr.chunks == (1, 2, 32, 32)
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == summary["samples"] == 5
    for r in index.itertuples():
        i = int(r.key.split("im")[-1])
        np.testing.assert_array_equal(arr[r.row], read_image(rows[i]["channel_paths"]))
    ledger = pd.read_parquet(out / "ledger.parquet")
    assert dict(zip(ledger["input_id"], ledger["reason"])) == {"trunc": "truncated", "big": "shape mismatch"}
    meta = json.loads((out / "shards.json").read_text())
    assert meta["format"] == "cytodata-zarr" and meta["shape"] == [2, 64, 64]


def test_zarr_tiles_real_images(tmp_path):
    out = tmp_path / "z"
    write(make_manifest(real_rows()), out, format="zarr", tile=256, channel_mode="merged",
          scheduler="synchronous", progress=False)
    arr = zarr.open_array(out / "image", mode="r")
    index = pd.read_parquet(out / "index.parquet")
    # 1080 // 256 = 4 -> 16 tiles; 512 // 256 = 2 -> 4 tiles
    assert arr.shape == (20, 1, 256, 256) and len(index) == 20
    from cytodata.shards._samples import merge_channels

    merged = merge_channels(read_image(RXRX))
    r = index[(index["source"] == "rxrx1") & (index["x_min"] == 256) & (index["y_min"] == 0)].iloc[0]
    np.testing.assert_array_equal(arr[int(r["row"])][0], merged[0, 0:256, 256:512])
    assert r["key"] == "rxrx1__HEPG2-01_1_B02_1-t0-256"


def test_ome_zarr_plate_readable_by_ome_zarr(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    treat = dict(compound="taxol", concentration=0.3, moa="microtubule stabilizer", label="taxol",
                 control_type="trt")
    rows = [dict(real_rows()[0], **treat),
            dict(real_rows()[0], image_id="BR00121482_A01_2", site=2, **dict(treat, concentration=1.0))]
    out = tmp_path / "ome"
    write(make_manifest(rows), out, format="ome-zarr", scheduler="synchronous", progress=False)
    plate_path = out / "BR00121482.ome.zarr"
    from ome_zarr.reader import Plate

    nodes = list(Reader(parse_url(str(plate_path)))())
    assert any(isinstance(spec, Plate) for node in nodes for spec in node.specs)
    # the reader stitches the plate: one well of 2 fields side by side (row-major grid)
    assert nodes[0].data[0].shape[0] == 6 and nodes[0].data[0].shape[-2] >= 1080
    group = zarr.open_group(plate_path / "A" / "01" / "1", mode="r")
    level0 = group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
    field = zarr.open_array(plate_path / "A" / "01" / "1" / level0, mode="r")
    assert field.shape == (6, 1080, 1080)
    np.testing.assert_array_equal(field[:], read_image(PHENIX))
    # well-level treatment annotations beside the NGFF metadata: on the well, its fields, the plate
    well = zarr.open_group(plate_path / "A" / "01", mode="r").attrs["cytodata"]
    assert {k: well[k] for k in treat} == dict(treat, concentration=[0.3, 1.0])  # fields differ
    assert group.attrs["cytodata"]["concentration"] == 1.0 and group.attrs["cytodata"]["site"] == 2
    plate = zarr.open_group(plate_path, mode="r").attrs
    assert plate["cytodata"]["wells"]["A/01"]["compound"] == "taxol" and "plate" in plate["ome"]


ZARR_KILL_SCRIPT = """
import sys
import pandas as pd
from cytodata.shards import write
write(pd.read_parquet(sys.argv[1]), sys.argv[2], format="zarr", chunk=32, scheduler="synchronous",
      progress=False)
"""


def test_zarr_kill_and_resume_keeps_finished_parts_and_verifies_them(tmp_path):
    """Kill a Zarr write after some parts finished, re-run: finished parts are kept (their rows
    checked against the recorded sha256s), a damaged one is redone, every row is right."""
    import hashlib

    rows = synthetic_rows(tmp_path, 40, size=64)
    table = make_manifest(rows)
    out = tmp_path / "z"
    n_done = kill_after(ZARR_KILL_SCRIPT, table, out, "parts/*.done.json")
    assert 1 <= n_done < 8, f"kill came too late/early: {n_done} parts done"
    assert not (out / "shards.json").exists()
    # damage one finished part's first row: the re-run must notice and redo that part
    first = json.loads((out / "parts" / "part-000000.done.json").read_text())
    arr = zarr.open_array(out / "image", mode="r+")
    arr[first["index"][0]["row"]] = 0
    summary = write(table, out, format="zarr", chunk=32, scheduler="synchronous", progress=False)
    assert summary["shards_resumed"] == n_done - 1 and summary["parts"] == 8
    arr = zarr.open_array(out / "image", mode="r")
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == 40 and index["key"].is_unique and index["row"].is_unique
    for r in index.itertuples():
        i = int(r.key.split("im")[-1])
        expected = read_image(rows[i]["channel_paths"])
        np.testing.assert_array_equal(arr[r.row], expected)
        assert r.sha256 == hashlib.sha256(np.ascontiguousarray(expected)).hexdigest()


def test_rerun_over_unreadable_chunk_bytes_rewrites_that_part(tmp_path):
    """Chunk bytes of a finished Zarr part corrupted on disk: a re-run detects the part (its
    chunks no longer decode) and rewrites it instead of crashing with zstd's error."""
    rows = synthetic_rows(tmp_path, 8, size=64)
    table = make_manifest(rows)
    out = tmp_path / "z"
    first = write(table, out, format="zarr", chunk=32, scheduler="synchronous", progress=False)
    index = pd.read_parquet(out / "index.parquet")
    row = int(index["row"].iloc[3])
    shard_file = out / "image" / "c" / str(row) / "0" / "0" / "0"
    data = bytearray(shard_file.read_bytes())
    data[8: len(data) // 2] = b"\xff" * (len(data) // 2 - 8)  # garbage over the first chunks
    shard_file.write_bytes(bytes(data))
    summary = write(table, out, format="zarr", chunk=32, scheduler="synchronous", progress=False)
    assert summary["shards_resumed"] == first["parts"] - 1
    arr = zarr.open_array(out / "image", mode="r")
    for r in pd.read_parquet(out / "index.parquet").itertuples():
        i = int(r.key.split("im")[-1])
        np.testing.assert_array_equal(arr[r.row], read_image(rows[i]["channel_paths"]))
