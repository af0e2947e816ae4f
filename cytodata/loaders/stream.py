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

import functools
import json
import os
import threading
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from ..errors import ShardError
from ..shards.checksum import COLUMN as CHECKSUM
from ..shards.checksum import checksum_int, to_ints
from . import partition as part  # noqa: F401  (module; the package does not re-export the function)
from ._buffers import BufferPool, Scratch
from ._cache import Prefetch, ShardCache
from ._shardset import ShardSet
from .collate import check_shapes, collate
from .options import ON_ERROR, OrderOptions, ReadOptions, grouped  # noqa: F401  (ON_ERROR: re-export)
from .samplers import ShardShuffle, WindowShuffle
from .transforms import plan

#: index columns passed in ``meta`` by default
META_COLUMNS = ("plate", "well", "site", "batch", "source", "split", "label", "control_type", "compound",
                "moa", "parent_id")
ROLES = ("anchor", "partner")
#: with a shard cache: bytes of shards fetched ahead of the reader (at most half the cache limit)
PREFETCH_BYTES = 256 << 20


def _connections(read: ReadOptions) -> int:
    """Object-store requests in flight per process: every decode thread's ranged batch + prefetch."""
    if read.connections is not None:
        return max(1, int(read.connections))
    return min(256, max(10, max(1, read.threads) * read.read_ahead + max(2, read.threads)))


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

    ``cache_dir`` / ``cache_limit`` (remote sets): read whole shards through a node-local cache,
    fetched once, sha256-checked, shared by all ranks and workers, LRU under ``cache_limit``
    bytes (``ds.cache.stats()``). ``shuffle_window=K``: shards in a seeded order, samples
    shuffled within windows of K shards (a bounded working set for the cache). See
    docs/streaming.md.

    Options come grouped (``read=ReadOptions(...)``, ``order=OrderOptions(...)``, see
    ``options.py``) or as the flat keywords above, which override the groups' fields.
    :meth:`batches` yields whole batches built on the decode threads straight into one
    preallocated tensor (the fastest layout; bit-identical to collating the samples).
    """

    def __init__(self, source: str | os.PathLike, *, transform: Callable[[dict], dict] | None = None,
                 columns: tuple[str, ...] | None = None, read: ReadOptions | None = None,
                 order: OrderOptions | None = None, **options: Any):
        read, order = grouped(read, order, options)
        self.read_options, self.order_options = read, order
        self.shards = ShardSet(source, read.storage_options, connections=_connections(read))
        index = self.shards.index
        split = order.split
        self.rows = np.arange(len(index), dtype=np.int64)
        if split is not None:
            if "split" not in index.columns:
                raise ShardError(f"{source}: index.parquet has no 'split' column to select {split!r}")
            self.rows = np.flatnonzero((index["split"] == split).fillna(False).to_numpy())
        self.index = index.iloc[self.rows].reset_index(drop=True)
        self.split, self.seed, self.epoch, self.start = split, order.seed, 0, 0
        if order.shuffle_window is not None:
            self.sampler = WindowShuffle(order.shuffle_window, shuffle=order.shuffle)
        else:
            self.sampler = order.sampler if order.sampler is not None else ShardShuffle(shuffle=order.shuffle)
        self._rank, self._world = order.rank, order.world_size
        self.tail, self.transform, self.on_error = order.tail, transform, read.on_error
        self.batch_size_hint = int(order.batch_size_hint or getattr(self.sampler, "batch_size", 1))
        self.as_int32, self.read_ahead, self.threads = read.as_int32, read.read_ahead, read.threads
        self._count_lock = threading.Lock()
        self._pool, self._scratch = BufferPool(), Scratch()
        self.columns = tuple(c for c in (columns or META_COLUMNS) if c in self.index.columns)
        self.classes, self.labels = _label_ids(self.shards.meta, self.index)
        self.errors, self.skipped_keys = 0, []
        self._yielded = 0
        self._shape = _shapes(self.shards.meta, self.index)
        self._dtype = self.shards.meta.get("dtype")
        self._cols = _columns(self.index, self.columns)
        self.verify, self._mmap = read.verify, read.mmap
        self._sums = _checksums(self.index, str(source)) if self.verify else None
        self._codec_threads: int | None = None  # set per pass: 1 inside decode threads / workers
        self._prefetch: Prefetch | None = None  # set per pass when a shard cache is used
        if read.cache_dir is not None and not self.shards.local:  # local sets are read in place
            self.shards.cache = ShardCache(read.cache_dir, source=self.shards.source,
                                           fingerprint=self.shards.fingerprint,
                                           shards=self.shards.meta.get("shards", []), limit=read.cache_limit,
                                           check_hits=not read.verify)

    @property
    def cache(self) -> ShardCache | None:
        """The local shard cache of a remote set (``cache_dir=``), with this process's counters."""
        return self.shards.cache

    def __getstate__(self):  # spawn-safe: locks do not pickle
        state = dict(self.__dict__)
        state["_count_lock"] = state["_scratch"] = state["_prefetch"] = None
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
        units, pos = self.my_units()
        self._yielded = 0  # state_dict counts from this pass's start
        step = self.read_ahead
        chunks = ((units[lo: lo + step], pos[lo: lo + step]) for lo in range(0, len(units), step))
        self._start_prefetch(units)
        try:
            for outs in self._produce(self._chunk, chunks, own_threads=False):
                for out in outs:
                    self._yielded += 1
                    yield out
        finally:
            self._stop_prefetch()

    def _start_prefetch(self, units: np.ndarray) -> None:
        """With a shard cache: fetch this stream's shards ahead, in the order it first needs them."""
        self._stop_prefetch()
        cache = self.shards.cache
        if cache is None or cache.disabled:
            return
        rows = self.rows[units.reshape(-1)]
        names = pd.unique(self.shards._ranges[0][rows]).tolist()
        ahead = self.read_options.prefetch_bytes
        if ahead is None:
            ahead = PREFETCH_BYTES if cache.limit is None else min(PREFETCH_BYTES, cache.limit // 2)
        self._prefetch = Prefetch(cache, self.shards.fetch_shard, names, ahead,
                                  threads=max(2, self.threads))

    def _stop_prefetch(self) -> None:
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            prefetch.close()

    def batches(self, batch_size: int, *, pin_memory: bool | None = None) -> "Batches":
        """Iterate collated batches of ``batch_size`` instead of samples (see :class:`Batches`)."""
        return Batches(self, batch_size, pin_memory=pin_memory)

    def _iter_batches(self, batch_size: int, pin_memory: bool):
        """Batches of ``batch_size`` consecutive units of this process's stream (last may be short)."""
        units, pos = self.my_units()
        self._yielded = 0
        chunks = ((units[lo: lo + batch_size], pos[lo: lo + batch_size])
                  for lo in range(0, len(units), batch_size))
        task = functools.partial(self._batch, pin_memory=pin_memory)
        self._start_prefetch(units)
        try:
            for consumed, batch in self._produce(task, chunks, own_threads=True):
                self._yielded += consumed  # units, failed ones included: a resume never repeats them
                if batch is not None:
                    yield batch
        finally:
            self._stop_prefetch()

    def _produce(self, task, chunks, own_threads: bool):
        """``task(chunk)`` results in order: inline, or ``threads`` chunks in flight on a thread pool.

        Reading, hashing, blosc decoding and torch kernels release the GIL, so threads scale
        without worker processes, pickling or shared memory; transforms are seeded per sample,
        so the output does not depend on which thread ran what. ``own_threads``: the decode
        threads run torch ops on one intra-op thread each (:func:`_one_intra_op_thread_each`).
        """
        # blosc's own threads on top of ours / DataLoader workers would oversubscribe the cores:
        # one decoder thread per call there (per call: no process-global switch is flipped)
        self._codec_threads = 1 if (self.threads or get_worker_info() is not None) else None
        if not self.threads:
            yield from map(task, chunks)
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cytodata-decode")
        pending: deque = deque()
        try:
            if own_threads:
                _one_intra_op_thread_each(pool, self.threads)
            for chunk in chunks:
                pending.append(pool.submit(task, chunk))
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

    def _blobs(self, unique: np.ndarray, with_meta: bool):
        """Payload bytes of selected-index rows ``unique``: lazily into this thread's scratch
        (local; each blob is valid until the next one is read) or one concurrent request.
        """
        if self.shards.local:
            return (self._read_local(int(self.rows[r]), with_meta) for r in unique)
        if self.shards.cache is not None and not self.shards.cache.disabled:
            return self._cached_blobs(self.rows[unique], with_meta)
        try:  # object stores: one concurrent ranged request for the whole chunk
            return self.shards.read(self.rows[unique], with_meta=with_meta)
        except OSError as exc:
            return [exc] * len(unique)

    def _cached_blobs(self, rows: np.ndarray, with_meta: bool):
        """Payloads of index ``rows`` from the shard cache (fetched as needed), one file open per
        shard and chunk; rows of shards the cache could not take come from the object store.
        """
        shards = self.shards
        names = shards._ranges[0][rows]
        held: dict[str, Any] = {}
        for name in dict.fromkeys(names.tolist()):
            try:
                held[name] = self._shard(name)
            except OSError as exc:  # the object store failed: its samples follow on_error
                held[name] = exc
        far = [i for i, name in enumerate(names) if held[name] is None]
        remote = iter(shards.read(rows[far], with_meta=with_meta) if far else ())
        fds: dict[str, int] = {}
        try:
            for row, name in zip(rows.tolist(), names.tolist()):
                where = held[name]
                if where is None:
                    yield next(remote)
                elif isinstance(where, BaseException):
                    yield where
                elif isinstance(where, bytes):  # fetched, but the folder could not store it
                    yield shards.slice_of(where, row, with_meta)
                else:
                    try:
                        if name not in fds:
                            fds[name] = self._open_cached(name, where)
                        yield shards.pread_at(fds[name], row, self._scratch.view(shards.span(row, with_meta)),
                                              with_meta)
                    except OSError as exc:
                        yield exc
        finally:
            for fd in fds.values():
                os.close(fd)

    def _shard(self, name: str):
        """Shard ``name`` through this pass's prefetcher (or the cache directly)."""
        prefetch = self._prefetch
        if prefetch is not None:
            return prefetch.get(name)
        return self.shards.cache.ensure(name, self.shards.fetch_shard)

    def _open_cached(self, name: str, path: str) -> int:
        """Open a cached shard; one evicted since :meth:`ShardCache.ensure` said so is fetched again."""
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            again = self.shards.cache.ensure(name, self.shards.fetch_shard)
            if not isinstance(again, str):
                raise
            return os.open(again, os.O_RDONLY)

    def _refetched(self, r: int, with_meta: bool) -> Any:
        """The bytes of selected row ``r`` after the cache re-checked (and maybe re-fetched) its shard."""
        cache = self.shards.cache
        if cache is None or cache.disabled:
            return None
        row = int(self.rows[r])
        where = cache.repair(str(self.shards._ranges[0][row]), self.shards.fetch_shard)
        if where is None:
            return None
        if isinstance(where, bytes):
            return self.shards.slice_of(where, row, with_meta)
        fd = os.open(where, os.O_RDONLY)
        try:
            return os.pread(fd, self.shards.span(row, with_meta), int(self.shards._ranges[1][row]))
        finally:
            os.close(fd)

    def _load(self, rows: np.ndarray) -> dict[int, dict]:
        """Fetch + decode index ``rows`` (selected index numbering); failed ones are left out."""
        unique = np.unique(rows)
        with_meta = self._dtype is None
        out = {}
        for r, blob in zip(unique.tolist(), self._blobs(unique, with_meta)):
            try:
                out[r] = self._decode(r, blob, with_meta)
            except ShardError:
                if self.on_error == "raise":
                    raise
        return out

    def _read_local(self, row: int, with_meta: bool):
        try:
            if self._mmap:
                view = self.shards.view(row, with_meta)
                if view is not None:
                    return view
            return self.shards.read_into(row, self._scratch.view(self.shards.span(row, with_meta)), with_meta)
        except OSError as exc:
            return exc

    def _decode(self, r: int, blob: Any, with_meta: bool) -> dict:
        row = self._cols[r]
        tensor = torch.from_numpy(self._pixels(r, row, blob, with_meta))
        if self.as_int32:
            tensor = tensor.to(torch.int32)
        meta = {c: row[c] for c in self.columns}
        return {"__key__": row["key"], "image": tensor, "label": int(self.labels[r]), "meta": meta}

    def _pixels(self, r: int, row: dict, blob: Any, with_meta: bool, scratch: bool = False) -> np.ndarray:
        """Check + decode one payload into a pooled ``(C, H, W)`` array; ShardError when unreadable.

        ``scratch``: into this thread's scratch array instead (valid until its next call: for
        pixels copied elsewhere at once; no pool bookkeeping, and the same cache-warm buffer).
        """
        key, shard = row["key"], row["shard"]
        try:
            try:
                return self._checked_pixels(r, row, blob, with_meta, scratch)
            except Exception:
                # a cached shard gone bad is fetched again (counted) and the sample read once more
                fresh = None if isinstance(blob, BaseException) else self._refetched(r, with_meta)
                if fresh is None:
                    raise
                return self._checked_pixels(r, row, fresh, with_meta, scratch)
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

    def _checked_pixels(self, r: int, row: dict, blob: Any, with_meta: bool, scratch: bool) -> np.ndarray:
        """The body of :meth:`_pixels`: check + decode, raising whatever fails."""
        if isinstance(blob, BaseException):
            raise blob
        size = row["size"]
        if len(blob) < size:
            raise ValueError(f"read {len(blob)} of {size} payload bytes")
        dtype = self._dtype
        if with_meta:
            gap = row["meta_offset"] - row["offset"]
            dtype = json.loads(bytes(blob[gap: gap + row["meta_size"]]))["dtype"]
        payload = blob if len(blob) == size else memoryview(blob)[:size]  # no copy when exact
        want = self._sums[r] if self._sums is not None else None
        if want is not None:
            got = checksum_int(payload)  # GIL-free: decode threads hash in parallel
            if got != want:
                raise ValueError(f"checksum mismatch: the payload's xxh3_64 is {got:016x}, index.parquet "
                                 f"says {want:016x} (flipped bytes, or an index row pointing at "
                                 "another sample's bytes); `cytodata verify --deep` lists all")
        shape = self._shape(r)
        # the pool's buffers are recycled once every view of them is gone
        buf = self._scratch.array(shape, dtype) if scratch else self._pool.get(shape, dtype)
        return self.shards.codec.decode(payload, buf.shape, buf.dtype, out=buf, threads=self._codec_threads)

    # --- whole batches (Batches) ---
    def _batch(self, chunk: tuple[np.ndarray, np.ndarray], pin_memory: bool = False) -> tuple[int, dict | None]:
        """(units consumed, collated batch or None) of one chunk, pixels written once into the batch.

        Each sample's transform is planned from its index shape before any byte is read (crops
        and flips drawn exactly as ``__call__`` draws them), then its payload is read, checked,
        decoded into a pooled buffer and copied, cropped and flipped, straight into its slot of
        one preallocated ``(B, C, h, w)`` tensor. Transforms that do more than move pixels run
        per sample and their images are stacked into the preallocated tensor instead.
        """
        units, positions = chunk
        flat = units.reshape(len(units), -1)
        n, roles = flat.shape
        stubs = [[self._stub(int(r), int(p), ROLES[k]) for k, r in enumerate(row_set)]
                 for row_set, p in zip(flat, positions)]
        plans = [[plan(self.transform, s, self._shape(int(r))) for s, r in zip(ss, row_set)]
                 for ss, row_set in zip(stubs, flat)]
        if any(g is None for gs in plans for g in gs):
            return n, self._stack(self._chunk(chunk), pin_memory)
        for k in range(roles):  # one shape per batch, or the collate's MixedShapeError
            if len({plans[i][k].shape for i in range(n)}) > 1:
                check_shapes([{"__key__": stubs[i][k]["__key__"],
                               "image": torch.empty(plans[i][k].shape, device="meta")} for i in range(n)])
        dtype = torch.int32 if self.as_int32 else None
        images: list[torch.Tensor | None] = [None] * roles
        slots: dict[int, list[tuple[int, int]]] = {}
        for i in range(n):
            for k in range(roles):
                slots.setdefault(int(flat[i, k]), []).append((i, k))
        ok = np.ones(n, dtype=bool)
        unique = np.array(sorted(slots), dtype=np.int64)
        with_meta = self._dtype is None
        for r, blob in zip(unique.tolist(), self._blobs(unique, with_meta)):
            try:
                pixels = torch.from_numpy(self._pixels(r, self._cols[r], blob, with_meta, scratch=True))
            except ShardError:
                if self.on_error == "raise":
                    raise
                for i, _ in slots[r]:
                    ok[i] = False
                continue
            for i, k in slots[r]:
                if images[k] is None:
                    images[k] = self._batch_tensor((n, *plans[i][k].shape), dtype or pixels.dtype, pin_memory)
                elif dtype is None and images[k].dtype != pixels.dtype:
                    raise ShardError(f"{self.shards.source}: sample {stubs[i][k]['__key__']!r} is "
                                     f"{pixels.dtype}, earlier samples of its batch {images[k].dtype}; "
                                     "use as_int32=True to load mixed 8/16-bit sets in batches")
                plans[i][k].write(pixels, images[k][i])
        keep = np.flatnonzero(ok)
        if not len(keep):
            return n, None
        parts = []
        for k in range(roles):
            fields = default_collate([stubs[i][k] for i in keep])
            image = images[k]
            fields["image"] = image if len(keep) == n else image[torch.from_numpy(keep)]
            parts.append(fields)
        if roles > 1:
            parts[0]["partner"] = parts[1]
        return n, parts[0]

    def _stub(self, r: int, pos: int, role: str) -> dict:
        """A sample's dict without pixels (what ``_finish`` adds to the decoded sample)."""
        cols = self._cols
        key = cols.data["key"][r]
        return {"__key__": key, "label": int(self.labels[r]),
                "meta": {c: cols.data[c][r] for c in self.columns}, "__pos__": pos,
                "__errors__": self.errors, "__seed__": part.seed_for(self.seed, self.epoch, key, pos, role)}

    def _batch_tensor(self, shape: tuple[int, ...], dtype: torch.dtype, pin_memory: bool) -> torch.Tensor:
        """An uninitialized batch tensor: pinned (torch's caching host allocator) or pooled."""
        if pin_memory:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        return torch.from_numpy(self._pool.get(shape, _NUMPY[dtype]))

    def _stack(self, outs: list[dict], pin_memory: bool) -> dict | None:
        """Per-sample outputs -> a batch, images stacked into a preallocated tensor."""
        if not outs:
            return None
        images = [o.get("image") for o in outs]
        if not all(isinstance(x, torch.Tensor) for x in images) or images[0].dtype not in _NUMPY:
            return collate(outs)
        check_shapes(outs)
        rest = collate([{f: v for f, v in o.items() if f != "image"} for o in outs])
        out = self._batch_tensor((len(images), *images[0].shape), images[0].dtype, pin_memory)
        torch.stack(images, out=out)
        rest["image"] = out
        return rest


def _one_intra_op_thread_each(pool, n: int) -> None:
    """Start the ``n`` threads of ``pool`` with torch ops on one intra-op thread each.

    For :class:`Batches`, whose training thread runs no torch op of the loader's. The pool
    already fills the cores, as DataLoader worker processes do (they run with
    ``torch.set_num_threads(1)``). Left alone, each decode thread's crop or dtype cast would
    start an OpenMP team of its own: ``n`` x cores threads on the cores, spinning between ops
    (~10-15% of throughput on 2 cores). OpenMP's count is per calling thread, but
    ``torch.set_num_threads`` also sets the count threads started later begin with: that one
    is put back once every pool thread has set its own, so no other thread of the process is
    affected. Only for torch's OpenMP backend (its native pool is one for the whole process).

    Not for the per-sample path: there the training thread stacks every batch on its own
    OpenMP team, and libgomp lets a team's idle threads spin for long only while it manages
    no more threads than there are cores. With single-threaded decoders it does, so the
    collate's idle thread spun on the cores the decoders need (measured 0.79x throughput);
    with their own teams the spin is throttled.
    """
    if not _openmp():
        return
    before = torch.get_num_threads()
    ready = threading.Barrier(n)

    def start(_):
        torch.get_num_threads()  # torch's lazy per-thread setup first: it would undo the next line
        torch.set_num_threads(1)
        ready.wait(timeout=60)  # all n wait: the pool starts a thread per call, no idle one is reused

    try:
        list(pool.map(start, range(n)))
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def _openmp() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


class Batches(IterableDataset):
    """A :class:`StreamingDataset` that yields collated batches of ``batch_size`` (last may be short).

    Use it where the samples would go through ``DataLoader(ds, batch_size=B)``:
    ``DataLoader(ds.batches(B), batch_size=None, num_workers=0)`` or a plain ``for`` loop. Each
    batch is assembled on the decode threads: every sample's crop and flips are written straight
    into its slot of one ``(B, C, h, w)`` tensor (pinned when ``pin_memory``, default: when CUDA
    is available), so the training thread only receives finished batches. Fields equal
    ``default_collate`` of the samples (bit-identical images for the same seed); a sample that
    fails under ``on_error="skip"`` leaves its batch one shorter. ``state_dict`` /
    ``load_state_dict`` / ``set_epoch`` are the dataset's (units consumed, failed ones included).
    """

    def __init__(self, dataset: StreamingDataset, batch_size: int, *, pin_memory: bool | None = None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size}; use 1 or more")
        self.dataset, self.batch_size = dataset, int(batch_size)
        dataset.batch_size_hint = self.batch_size  # workers take whole batches
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)

    def __iter__(self):
        # in DataLoader worker processes a batch travels through shared memory: pinning is the
        # DataLoader's job there (pin_memory=True), not the worker's
        pin = self.pin_memory and get_worker_info() is None
        return self.dataset._iter_batches(self.batch_size, pin)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __repr__(self) -> str:
        return f"Batches({self.dataset!r}, batch_size={self.batch_size}, pin_memory={self.pin_memory})"

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self, samples_seen: int | None = None) -> dict:
        return self.dataset.state_dict(samples_seen)

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)


_NUMPY = {torch.uint8: np.uint8, torch.uint16: np.uint16, torch.int16: np.int16, torch.int32: np.int32,
          torch.int64: np.int64, torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


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


def _checksums(index: pd.DataFrame, source: str) -> list[int | None] | None:
    """Per-row expected XXH3-64 as Python ints (None: no checksum); warns once when rows lack it.

    Python ints compare with the hasher's result without any conversion per sample.
    """
    if CHECKSUM in index.columns:
        sums, has = to_ints(index[CHECKSUM].tolist())
    else:
        sums, has = np.zeros(len(index), dtype=np.uint64), np.zeros(len(index), dtype=bool)
    if len(index) and not has.all():
        warnings.warn(f"{source}: {int((~has).sum())} of {len(index)} samples have no {CHECKSUM} checksum in "
                      "index.parquet (written by an older cytodata): they cannot be verified while loading. "
                      f"Check the shards with `cytodata verify {source}`, or rewrite the set with "
                      "`cytodata shard` to add per-sample checksums", stacklevel=3)
    if not has.any():
        return None
    return [v if h else None for v, h in zip(sums.tolist(), has.tolist())]


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
