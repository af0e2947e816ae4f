"""Name -> object registries (timm-style): sources, codecs, QC rules, normalizers, protocols.

Adding a source/codec/rule is one new module with a ``@REGISTRY.register("name")`` decorator;
nothing else is edited. ``get`` fails with the list of valid names. A name can also be known
before its module loads (:meth:`Registry.register_lazy`): the module is imported on the first
``get``, so listing names and checking them costs no import.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping of plug-ins with a helpful lookup error."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> module that registers it when imported

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (names are unique)."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def register_lazy(self, name: str, module: str) -> None:
        """Know ``name`` now; import ``module`` (whose ``@register(name)`` runs) on first :meth:`get`."""
        if name in self._lazy and self._lazy[name] != module:
            raise ValueError(f"{self.kind} {name!r} is already registered by {self._lazy[name]}")
        self._lazy[name] = module

    def get(self, name: str) -> T:
        """Return the plug-in called ``name`` or raise a ValueError listing valid names."""
        if name not in self._items and name in self._lazy:
            importlib.import_module(self._lazy[name])  # an import error propagates as it is
            if name not in self._items:
                raise ValueError(f"{self.kind} {name!r}: module {self._lazy[name]} was imported but "
                                 f"does not register it (@register({name!r}))")
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(self.names()) or "(none registered)"
            raise ValueError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        """Sorted registered names (those of :meth:`register_lazy` too, imported or not)."""
        return sorted(set(self._items) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
