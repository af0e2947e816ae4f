"""Baseline trainers on one engine: the weak-label classifier (CytoImageNet / Cell Painting CNN),
and next DINO / WS-DINO and the mean-teacher with ArcFace.

Installed as ``cytodata.baselines`` (``from cytodata import baselines``); from a checkout the
top-level ``import baselines`` works too. The wheel never installs a top-level ``baselines``
package, so it neither overwrites nor is shadowed by PyPI's unrelated ``baselines``.

- ``train(config, out, **overrides) -> Path`` / ``cytodata train CONFIG -o RUN_DIR``
- ``embed(checkpoint_or_run, shards, out) -> Path`` / ``cytodata embed RUN SHARDS -o FILE``
- ``METHODS`` (registry by name), ``load_config``, ``config_names``
"""

from __future__ import annotations

from .config import TrainConfig, config_names, load_config
from .embed import embed
from .engine import Engine, train
from .methods import METHODS, Method

__all__ = ["train", "embed", "Engine", "METHODS", "Method", "TrainConfig", "load_config",
           "config_names"]
