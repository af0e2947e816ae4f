"""The command-line parsers of the stages, one module per command group.

Each module's ``register(subparsers)`` adds its commands. Building a parser imports no stage:
handlers are named by module and function (:func:`handler`) and imported when the command
runs, and registry names offered as choices (:class:`RegistryNames`) load when they are
listed or checked. So ``cytodata COMMAND`` starts without the libraries of the other stages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator


def handler(module: str, name: str) -> Callable:
    """``args -> exit code``: ``module.name(args)``, importing ``module`` when called."""
    def run(args):
        return getattr(importlib.import_module(module), name)(args)

    run.__qualname__ = f"{module}.{name}"
    return run


class RegistryNames:
    """The names of a registry (``module.attr``), read when first listed or checked (argparse
    ``choices``; pass ``metavar`` too, which keeps argparse from listing them while building).
    """

    def __init__(self, module: str, attr: str):
        self.module, self.attr = module, attr

    def _names(self) -> list[str]:
        return list(getattr(importlib.import_module(self.module), self.attr).names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())
