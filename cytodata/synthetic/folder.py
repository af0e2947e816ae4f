"""The folder-per-class layout: single-channel nuclear images ``root/<class>/<class>_<k>.png``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._files import write_png, write_tiff
from .cells import make_cells
from .config import SyntheticScreen, screen_rng
from .phenotypes import phenotype_for


def write_folder_layout(root: str | os.PathLike, config: SyntheticScreen | None = None) -> dict:
    """Write single-channel nuclear images ``root/<class>/<class>_<k>.png``, a folder per class.

    uint8 PNG, or uint16 TIFF ``.tif`` with ``folder_format="tif"``.

    Returns ``{"root", "images"}`` (``images``: columns class, path).
    """
    config = config or SyntheticScreen()
    root = Path(root).resolve()
    size = (config.folder_image_size, config.folder_image_size)
    rows = []
    eight_bit = config.folder_format == "png"
    for k, label in enumerate(config.folder_classes):
        for i in range(config.folder_images_per_class):
            rng = screen_rng(config, 3, k, i)
            pheno = phenotype_for(label)
            if eight_bit:
                image = make_cells(rng, (1, *size), pheno, background=12.0, peak=150.0,
                                   bit_depth=8)[0].astype(np.uint8)
                path = root / label / f"{label}_{i + 1:03d}.png"
                write_png(path, image)
            else:
                image = make_cells(rng, (1, *size), pheno, background=config.background,
                                   peak=config.peak, bit_depth=config.bit_depth)[0]
                path = root / label / f"{label}_{i + 1:03d}.tif"
                write_tiff(path, image)
            rows.append({"class": label, "path": str(path)})
    return {"root": root, "images": pd.DataFrame(rows)}
