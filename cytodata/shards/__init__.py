"""Shards: manifest images -> WebDataset tars | Zarr array | OME-Zarr plates (see FORMAT.md).

``write(manifest, out, format=..., codec=...)`` writes; ``decode(sample)`` turns a raw sample
from plain ``webdataset.WebDataset`` into ``(image, meta)``; ``CODECS`` lists the codecs.
"""

from __future__ import annotations

from ._writer import FORMATS, write
from .codecs import CODECS, Codec
from .integrity import Problem, verify
from .webdataset import decode

__all__ = ["write", "decode", "verify", "Problem", "CODECS", "Codec", "FORMATS", "register"]


def _import_formats() -> None:
    # zarr/ome-zarr writers register themselves; imported here so FORMATS lists them
    from . import omezarr, zarr  # noqa: F401


_import_formats()


def register(subparsers) -> None:
    """``cytodata shard MANIFEST_DIR --format ... -o OUT``."""
    p = subparsers.add_parser(
        "shard", help="write a manifest's images as WebDataset / Zarr / OME-Zarr shards",
        description="Read every image of a manifest, drop unreadable ones into OUT/ledger.parquet, "
                    "and write shards with an index, checksums and normalization statistics. "
                    "Re-running with the same arguments resumes (finished shards are kept).",
    )
    p.add_argument("manifest", help="manifest folder (holding manifest.parquet) or the parquet file")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--format", default="webdataset", choices=FORMATS.names())
    p.add_argument("--codec", default="blosc-lz4", choices=CODECS.names(),
                   help="payload codec (blosc-lz4: fastest to write and read; blosc-zstd: ~5%% smaller; png16/tiff: readable by image tools)")
    p.add_argument("--channel-mode", default="own", choices=["own", "merged", "split"])
    p.add_argument("--shard-size", default="256MB",
                   help="target tar size; 100MB-1GB streams well from object stores (default 256MB)")
    p.add_argument("--samples-per-shard", type=int, default=None, help="overrides --shard-size")
    p.add_argument("--tile", type=int, default=None, help="zarr: cut images into TILE x TILE tiles")
    p.add_argument("--workers", type=int, default=None, help="dask LocalCluster workers (default: cores)")
    p.add_argument("--scheduler", default=None,
                   help="existing dask scheduler address (tcp://HOST:PORT) or 'synchronous'")
    p.add_argument("--overwrite", action="store_true", help="replace a different shard set in OUT")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_main)
    from .integrity import register as register_verify

    register_verify(subparsers)  # `cytodata verify SHARDS [--deep]`


def _main(args) -> int:
    options = {"tile": args.tile} if args.tile else {}
    summary = write(args.manifest, args.out, format=args.format, codec=args.codec,
                    channel_mode=args.channel_mode, shard_size=args.shard_size,
                    samples_per_shard=args.samples_per_shard, n_workers=args.workers,
                    scheduler=args.scheduler, overwrite=args.overwrite,
                    progress=not args.no_progress, **options)
    print(format_summary(summary))
    return 0


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
