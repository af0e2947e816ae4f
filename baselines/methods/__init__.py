"""Training methods registered by name (timm's ``register_model`` habit).

A method is a class with a typed config (``config_class``, a :class:`~baselines.config.TrainConfig`
subclass) and a few small hooks the one engine calls (:class:`Method`). Adding one is a method
module here, a torch-free module with its config class, a row in
:data:`~cytodata.baselines.registry.MODULES` and a config under ``configs/``. The method module
registers its class in :data:`~cytodata.baselines.registry.METHODS`, the config module its config
class in :data:`~cytodata.baselines.registry.CONFIGS`; each loads on the first ``get`` of its
name, so importing this package imports no method (and no torch).
"""

from __future__ import annotations

import importlib

from ..registry import CONFIGS, METHODS

#: public name -> the module defining it (the method modules load on first use)
_LAZY = {"Method": "base"}
_SUBMODULES = ("base", "classifier", "classifier_config", "dino", "dino_config", "mean_teacher",
               "mean_teacher_config")

__all__ = ["CONFIGS", "METHODS", "Method"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:  # ``methods.classifier`` after ``import ...methods``
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
