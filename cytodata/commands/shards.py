"""``cytodata shard`` and ``cytodata shards describe``."""

from __future__ import annotations

from . import RegistryNames, handler


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
    p.add_argument("--format", default=None, choices=RegistryNames("cytodata.shards", "FORMATS"), metavar="FORMAT",
                   help="%(choices)s; default: the recipe's shards.format, else webdataset. webdataset: tar "
                        "shards for StreamingDataset; zarr: one (sample, channel, y, x) array for "
                        "random crops and xarray; ome-zarr: HCS plates for viewers (napari, OMERO)")
    p.add_argument("--codec", default=None, choices=RegistryNames("cytodata.shards.codecs", "CODECS", made_by="Codec"),
                   metavar="CODEC", help="payload codec, one of %(choices)s (blosc-lz4, the default: "
                                         "fastest to write and read; "
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
                   help="write every readable image (by default the rules of `cytodata qc` run: "
                        "the recipe's image_qc, else the default rules)")
    p.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bars (--no-progress is the old spelling)")
    p.set_defaults(func=handler("cytodata.shards", "_main", {"manifest": "manifest"}))

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
    desc.set_defaults(func=handler("cytodata.shards", "_describe", {"path": "shards"}))
    d.set_defaults(func=lambda args: (d.print_help(), 2)[1])
