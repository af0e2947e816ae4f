"""DINO (Caron et al. 2021) and WS-DINO (Cross-Zamirski et al. 2022) on the shared engine.

One job per module: ``config`` (typed settings: re-exported from the torch-free
``methods/dino_config.py``, which ``train --show`` reads without this package), ``views`` (multi-crop), ``photometric``
(DINO's per-view colour ops), ``head`` (DINO head,
backbone + head nets), ``loss`` (centred, sharpened cross-entropy; teacher-temperature
schedule), ``collapse`` (the monitor), ``sampling`` (WS-DINO's weak-label pairs),
``pretrained`` (local DINO weights), ``method`` (the ``dino`` method), ``ws_dino`` (the
``ws-dino`` method). Importing the package registers both methods.
"""

from __future__ import annotations

from ..dino_config import DinoConfig, PhotometricConfig, WSDinoConfig
from .collapse import collapse_kind, monitor_stats
from .head import DINOHead, DinoModels, DinoNet
from .loss import DINOLoss, dino_cross_entropy, teacher_temp_schedule
from .method import Dino
from .photometric import photometric
from .sampling import BalancedWeakLabelPairs, group_codes, image_ids
from .views import resized_crops
from .ws_dino import WSDino

__all__ = ["BalancedWeakLabelPairs", "DINOHead", "DINOLoss", "Dino", "DinoConfig", "DinoModels",
           "DinoNet", "WSDino", "WSDinoConfig", "collapse_kind", "dino_cross_entropy",
           "PhotometricConfig", "group_codes", "image_ids", "monitor_stats", "photometric",
           "resized_crops", "teacher_temp_schedule"]
