"""Crop rows (``x_min/x_max/y_min/y_max``) are cut to their window by every shard writer.

Windows partly outside the field are shifted inside when they fit; windows larger than the
field, or with missing/empty bounds, go to the ledger.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import webdataset as wds

from cytodata.schema import conform, make_key
from cytodata.shards import decode, write


def _field(folder: Path, h: int = 40, w: int = 56) -> tuple[np.ndarray, list[str]]:
    """A 2-channel uint16 field whose every pixel value is unique (so windows are identifiable)."""
    image = (np.arange(2 * h * w, dtype=np.uint32).reshape(2, h, w) * 7 % 65521).astype(np.uint16)
    paths = []
    for c in range(2):
        p = folder / f"field_c{c}.tif"
        tifffile.imwrite(p, image[c])
        paths.append(str(p))
    return image, paths


def _rows(paths: list[str], windows: dict[str, tuple]) -> pd.DataFrame:
    rows = []
    for name, (x0, x1, y0, y1) in windows.items():
        rows.append(dict(source="s", image_id=f"f1-{name}", parent_id="f1", crop=True,
                         x_min=x0, x_max=x1, y_min=y0, y_max=y1, plate="p", well="A01", site=1,
                         label="a", channels=["c0", "c1"], channel_paths=paths))
    t = pd.DataFrame(rows)
    t["key"] = [make_key(s, i) for s, i in zip(t["source"], t["image_id"], strict=True)]
    return conform(t)


WINDOWS = {
    "inside": (10, 26, 4, 20),          # 16 x 16 fully inside
    "left": (-5, 11, 4, 20),            # hangs over the left edge: shifted to x 0..16
    "bottom": (30, 46, 30, 46),         # hangs over the bottom (h = 40): shifted to y 24..40
    "corner": (50, 66, -3, 13),         # over the right and top edges
    "wide": (0, 60, 0, 16),             # 60 px wide in a 56 px field: cannot fit
    "empty": (5, 5, 0, 16),             # zero width
}
EXPECTED = {"inside": (10, 4), "left": (0, 4), "bottom": (30, 24), "corner": (40, 0)}


@pytest.mark.parametrize("fmt", ["webdataset", "zarr"])
def test_crop_rows_are_cut_to_their_window(tmp_path, fmt):
    image, paths = _field(tmp_path)
    table = _rows(paths, WINDOWS)
    out = tmp_path / "shards"
    summary = write(table, out, format=fmt, scheduler="synchronous", progress=False)
    assert summary["rows_in"] == 6 and summary["rows_written"] == 4
    ledger = pd.read_parquet(out / "ledger.parquet")
    reasons = dict(zip(ledger["input_id"], ledger["reason"], strict=True))
    assert reasons == {"f1-wide": "window does not fit", "f1-empty": "bad window"}
    assert "56 x 40" in ledger.set_index("input_id").loc["f1-wide", "detail"]
    if fmt == "webdataset":
        got = {}
        for sample in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False):
            img, meta = decode(sample)
            got[meta["image_id"].split("-", 1)[1]] = img
    else:
        import zarr

        arr = zarr.open_array(out / "image", mode="r")
        index = pd.read_parquet(out / "index.parquet")
        got = {k.split("-", 1)[1]: arr[int(i)]
               for k, i in zip(index["image_id"], index["row"], strict=True)}
    assert sorted(got) == sorted(EXPECTED)
    for name, (x0, y0) in EXPECTED.items():
        assert got[name].shape == (2, 16, 16), name
        assert np.array_equal(got[name], image[:, y0:y0 + 16, x0:x0 + 16]), name


def test_rows_without_window_keep_the_whole_field(tmp_path):
    image, paths = _field(tmp_path)
    t = pd.DataFrame([dict(source="s", image_id="f1", channels=["c0", "c1"], channel_paths=paths)])
    t["key"] = [make_key("s", "f1")]
    out = tmp_path / "shards"
    write(conform(t), out, scheduler="synchronous", progress=False)
    (sample,) = list(wds.WebDataset(str(next(out.glob("*.tar"))), shardshuffle=False))
    assert np.array_equal(decode(sample)[0], image)
