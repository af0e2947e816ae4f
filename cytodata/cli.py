"""`cytodata <command> ...`: one sub-command per pipeline stage.

Each module of :mod:`cytodata.commands` (and ``cytodata.baselines.cli``) exposes
``register(subparsers)`` adding its parser with ``func`` set; the CLI only wires them up, so
stages stay importable without argparse. :data:`COMMANDS` names each
command's module and one-line help, so ``cytodata --help`` imports no stage and ``cytodata
COMMAND`` imports only the module of COMMAND. A stage whose import fails (a missing module or
dependency, a syntax error) fails its command loudly; it never vanishes from the list.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command -> (module defining ``register(subparsers)``, one-line help for ``cytodata --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "recipes": ("cytodata.commands.recipes", "list the shipped corpus recipes, or print one"),
    "manifest": ("cytodata.commands.manifest", "build or describe a manifest from a recipe"),
    "cells": ("cytodata.commands.cells", "single-cell mode: one manifest row per located cell (crop windows)"),
    "qc": ("cytodata.commands.qc", "image QC of a manifest: rules, duplicates, report and montages"),
    "shard": ("cytodata.commands.shards", "write a manifest's images as WebDataset / Zarr / OME-Zarr shards"),
    "shards": ("cytodata.commands.shards", "inspect shard sets (describe)"),
    "verify": ("cytodata.commands.verify", "check a shard set or a published dataset against its checksums"),
    "evaluate": ("cytodata.commands.evaluate", "evaluate embeddings with a named protocol and write a report"),
    "publish": ("cytodata.commands.publish", "publish a shard set: dataset card, Croissant, SHA256SUMS, splits, "
                                    "provenance"),
    "demo": ("cytodata.commands.demo", "run the end-to-end demo on synthetic screens"),
    "train": ("cytodata.baselines.cli", "train a baseline (classifier, DINO, ...) from a config on shard sets"),
    "embed": ("cytodata.baselines.cli", "embed a shard set with a trained run -> embeddings.parquet"),
    "predict": ("cytodata.baselines.cli", "class predictions of a trained run on a shard set -> parquet"),
}

#: modules that contribute sub-commands (each defines ``register(subparsers)``)
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="cytodata",
        description="Build pretraining corpora from microscopy screens and stream them to PyTorch.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"cytodata {__version__}")
    parser.add_argument("--progress", action="store_true",
                        help="draw progress bars even when standard error is not a terminal (a log)")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def _register(module_name: str, sub) -> None:
    # no try/except: a stage whose import fails must fail loudly here
    module = importlib.import_module(module_name)
    if not hasattr(module, "register"):
        raise TypeError(f"{module_name} is listed in cytodata.cli.COMMANDS but defines no "
                        "register(subparsers); add one or remove it from the list")
    module.register(sub)


def build_parser(command: str | None = None, *, load: bool = True) -> argparse.ArgumentParser:
    """The top-level parser: every stage's sub-commands, or (``command``) only the stages that
    define ``command``, with the other commands listed by name and help (``load=False``: none
    loaded, for ``cytodata --help``).
    """
    parser, sub = _top_parser()
    wanted = () if not load else COMMAND_MODULES if command is None else (COMMANDS[command][0],)
    for name in wanted:
        _register(name, sub)
    for name, (_, text) in COMMANDS.items():  # the rest: listed, loaded when called
        if name not in sub.choices:
            sub.add_parser(name, help=text, add_help=False)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is not an option), if known."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for user errors, with a clear message).

    Output cut off by its reader (``cytodata train --show NAME | head``) ends the command
    quietly with status 141 (128 + SIGPIPE, what a shell reports for a filter stopped the same
    way), not a traceback.
    """
    try:
        return _main(argv)
    except BrokenPipeError:
        import os

        # later writes (the interpreter's final flush) go nowhere instead of raising again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    from .errors import CytodataError

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--progress" in argv[:1]:  # `cytodata --progress COMMAND ...`: bars in logs too
        import os

        from ._progress import FORCE_ENV

        os.environ[FORCE_ENV] = "1"
    command = _command_of(argv)
    if command is None and argv and not argv[0].startswith("-"):
        from ._suggest import did_you_mean

        print(f"cytodata: unknown command {argv[0]!r}{did_you_mean(argv[0], COMMANDS)}; "
              f"commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    parser = build_parser(command) if command else build_parser(load=False)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ._warnings import one_line_warnings

    with one_line_warnings():
        try:
            result = args.func(args)
        except CytodataError as exc:
            print(f"cytodata {args.command}: error: {exc}", file=sys.stderr)
            return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
