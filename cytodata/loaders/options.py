"""Typed option groups of :class:`~cytodata.loaders.StreamingDataset`.

``ReadOptions`` says how payloads are fetched and decoded, ``OrderOptions`` which samples come
in which order on which rank. Both are frozen dataclasses, checked when built; the flat keywords
of ``StreamingDataset(...)`` (``threads=2``, ``seed=0``, ...) keep working and override the
matching field of a group passed as ``read=`` / ``order=``:

    StreamingDataset(path, read=ReadOptions(threads=2, verify=True), order=OrderOptions(seed=1))
    StreamingDataset(path, threads=2, seed=1)          # the same dataset
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .partition import TAILS

ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class ReadOptions:
    """How payloads are read and decoded.

    ``threads``: decode + transform on this many threads of the iterating process (0: inline).
    ``read_ahead``: samples fetched per request batch (object stores fetch them concurrently).
    ``verify``: check each payload's XXH3-64 from ``index.parquet`` before decoding.
    ``on_error``: ``"raise"`` (ShardError naming shard and key) or ``"skip"`` (warn, count).
    ``as_int32``: yield int32 images (for ops without uint16 kernels) instead of uint16.
    ``storage_options``: fsspec options for object stores (``s3://``).
    ``mmap``: map local shards read-only and check + decode each payload straight from the
    page cache, with no copy (~35 us less CPU per 0.5 MB sample in isolation; within noise,
    1.04x (0.90-1.18), in the whole 2-thread pipeline of ``benchmarks/loader.py``). Off by
    default: a shard file truncated *while* a run maps it ends the process with SIGBUS instead
    of a ShardError. Shards whose size differs from ``shards.json`` are never mapped.
    ``cache_dir``: remote sets only: keep whole shards in this node-local folder (fetched once,
    sha256-checked, shared by every rank and worker of the node, reused across epochs and runs;
    see ``_cache.py``). ``cache_limit``: bytes the folder may hold (LRU eviction; None: no
    limit; at least one shard). ``prefetch_bytes``: with a cache, the shards the order needs
    next are fetched on background threads while the current ones are read, at most this many
    bytes ahead (default 256 MiB, at most half of ``cache_limit``). ``connections``: object-store
    requests in flight per process (the S3 connection pool; default from ``threads`` x
    ``read_ahead`` plus the prefetch threads; ``storage_options["config_kwargs"]
    ["max_pool_connections"]`` overrides it).
    """

    threads: int = 0
    read_ahead: int = 32
    verify: bool = True
    on_error: str = "raise"
    as_int32: bool = False
    storage_options: dict | None = None
    mmap: bool = False
    cache_dir: str | os.PathLike | None = None
    cache_limit: int | None = None
    prefetch_bytes: int | None = None
    connections: int | None = None

    def __post_init__(self):
        if self.cache_limit is not None and int(self.cache_limit) < 1:
            raise ValueError(f"cache_limit={self.cache_limit}; use a byte count (>= the largest shard) or None")
        if self.prefetch_bytes is not None and int(self.prefetch_bytes) < 0:
            raise ValueError(f"prefetch_bytes={self.prefetch_bytes}; use 0 (only the shards in use) or more")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error={self.on_error!r}; valid: {', '.join(ON_ERROR)}")
        if int(self.threads) < 0:
            raise ValueError(f"threads={self.threads}; use 0 (decode in the iterating thread) or more")
        object.__setattr__(self, "threads", int(self.threads))
        object.__setattr__(self, "read_ahead", max(1, int(self.read_ahead)))
        object.__setattr__(self, "verify", bool(self.verify))


@dataclass(frozen=True)
class OrderOptions:
    """Which samples, in which order, on which rank.

    ``seed``/``shuffle``/``sampler``: the epoch order (``sampler.order(index, seed=, epoch=,
    world_size=)``; default :class:`~cytodata.loaders.ShardShuffle`). ``split``: keep rows of
    that split only. ``tail``: ``"pad"`` or ``"drop"`` so all ranks yield the same count.
    ``rank``/``world_size``: default from torch.distributed. ``batch_size_hint``: the DataLoader
    batch size (workers take whole batches so the global order survives round-robin).
    ``shuffle_window``: read the shards in a seeded order and shuffle samples within windows of
    this many shards (:class:`~cytodata.loaders.WindowShuffle`): a bounded working set for a
    local shard cache. None: the ``sampler`` (default shard blocks, each shuffled inside).
    """

    seed: int = 0
    shuffle: bool = True
    sampler: Any = None
    split: str | None = None
    tail: str = "pad"
    rank: int | None = None
    world_size: int | None = None
    batch_size_hint: int | None = None
    shuffle_window: int | None = None

    def __post_init__(self):
        if self.shuffle_window is not None:
            if int(self.shuffle_window) < 1:
                raise ValueError(f"shuffle_window={self.shuffle_window}; use 1 or more shards per window")
            if self.sampler is not None:
                raise ValueError(f"shuffle_window={self.shuffle_window} with sampler={self.sampler!r}: the "
                                 "window is an order of its own; pass one of them")
            object.__setattr__(self, "shuffle_window", int(self.shuffle_window))
        if self.tail not in TAILS:
            raise ValueError(f"tail={self.tail!r}; valid: {', '.join(TAILS)}")
        object.__setattr__(self, "seed", int(self.seed))


def grouped(read: ReadOptions | None, order: OrderOptions | None, flat: dict[str, Any],
            who: str = "StreamingDataset") -> tuple[ReadOptions, OrderOptions]:
    """``read``/``order`` with the flat keywords of ``flat`` applied; unknown names raise TypeError."""
    read_names = {f.name for f in dataclasses.fields(ReadOptions)}
    order_names = {f.name for f in dataclasses.fields(OrderOptions)}
    unknown = sorted(set(flat) - read_names - order_names)
    if unknown:
        valid = ", ".join(sorted(read_names | order_names | {"transform", "columns", "read", "order"}))
        raise TypeError(f"{who}() got unexpected keyword argument(s) {unknown}; valid: {valid}")
    read = dataclasses.replace(read or ReadOptions(), **{k: v for k, v in flat.items() if k in read_names})
    order = dataclasses.replace(order or OrderOptions(), **{k: v for k, v in flat.items() if k in order_names})
    return read, order
