"""``cytodata evaluate``."""

from __future__ import annotations

from . import RegistryNames, handler


def register(subparsers) -> None:
    """Add ``cytodata evaluate``."""
    p = subparsers.add_parser(
        "evaluate", help="evaluate embeddings with a named protocol and write a report",
        description="EMBEDDINGS: a table (.parquet/.csv) with an id column (key/image_id/id or "
                    "--id-column) and feature columns, plus --metadata; or ONE table holding "
                    "metadata and features (the trainers' layout: key, manifest columns, "
                    "emb_0..emb_{D-1}; or a pycytominer table with --metadata-prefix "
                    "Metadata_); or an .npy array with rows aligned to --metadata.",
    )
    p.add_argument("embeddings", help="embeddings table (.parquet/.csv) or array (.npy)")
    p.add_argument("--protocol", required=True, metavar="PROTOCOL",
                   choices=RegistryNames("cytodata.evaluate.protocols", "PROTOCOLS"),
                   help="one of %(choices)s. bbbc021-ws-dino / bbbc021-ando / bbbc021-ljosa / "
                        "bbbc021-cytoimagenet reproduce those papers' NSC/NSCB conventions; "
                        "map for replicate/MOA retrieval; knn for label accuracy")
    p.add_argument("-o", "--out", "--output", dest="output", required=True,
                   help="report folder (--output is the old spelling)")
    p.add_argument("--metadata", help="manifest folder/parquet or CSV in the harmonized schema")
    p.add_argument("--features", help="prefix of the feature columns (default: emb_* columns, "
                                      "else every numeric non-metadata column)")
    p.add_argument("--id-column", help="column joining embeddings to metadata (default: the "
                                       "first of key, image_id, id)")
    p.add_argument("--metadata-prefix", help="map prefixed metadata columns onto harmonized "
                                             "names, e.g. Metadata_ for pycytominer tables "
                                             "(Metadata_Plate -> plate, Metadata_pert_iname "
                                             "-> compound)")
    p.add_argument("--feature-select", help="comma-separated pycytominer operations applied "
                                            "before the protocol, e.g. "
                                            "variance_threshold,correlation_threshold")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="protocol option (repeatable), e.g. --option coral_lam=0.5")
    p.add_argument("--write-profiles", help="also write the scored profiles as a pycytominer "
                                            "table (Metadata_* columns), .parquet or .csv")
    p.add_argument("--format", choices=("md", "html"), default="md",
                   help="report format: md (Markdown tables + PNG figures, default) or html")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the report path, not the metric summaries")
    p.set_defaults(func=handler("cytodata.evaluate._cli", "run", {"embeddings": "table", "metadata": "table"}))
