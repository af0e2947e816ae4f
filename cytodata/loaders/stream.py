"""``StreamingDataset``: a torch IterableDataset over a shard set, exact and resumable.

Each (rank, worker) computes the epoch's global order (``sampler.order``, a pure function of
``(seed, epoch)``), takes its share with :func:`partition.partition` and reads only its samples'
byte ranges (``index.parquet``) from local files or an object store (fsspec). No sample is
seen twice or missed in an epoch across ranks x workers; the global order is the same for any
cluster shape; a run resumes from ``state_dict()`` on another world size or worker count.

Yielded dict: ``__key__`` (str), ``__pos__`` (global position in the epoch), ``__errors__``
(payloads skipped so far in this stream), ``image`` (``(C, H, W)`` torch.uint16, or int32 with
``as_int32=True`` for ops that lack uint16 kernels), ``label`` (class id in ``classes``, -1
for NA) and ``meta`` (index columns; NA strings -> "", so default_collate works). A 2-D sampler
order (pairs) adds ``partner`` holding the second sample's dict.

Resume with a DataLoader: after ``steps`` batches of ``batch_size`` on each of ``world_size``
ranks, ``samples_seen = start + steps * batch_size * world_size`` (pass it to ``state_dict``);
exact when the DataLoader ``batch_size`` equals ``batch_size_hint``. In one process
(``num_workers=0``) ``state_dict()`` counts by itself.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ShardError
from ..shards.checksum import COLUMN as CHECKSUM
from ..shards.checksum import checksum_int, to_ints
from ..shards.codecs import single_threaded
from . import partition as part  # noqa: F401  (module; the package does not re-export the function)
from ._buffers import BufferPool, Scratch
from ._shardset import ShardSet
from .samplers import ShardShuffle

#: index columns passed in ``meta`` by default
META_COLUMNS = ("plate", "well", "site", "batch", "source", "split", "label", "control_type", "compound",
                "moa", "parent_id")
ON_ERROR = ("raise", "skip")


def _dist() -> tuple[int, int]:
    """(rank, world_size) of torch.distributed when initialized, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StreamingDataset(IterableDataset):
    """Stream a WebDataset shard set (folder or fsspec URL such as ``s3://bucket/set``).

    ``seed``/``set_epoch``: the order of each epoch. ``sampler``: an object with
    ``order(index, seed=, epoch=, world_size=)`` (default :class:`ShardShuffle`; see
    ``samplers.py``). ``rank``/``world_size``: default from torch.distributed. ``tail``:
    ``"pad"`` (repeat from the start of the order) or ``"drop"`` so all ranks yield the same
    count. ``split``: keep rows of that ``split`` only. ``columns``: index columns in ``meta``.
    ``on_error``: ``"raise"`` (ShardError naming shard and key) or ``"skip"`` (warning, counted
    in ``errors`` and ``__errors__``). ``batch_size_hint``: the DataLoader batch size (workers
    take whole batches so the global order survives the DataLoader's round-robin).
    ``read_ahead``: samples fetched per request batch (object stores fetch them concurrently).
    ``threads``: decode + transform chunks on this many threads of the iterating process (0:
    inline). With ``DataLoader(num_workers=0)`` this feeds a GPU without worker processes: no
    pickling, no per-batch shared memory (the fastest layout, benchmarks/loader.py); inside
    DataLoader workers it adds threads per worker. Output and order do not depend on it.
    ``verify``: check every payload against its XXH3-64 in ``index.parquet`` before decoding
    (default on; a mismatch follows ``on_error``). Sets written before checksums existed load
    with one warning suggesting ``cytodata verify``.
    """

    def __init__(self, source: str | os.PathLike, *, seed: int = 0, shuffle: bool = True,
                 rank: int | None = None, world_size: int | None = None, tail: str = "pad",
                 transform: Callable[[dict], dict] | None = None, split: str | None = None,
                 columns: tuple[str, ...] | None = None, on_error: str = "raise",
                 batch_size_hint: int | None = None, sampler=None, storage_options: dict | None = None,
                 as_int32: bool = False, read_ahead: int = 32, threads: int = 0, verify: bool = True):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}; valid: {', '.join(ON_ERROR)}")
        if tail not in part.TAILS:
            raise ValueError(f"tail={tail!r}; valid: {', '.join(part.TAILS)}")
        self.shards = ShardSet(source, storage_options)
        index = self.shards.index
        self.rows = np.arange(len(index), dtype=np.int64)
        if split is not None:
            if "split" not in index.columns:
                raise ShardError(f"{source}: index.parquet has no 'split' column to select {split!r}")
            self.rows = np.flatnonzero((index["split"] == split).fillna(False).to_numpy())
        self.index = index.iloc[self.rows].reset_index(drop=True)
        self.split, self.seed, self.epoch, self.start = split, int(seed), 0, 0
        self.sampler = sampler if sampler is not None else ShardShuffle(shuffle=shuffle)
        self._rank, self._world = rank, world_size
        self.tail, self.transform, self.on_error = tail, transform, on_error
        self.batch_size_hint = int(batch_size_hint or getattr(self.sampler, "batch_size", 1))
        self.as_int32, self.read_ahead = as_int32, max(1, int(read_ahead))
        if int(threads) < 0:
            raise ValueError(f"threads={threads}; use 0 (decode in the iterating thread) or more")
        self.threads = int(threads)
        self._count_lock = threading.Lock()
        self._pool, self._scratch = BufferPool(), Scratch()
        self.columns = tuple(c for c in (columns or META_COLUMNS) if c in self.index.columns)
        self.classes, self.labels = _label_ids(self.shards.meta, self.index)
        self.errors, self.skipped_keys = 0, []
        self._yielded = 0
        self._shape = _shapes(self.shards.meta, self.index)
        self._dtype = self.shards.meta.get("dtype")
        self._cols = _columns(self.index, self.columns)
        self.verify = bool(verify)
        self._sums, self._has_sum = _checksums(self.index, str(source)) if self.verify else (None, None)

    def __getstate__(self):  # spawn-safe: locks do not pickle
        state = dict(self.__dict__)
        state["_count_lock"] = state["_scratch"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._count_lock, self._scratch = threading.Lock(), Scratch()

    def __repr__(self) -> str:
        meta = self.shards.meta
        shape = meta.get("shape")
        channels = meta.get("channels")
        parts = [f"{self.shards.source!r}", f"samples={len(self.index)}",
                 f"shards={len(meta.get('shards') or [])}", f"codec={meta.get('codec')!r}",
                 f"shape={tuple(shape) if shape else 'mixed'}",
                 f"channels={channels if channels else 'mixed'}", f"classes={len(self.classes)}"]
        if self.split is not None:
            parts.append(f"split={self.split!r}")
        parts += [f"seed={self.seed}", f"epoch={self.epoch}", f"start={self.start}",
                  f"sampler={type(self.sampler).__name__}"]
        if self._rank is not None or self._world is not None:
            parts.append(f"rank={self._rank}/{self._world}")
        if self.threads:
            parts.append(f"threads={self.threads}")
        if self.transform is not None:
            parts.append(f"transform={type(self.transform).__name__}")
        return f"StreamingDataset({', '.join(parts)})"

    # --- cluster shape ---
    @property
    def rank(self) -> int:
        return _dist()[0] if self._rank is None else int(self._rank)

    @property
    def world_size(self) -> int:
        return _dist()[1] if self._world is None else int(self._world)

    # --- epochs and state ---
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; a new epoch starts at its beginning (after a resumed one)."""
        if int(epoch) != self.epoch:
            self.start = 0
        self.epoch, self._yielded = int(epoch), 0

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The global order (rows of the selected index) of ``epoch``."""
        epoch = self.epoch if epoch is None else epoch
        return np.asarray(self.sampler.order(self.index, seed=self.seed, epoch=epoch, world_size=self.world_size))

    def __len__(self) -> int:
        """Units this rank yields in the current epoch (from ``start`` on)."""
        n = len(self.order())
        return part.rank_length(n, world_size=self.world_size, tail=self.tail, start=min(self.start, n))

    def state_dict(self, samples_seen: int | None = None) -> dict:
        """``{"epoch", "samples_seen" (global, units), "seed", "fingerprint", "split"}``.

        ``samples_seen`` defaults to what this process yielded times the world size (exact with
        ``num_workers=0`` and ranks in lock-step); with DataLoader workers pass
        ``start + steps * batch_size * world_size``.
        """
        if samples_seen is None:
            samples_seen = self.start + self._yielded * self.world_size
        return {"epoch": self.epoch, "samples_seen": int(samples_seen), "seed": self.seed,
                "fingerprint": self.shards.fingerprint, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        """Continue an epoch where ``state`` stopped (any world size / worker count)."""
        if state.get("fingerprint") != self.shards.fingerprint:
            raise ShardError(f"state_dict was saved for shard set {state.get('fingerprint')!r}, this is "
                             f"{self.shards.fingerprint!r} ({self.shards.source}); resume on the same shard set")
        if state.get("split") != self.split:
            raise ShardError(f"state_dict was saved with split={state.get('split')!r}, this dataset uses "
                             f"split={self.split!r}")
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.start, self._yielded = int(state["samples_seen"]), 0

    # --- iteration ---
    def my_units(self) -> tuple[np.ndarray, np.ndarray]:
        """(units, global positions) of this process's (rank, worker) stream in the current epoch."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = self.order()
        start = min(self.start, len(order))
        kw = dict(rank=self.rank, world_size=self.world_size, worker=worker, num_workers=workers,
                  batch_size=self.batch_size_hint, tail=self.tail, start=start)
        pos = part.positions(len(order), **kw)
        return part.partition(order, **kw), pos

    def __iter__(self):
        if get_worker_info() is not None or self.threads:
            single_threaded()  # parallelism comes from workers/threads; blosc's own would oversubscribe
        units, pos = self.my_units()
        self._yielded = 0  # state_dict counts from this pass's start
        step = self.read_ahead
        chunks = ((units[lo: lo + step], pos[lo: lo + step]) for lo in range(0, len(units), step))
        for outs in self._produce(chunks):
            for out in outs:
                self._yielded += 1
                yield out

    def _produce(self, chunks):
        """Chunk results in order: inline, or ``threads`` chunks in flight on a thread pool.

        Reading, blosc decoding and torch kernels release the GIL, so threads scale without
        worker processes, pickling or shared memory; transforms are seeded per sample, so the
        output does not depend on which thread ran what.
        """
        if not self.threads:
            yield from map(self._chunk, chunks)
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cytodata-decode")
        pending: deque = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(self._chunk, chunk))
                if len(pending) > self.threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)

    def _chunk(self, chunk: tuple[np.ndarray, np.ndarray]) -> list[dict]:
        """Fetch, decode and transform one chunk of units; failed samples are left out."""
        units, positions = chunk
        flat = units.reshape(len(units), -1)
        samples = self._load(flat.reshape(-1))
        outs = []
        for row_set, p in zip(flat, positions):
            got = [samples.get(int(r)) for r in row_set]
            if any(g is None for g in got):
                continue
            out = self._finish(got[0], int(p), "anchor")
            if len(got) > 1:
                out["partner"] = self._finish(got[1], int(p), "partner")
            outs.append(out)
        return outs

    def _finish(self, sample: dict, pos: int, role: str) -> dict:
        sample = dict(sample, __pos__=pos, __errors__=self.errors,
                      __seed__=part.seed_for(self.seed, self.epoch, sample["__key__"], pos, role))
        return self.transform(sample) if self.transform is not None else sample

    def _load(self, rows: np.ndarray) -> dict[int, dict]:
        """Fetch + decode index ``rows`` (selected index numbering); failed ones are left out."""
        unique = np.unique(rows)
        with_meta = self._dtype is None
        if self.shards.local:  # read each sample into this thread's scratch, decode, reuse
            blobs = (self._read_local(int(self.rows[r]), with_meta) for r in unique)
        else:  # object stores: one concurrent ranged request for the whole chunk
            try:
                blobs = self.shards.read(self.rows[unique], with_meta=with_meta)
            except OSError as exc:
                blobs = [exc] * len(unique)
        out = {}
        for r, blob in zip(unique.tolist(), blobs):
            try:
                out[r] = self._decode(r, blob, with_meta)
            except ShardError:
                if self.on_error == "raise":
                    raise
        return out

    def _read_local(self, row: int, with_meta: bool):
        try:
            return self.shards.read_into(row, self._scratch.view(self.shards.span(row, with_meta)), with_meta)
        except OSError as exc:
            return exc

    def _decode(self, r: int, blob: Any, with_meta: bool) -> dict:
        row = self._cols[r]
        key, shard = row["key"], row["shard"]
        try:
            if isinstance(blob, BaseException):
                raise blob
            size = int(row["size"])
            if len(blob) < size:
                raise ValueError(f"read {len(blob)} of {size} payload bytes")
            dtype = self._dtype
            if with_meta:
                gap = int(row["meta_offset"]) - int(row["offset"])
                dtype = json.loads(bytes(blob[gap: gap + int(row["meta_size"])]))["dtype"]
            buf = self._pool.get(self._shape(r), dtype)  # recycled once every view of it is gone
            payload = blob if len(blob) == size else memoryview(blob)[:size]  # no copy when exact
            if self._sums is not None and self._has_sum[r]:
                got = checksum_int(payload)
                if got != int(self._sums[r]):
                    raise ValueError(f"checksum mismatch: the payload's xxh3_64 is {got:016x}, index.parquet "
                                     f"says {int(self._sums[r]):016x} (flipped bytes, or an index row "
                                     "pointing at another sample's bytes); `cytodata verify --deep` lists all")
            image = self.shards.codec.decode(payload, buf.shape, buf.dtype, out=buf)
        except Exception as exc:  # noqa: BLE001 - any decode failure is a corrupt sample
            err = ShardError(f"{self.shards.source}: shard {shard} sample {key!r} is unreadable "
                             f"({type(exc).__name__}: {exc}); rewrite that shard or use on_error='skip'")
            if self.on_error == "raise":
                raise err from exc
            with self._count_lock:
                self.errors += 1
                self.skipped_keys.append(key)
            warnings.warn(f"skipped: {err}", stacklevel=2)
            raise err from exc
        tensor = torch.from_numpy(image)
        if self.as_int32:
            tensor = tensor.to(torch.int32)
        meta = {c: row[c] for c in self.columns}
        return {"__key__": key, "image": tensor, "label": int(self.labels[r]), "meta": meta}


class _Rows:
    """Row access without pandas per sample: column -> Python list (NA -> "" via ``_plain``)."""

    def __init__(self, index: pd.DataFrame, columns: tuple[str, ...]):
        names = set(columns) | {"key", "shard", "offset", "size", "meta_offset", "meta_size"}
        self.data = {c: [_plain(v) for v in index[c].tolist()] for c in names}

    def __getitem__(self, r: int) -> dict:
        return {c: v[r] for c, v in self.data.items()}


def _columns(index: pd.DataFrame, columns: tuple[str, ...]) -> _Rows:
    return _Rows(index, columns)


def _plain(value):
    """NA -> "" (strings) so default_collate accepts the meta dict; numpy scalars -> Python."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return value.item() if isinstance(value, np.generic) else value


def _checksums(index: pd.DataFrame, source: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-row expected XXH3-64 (uint64) and whether the row has one; warns once when rows lack it."""
    if CHECKSUM in index.columns:
        sums, has = to_ints(index[CHECKSUM].tolist())
    else:
        sums, has = None, np.zeros(len(index), dtype=bool)
    if len(index) and not has.all():
        warnings.warn(f"{source}: {int((~has).sum())} of {len(index)} samples have no {CHECKSUM} checksum in "
                      "index.parquet (written by an older cytodata): they cannot be verified while loading. "
                      f"Check the shards with `cytodata verify {source}`, or rewrite the set with "
                      "`cytodata shard` to add per-sample checksums", stacklevel=3)
    return (sums, has) if has.any() else (None, None)


def _label_ids(meta: dict, index: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Sorted label vocabulary (shards.json label_counts + index values) and per-row ids (-1: NA)."""
    if "label" not in index.columns:
        return [], np.full(len(index), -1, dtype=np.int64)
    labels = index["label"].astype("string")
    vocab = sorted(set(meta.get("label_counts", {})) | set(labels.dropna().unique().tolist()))
    lookup = {v: i for i, v in enumerate(vocab)}
    ids = np.array([lookup[v] if v is not pd.NA else -1 for v in labels.tolist()], dtype=np.int64)
    return vocab, ids


def _shapes(meta: dict, index: pd.DataFrame) -> Callable[[int], tuple[int, int, int]]:
    """Row -> (C, H, W): from shards.json when uniform, else the index columns."""
    if meta.get("shape"):
        shape = tuple(int(s) for s in meta["shape"])
        return _Const(shape)
    return _FromIndex(index[["n_channels", "height", "width"]].to_numpy(dtype=np.int64))


class _Const:
    def __init__(self, shape):
        self.shape = shape

    def __call__(self, r: int):
        return self.shape


class _FromIndex:
    def __init__(self, table: np.ndarray):
        self.table = table

    def __call__(self, r: int):
        return tuple(int(v) for v in self.table[r])
