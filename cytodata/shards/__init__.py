"""Shards: manifest images -> WebDataset tars | Zarr array | OME-Zarr plates (see FORMAT.md).

``write(manifest, out, format=..., codec=...)`` writes; ``decode(sample)`` turns a raw sample
from plain ``webdataset.WebDataset`` into ``(image, meta)``; ``wds_handler`` does it inside a
webdataset pipeline (``.decode().map(wds_handler)``); ``CODECS`` lists the codecs.
"""

from __future__ import annotations

import importlib

#: public name -> the module defining it (loaded on first use: `cytodata shard --help` stays light)
_LAZY = {"write": "_writer", "FORMATS": "_writer", "CODECS": "codecs", "Codec": "codecs", "PAYLOADS": "codecs",
         "verify": "integrity", "Problem": "integrity", "open_xarray": "labels", "decode": "webdataset",
         "wds_handler": "webdataset"}

__all__ = ["write", "decode", "wds_handler", "verify", "Problem", "open_xarray", "CODECS", "Codec", "FORMATS"]


def __getattr__(name: str):
    if name in _LAZY:
        if name in ("write", "FORMATS"):
            # zarr/ome-zarr writers register themselves in FORMATS when imported
            from . import omezarr, zarr  # noqa: F401
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _describe(args) -> int:
    import json

    from .describe import describe, summarize

    summary = summarize(args.path)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    text = json.dumps(summary, indent=1) if args.json else describe(args.path)
    print(text.splitlines()[0] if args.quiet and not args.json else text)
    return 0


def _main(args) -> int:
    from ..images.qc import manifest_image_qc
    from ..recipe import recipe_of
    from . import PAYLOADS, write

    recipe = recipe_of(args.manifest)
    cfg = recipe.shards if recipe is not None else None
    fmt = args.format or (cfg.format if cfg else "webdataset")
    tile = args.tile or (cfg.tile if cfg else None)
    options = {"tile": tile} if tile else {}
    if args.pixel_size is not None:
        options["pixel_size"] = args.pixel_size
    qc = None
    if args.qc:
        print(f"image QC: gating with {args.qc}")
    elif not args.no_qc:
        # the rules `cytodata qc` applies to this manifest: the recipe's image_qc, else the defaults
        qc, whose = manifest_image_qc(args.manifest)
        print(f"image QC: {whose} rules ({', '.join(qc.rules)}) run while sharding (--no-qc: none)")
    summary = write(args.manifest, args.out, format=fmt,
                    codec=args.codec or (PAYLOADS[args.payload] if args.payload else None)
                    or (cfg.codec if cfg else "blosc-lz4"),
                    channel_mode=args.channel_mode or (cfg.channel_mode if cfg else "own"),
                    shard_size=args.shard_size or (cfg.shard_size if cfg else "256MB"),
                    samples_per_shard=args.samples_per_shard or (
                        cfg.samples_per_shard if cfg else None),
                    n_workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite,
                    progress=not args.quiet, qc=qc, qc_results=args.qc,
                    min_class_size=recipe.upsample.floor if recipe is not None and
                    recipe.upsample is not None else None,
                    gray=recipe.images.gray if recipe is not None else "auto", **options)
    print(format_summary(summary))
    floor = recipe.upsample.floor if recipe is not None and recipe.upsample is not None else None
    counts = _label_counts(args.out)
    small = {k: v for k, v in counts.items() if floor and v < floor}
    if small and not args.qc:
        import warnings

        warnings.warn(f"{len(small)} class(es) have fewer than the recipe's floor of {floor} "
                      f"samples after image QC (e.g. {dict(list(small.items())[:3])}); run "
                      "`cytodata qc` first and shard with --qc QC_DIR to drop them",
                      UserWarning, stacklevel=2)
    if summary["samples"] == 0:
        from ..errors import EmptyResultError

        dropped = summary.get("dropped") or {}
        top = max(dropped.items(), key=lambda kv: kv[1]) if dropped else None
        raise EmptyResultError(
            f"no samples written from {summary['rows_in']} manifest rows"
            + (f"; largest drop reason: {top[0]!r} ({top[1]} rows)" if top else "")
            + f"; see {summary['out']}/ledger.parquet")
    return 0


def _label_counts(out) -> dict:
    import json
    from pathlib import Path

    meta = Path(out) / "shards.json"
    return json.loads(meta.read_text()).get("label_counts", {}) if meta.exists() else {}


def format_summary(summary: dict) -> str:
    """Human-readable lines: samples written, dropped by reason, shards, bytes, MB/s."""
    dropped = summary.get("dropped") or {}
    lines = [
        f"wrote {summary['samples']} samples from {summary['rows_written']}/{summary['rows_in']} "
        f"manifest rows to {summary['out']} ({summary['format']})",
        "dropped: " + (", ".join(f"{k}={v}" for k, v in sorted(dropped.items())) or "none")
        + " (see ledger.parquet)",
        f"shards: {summary.get('shards', 0)} ({summary.get('shards_resumed', 0)} kept from a previous run), "
        f"{summary.get('bytes', 0) / 1e6:.1f} MB on disk",
        f"throughput: {summary.get('mb_per_s', 0):.1f} MB/s of pixels in {summary.get('seconds', 0):.1f} s",
    ]
    return "\n".join(lines)
