"""``cytodata verify``."""

from __future__ import annotations

from . import handler


def register(subparsers) -> None:
    """``cytodata verify SHARDS [--deep]``."""
    p = subparsers.add_parser(
        "verify", help="check a shard set or a published dataset against its checksums (exit 1 "
                       "naming each bad file, shard and key)",
        description="A shard set: check every shard's size and sha256 against shards.json and "
                    "index.parquet against both; with --deep also every sample's XXH3-64 checksum "
                    "(reads the whole set once). A published dataset (a folder or URL holding "
                    "SHA256SUMS, written by `cytodata publish`): check every listed file; with "
                    "--deep also the shard set inside it.")
    p.add_argument("shards", help="shard set or published folder, or URL (s3://bucket/set)")
    p.add_argument("--deep", action="store_true", help="also check every sample's checksum")
    p.add_argument("-o", "--out", default=None, metavar="FILE",
                   help="also write the problems found as JSON lines to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print only problems and the verdict")
    p.set_defaults(func=handler("cytodata.verify", "_main"))
