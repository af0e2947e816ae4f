"""Labelled Zarr (xarray) and OME-Zarr metadata (channel labels, pixel sizes, key -> field map)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import xarray as xr
from test_shards_webdataset import make_manifest, synthetic_rows

from cytodata.errors import ShardError
from cytodata.images import read_image
from cytodata.shards import open_xarray, write


def _rows_with_a_bad_one(tmp_path, n=5):
    rows = synthetic_rows(tmp_path, n, size=32)
    for i, r in enumerate(rows):
        r.update(split=["train", "val"][i % 2], site=i + 1)
    # header intact, pixels cut short: the row is planned, then fails to read
    (tmp_path / "trunc.tif").write_bytes(open(rows[0]["channel_paths"][0], "rb").read()[:-300])
    rows.append(dict(rows[0], image_id="trunc", plate="p9", label="bad",
                     channel_paths=[str(tmp_path / "trunc.tif"), rows[0]["channel_paths"][1]]))
    return rows


def test_xarray_open_zarr_round_trip_with_names_and_coordinates(tmp_path):
    rows = _rows_with_a_bad_one(tmp_path)
    out = tmp_path / "z"
    write(make_manifest(rows), out, format="zarr", chunk=16, scheduler="synchronous",
          progress=False)
    for ds in (xr.open_zarr(out), xr.open_dataset(out, engine="zarr", chunks={})):
        assert ds["image"].dims == ("sample", "channel", "y", "x")
        # the truncated image's planned row is gone: every row of a finished set is written
        assert ds["image"].shape == (5, 2, 32, 32) and ds["image"].dtype == np.uint16
        assert bool(ds["written"].all()) and "" not in set(ds["key"].values)
        assert list(ds["channel"].values) == ["DNA", "RNA"]
        for name in ("key", "plate", "well", "site", "label", "split", "written"):
            assert ds[name].dims == ("sample",) and name in ds.coords
    ds = open_xarray(out)
    assert ds["image"].chunks == ((1,) * 5, (2,), (32,), (32,))  # one dask chunk per image, lazily
    index = pd.read_parquet(out / "index.parquet")
    assert int(ds["written"].sum()) == len(index) == 5 and sorted(index["row"]) == list(range(5))
    for r in index.itertuples():
        sample = ds.sel(sample=r.row)
        i = int(r.key.split("im")[-1])
        assert (str(sample["key"].values), str(sample["plate"].values), str(sample["split"].values),
                int(sample["site"].values), str(sample["label"].values)) == (
            r.key, rows[i]["plate"], rows[i]["split"], rows[i]["site"], rows[i]["label"])
        np.testing.assert_array_equal(sample["image"].values, read_image(rows[i]["channel_paths"]))
    # plain xarray.open_zarr: a mean over all rows is the mean of the written images (no zero rows)
    plain = xr.open_zarr(out)
    want = np.mean([read_image(rows[int(k.split("im")[-1])]["channel_paths"]).mean() for k in index["key"]])
    assert float(plain["image"].mean()) == pytest.approx(want)
    assert "trunc" not in set(plain["image_id"].values)
    # docs/publish.md's example on plain xarray: open_zarr leaves coordinates lazy, so the
    # selection loads its (small) condition first
    means = plain.image.where(plain.split.load() == "train", drop=True).mean(("y", "x")).compute()
    assert means.sizes["sample"] == int((index["split"] == "train").sum())
    # re-running a compacted set rewrites it (its row numbers moved) and gives the same set
    before = plain["image"].values.copy()
    write(make_manifest(rows), out, format="zarr", chunk=16, scheduler="synchronous", progress=False)
    again = xr.open_zarr(out)
    assert again["image"].shape == (5, 2, 32, 32) and np.array_equal(again["image"].values, before)
    # selection by coordinate works as in any xarray Dataset
    train = ds.isel(sample=(ds["split"] == "train").values)
    assert set(train["key"].values) == set(index.loc[index["split"] == "train", "key"])
    assert ds["image"].sel(channel="RNA").shape == (5, 32, 32)
    # the same set through the training reader, which prints readably
    from cytodata.loaders import ZarrDataset

    text = repr(ZarrDataset(out, crop=16))
    assert "samples=5" in text and "shape=(2, 32, 32)" in text and "DNA" in text


def test_open_xarray_refuses_other_sets(tmp_path):
    rows = synthetic_rows(tmp_path, 2)
    out = tmp_path / "wds"
    write(make_manifest(rows), out, format="webdataset", scheduler="synchronous", progress=False)
    with pytest.raises(ShardError, match="cytodata-zarr"):
        open_xarray(out)
    with pytest.raises(ShardError, match="no shards.json"):
        open_xarray(tmp_path / "nothing")


def test_ome_zarr_channel_labels_pixel_sizes_and_key_map(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    rows = []
    for i, (well, site) in enumerate([("B02", 1), ("B02", 2), ("C03", 1)]):
        paths = []
        for c in range(3):
            p = tmp_path / f"f{i}_c{c}.tif"
            # ImageJ metadata: 0.5 um pixels (resolution = pixels per unit)
            tifffile.imwrite(p, np.full((16, 20), 100 * i + c, np.uint16), imagej=True,
                             resolution=(2.0, 2.0), metadata={"unit": "um"})
            paths.append(str(p))
        rows.append(dict(source="s", image_id=f"im{i}", plate="P1", well=well, site=site,
                         channels=["DAPI", "Tubulin", "Actin"], channel_paths=paths))
    out = tmp_path / "ome"
    write(make_manifest(rows), out, format="ome-zarr", scheduler="synchronous", progress=False)
    field = out / "P1.ome.zarr" / "B" / "02" / "1"
    nodes = list(Reader(parse_url(str(field)))())
    image = next(n for n in nodes if any(isinstance(s, Multiscales) for s in n.specs))
    assert image.metadata["channel_names"] == ["DAPI", "Tubulin", "Actin"]
    axes = {a["name"]: a for a in image.metadata["axes"]}
    assert axes["y"]["unit"] == axes["x"]["unit"] == "micrometer"
    scale = image.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == pytest.approx([1.0, 0.5, 0.5])
    np.testing.assert_array_equal(np.asarray(image.data[0]), read_image(rows[1]["channel_paths"]))
    # key -> (plate, well, field) map
    keys = pd.read_parquet(out / "index.parquet")
    got = {r.key: (r.plate, r.well, r.field, r.path) for r in keys.itertuples()}
    assert got == {"s__im0": ("P1", "B02", 0, "P1.ome.zarr/B/02/0"),
                   "s__im1": ("P1", "B02", 1, "P1.ome.zarr/B/02/1"),
                   "s__im2": ("P1", "C03", 0, "P1.ome.zarr/C/03/0")}


def test_ome_zarr_without_pixel_size_keeps_unit_free_scale(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    rows = synthetic_rows(tmp_path, 1)  # plain TIFFs: no physical size
    out = tmp_path / "ome"
    write(make_manifest(rows), out, format="ome-zarr", scheduler="synchronous", progress=False)
    nodes = list(Reader(parse_url(str(out / "p0.ome.zarr" / "A" / "00" / "0")))())
    image = next(n for n in nodes if any(isinstance(s, Multiscales) for s in n.specs))
    assert image.metadata["channel_names"] == ["DNA", "RNA"]
    assert all("unit" not in a for a in image.metadata["axes"])
    # an explicit pixel size wins
    out2 = tmp_path / "ome2"
    write(make_manifest(rows), out2, format="ome-zarr", scheduler="synchronous", progress=False,
          pixel_size=0.65)
    nodes = list(Reader(parse_url(str(out2 / "p0.ome.zarr" / "A" / "00" / "0")))())
    image = next(n for n in nodes if any(isinstance(s, Multiscales) for s in n.specs))
    scale = image.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == pytest.approx([1, 0.65, 0.65])


def test_pixel_size_from_ome_tiff_imagej_and_not_from_plain_resolution_tags(tmp_path):
    from cytodata.shards.omezarr import pixel_size_um

    data = np.zeros((8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "ome.ome.tif", data, ome=True,
                     metadata={"PhysicalSizeX": 0.325, "PhysicalSizeY": 0.3,
                               "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm"})
    assert pixel_size_um(str(tmp_path / "ome.ome.tif")) == pytest.approx((0.3e-3, 0.325e-3))
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"unit": "micron"})
    assert pixel_size_um(str(tmp_path / "ij.tif")) == pytest.approx((0.65, 0.65))
    tifffile.imwrite(tmp_path / "dpi.tif", data, resolution=(72, 72), resolutionunit="INCH")
    assert pixel_size_um(str(tmp_path / "dpi.tif")) is None  # 72 dpi says nothing about optics
    (tmp_path / "x.png").write_bytes(b"not a tiff")
    assert pixel_size_um(str(tmp_path / "x.png")) is None
