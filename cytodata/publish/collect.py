"""Everything the card and Croissant say, gathered once from a shard set (and its manifest).

``collect(...)`` opens and checks the shard set (``shards.json`` vs ``index.parquet`` vs the tar
sizes), reads the ledger, the manifest's ``provenance.json`` when given, and every sample's
``KEY.json`` member for per-image provenance (source files, plate/well/site, crop window).
The renderers (``card.py``, ``croissant.py``) are pure functions of the returned :class:`Facts`.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PublishError
from .sources import SourceInfo, resolve_sources

WEBDATASET = "cytodata-webdataset"

#: per-image provenance columns (provenance.parquet), in order
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "key", "shard", "source", "image_id", "parent_id", "plate", "well", "site", "batch",
    "x_min", "x_max", "y_min", "y_max", "scaling", "channels", "channel_paths",
)
_INT_COLUMNS = ("site", "x_min", "x_max", "y_min", "y_max")


@dataclass
class Facts:
    """A shard set described: its files' metadata plus what the manifest recorded."""

    name: str
    description: str
    meta: dict                       # shards.json
    index: pd.DataFrame              # index.parquet
    ledger: pd.DataFrame             # ledger.parquet of the shard writer (may be empty)
    provenance: pd.DataFrame         # one row per sample, PROVENANCE_COLUMNS
    sources: dict[str, SourceInfo]   # per source id in the set
    manifest_provenance: dict | None = None  # the manifest's provenance.json
    identity: str = ""
    shard_urls: dict[str, str] = field(default_factory=dict)  # shard name -> contentUrl
    version: str = "1.0.0"
    url: str | None = None           # landing page of the published dataset
    creator: str | None = None       # person or organization publishing it
    example_meta: dict | None = None  # the first sample's KEY.json (its keys type the card's features)

    @property
    def recipe(self) -> dict:
        """The resolved recipe the manifest was built from ({} when unknown)."""
        return (self.manifest_provenance or {}).get("recipe") or {}


def open_fs(path, storage_options: dict | None = None):
    """``(filesystem, root path, is_local)`` for a folder or fsspec URL."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, root = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    return fs, root.rstrip("/") or "/", isinstance(fs, LocalFileSystem)


class ShardSetFiles:
    """A WebDataset shard set's metadata, checked (without importing the torch loaders).

    ``meta`` (shards.json), ``index`` (index.parquet), ``fs``, ``root``, ``path(name)``.
    Raises :class:`PublishError` when the folder is not a shard set or its files disagree.
    """

    def __init__(self, source, storage_options: dict | None = None):
        self.source = str(source)
        self.fs, self.root, self.local = open_fs(source, storage_options)
        where = f"cannot publish {self.source}"
        try:
            self.meta = json.loads(self.fs.cat_file(self.path("shards.json")))
        except FileNotFoundError:
            raise PublishError(f"{where}: it has no shards.json, so it is not a cytodata shard set "
                               "(write one with `cytodata shard MANIFEST -o OUT`)") from None
        except ValueError as exc:
            raise PublishError(f"{where}: shards.json is not valid JSON ({exc})") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != WEBDATASET:
            fmt = self.meta.get("format") if isinstance(self.meta, dict) else None
            raise PublishError(f"{where}: shards.json has format {fmt!r}; publish takes WebDataset "
                               f"shard sets ({WEBDATASET!r}): `cytodata shard ... --format webdataset`")
        try:
            self.index = pd.read_parquet(io.BytesIO(self.fs.cat_file(self.path("index.parquet"))))
        except FileNotFoundError:
            raise PublishError(f"{where}: index.parquet is missing; rewrite the shard set") from None
        self._check(where)

    def path(self, name: str) -> str:
        """Full path of a file of the set."""
        return f"{self.root}/{name}"

    def _check(self, where: str) -> None:
        shards = self.meta.get("shards") or []
        sizes = {posixpath.basename(str(e["name"]).rstrip("/")): int(e.get("size") or 0)
                 for e in self.fs.ls(self.root, detail=True)}
        missing = [s["name"] for s in shards if s["name"] not in sizes]
        if missing:
            raise PublishError(f"{where}: shard(s) {missing[:5]} listed in shards.json are missing "
                               f"({len(missing)} of {len(shards)}); restore them or re-run `cytodata shard`")
        wrong = [f"{s['name']} ({sizes[s['name']]} bytes, shards.json says {s['bytes']})"
                 for s in shards if sizes[s["name"]] != int(s["bytes"])]
        if wrong:
            raise PublishError(f"{where}: shard(s) no longer match shards.json: {', '.join(wrong[:5])}; "
                               "re-run `cytodata shard` on the manifest, then publish")
        need = {"shard", "key", "offset", "size", "meta_offset", "meta_size", "split", "source", "label"}
        lacking = sorted(need - set(self.index.columns))
        if lacking:
            raise PublishError(f"{where}: index.parquet lacks columns {lacking}; rewrite the shard set")
        counts = self.index["shard"].astype(str).value_counts().to_dict()
        bad = [s["name"] for s in shards if counts.get(s["name"], 0) != s["samples"]]
        if bad or len(self.index) != sum(s["samples"] for s in shards):
            raise PublishError(f"{where}: index.parquet disagrees with shards.json on the samples of "
                               f"{bad[:5] or 'the set'}; the index is stale, rewrite the shard set")


def open_shard_set(source, storage_options: dict | None = None) -> ShardSetFiles:
    """Open and check the shard set at ``source`` (PublishError saying why when it is not one)."""
    return ShardSetFiles(source, storage_options)


def load_manifest_provenance(manifest, shards_meta: dict) -> dict | None:
    """``provenance.json`` of the manifest folder the shards were written from (checked)."""
    if manifest is None:
        return None
    folder = Path(manifest)
    folder = folder.parent if folder.is_file() else folder
    path = folder / "provenance.json"
    if not path.exists():
        raise PublishError(f"--manifest {manifest}: no provenance.json there; pass the folder "
                           "`cytodata manifest build` wrote")
    prov = json.loads(path.read_text())
    from .._files import file_sha256

    written = shards_meta.get("manifest") or {}
    path = folder / "manifest.parquet"
    if not path.exists():
        raise PublishError(f"--manifest {manifest}: no manifest.parquet there")
    if written.get("sha256"):
        same = file_sha256(path) == written["sha256"]
    else:  # shards written from a DataFrame: compare the rows' content digest instead
        from ..schema import read_manifest
        from ..shards._samples import digest, records

        same = digest(records(read_manifest(folder))) == written.get("content_sha256")
    if not same:
        raise PublishError(f"--manifest {manifest}: its manifest.parquet is not the one these shards "
                           "were written from (shards.json 'manifest' differs); pass the right "
                           "manifest folder or omit --manifest")
    return prov


def read_image_provenance(shard_set) -> pd.DataFrame:
    """Per sample: key, shard and its source files and location, from the ``KEY.json`` members."""
    index = shard_set.index
    if not len(index):
        return pd.DataFrame({c: pd.Series(dtype="string") for c in PROVENANCE_COLUMNS})
    paths = [shard_set.path(str(s)) for s in index["shard"]]
    starts = index["meta_offset"].astype("int64").tolist()
    ends = (index["meta_offset"] + index["meta_size"]).astype("int64").tolist()
    blobs = shard_set.fs.cat_ranges(paths, starts, ends)
    rows = []
    for key, shard, blob in zip(index["key"], index["shard"], blobs, strict=True):
        try:
            meta = json.loads(bytes(blob))
        except (TypeError, ValueError) as exc:
            raise PublishError(f"{shard_set.source}/{shard}: the JSON member of sample {key!r} is "
                               f"unreadable ({exc}); the shard does not match its index") from None
        row = {c: meta.get(c) for c in PROVENANCE_COLUMNS}
        row["key"], row["shard"] = str(key), str(shard)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(PROVENANCE_COLUMNS))
    for col in PROVENANCE_COLUMNS:
        if col in ("channels", "channel_paths"):
            frame[col] = [list(v or []) for v in frame[col]]
        elif col in _INT_COLUMNS:
            frame[col] = pd.array(frame[col], dtype="Int64")
        elif col == "scaling":
            frame[col] = pd.to_numeric(frame[col]).astype("float64")
        else:
            frame[col] = frame[col].astype("string")
    return frame


def collect(shard_set, *, name: str, description: str = "", manifest=None,
            licenses: dict[str, str] | None = None, citations: dict[str, str] | None = None) -> Facts:
    """Facts about an opened shard set (see module docstring)."""
    meta = shard_set.meta
    try:
        ledger = pd.read_parquet(io.BytesIO(shard_set.fs.cat_file(shard_set.path("ledger.parquet"))))
    except FileNotFoundError:
        ledger = pd.DataFrame(columns=["source", "input_id", "stage", "reason", "detail"])
    prov = load_manifest_provenance(manifest, meta)
    recipe = (prov or {}).get("recipe") or {}
    recipe_sources = {str(s.get("source") or s.get("adapter")): s for s in recipe.get("sources", [])
                      if isinstance(s, dict)}
    names = sorted(set(shard_set.index["source"].dropna().astype(str))) if len(shard_set.index) else []
    try:
        sources = resolve_sources(names, recipe_sources=recipe_sources, licenses=licenses,
                                  citations=citations)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    from ..shards._samples import digest

    identity = digest({"shards": [(s["name"], s["sha256"]) for s in meta.get("shards", [])],
                       "manifest": (meta.get("manifest") or {}).get("identity")})
    example = None
    if len(shard_set.index):
        first = shard_set.index.iloc[0]
        start = int(first["meta_offset"])
        example = json.loads(shard_set.fs.cat_file(shard_set.path(str(first["shard"])), start=start,
                                                   end=start + int(first["meta_size"])))
    return Facts(name=name, description=description, meta=meta, index=shard_set.index,
                 ledger=ledger, provenance=read_image_provenance(shard_set), sources=sources,
                 manifest_provenance=prov, identity=identity, example_meta=example)


def size_category(n: int) -> str:
    """Hugging Face ``size_categories`` bucket for ``n`` samples."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
              (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
              (1_000_000_000, "100M<n<1B")]
    for bound, label in bounds:
        if n < bound:
            return label
    return "1B<n<10B"


def split_counts(index: pd.DataFrame) -> dict[str, int]:
    """Count samples per split (NA split listed as ``unassigned``), train/val/test first."""
    if not len(index):
        return {}
    splits = index["split"].astype("string").fillna("unassigned")
    counts = splits.value_counts().to_dict()
    usual = ("train", "val", "test")
    order = [s for s in usual if s in counts] + sorted(set(counts) - set(usual))
    return {s: int(counts[s]) for s in order}


def groups_across_splits(index: pd.DataFrame, group: str) -> int:
    """Count ``group`` values whose samples sit in more than one split (leakage check)."""
    if group not in index.columns or not len(index):
        return 0
    sub = index[[group, "split"]].dropna()
    return int((sub.groupby(group)["split"].nunique() > 1).sum())


def as_int(value) -> int:
    """numpy/pandas integers -> int (JSON/YAML need plain ints)."""
    return int(np.asarray(value).item())
