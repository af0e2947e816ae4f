"""Shards: manifest images -> WebDataset tars | Zarr array | OME-Zarr plates (see FORMAT.md).

``write(manifest, out, format=..., codec=...)`` writes; ``decode(sample)`` turns a raw sample
from plain ``webdataset.WebDataset`` into ``(image, meta)``; ``CODECS`` lists the codecs.
"""

from __future__ import annotations

from ._writer import FORMATS, write
from .codecs import CODECS, Codec
from .integrity import Problem, verify
from .labels import open_xarray
from .webdataset import decode

__all__ = ["write", "decode", "verify", "Problem", "open_xarray", "CODECS", "Codec", "FORMATS", "register"]


def _import_formats() -> None:
    # zarr/ome-zarr writers register themselves; imported here so FORMATS lists them
    from . import omezarr, zarr  # noqa: F401


_import_formats()


def register(subparsers) -> None:
    """``cytodata shard MANIFEST_DIR --format ... -o OUT`` and ``cytodata shards describe DIR``."""
    p = subparsers.add_parser(
        "shard", help="write a manifest's images as WebDataset / Zarr / OME-Zarr shards",
        description="Read every image of a manifest, drop unreadable ones into OUT/ledger.parquet, "
                    "and write shards with an index, checksums and normalization statistics. "
                    "Re-running with the same arguments resumes (finished shards are kept).",
    )
    p.add_argument("manifest", help="manifest folder (holding manifest.parquet) or the parquet file")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--format", default=None, choices=FORMATS.names(),
                   help="default: the recipe's shards.format, else webdataset. webdataset: tar "
                        "shards for StreamingDataset; zarr: one (sample, channel, y, x) array for "
                        "random crops and xarray; ome-zarr: HCS plates for viewers (napari, OMERO)")
    p.add_argument("--codec", default=None, choices=CODECS.names(),
                   help="payload codec (blosc-lz4, the default: fastest to write and read; "
                        "blosc-zstd: ~5%% smaller; png16/tiff: readable by image tools)")
    p.add_argument("--channel-mode", default=None, choices=["own", "merged", "split"],
                   help="own: each image keeps its channels (default); merged: one gray channel "
                        "after per-channel percentile scaling; split: one sample per channel")
    p.add_argument("--shard-size", default=None,
                   help="target tar size; 100MB-1GB streams well from object stores (default 256MB)")
    p.add_argument("--samples-per-shard", type=int, default=None, help="overrides --shard-size")
    p.add_argument("--tile", type=int, default=None, help="zarr: cut images into TILE x TILE tiles")
    p.add_argument("--pixel-size", type=float, default=None,
                   help="ome-zarr: pixel size in micrometers (default: OME/ImageJ TIFF metadata)")
    p.add_argument("--workers", type=int, default=None, help="dask LocalCluster workers (default: cores)")
    p.add_argument("--scheduler", default=None,
                   help="existing dask scheduler address (tcp://HOST:PORT) or 'synchronous'")
    p.add_argument("--overwrite", action="store_true", help="replace a different shard set in OUT")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--qc", metavar="QC_DIR", default=None,
                   help="output folder of `cytodata qc MANIFEST_DIR -o QC_DIR`: images it failed "
                        "are not written and go to the ledger with their QC reason")
    q.add_argument("--no-qc", action="store_true",
                   help="write every readable image (by default the rules of `cytodata qc` run: "
                        "the recipe's image_qc, else the default rules)")
    p.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bars (--no-progress is the old spelling)")
    p.set_defaults(func=_main)

    d = subparsers.add_parser(
        "shards", help="inspect shard sets (describe)",
        description="Inspect a shard set written by `cytodata shard`.")
    sub = d.add_subparsers(dest="shards_command", metavar="ACTION")
    desc = sub.add_parser(
        "describe", help="summarize a shard set folder",
        description="Samples, shards, bytes, codec, channels, shapes, labels, plates, splits, "
                    "sources and the ledger of a WebDataset, Zarr or OME-Zarr shard set.")
    desc.add_argument("path", metavar="DIR", help="shard set folder (holding shards.json)")
    desc.add_argument("-o", "--out", default=None, metavar="FILE",
                      help="also write the summary as JSON to FILE")
    desc.add_argument("--json", action="store_true", help="print the summary as JSON")
    desc.add_argument("-q", "--quiet", action="store_true", help="print only the first line")
    desc.set_defaults(func=_describe)
    d.set_defaults(func=lambda args: (d.print_help(), 2)[1])


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
                    codec=args.codec or (cfg.codec if cfg else "blosc-lz4"),
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
