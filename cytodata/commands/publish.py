"""``cytodata publish``."""

from __future__ import annotations

from . import handler


def register(subparsers) -> None:
    """``cytodata publish SHARDS -o DEST``."""
    p = subparsers.add_parser(
        "publish", help="publish a shard set: dataset card, Croissant, SHA256SUMS, splits, provenance",
        description="Write DEST/README.md (dataset card), DEST/croissant.json (Croissant 1.1), "
                    "DEST/SHA256SUMS, split lists and per-image provenance, and copy the shards "
                    "(or reference them with --in-place). DEST is a folder or a URL (s3://...).",
    )
    p.add_argument("shards", help="WebDataset shard set folder or URL (written by `cytodata shard`)")
    p.add_argument("-o", "--out", required=True, help="destination folder or URL")
    p.add_argument("--payload", default=None, metavar="portable|fast|CODEC",
                   help="payload of the published shards: portable (default; npy, which webdataset's "
                        ".decode(), Hugging Face datasets and numpy read with no extra code; ~1.3-1.6x "
                        "the bytes of blosc), fast (blosc-lz4: smallest at GB/s decode, needs numcodecs "
                        "or cytodata) or a codec name (npy-gz: portable and ~blosc's size, ~10x slower "
                        "to decode)")
    p.add_argument("--in-place", action="store_true",
                   help="reference the shards where they are (as written: no --payload, splits mixed)")
    p.add_argument("--manifest", default=None,
                   help="manifest folder the shards came from (adds recipe, split rule, QC counts)")
    p.add_argument("--name", default=None, help="dataset name (default: the shard folder's name)")
    p.add_argument("--description", default="", help="one-paragraph description for the card")
    p.add_argument("--license", action="append", metavar="SOURCE=SPDX",
                   help="license of a source, e.g. --license rxrx1=CC-BY-NC-SA-4.0 (repeatable)")
    p.add_argument("--citation", action="append", metavar="SOURCE=TEXT", help="citation of a source")
    p.add_argument("--url", default=None, help="landing page of the dataset (stated in croissant.json)")
    p.add_argument("--creator", default=None, help="person or organization publishing the dataset")
    p.add_argument("--overwrite", action="store_true", help="replace another dataset published in DEST")
    p.add_argument("--storage-options", default=None,
                   help='fsspec options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'')
    p.add_argument("-q", "--quiet", action="store_true", help="print only the one-line summary")
    p.set_defaults(func=handler("cytodata.publish", "_main", {"shards": "publish"}))
