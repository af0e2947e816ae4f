"""Labelled Zarr: the Zarr shard set as an xarray Dataset (dims, channel names, sample coordinates).

The writer (``zarr.py``) stores the ``(N, C, H, W)`` array as the variable ``image`` of a zarr
v3 group at ``OUT`` with ``dimension_names`` ``(sample, channel, y, x)``; :func:`write_labels`
then adds 1-D coordinate arrays (``channel`` names; per sample ``key``, ``written`` and the
index's metadata) and consolidated metadata, so ``xarray.open_zarr(OUT)`` opens a Dataset
with no extra code. :func:`open_xarray` opens it lazily with one dask chunk per image.
Layout: FORMAT.md section 2.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ShardError

#: dimension names of the ``image`` variable
DIMS: tuple[str, str, str, str] = ("sample", "channel", "y", "x")
#: integer sample coordinates (-1 where unknown or the row was not written)
INT_COORDS: tuple[str, ...] = ("site", "y_min", "x_min")
#: string sample coordinates ("" where unknown or the row was not written), in this order
STRING_COORDS: tuple[str, ...] = ("key", "plate", "well", "label", "split", "source", "batch",
                                  "image_id", "parent_id", "category", "control_type", "compound",
                                  "moa")
#: every coordinate array written next to ``image`` (for resume/overwrite bookkeeping)
COORD_NAMES: tuple[str, ...] = ("channel", "written") + STRING_COORDS + INT_COORDS
FORMAT = "cytodata-zarr"


def sample_coords(index: pd.DataFrame, n_rows: int) -> dict[str, np.ndarray]:
    """Per-row coordinate arrays of length ``n_rows`` from ``index.parquet`` (its ``row`` column).

    Rows that failed to write (zero pixels, not in the index) get ``written=False``, ``""`` and
    ``-1``; strings are object arrays here (stored fixed-width).
    """
    rows = index["row"].to_numpy(dtype=np.int64) if len(index) else np.zeros(0, np.int64)
    written = np.zeros(n_rows, dtype=bool)
    written[rows] = True
    out: dict[str, np.ndarray] = {"written": written}
    for col in STRING_COORDS:
        values = np.full(n_rows, "", dtype=object)
        if col in index.columns and len(index):
            src = index[col].astype("string")
            values[rows] = src.fillna("").to_numpy(dtype=object)
        out[col] = values
    for col in INT_COORDS:
        values = np.full(n_rows, -1, dtype=np.int64)
        if col in index.columns and len(index):
            values[rows] = pd.to_numeric(index[col]).astype("Int64").fillna(-1).to_numpy(np.int64)
        out[col] = values
    return out


def channel_names(channels: list[str] | None, n_channels: int) -> np.ndarray:
    """Name the channels: the set's channel names, or ``c0, c1, ...`` when they differ."""
    names = list(channels) if channels and len(channels) == n_channels else [
        f"c{i}" for i in range(n_channels)]
    return np.array(names, dtype=object)


def write_labels(out: str | os.PathLike, array: str, index: pd.DataFrame,
                 channels: list[str] | None, attrs: dict) -> None:
    """Add the root group, coordinate arrays and consolidated metadata around ``OUT/array``.

    ``index``: the set's ``index.parquet`` frame; ``channels``: names from shards.json (None
    when sources differ); ``attrs``: stored as the group's ``cytodata`` attribute.
    """
    import zarr

    out = Path(out)
    root = zarr.open_group(str(out), mode="a", zarr_format=3)
    image = root[array]
    n_rows, n_channels = int(image.shape[0]), int(image.shape[1])
    coords = {"channel": channel_names(channels, n_channels), **sample_coords(index, n_rows)}
    # zarr warns that fixed-width strings and consolidated metadata are not yet in the v3 spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, values in coords.items():
            if values.dtype == object:
                # fixed-width unicode: variable-length "string" arrays come back as numpy's
                # StringDType, which numpy 2.1 crashes on when copying (ds.where, ds.copy)
                width = max([1] + [len(v) for v in values])
                values = values.astype(f"<U{width}")
            dim = "channel" if name == "channel" else "sample"
            arr = root.create_array(name, shape=values.shape, dtype=values.dtype,
                                    chunks=(max(1, len(values)),), dimension_names=(dim,),
                                    overwrite=True)
            arr[:] = values
        image.attrs.update({
            # CF convention: xarray reads these as non-index coordinates of `image`
            "coordinates": " ".join(n for n in coords if n != "channel"),
            "long_name": "pixel intensity", "units": "1",
        })
        root.attrs.update({"cytodata": attrs})
        zarr.consolidate_metadata(str(out))


def open_xarray(path: str | os.PathLike, *, chunks: dict | str | None = "image",
                storage_options: dict | None = None):
    """Open the Zarr shard set at ``path`` as a lazy ``xarray.Dataset`` (dask arrays).

    Variable ``image`` ``(sample, channel, y, x)`` at the stored dtype (uint16 or uint8);
    coordinates ``channel`` (names) and per sample ``key``, ``written`` (True for every row
    of a finished set; False only in sets written before unwritten rows were removed),
    ``plate``, ``well``, ``site``, ``label``, ``split``, ``source``, ``batch``, ...
    (``""``/``-1`` where unknown). ``chunks="image"`` (default) gives one dask
    chunk per image (one zarr shard object); ``None`` gives the stored ``(1, C, tile, tile)``
    chunks; a dict is passed to xarray. Pixels are read only when computed; the 1-D sample
    coordinates are loaded (a few bytes per sample).
    """
    import xarray as xr

    path_str = str(path)
    meta = _read_shards_json(path_str, storage_options)
    if meta.get("format") != FORMAT:
        raise ShardError(f"{path_str}/shards.json has format {meta.get('format')!r}; open_xarray "
                         f"reads Zarr sets ({FORMAT!r}): write one with "
                         "`cytodata shard --format zarr`")
    array = meta.get("array", "images.zarr")
    if array != "image" or not meta.get("dims"):
        raise ShardError(f"{path_str} was written by an older cytodata (array {array!r} without "
                         "dimension names); rewrite it with "
                         "`cytodata shard --format zarr --overwrite`")
    per_image = chunks == "image"
    ds = xr.open_zarr(path_str, chunks=None if per_image else (chunks or {}), consolidated=True,
                      zarr_format=3, storage_options=storage_options or None)
    # sample coordinates are small: load them so selections (ds.where, isel by mask) just work
    ds = ds.assign_coords({n: ds[n].compute() for n in ds.coords if ds[n].dims == ("sample",)})
    if per_image:  # one dask chunk per image = one zarr shard object (a whole number of chunks)
        ds["image"] = ds["image"].chunk({"sample": 1, "channel": -1, "y": -1, "x": -1})
    return ds


def _read_shards_json(path: str, storage_options: dict | None) -> dict:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    target = root.rstrip("/") + "/shards.json"
    if not fs.exists(target):
        raise ShardError(f"{path} has no shards.json; write a Zarr set with "
                         "`cytodata shard MANIFEST --format zarr -o OUT`")
    with fs.open(target, "rb") as f:
        return json.load(f)
