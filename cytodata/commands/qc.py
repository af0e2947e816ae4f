"""``cytodata qc``."""

from __future__ import annotations

from . import handler


def register(subparsers) -> None:
    """Add ``cytodata qc MANIFEST_DIR -o REPORT_DIR``."""
    p = subparsers.add_parser(
        "qc", help="image QC of a manifest: rules, duplicates, report and montages",
        description="Read every image of a manifest, flag uniform/dim/saturated/binary/NaN/"
                    "duplicate images, and write qc.parquet, ledger.parquet, report.md and montages.")
    p.add_argument("manifest", help="manifest folder (with manifest.parquet) or file")
    p.add_argument("-o", "--out", required=True, help="report folder to write")
    p.add_argument("--config", help="YAML file of QC settings (keys of QCConfig, optionally under 'qc:')")
    p.add_argument("--workers", type=int, default=None,
                   help="dask worker processes (default: all cores for >= 256 images; 1 = no dask)")
    p.add_argument("--scheduler", default=None, help="address of a running dask scheduler (tcp://host:8786)")
    p.add_argument("--montage", type=int, default=16, help="thumbnails per reason in montages (0: none)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=handler("cytodata.curate.qc", "_cli", {"manifest": "manifest"}))
