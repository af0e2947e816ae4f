"""``cytodata shards describe DIR``: what a shard set holds, from its own files (no pixels read).

Reads ``shards.json``, ``index.parquet`` and ``ledger.parquet`` of a WebDataset, Zarr or
OME-Zarr set (FORMAT.md) and reports samples, shards, bytes, codec, channels, shapes, labels,
plates, splits, sources and the ledger.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ShardError

FORMATS = {"cytodata-webdataset": "webdataset", "cytodata-zarr": "zarr",
           "cytodata-ome-zarr": "ome-zarr"}


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """Summarize a shard set folder as a JSON-able dict (the fields ``describe`` prints)."""
    out = Path(path)
    meta_path = out / "shards.json"
    if not meta_path.exists():
        if (out / "manifest.parquet").exists():
            hint = "it is a manifest folder: use `cytodata manifest describe`"
        elif (out / "plan.json").exists():
            hint = "a finished `cytodata shard` run writes it last; re-run that command to finish"
        else:
            hint = "write one with `cytodata shard MANIFEST -o DIR`"
        raise ShardError(f"{out} has no shards.json, so it is not a finished shard set; {hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ShardError(f"{meta_path} is not readable JSON ({exc}); rewrite the set") from None
    fmt = meta.get("format")
    if fmt not in FORMATS:
        raise ShardError(f"{meta_path} has format {fmt!r}; known formats: {', '.join(FORMATS)}")
    index = pd.read_parquet(out / "index.parquet") if (out / "index.parquet").exists() else None
    ledger = pd.read_parquet(out / "ledger.parquet") if (out / "ledger.parquet").exists() else None
    files = [p for p in out.rglob("*") if p.is_file()]
    info: dict[str, Any] = {
        "path": str(out), "format": FORMATS[fmt], "version": meta.get("version"),
        "cytodata_version": meta.get("cytodata_version"),
        "samples": int(meta.get("n_samples") or (len(index) if index is not None else 0)),
        "bytes": sum(p.stat().st_size for p in files), "files": len(files),
        "codec": meta.get("codec"), "dtype": meta.get("dtype") or meta.get("dtypes"),
        "channels": meta.get("channels"), "channel_mode": meta.get("channel_mode"),
    }
    if fmt == "cytodata-webdataset":
        info["shards"] = len(meta.get("shards") or [])
    elif fmt == "cytodata-zarr":
        info["shards"] = 1
        info["array"] = {"path": meta.get("array"), "dims": meta.get("dims"),
                         "rows": meta.get("n_rows"), "chunks": meta.get("chunks")}
    else:
        info["shards"] = len(meta.get("plates") or {})
        info["plates_folders"] = meta.get("plates")
    if index is not None and len(index):
        if {"n_channels", "height", "width"} <= set(index.columns):
            dims = index[["n_channels", "height", "width"]].astype(int).to_numpy().tolist()
            shapes = Counter(map(tuple, dims))
            info["shapes"] = {"x".join(map(str, s)): n for s, n in shapes.most_common()}
        for col in ("label", "plate", "split", "source"):
            if col in index.columns:
                counts = index[col].astype("string").fillna("<NA>").value_counts()
                info[col + "s"] = {"distinct": int((counts.index != "<NA>").sum()),
                                   "counts": {str(k): int(v) for k, v in counts.items()}}
    elif meta.get("shape"):
        info["shapes"] = {"x".join(map(str, meta["shape"])): info["samples"]}
    if ledger is not None:
        info["ledger"] = {"rows": int(len(ledger)),
                          "by_stage_reason": {f"{s}/{r}": int(n) for (s, r), n in
                                              ledger.groupby(["stage", "reason"]).size().items()}}
    else:
        info["ledger"] = meta.get("ledger")
    manifest = meta.get("manifest") or {}
    info["manifest"] = {"n_rows": manifest.get("n_rows"),
                        "sha256": manifest.get("sha256") or manifest.get("content_sha256")}
    return info


def _top(counts: dict[str, int], n: int = 8) -> str:
    items = list(counts.items())
    text = ", ".join(f"{k}={v}" for k, v in items[:n])
    return text + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def describe(path: str | os.PathLike) -> str:
    """Readable lines describing a shard set folder (see :func:`summarize`)."""
    s = summarize(path)
    units = {"zarr": "array", "ome-zarr": "plates"}.get(s["format"], "shards")
    channels = ", ".join(s["channels"]) if s.get("channels") else "mixed (see shapes)"
    lines = [f"shard set {s['path']}: {s['format']} (format version {s['version']}, "
             f"cytodata {s['cytodata_version'] or '?'})",
             f"samples: {s['samples']} in {s['shards']} "
             f"{units}; {s['bytes'] / 1e6:.1f} MB "
             f"on disk in {s['files']} files",
             f"codec: {s['codec'] or 'n/a'}; dtype: {s['dtype']}; "
             f"channel mode: {s['channel_mode'] or 'own'}",
             f"channels: {channels}"]
    if "array" in s:
        a = s["array"]
        lines.append(f"array: {a['path']} dims {a['dims']} rows {a['rows']} chunks {a['chunks']}")
    if s.get("shapes"):
        lines.append("shapes (C x H x W): " + _top(s["shapes"]))
    for key in ("labels", "plates", "splits", "sources"):
        if key in s:
            lines.append(f"{key}: {s[key]['distinct']} ({_top(s[key]['counts'])})")
    led = s.get("ledger") or {}
    if "by_stage_reason" in led:
        lines.append(f"ledger: {led['rows']} dropped rows"
                     + (": " + _top(led["by_stage_reason"], 12) if led["rows"] else ""))
    elif led:
        lines.append(f"ledger: {led.get('rows')} dropped rows {led.get('by_reason') or ''}")
    if s["manifest"]:
        lines.append(f"manifest: {s['manifest'].get('n_rows')} rows, sha256 "
                     f"{str(s['manifest'].get('sha256') or '')[:12]}")
    return "\n".join(lines)
