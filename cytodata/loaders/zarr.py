"""``ZarrDataset``: map-style random crops from the Zarr ``(N, C, H, W)`` training array.

A crop reads only ``arr[row, :, y:y+h, x:x+w]``, i.e. the few ``(1, C, tile, tile)`` chunks it
touches (FORMAT.md section 2). Rows come from ``index.parquet``'s ``row`` column (rows that
failed to write stay zero in the array and are not indexed). The crop window is a pure
function of ``(seed, epoch, index)``, so any sampler/worker layout sees the same crops.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..errors import ShardError
from ..shards.checksum import CHUNK_COLUMN as CHUNK_CHECKSUMS
from ..shards.checksum import COLUMN as CHECKSUM
from ..shards.checksum import checksum_int, to_ints
from .partition import rng_for, seed_for
from .stream import META_COLUMNS, _label_ids, _plain

FORMAT = "cytodata-zarr"


class ZarrDataset(Dataset):
    """Samples ``{"__key__", "__seed__", "image", "label", "meta"}`` of a Zarr shard set folder.

    ``crop``: side (px) of a random square window (None: the whole image). ``split``: keep one
    split. ``transform``: a dict -> dict callable (see ``transforms.py``). ``as_int32``: return
    int32 instead of torch.uint16. Call ``set_epoch`` each epoch to draw new crop windows.
    ``verify``: check what is read against the XXH3-64 checksums in ``index.parquet`` (default
    on): the whole row, or with ``crop`` the chunks the window touches (read whole, so each can
    be hashed); a mismatch raises :class:`ShardError` naming the key and row. Sets written
    before checksums existed load with one warning suggesting ``cytodata verify``.
    """

    def __init__(self, path: str | os.PathLike, *, crop: int | None = None,
                 transform: Callable[[dict], dict] | None = None, seed: int = 0, split: str | None = None,
                 columns: tuple[str, ...] | None = None, as_int32: bool = False, verify: bool = True):
        self.path = Path(path)
        meta_path = self.path / "shards.json"
        if not meta_path.exists():
            raise ShardError(f"{self.path} has no shards.json; write a Zarr set with `cytodata shard --format zarr`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ShardError(f"{meta_path} has format {self.meta.get('format')!r}, expected {FORMAT!r}; "
                             "a cytodata-webdataset set reads with StreamingDataset; an OME-Zarr set is for "
                             "viewers: write a training set from the same manifest with `cytodata shard "
                             "MANIFEST_DIR -o OUT --format zarr` (or without --format for WebDataset)")
        index = pd.read_parquet(self.path / "index.parquet")
        if split is not None:
            index = index[(index["split"] == split).fillna(False)]
        self.index = index.reset_index(drop=True)
        self.rows = self.index["row"].to_numpy(dtype=np.int64)
        self.crop, self.transform, self.seed, self.epoch = crop, transform, int(seed), 0
        self.as_int32 = as_int32
        self.columns = tuple(c for c in (columns or META_COLUMNS) if c in self.index.columns)
        self.classes, self.labels = _label_ids(self.meta, self.index)
        self.keys = self.index["key"].astype(str).tolist()
        self._meta = {c: [_plain(v) for v in self.index[c].tolist()] for c in self.columns}
        self._arr = None
        self.verify = bool(verify)
        self._sums = self._chunk_sums = None
        if self.verify:
            self._sums, self._chunk_sums = _zarr_checksums(self.index, str(self.path))
        shape = self.meta.get("shape") or [0, 0, 0]
        if crop is not None and (crop > shape[1] or crop > shape[2]):
            raise ShardError(f"crop={crop} is larger than the stored images {shape[1]}x{shape[2]} in {self.path}")

    def __repr__(self) -> str:
        shape = tuple(self.meta.get("shape") or ())
        return (f"ZarrDataset({str(self.path)!r}, samples={len(self)}, shape={shape}, "
                f"channels={self.meta.get('channels') or 'mixed'}, crop={self.crop}, "
                f"classes={len(self.classes)}, seed={self.seed}, epoch={self.epoch})")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arr"] = None  # reopened in each worker
        return state

    @property
    def array(self):
        if self._arr is None:
            import zarr

            self._arr = zarr.open_array(self.path / self.meta.get("array", "images.zarr"), mode="r")
        return self._arr

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def window(self, i: int) -> tuple[int, int]:
        """Top-left corner (y, x) of sample ``i``'s crop in this epoch."""
        _, h, w = self.meta["shape"]
        rng = rng_for("zarr-crop", self.seed, self.epoch, i)
        return int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        row = int(self.rows[i])
        if self.crop is None:
            image = self.array[row]
            if self._sums is not None:
                self._check(i, checksum_int(image), int(self._sums[0][i]), self._sums[1][i], "row")
        else:
            y, x = self.window(i)
            image = self._read_crop(i, row, y, x)
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        if self.as_int32:
            tensor = tensor.to(torch.int32)
        sample = {"__key__": self.keys[i], "__seed__": seed_for(self.seed, self.epoch, i),
                  "image": tensor, "label": int(self.labels[i]),
                  "meta": {c: v[i] for c, v in self._meta.items()}}
        return self.transform(sample) if self.transform is not None else sample

    def _read_crop(self, i: int, row: int, y: int, x: int) -> np.ndarray:
        """``crop x crop`` window at (y, x); with checksums, read the chunk-aligned block around it,
        check each chunk it holds, then cut the window out.
        """
        c = self.crop
        if self._chunk_sums is None or self._chunk_sums[i] is None:
            return self.array[row, :, y: y + c, x: x + c]
        _, h, w = self.array.shape[1:]
        th, tw = self.array.chunks[2], self.array.chunks[3]
        y0, x0 = y // th * th, x // tw * tw
        y1, x1 = min(-(-(y + c) // th) * th, h), min(-(-(x + c) // tw) * tw, w)
        block = self.array[row, :, y0:y1, x0:x1]
        per_row = -(-w // tw)
        sums = self._chunk_sums[i]
        for cy in range(y0, y1, th):
            for cx in range(x0, x1, tw):
                k = (cy // th) * per_row + cx // tw
                piece = block[:, cy - y0: cy - y0 + th, cx - x0: cx - x0 + tw]
                self._check(i, checksum_int(piece), int(sums[k], 16), True, f"chunk ({cy}, {cx})")
        return block[:, y - y0: y - y0 + c, x - x0: x - x0 + c]

    def _check(self, i: int, got: int, want: int, present: bool, what: str) -> None:
        if present and got != want:
            raise ShardError(f"{self.path}: sample {self.keys[i]!r} (array row {int(self.rows[i])}) {what} has "
                             f"xxh3_64 {got:016x}, index.parquet says {want:016x}: the array bytes are corrupt or "
                             "the index points at another row; run `cytodata verify --deep` and rewrite the set")


def _zarr_checksums(index: pd.DataFrame, source: str):
    """((uint64 row sums, present), per-row chunk hex lists or None); one warning when missing."""
    if CHECKSUM not in index.columns:
        warnings.warn(f"{source}: index.parquet has no {CHECKSUM} checksums (written by an older cytodata): "
                      f"samples cannot be verified while loading. Check the array with `cytodata verify "
                      f"--deep {source}`, or rewrite the set with `cytodata shard --format zarr`", stacklevel=3)
        return None, None
    sums = to_ints(index[CHECKSUM].tolist())
    chunks = None
    if CHUNK_CHECKSUMS in index.columns:
        chunks = [None if v is None or (isinstance(v, float) and np.isnan(v)) else list(v)
                  for v in index[CHUNK_CHECKSUMS].tolist()]
    return sums, chunks
