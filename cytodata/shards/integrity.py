"""``verify(path, deep=False)``: check a shard set against its own checksums; CLI ``cytodata verify``.

WebDataset sets: every shard listed in ``shards.json`` exists with the listed size and sha256,
and ``index.parquet`` agrees with the listing; ``deep`` also reads every sample's payload and
JSON member and checks the payload's XXH3-64 against the index and the JSON (so a flipped byte
or an index row pointing at another sample's bytes is named by shard and key). Zarr sets: the
array and index agree; ``deep`` reads every indexed row and checks its XXH3-64 (sha256 for sets
written before checksums). Works on local folders and fsspec URLs (``s3://...``). Returns a list
of :class:`Problem` (empty: the set is intact) and never raises for a damaged set, so callers
(the CLI, publishing) can report every problem at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .checksum import COLUMN as CHECKSUM
from .checksum import checksum


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a shard set: where (``shard`` file and/or sample ``key``) and what."""

    shard: str | None
    key: str | None
    what: str

    def __str__(self) -> str:
        where = " ".join(x for x in (f"shard {self.shard}" if self.shard else "",
                                     f"key {self.key!r}" if self.key else "") if x)
        return f"{where or 'set'}: {self.what}"


def verify(path, deep: bool = False, storage_options: dict | None = None) -> list[Problem]:
    """Check the shard set at ``path`` (folder or fsspec URL); return its problems (empty: intact).

    ``deep``: also check every sample's checksum (reads every byte of the set once).
    """
    from .._fs import open_fs

    fs, root = open_fs(path, storage_options)
    try:
        meta = json.loads(fs.cat_file(f"{root}/shards.json"))
    except FileNotFoundError:
        if not fs.exists(root):
            return [Problem(None, None, f"{path} does not exist")]
        return [Problem(None, None, f"{path} has no shards.json: not a cytodata shard set")]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [Problem("shards.json", None, f"not valid JSON ({exc}); rewrite the shard set")]
    try:
        index = pd.read_parquet(io.BytesIO(fs.cat_file(f"{root}/index.parquet")))
    except FileNotFoundError:
        return [Problem("index.parquet", None, "missing; rewrite the shard set")]
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for damaged files
        return [Problem("index.parquet", None, f"unreadable ({type(exc).__name__}: {exc})")]
    fmt = meta.get("format")
    if fmt == "cytodata-webdataset":
        return _verify_webdataset(fs, root, meta, index, deep)
    if fmt == "cytodata-zarr":
        return _verify_zarr(path, meta, index, deep, storage_options)
    return [Problem("shards.json", None, f"format {fmt!r} cannot be verified (cytodata-webdataset, cytodata-zarr)")]


def _sha256(fs, path: str) -> str:
    sha = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _verify_webdataset(fs, root: str, meta: dict, index: pd.DataFrame, deep: bool) -> list[Problem]:
    problems: list[Problem] = []
    listing = {str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
               for e in fs.ls(root, detail=True)}
    counts = index["shard"].astype(str).value_counts().to_dict() if "shard" in index else {}
    intact = set()
    for s in meta.get("shards", []):
        name = s["name"]
        if name not in listing:
            problems.append(Problem(name, None, "missing (listed in shards.json)"))
            continue
        if listing[name] != s["bytes"]:
            problems.append(Problem(name, None, f"{listing[name]} bytes on disk, shards.json says {s['bytes']}"))
        elif _sha256(fs, f"{root}/{name}") != s["sha256"]:
            problems.append(Problem(name, None, "sha256 differs from shards.json (the bytes changed)"))
        else:
            intact.add(name)
        if counts.get(name, 0) != s["samples"]:
            problems.append(Problem(name, None, f"index.parquet has {counts.get(name, 0)} rows, "
                                                f"shards.json lists {s['samples']} samples"))
    unknown = sorted(set(counts) - {s["name"] for s in meta.get("shards", [])})
    problems += [Problem(u, None, "in index.parquet but not in shards.json") for u in unknown]
    if deep:
        problems += _deep_webdataset(fs, root, index, listing)
    return problems


def _deep_webdataset(fs, root: str, index: pd.DataFrame, listing: dict) -> list[Problem]:
    if CHECKSUM not in index.columns or index[CHECKSUM].isna().all():
        warnings.warn(f"{root}: index.parquet has no {CHECKSUM} checksums (an older shard set): only whole-shard "
                      "sha256s were checked; rewrite the set with `cytodata shard` to add them", stacklevel=3)
        return []
    problems = []
    for name, rows in index.groupby(index["shard"].astype(str), sort=True):
        if name not in listing:
            continue
        with fs.open(f"{root}/{name}", "rb") as fh:
            for r in rows.itertuples(index=False):
                key, want = str(r.key), getattr(r, CHECKSUM)
                if pd.isna(want):
                    problems.append(Problem(name, key, "no checksum in index.parquet"))
                    continue
                fh.seek(int(r.offset))
                payload = fh.read(int(r.size))
                if len(payload) < int(r.size):
                    problems.append(Problem(name, key, f"payload cut short ({len(payload)} of {int(r.size)} bytes)"))
                    continue
                got = checksum(payload)
                if got != want:
                    problems.append(Problem(name, key, f"payload xxh3_64 {got}, index.parquet says {want}"))
                fh.seek(int(r.meta_offset))
                try:
                    sample = json.loads(fh.read(int(r.meta_size)))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    problems.append(Problem(name, key, f"JSON member unreadable ({exc})"))
                    continue
                if sample.get("key") != key:
                    problems.append(Problem(name, key, f"index row points at the JSON of {sample.get('key')!r}"))
                elif sample.get(CHECKSUM) not in (None, want):
                    problems.append(Problem(name, key, f"JSON member says xxh3_64 {sample.get(CHECKSUM)}, "
                                                       f"index.parquet says {want}"))
    return problems


def _verify_zarr(path, meta: dict, index: pd.DataFrame, deep: bool, storage_options) -> list[Problem]:
    import zarr

    array_name = meta.get("array", "images.zarr")
    try:
        extra = {"storage_options": storage_options} if storage_options else {}
        arr = zarr.open_array(f"{str(path).rstrip('/')}/{array_name}", mode="r", **extra)
    except Exception as exc:  # noqa: BLE001
        return [Problem(array_name, None, f"cannot open the array ({type(exc).__name__}: {exc})")]
    problems = []
    if arr.shape[0] != meta.get("n_rows", arr.shape[0]):
        problems.append(Problem(array_name, None, f"{arr.shape[0]} rows, shards.json says {meta.get('n_rows')}"))
    if len(index) != meta.get("n_samples", len(index)):
        problems.append(Problem("index.parquet", None, f"{len(index)} rows, shards.json says {meta.get('n_samples')}"))
    rows = index["row"].to_numpy(dtype=np.int64) if "row" in index else np.array([], dtype=np.int64)
    past = index.loc[(rows < 0) | (rows >= arr.shape[0]), "key"].astype(str).tolist() if len(rows) else []
    problems += [Problem(array_name, k, "index row outside the array") for k in past]
    if index["key"].duplicated().any():
        duplicated = index.loc[index["key"].duplicated(), "key"]
        problems += [Problem("index.parquet", str(k), "duplicate key") for k in duplicated]
    if not deep:
        return problems
    column = CHECKSUM if CHECKSUM in index.columns else "sha256" if "sha256" in index.columns else None
    if column is None:
        warnings.warn(f"{path}: index.parquet has no checksums; rewrite the set to add them", stacklevel=3)
        return problems
    for r in index.itertuples(index=False):
        key, row, want = str(r.key), int(r.row), getattr(r, column)
        if past and key in past:
            continue
        try:
            pix = np.ascontiguousarray(arr[row])
        except Exception as exc:  # noqa: BLE001 - a chunk that no longer decodes
            problems.append(Problem(array_name, key, f"row {row} unreadable ({type(exc).__name__}: {exc})"))
            continue
        got = checksum(pix) if column == CHECKSUM else hashlib.sha256(pix).hexdigest()
        if got != want:
            problems.append(Problem(array_name, key, f"row {row} {column} {got}, index.parquet says {want}"))
    return problems
