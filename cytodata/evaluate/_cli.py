"""`cytodata evaluate`: read embeddings (+ metadata), run a protocol, write the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import EvaluationError


def _read_table(path: Path) -> pd.DataFrame:
    readers = {".parquet": pd.read_parquet, ".csv": pd.read_csv}
    if path.is_dir() and (path / "manifest.parquet").exists():
        path = path / "manifest.parquet"
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise EvaluationError(f"{path}: unsupported table format; use .parquet or .csv "
                              "(or a manifest folder)")
    if not path.exists():
        raise EvaluationError(f"{path}: no such file")
    return reader(path)


def _load(args) -> tuple[object, pd.DataFrame]:
    emb_path = Path(args.embeddings)
    if emb_path.suffix.lower() == ".npy":
        if not args.metadata:
            raise EvaluationError(".npy embeddings need --metadata (rows in the same order)")
        return np.load(emb_path, allow_pickle=False), _read_table(Path(args.metadata))
    emb = _read_table(emb_path)
    if args.metadata:
        return emb, _read_table(Path(args.metadata))
    return emb, emb  # metadata columns next to the features in one table


def run(args) -> int:
    from .protocols import run_protocol
    from .report import write_report

    embeddings, metadata = _load(args)
    if embeddings is metadata:
        feats = args.features
        if feats is None:
            raise EvaluationError("one table with metadata and features needs --features PREFIX")
        embeddings = metadata[[c for c in metadata.columns
                               if c in ("key", "image_id", "id") or c.startswith(feats)]]
    opts = {"features": args.features} if args.features else {}
    results = run_protocol(args.protocol, embeddings, metadata, **opts)
    path = write_report(results, args.output, format=args.format)
    if not args.quiet:
        for res in results["metrics"].values():
            print(res.summary())
    print(f"report: {path}")
    return 0


def add_parser(subparsers) -> None:
    from .protocols import PROTOCOLS

    p = subparsers.add_parser(
        "evaluate", help="evaluate embeddings with a named protocol and write a report",
        description="EMBEDDINGS: parquet/CSV with a key/image_id/id column + feature columns, "
                    "or .npy rows aligned with --metadata.",
    )
    p.add_argument("embeddings", help="embeddings table (.parquet/.csv) or array (.npy)")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS.names(),
                   help="bbbc021-ando for the WS-DINO/Ando NSC+NSCB numbers")
    p.add_argument("-o", "--out", "--output", dest="output", required=True,
                   help="report folder (--output is the old spelling)")
    p.add_argument("--metadata", help="manifest folder/parquet or CSV in the harmonized schema")
    p.add_argument("--features", help="prefix of the feature columns (default: all numeric)")
    p.add_argument("--format", choices=("md", "html"), default="md",
                   help="report format: md (Markdown tables + PNG figures, default) or html")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the report path, not the metric summaries")
    p.set_defaults(func=run)
