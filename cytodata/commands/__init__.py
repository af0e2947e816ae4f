"""The command-line parsers of the stages, one module per command group.

Each module's ``register(subparsers)`` adds its commands. Building a parser imports no stage:
handlers are named by module and function (:func:`handler`) and imported when the command
runs, and registry names offered as choices (:class:`RegistryNames`) are read from the
registering source files, so ``cytodata COMMAND --help`` lists them without importing the
stage. So ``cytodata COMMAND`` starts without the libraries of the other stages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path

#: the cytodata package folder (module names map onto files below it)
PACKAGE = Path(__file__).resolve().parent.parent


#: kind of input -> (error class of cytodata.errors, message for a local path that does not exist)
MISSING = {
    "manifest": ("SchemaError", "no manifest at {path}; build one with `cytodata manifest build RECIPE -o DIR`"),
    "shards": ("ShardError", "{path} does not exist; write a shard set with `cytodata shard MANIFEST -o DIR`"),
    "publish": ("PublishError", "cannot publish {path}: it does not exist; write a shard set with "
                                "`cytodata shard MANIFEST -o DIR`"),
    "table": ("EvaluationError", "{path}: no such file"),
}


def handler(module: str, name: str, inputs: dict[str, str] | None = None) -> Callable:
    """``args -> exit code``: ``module.name(args)``, importing ``module`` when called.

    ``inputs``: ``{argument: kind of MISSING}``; a local input path that does not exist is refused
    (the stage's error, naming the command that makes one) before the stage is imported.
    """
    def run(args):
        for dest, kind in (inputs or {}).items():
            path = getattr(args, dest, None)
            if path and "://" not in str(path) and not Path(path).exists():
                from .. import errors

                error, text = MISSING[kind]
                raise getattr(errors, error)(text.format(path=path))
        return getattr(importlib.import_module(module), name)(args)

    run.__qualname__ = f"{module}.{name}"
    return run


def registered_names(folder: Path, attr: str, made_by: str | None = None) -> list[str]:
    """Names registered in ``attr`` by the modules of ``folder``, read from their source.

    A registration is a call ``ATTR.register("name")`` (as a decorator or called), or, with
    ``made_by``, a call ``MADE_BY("name", ...)`` whose object registers under its first argument
    (``Codec("npy", ...)``). Nothing is imported.
    """
    import ast

    names = set()
    for path in sorted(folder.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if attr not in text and (made_by is None or made_by not in text):
            continue
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                continue
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == "register" and isinstance(f.value, ast.Name)
                    and f.value.id == attr) or (made_by and isinstance(f, ast.Name) and f.id == made_by):
                names.add(node.args[0].value)
    return sorted(names)


class RegistryNames:
    """The names of a registry (``module.attr``) for argparse ``choices``, read from the source
    of the modules in ``module``'s folder (:func:`registered_names`), so listing and checking them
    imports nothing; :meth:`loaded` imports the registry (tests hold the two equal).
    Pass ``metavar`` too, which keeps argparse from listing them while building.
    """

    def __init__(self, module: str, attr: str, *, made_by: str | None = None):
        self.module, self.attr, self.made_by = module, attr, made_by
        self._cache: list[str] | None = None

    def folder(self) -> Path:
        """The folder whose modules register into the registry."""
        parts = self.module.split(".")[1:]
        path = PACKAGE.joinpath(*parts)
        return path if path.is_dir() else path.parent

    def _names(self) -> list[str]:
        if self._cache is None:
            self._cache = registered_names(self.folder(), self.attr, self.made_by)
        return self._cache

    def loaded(self) -> list[str]:
        """The registry's names after importing ``module`` (what the command will use)."""
        return list(getattr(importlib.import_module(self.module), self.attr).names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())
