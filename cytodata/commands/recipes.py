"""``cytodata recipes``."""

from __future__ import annotations

from . import handler


def register(subparsers) -> None:
    """Add ``cytodata recipes [NAME]``."""
    p = subparsers.add_parser(
        "recipes", help="list the shipped corpus recipes, or print one",
        description="List the recipes shipped with cytodata (usable by name in `cytodata manifest "
                    "build NAME`), or print one recipe's YAML to copy and edit.")
    p.add_argument("name", nargs="?", default=None,
                   help="print this recipe's YAML (a shipped name such as bbbc021, or a path)")
    p.add_argument("-o", "--out", default=None, metavar="FILE",
                   help="with NAME: write the recipe to FILE (a copy to edit), not to the screen")
    p.add_argument("-q", "--quiet", action="store_true", help="names only, one per line")
    p.set_defaults(func=handler("cytodata.recipe", "_cmd_recipes"))
