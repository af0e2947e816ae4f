"""``cytodata cells``."""

from __future__ import annotations

from . import handler


def register(subparsers) -> None:
    """Add ``cytodata cells MANIFEST_DIR LOCATIONS -o OUT --size N``."""
    p = subparsers.add_parser(
        "cells", help="single-cell mode: one manifest row per located cell (crop windows)",
        description="Turn a field manifest and a locations table (one row per cell; "
                    "Nuclei_Location_Center_X/Y) into a manifest of fixed-size cell crops. "
                    "Shard the result with `cytodata shard`; each sample is then one cell.")
    p.add_argument("manifest", help="manifest folder (holding manifest.parquet) of full fields")
    p.add_argument("locations", help="cell locations: CSV/TSV/Parquet table, or a DeepProfiler "
                   "folder <plate>/<well>-<site>-Nuclei.csv")
    p.add_argument("-o", "--out", required=True, help="output manifest folder")
    p.add_argument("--size", type=int, required=True,
                   help="crop side in pixels (Cell Painting CNN / DeepProfiler: 96-128 at 20x)")
    p.add_argument("--max-cells-per-field", type=int, default=None,
                   help="keep at most this many cells per field (seeded, order-free choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-cells-per-field choice")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    p.add_argument("--label", default=None, metavar="COL[,COL...]",
                   help="set the weak label to these manifest columns joined by '@', e.g. "
                        "compound,concentration (the treatment)")
    p.set_defaults(func=handler("cytodata.curate.cells", "_cmd", {"manifest": "manifest"}))
