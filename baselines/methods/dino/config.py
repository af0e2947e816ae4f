"""DINO / WS-DINO settings: re-exported from the torch-free ``methods/dino_config.py``."""

from __future__ import annotations

from ..dino_config import PAIR_SAMPLING, DinoConfig, PhotometricConfig, WSDinoConfig

__all__ = ["PAIR_SAMPLING", "DinoConfig", "PhotometricConfig", "WSDinoConfig"]
