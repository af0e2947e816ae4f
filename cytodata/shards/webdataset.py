"""WebDataset shard writer: one task writes one ``shard-XXXXXX.tar`` atomically.

A task writes ``NAME.tmp-<uuid>`` while hashing the bytes it writes, renames it to ``NAME``,
then writes the ``NAME.done.json`` sidecar (sha256 + everything the index needs). A killed job
therefore leaves, per shard, a complete tar with its sidecar, a tar without one (redone), or a
temp file (deleted on re-run). See FORMAT.md for the layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._options import SampleOptions
from ._plan import shard_name
from ._samples import INDEX_COLUMNS, Dropped, Moments, Sample, moment_groups
from .checksum import COLUMN as CHECKSUM
from .checksum import checksum
from .codecs import CODECS, codec_for_ext

FORMAT = "cytodata-webdataset"
VERSION = 1


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, fh):
        self._fh, self._sha, self.n = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        self._sha.update(data)
        self.n += len(data)
        return self._fh.write(data)

    def tell(self) -> int:
        return self.n

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class _TarWriter:
    """Append-only tar writer: GNU headers from ``tarfile.TarInfo.tobuf`` and one ``write`` per
    payload (``tarfile.addfile`` copies through 16 KiB chunks, a measurable cost per shard).
    Produces the same bytes as ``tarfile`` (regular members, end blocks, record padding).
    """

    def __init__(self, fh):
        self.fh, self.offset = fh, 0

    def add(self, name: str, data: bytes) -> int:
        """Append a regular-file member with fixed owner/mtime; return the offset of its data."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        pad = -len(data) % tarfile.BLOCKSIZE
        self.fh.write(header)
        self.fh.write(data)
        if pad:
            self.fh.write(tarfile.NUL * pad)
        start = self.offset + len(header)
        self.offset = start + len(data) + pad
        return start

    def close(self) -> None:
        """End-of-archive marker (two zero blocks), padded to a whole record like tarfile."""
        end = self.offset + 2 * tarfile.BLOCKSIZE
        end += -end % tarfile.RECORDSIZE
        self.fh.write(tarfile.NUL * (end - self.offset))
        self.offset = end


def sample_meta(sample: Sample, rec: dict, codec: str, channel_mode: str, digest: str | None = None) -> dict:
    """The ``KEY.json`` member: shape, dtype, codec, channels, payload checksum + the manifest columns."""
    meta = {"key": sample.key, "shape": list(sample.image.shape), "dtype": str(sample.image.dtype),
            "codec": codec, "channels": sample.channels, "channel_mode": channel_mode}
    if digest is not None:
        meta[CHECKSUM] = digest
    meta.update({k: v for k, v in rec.items() if k not in ("key", "channels")})
    return meta


@dataclass(frozen=True)
class ShardTask:
    """One dask task: write shard number ``index`` of the plan into the folder ``out``.

    ``recs``: its manifest records (``_samples.records``), in plan order; ``codec``: a
    ``CODECS`` name. The shard number travels with the task (the writer keys its result by
    it), so nothing parses it back out of the file name.
    """

    out: str
    index: int
    recs: list[dict]
    codec: str
    samples: SampleOptions

    @property
    def name(self) -> str:
        """The tar's file name, ``shard-000042.tar``."""
        return shard_name(self.index)


def write_shard(task: ShardTask) -> dict:
    """Write one shard from manifest records; return its stats (also saved as the sidecar)."""
    name, recs, codec, channel_mode = task.name, task.recs, task.codec, task.samples.channel_mode
    enc = CODECS.get(codec)
    final = Path(task.out) / name
    tmp = final.with_name(f"{name}.tmp-{uuid.uuid4().hex}")
    index, ledger, labels, moments, pixel_bytes, rows_written = [], [], Counter(), Moments(), 0, 0
    dtypes: set[str] = set()
    channel_sets: list[list[str]] = []
    with open(tmp, "wb") as raw:
        sink = _HashingWriter(raw)
        tar = _TarWriter(sink)
        for rec in recs:
            try:
                samples = task.samples.load(rec)
            except Dropped as drop:
                ledger.append({"source": rec["source"], "input_id": rec["image_id"],
                               "stage": "shard", "reason": drop.reason, "detail": drop.detail})
                continue
            rows_written += 1
            for s in samples:
                enc.check_dtype(s.image.dtype, f"{rec.get('image_id')} (key {s.key})")
                payload = enc.encode(s.image)
                digest = checksum(payload)
                meta = json.dumps(sample_meta(s, rec, codec, channel_mode, digest), sort_keys=True).encode()
                off = tar.add(f"{s.key}.{enc.ext}", payload)
                meta_off = tar.add(f"{s.key}.json", meta)
                c, h, w = s.image.shape
                row = {"shard": name, "key": s.key, "offset": off, "size": len(payload),
                       "meta_offset": meta_off, "meta_size": len(meta),
                       "n_channels": c, "height": h, "width": w, CHECKSUM: digest}
                row.update({col: rec.get(col) for col in INDEX_COLUMNS})
                index.append(row)
                pixel_bytes += s.image.nbytes
                dtypes.add(str(s.image.dtype))
                if s.channels not in channel_sets:
                    channel_sets.append(s.channels)
                moments.add(moment_groups(rec), s.image, s.channels)
                if rec.get("label") is not None:
                    labels[rec["label"]] += 1
        tar.close()
    # no fsync: a shard that a crash leaves half-flushed fails its sha256 check on re-run and is
    # rewritten (write_webdataset verifies every finished shard against its sidecar)
    os.replace(tmp, final)
    stats = {"name": name, "sha256": sink.hexdigest(), "samples": len(index), "bytes": sink.n,
             "rows_in": len(recs), "rows_written": rows_written, "pixel_bytes": pixel_bytes,
             "dtypes": sorted(dtypes), "channel_sets": channel_sets,
             "index": index, "ledger": ledger, "label_counts": dict(labels), "moments": moments.data}
    side = final.with_name(name + ".done.json")
    side_tmp = side.with_name(side.name + f".tmp-{uuid.uuid4().hex}")
    side_tmp.write_text(json.dumps(stats))
    os.replace(side_tmp, side)
    return stats


def decode(sample: dict, out: np.ndarray | None = None, verify: bool = True) -> tuple[np.ndarray, dict]:
    """A raw webdataset sample (``{"__key__", "json": bytes, "<ext>": bytes}``) -> (image, meta).

    The image is ``(C, H, W)`` at the stored dtype; ``meta`` is the parsed ``KEY.json``.
    ``verify``: check the payload against the JSON's ``xxh3_64`` when it has one (ShardError).
    """
    from ..errors import ShardError

    key = sample.get("__key__", "?")
    if "json" not in sample:
        raise ShardError(f"sample {key!r} has no .json member; members: {sorted(sample)}; "
                         "is this a cytodata shard?")
    raw_meta = sample["json"]
    meta = raw_meta if isinstance(raw_meta, dict) else json.loads(bytes(raw_meta).decode("utf-8"))
    codec = CODECS.get(meta["codec"]) if meta.get("codec") in CODECS else None
    if codec is None or codec.ext not in sample:
        exts = [k for k in sample if not k.startswith("__") and k != "json"]
        if len(exts) != 1:
            raise ShardError(f"sample {key!r}: expected one payload member, found {exts}")
        codec = codec_for_ext(exts[0])
    if verify and meta.get(CHECKSUM) and checksum(sample[codec.ext]) != meta[CHECKSUM]:
        raise ShardError(f"sample {key!r}: payload xxh3_64 {checksum(sample[codec.ext])} differs from its "
                         f"JSON member's {meta[CHECKSUM]}: the shard is corrupt; `cytodata verify --deep` "
                         "names every bad sample")
    image = codec.decode(sample[codec.ext], meta["shape"], meta["dtype"], out=out)
    return image, meta


def wds_handler(sample: dict) -> dict:
    """Decode a cytodata sample inside a plain ``webdataset`` pipeline (any codec).

    ``webdataset.WebDataset(urls).decode().map(cytodata.shards.wds_handler)``: the payload
    member (``sample["blosc"]``, ``sample["npy"]``, ...) becomes the ``(C, H, W)`` array at
    the stored dtype, checked against its ``xxh3_64``; ``sample["json"]`` becomes the metadata
    dict. Works before or after ``.decode()`` (a payload webdataset already decoded, such as
    ``npy``, is kept). Other members are left as they are.
    """
    out = dict(sample)
    meta = out.get("json")
    if meta is not None and not isinstance(meta, dict):
        meta = json.loads(bytes(meta).decode("utf-8"))
        out["json"] = meta
    payload = next((k for k in out if not k.startswith("__") and k != "json"), None)
    if payload is not None and isinstance(out[payload], np.ndarray):
        return out  # decoded by webdataset's own handlers (npy)
    image, meta = decode(out)
    out[payload], out["json"] = image, meta
    return out
