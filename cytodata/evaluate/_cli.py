"""`cytodata evaluate`: read embeddings (+ metadata), run a protocol, write the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..errors import EvaluationError


def _read_table(path: Path) -> pd.DataFrame:
    readers = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".tsv": lambda p: pd.read_csv(
        p, sep="\t"), ".gz": pd.read_csv}
    if path.is_dir() and (path / "manifest.parquet").exists():
        path = path / "manifest.parquet"
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise EvaluationError(f"{path}: unsupported table format; use .parquet, .csv, .csv.gz "
                              "or .tsv (or a manifest folder)")
    if not path.exists():
        raise EvaluationError(f"{path}: no such file")
    return reader(path)


def _write_table(table: pd.DataFrame, path: Path) -> None:
    if path.suffix.lower() == ".parquet":
        table.to_parquet(path)
    elif path.suffix.lower() == ".csv":
        table.to_csv(path, index=False)
    else:
        raise EvaluationError(f"{path}: write profiles as .parquet or .csv")


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


def _parse_options(pairs: list[str] | None) -> dict:
    """``key=value`` pairs; values parsed as YAML scalars/lists (``k=5``, ``x=[a, b]``)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise EvaluationError(f"--option {pair!r}: expected KEY=VALUE, e.g. coral_lam=0.5")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args) -> int:
    from .interop import to_metadata_names
    from .protocols import run_protocol
    from .report import summary_table, write_report

    embeddings, metadata = _load(args)
    opts = _parse_options(args.option)
    for key, value in (("features", args.features), ("id_column", args.id_column),
                       ("metadata_prefix", args.metadata_prefix)):
        if value:
            opts[key] = value
    if args.feature_select:
        opts["feature_select"] = [op.strip() for op in args.feature_select.split(",")]
    results = run_protocol(args.protocol, embeddings, metadata, **opts)
    path = write_report(results, args.output, format=args.format)
    if args.write_profiles:
        prof = results["profiles"]
        named = prof.reset_index(names="profile") if prof.index.name else prof
        _write_table(to_metadata_names(named, results["features"]), Path(args.write_profiles))
    if not args.quiet:
        print(f"{results['protocol']}: {len(results['features'])} features")
        with pd.option_context("display.width", 120, "display.max_colwidth", 60):
            print(summary_table(results).to_string(index=False))
        for note in results.get("notes", []):
            print(f"  - {note}")
    print(f"report: {path}")
    return 0
