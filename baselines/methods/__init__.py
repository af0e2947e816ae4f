"""Training methods registered by name (timm's ``register_model`` habit).

A method is a class with a typed config (``config_class``, a :class:`~baselines.config.TrainConfig`
subclass) and a few small hooks the one engine calls (:class:`Method`). Adding one is one new
module here plus a config under ``configs/``; nothing else is edited. Each module registers its
class in :data:`~cytodata.baselines.registry.METHODS`; importing this package imports them all.
"""

from __future__ import annotations

from ..registry import METHODS
from . import classifier, dino, mean_teacher  # noqa: F401  (registers classifier, dino, ws-dino, mean-teacher)
from .base import Method

__all__ = ["METHODS", "Method"]
