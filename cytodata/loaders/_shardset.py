"""Open a WebDataset shard set (local folder or fsspec URL), check it, and read payload byte ranges.

Everything a reader needs comes from ``shards.json`` and ``index.parquet`` (FORMAT.md
section 1); payloads are read as ``tar[offset:offset + size]`` (one ranged read per sample,
batched with ``fs.cat_ranges`` on object stores so requests run concurrently). Open local
files are cached per process and dropped on pickling, so the object is spawn-safe.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import threading
from typing import Any

import numpy as np
import pandas as pd

from .._fs import is_local, open_fs
from ..errors import ShardError
from ..shards.codecs import CODECS, Codec

FORMAT = "cytodata-webdataset"


#: ranged reads of one shard closer than this are fetched as one request (the gap is read too)
COALESCE_GAP = 64 << 10
#: ... up to this many bytes per merged request
COALESCE_MAX = 16 << 20
#: object-store protocols whose client takes ``config_kwargs={"max_pool_connections": n}`` (botocore)
POOLED = ("s3", "s3a")


def sized_options(source: str, storage_options: dict | None, connections: int | None) -> dict:
    """``storage_options`` with the S3 connection pool sized to ``connections`` requests in flight.

    botocore's default pool (10 connections), shared by every thread of the process through
    one filesystem object, caps the requests in flight: with 2 decode threads x 32 ranged
    reads it was the bottleneck at 50 ms per request. A ``max_pool_connections`` the caller
    gives in ``config_kwargs`` wins.
    """
    options = dict(storage_options or {})
    protocol = str(source).split("://", 1)[0] if "://" in str(source) else ""
    if connections and protocol in POOLED:
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("max_pool_connections", int(connections))
        options["config_kwargs"] = config
    return options


class ShardSet:
    """A checked shard set: ``meta`` (shards.json), ``index`` (DataFrame), ``codec``, ``fingerprint``.

    Raises :class:`ShardError` when a file is missing, a shard's size differs from shards.json,
    or the index disagrees with the shard list (sample counts, byte ranges past a shard's end).
    """

    def __init__(self, source: str | os.PathLike, storage_options: dict | None = None,
                 connections: int | None = None):
        self.source = str(source)
        self.storage_options = sized_options(self.source, storage_options, connections)
        storage_options = self.storage_options
        self._fs, self.root = open_fs(source, storage_options)
        self._pid = os.getpid()
        self.local = is_local(self._fs)
        self.meta = self._read_json("shards.json")
        if self.meta.get("format") != FORMAT:
            raise ShardError(f"{self.source}/shards.json has format {self.meta.get('format')!r}, expected "
                             f"{FORMAT!r}; a cytodata-zarr set reads with cytodata.loaders.ZarrDataset; for this "
                             "loader (and `cytodata train`) write a WebDataset set from the same manifest with "
                             "`cytodata shard MANIFEST_DIR -o OUT`")
        self.index = self._read_index()
        self.codec_name = str(self.meta["codec"])
        CODECS.get(self.codec_name)  # unknown codec -> error listing the known ones
        self._check_shards()
        self.fingerprint = fingerprint(self.meta)
        self._files: dict[str, Any] = {}
        self._maps: dict[str, memoryview | None] = {}  # local shards mapped read-only (None: not mappable)
        self._bytes = {s["name"]: int(s["bytes"]) for s in self.meta.get("shards", [])}
        self._lock = threading.Lock()
        self.cache = None  # a ShardCache (remote sets read through a local shard cache)
        self.requests = 0  # object-store requests for payloads or shards by this process
        # byte ranges as arrays once: per-request column conversion would cost O(index) per chunk
        self._ranges = (self.index["shard"].astype(str).to_numpy(dtype=object),
                        self.index["offset"].to_numpy(dtype=np.int64),
                        (self.index["offset"] + self.index["size"]).to_numpy(dtype=np.int64),
                        (self.index["meta_offset"] + self.index["meta_size"]).to_numpy(dtype=np.int64))

    @property
    def fs(self):
        """The filesystem of this process: async ones (s3fs) are not fork-safe, so re-open after fork."""
        if self._fs is None or self._pid != os.getpid():
            self._fs, _ = open_fs(self.source, self.storage_options)
            self._pid = os.getpid()
        return self._fs

    # --- reading metadata ---
    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _read_json(self, name: str) -> dict:
        try:
            return json.loads(self.fs.cat_file(self.path(name)))
        except FileNotFoundError:
            raise ShardError(f"{self.source} has no {name}: not a cytodata shard set "
                             "(write one with `cytodata shard`)") from None
        except json.JSONDecodeError as exc:
            raise ShardError(f"{self.source}/{name} is not valid JSON ({exc}); rewrite the shard set") from None

    def _read_index(self) -> pd.DataFrame:
        try:
            data = self.fs.cat_file(self.path("index.parquet"))
        except FileNotFoundError:
            raise ShardError(f"{self.source} has no index.parquet; rewrite it with `cytodata shard`") from None
        index = pd.read_parquet(io.BytesIO(data))
        need = {"shard", "key", "offset", "size", "meta_offset", "meta_size"}
        missing = sorted(need - set(index.columns))
        if missing:
            raise ShardError(f"{self.source}/index.parquet lacks columns {missing}; rewrite the shard set")
        return index.reset_index(drop=True)

    def _check_shards(self) -> None:
        shards = self.meta.get("shards", [])
        self.fs.invalidate_cache(self.root)  # the listing of now, not one this process saw before
        listing = {os.path.basename(str(e["name"]).rstrip("/")): int(e.get("size") or 0)
                   for e in self.fs.ls(self.root, detail=True)}
        missing = [s["name"] for s in shards if s["name"] not in listing]
        if missing:
            raise ShardError(f"{self.source}: shards {missing[:5]} listed in shards.json are missing "
                             f"({len(missing)} of {len(shards)}); copy them back or rewrite the shard set")
        wrong = [(s["name"], listing[s["name"]], s["bytes"]) for s in shards if listing[s["name"]] != s["bytes"]]
        if wrong:
            raise ShardError(f"{self.source}: shard sizes differ from shards.json (name, on disk, expected): "
                             f"{wrong[:5]}; the copy is incomplete or the shards were rewritten")
        if len(self.index) != sum(s["samples"] for s in shards):
            raise ShardError(f"{self.source}: index.parquet has {len(self.index)} rows but shards.json lists "
                             f"{sum(s['samples'] for s in shards)} samples; the index is stale, rewrite the set")
        names = self.index["shard"].astype(str)
        counts = names.value_counts().to_dict()
        bad = [(s["name"], counts.get(s["name"], 0), s["samples"]) for s in shards
               if counts.get(s["name"], 0) != s["samples"]]
        unknown = sorted(set(counts) - {s["name"] for s in shards})
        if bad or unknown:
            raise ShardError(f"{self.source}: index.parquet disagrees with shards.json (shard, index rows, "
                             f"listed samples): {bad[:5]} unknown shards {unknown[:5]}; rewrite the shard set")
        size = names.map({s["name"]: s["bytes"] for s in shards}).to_numpy(dtype=np.int64)
        end = np.maximum(self.index["offset"] + self.index["size"],
                         self.index["meta_offset"] + self.index["meta_size"]).to_numpy(dtype=np.int64)
        past = np.flatnonzero(end > size)
        if len(past):
            rows = self.index.iloc[past[:5]]
            raise ShardError(f"{self.source}: index byte ranges run past the shard end for keys "
                             f"{list(rows['key'])} in {list(rows['shard'])}; the index does not match the shards")

    @property
    def codec(self) -> Codec:
        """Looked up by name (codec objects hold lambdas; the set must pickle for spawn workers)."""
        return CODECS.get(self.codec_name)

    # --- reading payloads ---
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_maps"] = {}, {}
        state["_fs"] = None  # re-opened in the worker
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for view in self._maps.values():
                _unmap(view)
            self._maps.clear()
            for fh in self._files.values():
                os.close(fh)
            self._files.clear()

    def read(self, rows: np.ndarray, with_meta: bool = False) -> list[bytes]:
        """Payload bytes of index ``rows`` (and the JSON member right after when ``with_meta``)."""
        names, starts, payload_ends, meta_ends = self._ranges
        shard, start = names[rows], starts[rows]
        end = (meta_ends if with_meta else payload_ends)[rows]
        if self.local:
            return [self._pread(name, int(s), int(e)) for name, s, e in zip(shard, start, end)]
        return self.read_ranges(shard, start, end)

    def read_ranges(self, shard: np.ndarray, start: np.ndarray, end: np.ndarray) -> list:
        """Byte ranges of an object store in one concurrent batch, neighbours merged into one request.

        Ranges of one shard less than ``COALESCE_GAP`` apart (a payload, its JSON member and the
        next tar header lie ~1.5 kB apart) are fetched as one request and sliced: fewer requests
        (each costs a round trip and ~2 ms of client CPU) where the order reads neighbours
        together (unshuffled sets, windows). A failed request returns its exception for each
        of its ranges.
        """
        n = len(shard)
        if not n:
            return []
        groups: list[list[int]] = []
        lo: list[int] = []
        hi: list[int] = []
        for i in sorted(range(n), key=lambda i: (shard[i], start[i])):
            s, e = int(start[i]), int(end[i])
            if groups and shard[groups[-1][0]] == shard[i] and s - hi[-1] <= COALESCE_GAP \
                    and max(e, hi[-1]) - lo[-1] <= COALESCE_MAX:
                groups[-1].append(i)
                hi[-1] = max(hi[-1], e)
            else:
                groups.append([i])
                lo.append(s)
                hi.append(e)
        with self._lock:
            self.requests += len(groups)
        got = self.fs.cat_ranges([self.path(shard[g[0]]) for g in groups], lo, hi, on_error="return")
        out: list = [None] * n
        for g, first, blob in zip(groups, lo, got):
            if isinstance(blob, BaseException) or len(g) == 1:
                for i in g:
                    out[i] = blob
                continue
            view = memoryview(blob)
            for i in g:
                out[i] = view[int(start[i]) - first: int(end[i]) - first]
        return out

    def fetch_shard(self, name: str) -> bytes:
        """The whole shard ``name`` from the object store (one request)."""
        with self._lock:
            self.requests += 1
        return self.fs.cat_file(self.path(name))

    def slice_of(self, data: bytes, row: int, with_meta: bool = False) -> memoryview:
        """The bytes of index ``row`` inside ``data``, its whole shard held in memory."""
        start = int(self._ranges[1][row])
        return memoryview(data)[start: start + self.span(row, with_meta)]

    def pread_at(self, fd: int, row: int, scratch: memoryview, with_meta: bool = False) -> memoryview:
        """The bytes of index ``row`` read from ``fd`` (its shard, e.g. a cached copy) into ``scratch``."""
        n = self.span(row, with_meta)
        got = os.preadv(fd, [scratch[:n]], int(self._ranges[1][row]))
        return scratch[:got]

    def read_into(self, row: int, scratch: memoryview, with_meta: bool = False) -> memoryview:
        """Local sets: the bytes of index ``row`` read into ``scratch`` (no allocation per sample).

        ``scratch`` comes from ``_buffers.Scratch.view(n)`` with ``n >= span(row)``; returns the
        filled view (shorter when the file ended early).
        """
        names, starts = self._ranges[:2]
        n = self.span(row, with_meta)
        got = os.preadv(self._fd(str(names[row])), [scratch[:n]], int(starts[row]))
        return scratch[:got]

    def view(self, row: int, with_meta: bool = False) -> memoryview | None:
        """Local sets: the bytes of index ``row`` as a view of its memory-mapped shard (no copy).

        Each shard is mapped read-only once per process, and only when its size on disk is the
        size ``shards.json`` lists (the index ranges were checked against that size at open).
        ``None`` when the shard cannot be mapped (size changed, empty, mmap refused): read it
        with :meth:`read_into`, whose short reads become errors naming the sample.
        """
        names, starts = self._ranges[:2]
        name = str(names[row])
        mapped = self._maps.get(name, False)
        if mapped is False:
            mapped = self._map(name)
        if mapped is None:
            return None
        start = int(starts[row])
        return mapped[start: start + self.span(row, with_meta)]

    def _map(self, name: str) -> memoryview | None:
        with self._lock:
            if name in self._maps:
                return self._maps[name]
        fd = self._fd(name)
        view = None
        try:
            if os.fstat(fd).st_size == self._bytes.get(name, -1) > 0:
                view = memoryview(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
        except (OSError, ValueError):  # no mmap here (some network filesystems): read instead
            view = None
        with self._lock:
            if name in self._maps:  # another decode thread mapped it first
                _unmap(view)
                return self._maps[name]
            self._maps[name] = view
        return view

    def span(self, row: int, with_meta: bool = False) -> int:
        """Bytes :meth:`read_into` reads for ``row``."""
        _, starts, payload_ends, meta_ends = self._ranges
        return int((meta_ends if with_meta else payload_ends)[row] - starts[row])

    def _pread(self, name: str, start: int, end: int) -> bytes:
        return os.pread(self._fd(name), end - start, start)

    def _fd(self, name: str) -> int:
        fd = self._files.get(name)
        if fd is None:
            with self._lock:  # decode threads share the open files; open each once
                fd = self._files.get(name)
                if fd is None:
                    fd = self._files[name] = os.open(self.path(name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return fd


def _unmap(view: memoryview | None) -> None:
    """Release a shard's mapping (left to the garbage collector while a sample still views it)."""
    if view is None:
        return
    mapped = view.obj
    view.release()
    try:
        mapped.close()
    except BufferError:  # a caller still holds a sample's view: unmapped when that is freed
        pass


def fingerprint(meta: dict) -> str:
    """Identity of a shard set's content: codec + every shard's name, sha256 and sample count."""
    parts = [meta.get("codec"), [(s["name"], s.get("sha256"), s["samples"]) for s in meta.get("shards", [])]]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
