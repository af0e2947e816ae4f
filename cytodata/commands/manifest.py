"""``cytodata manifest build|describe``."""

from __future__ import annotations

from . import handler


def register(subparsers) -> None:
    """Add ``cytodata manifest build|describe``."""
    p = subparsers.add_parser("manifest", help="build or describe a manifest from a recipe",
                              description="Build a harmonized, labelled, split manifest from a "
                              "YAML recipe (see manifests/), or describe one.")
    sub = p.add_subparsers(dest="manifest_command", metavar="ACTION")
    b = sub.add_parser("build", help="build RECIPE into OUT",
                       description="Read the recipe's sources, harmonize, weak-label, sample and "
                       "split. Writes OUT/manifest.parquet, OUT/ledger.parquet (every dropped row "
                       "and why) and OUT/provenance.json.")
    b.add_argument("recipe", help="recipe YAML, e.g. manifests/bbbc021.yaml")
    b.add_argument("-o", "--out", required=True, help="output folder")
    b.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="override a recipe parameter (--set data=/data/bbbc021) or any recipe key "
                        "by dotted path (--set metadata_qc.check_files=false); repeatable")
    b.add_argument("--jump-names", action="store_true",
                   help="also write manifest_jump.parquet with JUMP-style Metadata_* columns")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=handler("cytodata.manifest", "_cmd_build"))
    d = sub.add_parser("describe", help="summarize a manifest folder",
                       description="Rows, sources, splits, labels, plates, channels, the ledger "
                       "and the recipe of a manifest folder.")
    d.add_argument("folder", metavar="DIR", help="manifest folder (holding manifest.parquet)")
    d.add_argument("-o", "--out", default=None, metavar="FILE",
                   help="also write the description to FILE")
    d.add_argument("-q", "--quiet", action="store_true", help="print only the first line")
    d.set_defaults(func=handler("cytodata.manifest", "_cmd_describe", {"folder": "manifest"}))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
