"""The manifest a shard set was written from, found through ``shards.json`` and checked.

``shards.json["manifest"]`` records the manifest file's path and sha256 (sets written from a
manifest folder or file; a set written from a DataFrame has no path). Consumers that need
manifest columns the shard index does not carry (``concentration``, ``organism``, ...) read
them here, and only from the very file the shards were written from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .._files import file_sha256

#: manifest columns never copied next to samples (per-channel lists, storage paths)
_NOT_CARRIED = ("channels", "channel_paths")


def source_manifest(meta: Mapping) -> Path | None:
    """``manifest.parquet`` that the shard set (its parsed ``shards.json``) was written from, when
    it is still at the recorded path with the recorded sha256; else None.
    """
    info = meta.get("manifest") or {}
    path, sha = info.get("path"), info.get("sha256")
    if not path or not sha:
        return None
    p = Path(path)
    if not p.is_file() or file_sha256(p) != sha:
        return None
    return p


def with_manifest_columns(table: pd.DataFrame, meta: Mapping) -> pd.DataFrame:
    """``table`` (one row per sample, a ``key`` column) with the source manifest's columns it
    lacks, joined on ``key`` (NA for samples whose key is not a manifest row, e.g. split
    channels); ``table`` unchanged when the manifest is not found.
    """
    p = source_manifest(meta)
    if p is None or "key" not in table.columns:
        return table
    manifest = pd.read_parquet(p)
    extra = [c for c in manifest.columns if c not in table.columns and c not in _NOT_CARRIED]
    if not extra:
        return table
    return table.merge(manifest[["key", *extra]], on="key", how="left", validate="many_to_one")
