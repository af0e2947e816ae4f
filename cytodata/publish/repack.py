"""Repack a shard set for publishing: one run of shards per split, payloads in the chosen codec.

Readers that take files per split (Hugging Face ``datasets`` configs, ``webdataset`` URL lists)
need each split in its own shards, and readers without cytodata need a payload their stock
decoders know (``npy``). ``repack(shard_set, dest, codec)`` reads every source shard once
(checking its sha256 against ``shards.json``), sends each sample to its split's writer
(``shard-<split>-<id>-NNNNNN.tar``, ``samples_per_shard`` of the source) and re-encodes the payload
when the codec differs (the ``KEY.json`` member then gets the new ``codec`` and ``xxh3_64``;
shape, dtype and every other field stay). The result is a complete WebDataset shard set
(FORMAT.md section 1): ``index.parquet`` and ``shards.json`` describe the new shards, so
``cytodata verify``, ``StreamingDataset`` and plain tar readers all read DEST. Deterministic:
the same set and codec give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from ..errors import PublishError, ShardError
from ..shards.checksum import COLUMN as CHECKSUM
from ..shards.checksum import checksum
from ..shards.codecs import CODECS, Codec
from ..shards.webdataset import _HashingWriter, _TarWriter

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def split_of(index: pd.DataFrame) -> pd.Series:
    """Each sample's split name (``unassigned`` where the index has none)."""
    return index["split"].astype("string").fillna("unassigned")


def published_shard_name(split: str, tag: str, number: int) -> str:
    """``shard-<split>-<tag>-000003.tar``: the split lets readers glob one split; ``tag`` (the
    publication's identity, 8 hex digits) keeps names of different publications apart, since
    mlcroissant caches each extracted tar under a hash of its relative URL alone.
    """
    if not _SPLIT_NAME.match(split):
        raise PublishError(f"split name {split!r} cannot name a shard file (letters, digits, _ and - "
                           "only); rename the split in the manifest and re-shard")
    return f"shard-{split}-{tag}-{number:06d}.tar"


class _SplitWriter:
    """Append samples of one split; roll over to a new tar every ``per_shard`` samples."""

    def __init__(self, fs, root: str, local: bool, split: str, tag: str, per_shard: int):
        self.fs, self.root, self.local, self.split, self.per_shard = fs, root, local, split, per_shard
        self.tag = tag
        self.done: list[dict] = []   # {name, sha256, samples, bytes}
        self.rows: list[dict] = []   # index rows (shard, key, offsets, ...)
        self._open = None

    def _start(self) -> None:
        name = published_shard_name(self.split, self.tag, len(self.done))
        final = f"{self.root}/{name}"
        target = f"{final}.tmp-{uuid.uuid4().hex}" if self.local else final
        fh = open(target, "wb") if self.local else self.fs.open(target, "wb")
        sink = _HashingWriter(fh)
        self._open = {"name": name, "final": final, "target": target, "fh": fh, "sink": sink,
                      "tar": _TarWriter(sink), "samples": 0}

    def add(self, key: str, ext: str, payload: bytes, meta: bytes, row: dict) -> None:
        """Append one sample (payload member, then its JSON member)."""
        if self._open is None:
            self._start()
        cur = self._open
        off = cur["tar"].add(f"{key}.{ext}", payload)
        meta_off = cur["tar"].add(f"{key}.json", meta)
        self.rows.append({**row, "shard": cur["name"], "offset": off, "size": len(payload),
                          "meta_offset": meta_off, "meta_size": len(meta)})
        cur["samples"] += 1
        if cur["samples"] >= self.per_shard:
            self.close()

    def close(self) -> None:
        """Finish the open tar (end blocks, rename into place)."""
        cur, self._open = self._open, None
        if cur is None:
            return
        cur["tar"].close()
        cur["fh"].close()
        if self.local:
            os.replace(cur["target"], cur["final"])
        self.done.append({"name": cur["name"], "sha256": cur["sink"].hexdigest(),
                          "samples": cur["samples"], "bytes": cur["sink"].n})

    def abort(self) -> None:
        """Drop the open tar and the ones finished by this writer (after an error)."""
        cur, self._open = self._open, None
        if cur is not None:
            cur["fh"].close()
        paths = [cur["target"]] if cur is not None else []
        for path in paths + [f"{self.root}/{d['name']}" for d in self.done]:
            if self.fs.exists(path):
                self.fs.rm(path)


def _recode(payload: bytes, meta_bytes: bytes, source: Codec, target: Codec, where: str) -> tuple[bytes, bytes]:
    """One sample in the target codec: (payload, KEY.json bytes)."""
    if source.name == target.name:
        return payload, meta_bytes
    meta = json.loads(meta_bytes)
    dtype = np.dtype(meta["dtype"])
    target.check_dtype(dtype, where)
    image = source.decode(payload, meta["shape"], dtype, threads=1)
    new = target.encode(image)
    meta["codec"] = target.name
    meta[CHECKSUM] = checksum(new)
    return new, json.dumps(meta, sort_keys=True).encode()


def repack(shard_set, dst, codec: str, *, tag: str, workers: int = 4
           ) -> tuple[list[dict], pd.DataFrame, dict]:
    """Write ``shard_set``'s samples into ``dst`` by split, payloads in ``codec``.

    ``shard_set``: an opened :class:`~cytodata.publish.collect.ShardSetFiles`; ``dst``:
    ``(fs, root, is_local)``; ``tag``: goes into every shard name (:func:`published_shard_name`).
    Returns ``(shards, index, meta)``: the new shard list, the new ``index.parquet`` frame and
    the new ``shards.json`` dict (written by the caller).
    Raises :class:`PublishError` naming a source shard that no longer matches ``shards.json``,
    or the dtype a codec cannot hold.
    """
    meta, index = shard_set.meta, shard_set.index
    source = CODECS.get(str(meta["codec"]))
    target = CODECS.get(codec)
    for dtype in meta.get("dtypes") or [meta.get("dtype")]:
        if dtype:
            try:
                target.check_dtype(dtype, f"{shard_set.source} (shards.json dtypes)")
            except ShardError as exc:
                raise PublishError(str(exc)) from None
    fs, root, local = dst
    if local:
        os.makedirs(root, exist_ok=True)
    splits = split_of(index)
    per_shard = int(meta.get("samples_per_shard") or 0) or max(1, int(np.ceil(len(index) / max(1, len(
        meta.get("shards", []))))))
    writers = {s: _SplitWriter(fs, root, local, s, tag, per_shard) for s in dict.fromkeys(splits)}
    keep = [c for c in index.columns if c not in ("shard", "shard_index", "offset", "size",
                                                   "meta_offset", "meta_size")]
    by_shard = {name: rows for name, rows in index.assign(_split=splits.to_numpy()).groupby(
        "shard", sort=False)}
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for entry in meta.get("shards", []):
                name = entry["name"]
                data = shard_set.fs.cat_file(shard_set.path(name))
                got = hashlib.sha256(data).hexdigest()
                if got != entry["sha256"]:
                    raise PublishError(
                        f"{shard_set.source}: 1 shard(s) no longer match shards.json: {name} (sha256 "
                        f"{got[:12]}..., listed {entry['sha256'][:12]}...); the shards changed after "
                        "writing; re-run `cytodata shard` on the manifest (it rewrites mismatching "
                        "shards), then publish")
                rows = by_shard.get(name)
                if rows is None:
                    continue
                view = memoryview(data)

                def one(row, view=view, name=name):
                    payload = bytes(view[row.offset:row.offset + row.size])
                    meta_bytes = bytes(view[row.meta_offset:row.meta_offset + row.meta_size])
                    if getattr(row, CHECKSUM, None) and checksum(payload) != getattr(row, CHECKSUM):
                        raise PublishError(f"{shard_set.source}/{name}: sample {row.key!r} does not match "
                                           "its index checksum; re-run `cytodata shard`")
                    return _recode(payload, meta_bytes, source, target, f"{name} key {row.key}")

                recoded = list(pool.map(one, rows.itertuples(index=False)))
                for row, (payload, meta_bytes) in zip(rows.to_dict("records"), recoded, strict=True):
                    new_row = {c: row[c] for c in keep}
                    if target.name != source.name:
                        new_row[CHECKSUM] = checksum(payload)
                    writers[row["_split"]].add(str(row["key"]), target.ext, payload, meta_bytes, new_row)
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    shards = sorted((s for w in writers.values() for s in w.done), key=lambda s: s["name"])
    number = {s["name"]: i for i, s in enumerate(shards)}
    order = {k: i for i, k in enumerate(index["key"].astype(str))}
    rows = [r for w in writers.values() for r in w.rows]
    rows.sort(key=lambda r: (number[r["shard"]], order[str(r["key"])]))
    new_index = pd.DataFrame(rows)
    new_index.insert(0, "shard_index", [number[s] for s in new_index["shard"]])
    new_index.insert(0, "shard", new_index.pop("shard"))
    for col in ("shard_index", "offset", "size", "meta_offset", "meta_size"):
        new_index[col] = new_index[col].astype("int64")
    for col in index.columns:  # the source's column order and dtypes
        if col in new_index.columns and col not in ("shard", "shard_index"):
            new_index[col] = new_index[col].astype(index[col].dtype)
    new_index = new_index[[c for c in index.columns if c in new_index.columns]]
    new_meta = dict(meta)
    new_meta.update({"codec": target.name, "ext": target.ext, "shards": shards,
                     "samples_per_shard": per_shard,
                     "published_from": {"codec": source.name,
                                        "shards": [(s["name"], s["sha256"]) for s in meta.get("shards", [])]}})
    return shards, new_index, new_meta
