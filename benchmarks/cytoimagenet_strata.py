"""Class counts per source for the 8 real CytoImageNet tables: proportional vs balanced.

Not a speed benchmark: a side-by-side of the two allocation methods of the weak-label step on
the real per-source tables in ``../shared/data/cytoimagenet-harmonized`` (CytoImageNet's
min_count 287, presample 10,000, cap 1,000 and strata; ``name`` is a cap stratum). Prints one
markdown table: for every class, the rows each source contributes under each method.

    .venv/bin/python benchmarks/cytoimagenet_strata.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from cytodata import sources
from cytodata.curate.weak_labels import assign_weak_labels

#: short source names for the table columns (dir_name of each table)
SHORT = {
    "bbbc014": "bbbc014", "bbbc026": "bbbc026", "bbbc039": "bbbc039", "cil_kinome": "kinome",
    "kag_blood_cell": "blood", "kag_cell_cycle": "cycle", "kag_hpa_singlecell_2021": "hpa",
    "kag_leukemia": "leukemia",
}


def class_counts(table: pd.DataFrame, method: str, seed: int = 0) -> pd.DataFrame:
    """Rows per (label, source) after weak labelling with ``method``."""
    out = assign_weak_labels(table, seed=seed, method=method)
    kept = out[out["label"].notna()]
    src = kept["dir_name"].map(SHORT).fillna(kept["dir_name"])
    return pd.crosstab(kept["label"], src)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data", default=str(default))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hpa-channels", default="split", choices=["split", "stack"],
                        help="HPA as one row per channel (CytoImageNet, default) or per field")
    args = parser.parse_args(argv)
    table = sources.read("cytoimagenet", path=Path(args.data) / "cytoimagenet-harmonized",
                         hpa_channels=args.hpa_channels)
    per = table["dir_name"].value_counts().items()
    print(f"{len(table):,} rows from {table['dir_name'].nunique()} sources "
          f"({', '.join(f'{SHORT.get(k, k)}={v}' for k, v in per)})")
    prop = class_counts(table, "proportional", args.seed)
    cin = class_counts(table, "cytoimagenet", args.seed)
    bal = class_counts(table, "balanced", args.seed)
    labels = sorted(set(prop.index) | set(bal.index) | set(cin.index))
    cols = [c for c in SHORT.values() if c in set(prop.columns) | set(bal.columns)]
    prop = prop.reindex(index=labels, columns=cols, fill_value=0)
    cin = cin.reindex(index=labels, columns=cols, fill_value=0)
    bal = bal.reindex(index=labels, columns=cols, fill_value=0)

    def cell(row: pd.Series) -> str:
        parts = [f"{c} {int(v)}" for c, v in row.items() if v]
        return ", ".join(parts) + f" (= {int(row.sum())})"

    print("\n| class | proportional (default) | cytoimagenet (CIN's rounding) | balanced |")
    print("|---|---|---|---|")
    for label in labels:
        print(f"| {label} | {cell(prop.loc[label])} | {cell(cin.loc[label])} | "
              f"{cell(bal.loc[label])} |")
    print(f"\nclasses: {len(prop.index[prop.sum(axis=1) > 0])} proportional, "
          f"{len(bal.index[bal.sum(axis=1) > 0])} balanced; rows labelled: "
          f"{int(prop.values.sum())} "
          f"proportional, {int(bal.values.sum())} balanced")


if __name__ == "__main__":
    main()
