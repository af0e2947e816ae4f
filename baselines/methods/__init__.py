"""Training methods registered by name (timm's ``register_model`` habit).

A method is a class with a typed config (``config_class``, a :class:`~baselines.config.TrainConfig`
subclass) and a few small hooks the one engine calls (:class:`Method`). Adding one is one new
module here plus a config under ``configs/``; nothing else is edited.
"""

from __future__ import annotations

from cytodata._registry import Registry

from .base import Method

METHODS: Registry[type[Method]] = Registry("training method")

# importing a method module registers it (after METHODS exists: hence below the registry)
from . import classifier, dino, mean_teacher  # noqa: E402,F401  (classifier, dino, ws-dino, mean-teacher)

__all__ = ["METHODS", "Method"]
