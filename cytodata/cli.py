"""`cytodata <command> ...`: one sub-command per pipeline stage.

Each stage module exposes ``register(subparsers)`` adding its parser with ``func`` set;
the CLI only wires them up, so stages stay importable without argparse.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: modules that contribute sub-commands (each defines ``register(subparsers)``)
COMMAND_MODULES: tuple[str, ...] = (
    "cytodata.recipe",
    "cytodata.manifest",
    "cytodata.curate.cells",
    "cytodata.curate.qc",
    "cytodata.shards",
    "cytodata.verify",
    "cytodata.evaluate",
    "cytodata.publish",
    "cytodata.demo",
    "cytodata.baselines.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every stage's sub-command."""
    parser = argparse.ArgumentParser(
        prog="cytodata",
        description="Build pretraining corpora from microscopy screens and stream them to PyTorch.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"cytodata {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        # no try/except: a stage whose import fails (a missing module or dependency, a syntax
        # error) must fail loudly here rather than have its command silently vanish
        module = importlib.import_module(name)
        if not hasattr(module, "register"):
            raise TypeError(f"{name} is listed in cytodata.cli.COMMAND_MODULES but defines no "
                            "register(subparsers); add one or remove it from the list")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for user errors, with a clear message)."""
    from .errors import CytodataError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except CytodataError as exc:
        print(f"cytodata {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
