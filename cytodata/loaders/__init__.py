"""Loaders: shard sets -> PyTorch (streaming, Zarr crops), samplers, seeded tensor transforms.

``StreamingDataset`` streams WebDataset shard sets (local or object store) with exact,
resumable partitioning over ranks and workers; ``ZarrDataset`` serves random crops from the
Zarr training array; ``samplers`` build class-balanced / mixed / paired / grouped epoch orders;
``transforms`` are dict-in, dict-out and seeded per (seed, epoch, sample). ``ds.batches(B)``
(:class:`Batches`) yields whole batches written straight into one preallocated tensor;
``ReadOptions`` / ``OrderOptions`` group the dataset's options; remote sets stream through a
local shard cache (``cache_dir=``) in shard windows (``shuffle_window=``), docs/streaming.md.
``StreamingDataLoader`` counts consumed samples for exact resume with workers; ``collate``
explains mixed-shape batches (``pad_collate`` pads them).
"""

from __future__ import annotations

from .collate import MixedShapeError, collate, pad_collate
from .dataloader import StreamingDataLoader
from .options import OrderOptions, ReadOptions
from .partition import epoch_order, interleave
from .samplers import (
    ClassBalanced,
    GroupedBatches,
    ShardShuffle,
    SourceMix,
    WeakLabelPairs,
    WindowShuffle,
    grouped_batches,
)
from .stream import Batches, StreamingDataset

__all__ = ["StreamingDataset", "Batches", "ReadOptions", "OrderOptions",
           "StreamingDataLoader", "collate", "pad_collate", "MixedShapeError",
           "ZarrDataset", "epoch_order", "interleave", "ShardShuffle", "WindowShuffle",
           "ClassBalanced", "SourceMix", "WeakLabelPairs", "GroupedBatches", "grouped_batches"]


def __getattr__(name: str):
    if name == "ZarrDataset":  # zarr import deferred
        from .zarr import ZarrDataset

        return ZarrDataset
    raise AttributeError(name)
