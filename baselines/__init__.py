"""Baseline trainers on one engine: the weak-label classifier (CytoImageNet / Cell Painting CNN),
DINO / WS-DINO and the mean teacher with ArcFace (DeepNoise).

Installed as ``cytodata.baselines`` (``from cytodata import baselines``); from a checkout the
top-level ``import baselines`` works too. The wheel never installs a top-level ``baselines``
package, so it neither overwrites nor is shadowed by PyPI's unrelated ``baselines``.

- ``train(config, out, **overrides) -> Path`` / ``cytodata train CONFIG -o RUN_DIR``
- ``embed(checkpoint_or_run, shards, out) -> Path`` / ``cytodata embed RUN SHARDS -o FILE``
- ``METHODS`` (registry by name), ``load_config``, ``config_names``

The names load on first use (torch is imported then), so ``cytodata --help`` stays fast.
"""

from __future__ import annotations

import importlib

#: public name -> the module defining it
_LAZY = {"train": "engine", "Engine": "engine", "embed": "embedding", "METHODS": "methods",
         "Method": "methods", "load_config": "resolve", "TrainConfig": "config",
         "config_names": "config"}

__all__ = ["train", "embed", "Engine", "METHODS", "Method", "TrainConfig", "load_config",
           "config_names"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
