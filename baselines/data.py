"""Shard sets -> device batches: StreamingDataset in its threaded layout, uint16 onto the device,
then float conversion and per-plate normalisation there (statistics from ``shards.json``).

The loader decodes on ``data.threads`` threads of the training process and the DataLoader runs
with ``num_workers=0``: no worker processes, no pickling, no per-batch shared memory (the fastest
layout measured by ``benchmarks/loader.py``). Batches travel as uint16 (half the bytes of float)
and become float32 on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from cytodata.errors import ShardError, TrainingError
from cytodata.loaders import ClassBalanced, StreamingDataset
from cytodata.loaders.collate import check_shapes
from cytodata.loaders.normstats import NormStats, cell_type_of, cell_type_table  # noqa: F401  (re-exported)


@dataclass
class DataInfo:
    """What a method needs to know about the training data."""

    channels: list[str]
    n_channels: int
    shape: tuple[int, int, int] | None
    classes: list[str]
    n_train: int
    stats: "NormStats | None" = None
    extra: dict = field(default_factory=dict)


def collate(samples: list[dict]) -> dict:
    """Stack one batch: ``image`` (B, C, H, W) uint16, ``label`` (B,) long, ``key``, ``meta`` lists.

    Images of different shapes cannot share a batch: the loaders' ``MixedShapeError`` names
    the keys, their shapes and the ways out.
    """
    check_shapes(samples, "image")
    out = {"image": torch.stack([s["image"] for s in samples]),
           "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
           "key": [s["__key__"] for s in samples],
           "meta": {k: [s["meta"].get(k, "") for s in samples] for k in samples[0]["meta"]}}
    if "partner" in samples[0]:
        out["partner"] = collate([s["partner"] for s in samples])
    return out


def to_device_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint16 (B, C, H, W) -> float32 on ``device``; the copy moves 2 bytes per pixel.

    The uint16 tensor travels reinterpreted as int16 and is widened there (``& 0xFFFF``), which
    every backend supports.
    """
    if images.dtype == torch.uint16:
        moved = images.view(torch.int16).to(device, non_blocking=True)
        return (moved.to(torch.int32) & 0xFFFF).to(torch.float32)
    return images.to(device, non_blocking=True).to(torch.float32)


class DevicePrep:
    """uint16 batch -> normalised float batch on the device."""

    def __init__(self, stats: NormStats | None, device: torch.device, channels_last: bool):
        self.stats, self.device, self.channels_last = stats, device, channels_last

    def __call__(self, images: torch.Tensor, meta: dict) -> torch.Tensor:
        x = to_device_float(images, self.device)
        if self.stats is not None:
            x = self.stats.apply(x, self.stats.batch_groups(meta, x.shape[0]))
        else:
            x = x / 65535.0
        return x


def open_dataset(path: str, *, split: str | None, cfg, seed: int, shuffle: bool, sampler=None,
                 rank: int | None = None, world_size: int | None = None, what: str = "data.train"
                 ) -> StreamingDataset:
    """A StreamingDataset over ``path`` with a clear error when it is not a shard set."""
    from pathlib import Path

    if path is None:
        raise TrainingError(f"{what} is not set; pass --set {what}=SHARDS (a WebDataset shard "
                            "folder written by `cytodata shard`)")
    local = "://" not in str(path)
    if local and not (Path(path) / "shards.json").exists():
        raise TrainingError(f"{what}={path} is not a shard set (no shards.json); write one with "
                            "`cytodata shard MANIFEST_DIR -o OUT`")
    if local:
        _refuse_other_formats(Path(path), what)
    columns = tuple({"plate", "batch", "well", "site", "source", "split", "label", "parent_id",
                     "compound", "moa", cfg.label})
    try:  # one read of index.parquet; the loader refuses a split the index has no column for
        ds = StreamingDataset(path, seed=seed, shuffle=shuffle, split=split, sampler=sampler,
                              threads=cfg.threads, read_ahead=cfg.read_ahead, columns=columns,
                              storage_options=cfg.storage_options or None, rank=rank,
                              world_size=world_size)
    except ShardError as exc:
        hint = (f"; pass --set {what}_split=null to use every row"
                if split is not None and "'split' column" in str(exc) else "")
        raise TrainingError(f"{what}={path}: {exc}{hint}") from None
    if split is not None:
        if len(ds.index) == 0:
            present = sorted(ds.shards.index["split"].dropna().unique().tolist())
            hint = (f"pick one with --set {what}_split=NAME, or " if present else
                    "the manifest assigned no splits (its recipe has no `split:` section); ")
            raise TrainingError(f"{what}={path}: no rows with split={split!r}; splits present: {present}; "
                                f"{hint}pass --set {what}_split=null to use every row")
    return ds


def _refuse_other_formats(path, what: str) -> None:
    """A Zarr or OME-Zarr set is not a training input of `cytodata train`: say so, and give the
    command that writes a WebDataset set from the same manifest.
    """
    import json

    from cytodata.shards.source import source_manifest

    try:
        meta = json.loads((path / "shards.json").read_text())
    except (OSError, ValueError):
        return  # the loader reports an unreadable shards.json
    fmt = meta.get("format")
    if fmt in (None, "cytodata-webdataset"):
        return
    manifest = source_manifest(meta)
    folder = manifest.parent if manifest is not None else "MANIFEST_DIR"
    raise TrainingError(f"{what}={path} is a {fmt} set; `cytodata train` reads WebDataset shard sets. "
                        f"Write one from the same manifest with `cytodata shard {folder} -o OUT` "
                        f"and pass --set {what}=OUT (in Python, cytodata.loaders.ZarrDataset reads "
                        "a cytodata-zarr set)")


def class_ids(ds: StreamingDataset, column: str, classes: list[str] | None, what: str
              ) -> tuple[np.ndarray, list[str]]:
    """Per-row class ids of ``column`` in ``classes`` (NA -> -1) and the classes used.

    ``classes=None``: the sorted labels present. Labels outside ``classes`` are an error.
    """
    if column not in ds.index.columns:
        raise TrainingError(f"{what}: index.parquet has no {column!r} column; a supervised "
                            f"baseline needs labels (columns: {sorted(ds.index.columns)})")
    values = ds.index[column].astype("string")
    present = sorted(values.dropna().unique().tolist())
    if classes is None:
        classes = present
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = [v for v in present if v not in lookup]
    if unknown:
        raise TrainingError(f"{what}: classes {unknown[:10]} have no training samples; re-split "
                            "with stratify on the label or drop them from the validation set")
    ids = np.array([-1 if pd.isna(v) else lookup[v] for v in values.tolist()], dtype=np.int64)
    return ids, classes


def relabel(ds: StreamingDataset, ids: np.ndarray, classes: list[str]) -> None:
    """Make ``ds`` yield ``ids`` as ``label`` (classes named by the training set)."""
    ds.labels, ds.classes = ids, list(classes)


def loader(ds: StreamingDataset, batch_size: int, pin: bool) -> torch.utils.data.DataLoader:
    """DataLoader in the threaded layout (num_workers=0; the dataset decodes on its threads)."""
    ds.batch_size_hint = batch_size
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0, collate_fn=collate,
                                       pin_memory=pin, drop_last=False)


def balanced_sampler(column: str):
    """DeepProfiler's rule: classes above the median size are downsampled to it each epoch."""
    return ClassBalanced(column=column, mode="median")
