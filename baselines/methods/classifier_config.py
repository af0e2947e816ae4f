"""The weak-label classifier's typed settings (the method is in ``classifier.py``).

Torch-free, so ``cytodata train --show`` and ``load_config`` read a classifier config without
loading the model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import TrainConfig
from ..registry import CONFIGS


@CONFIGS.register("classifier")
@dataclass
class ClassifierConfig(TrainConfig):
    """Classifier settings on top of the engine's."""

    label_smoothing: float = 0.0
    drop_rate: float = 0.0            # dropout before the classifier (timm ``drop_rate``)
    drop_path_rate: float = 0.0
    # extra keyword arguments of timm.create_model (e.g. bn_momentum: 0.01 = Keras' 0.99)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
