"""Shards: manifest images -> WebDataset tars | Zarr array | OME-Zarr plates (see FORMAT.md).

``write(manifest, out, format=..., codec=...)`` writes; ``decode(sample)`` turns a raw sample
from plain ``webdataset.WebDataset`` into ``(image, meta)``; ``wds_handler`` does it inside a
webdataset pipeline (``.decode().map(wds_handler)``); ``CODECS`` lists the codecs.
"""

from __future__ import annotations

from ._writer import FORMATS, write
from .codecs import CODECS, PAYLOADS, Codec
from .integrity import Problem, verify
from .labels import open_xarray
from .webdataset import decode, wds_handler

__all__ = ["write", "decode", "wds_handler", "verify", "Problem", "open_xarray", "CODECS", "Codec", "FORMATS",
           "register"]


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
    p.add_argument("--payload", default=None, choices=["portable", "fast"],
                   help="portable: npy payloads that webdataset's .decode(), Hugging Face datasets and "
                        "numpy read with no extra code (~1.3-1.6x the bytes); fast: blosc-lz4 (the "
                        "default codec). --codec overrides it")
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
                   help="write every readable image (skip the recipe's image_qc rules)")
    p.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bars (--no-progress is the old spelling)")
    p.set_defaults(func=_main)
    from .integrity import register as register_verify

    register_verify(subparsers)  # `cytodata verify SHARDS [--deep]`

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


def _recipe_of(manifest) -> "object | None":
    """The recipe a manifest folder was built from (its provenance.json), or None."""
    import json
    from pathlib import Path

    from ..recipe import parse_recipe

    p = Path(manifest)
    prov = (p if p.is_dir() else p.parent) / "provenance.json"
    if not prov.exists():
        return None
    import warnings

    from ..errors import RecipeError

    try:
        data = json.loads(prov.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("recipe"), dict):
            return None
        return parse_recipe(data["recipe"], where=f"{prov} (recipe)")
    except (RecipeError, ValueError) as exc:  # an older or edited provenance: no defaults
        warnings.warn(f"{prov}: its recipe cannot be read ({exc}); using the command-line "
                      "options only (no recipe image_qc / shards defaults)", UserWarning,
                      stacklevel=2)
        return None


def _main(args) -> int:
    recipe = _recipe_of(args.manifest)
    cfg = recipe.shards if recipe is not None else None
    fmt = args.format or (cfg.format if cfg else "webdataset")
    tile = args.tile or (cfg.tile if cfg else None)
    options = {"tile": tile} if tile else {}
    if args.pixel_size is not None:
        options["pixel_size"] = args.pixel_size
    qc = None
    if args.qc:
        print(f"image QC: gating with {args.qc}")
    elif not args.no_qc and recipe is not None and recipe.image_qc is not None:
        qc = recipe.image_qc  # the recipe's rules, checked on every image as it is written
        print(f"image QC: the recipe's image_qc rules ({', '.join(qc.rules)}) run while sharding")
    elif not args.no_qc:
        print("image QC: none (no --qc QC_DIR and no image_qc in the recipe); every readable "
              "image is written")
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
