"""Crop windows: CytoImageNet-style upsampling crops and fixed-size tiling.

CytoImageNet upsamples small classes by cutting 1-4 crops from each image: the image is
split into 2x2 quadrants, each crop takes a different quadrant, a scale (fraction of the
image side) and a random position inside that quadrant. Crops become their own manifest
rows (``crop=True``, window columns set, ``parent_id`` = source image) so splits can keep
every crop of an image on the same side.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import SchemaError
from ..schema import make_key

__all__ = [
    "CropWindow", "SMALLER_THAN_CROP", "DEFAULT_SCALES", "allowed_scales", "cytoimagenet_crops",
    "n_crops_for_class", "crop_rows", "apply_crop", "tile",
]

#: ledger reason for images too small for any allowed crop scale
SMALLER_THAN_CROP = "smaller than crop"
DEFAULT_SCALES: tuple[float, ...] = (1 / 2, 1 / 4, 1 / 8, 1 / 16)
MAX_CROPS = 4  # one per quadrant


@dataclass(frozen=True)
class CropWindow:
    """A crop in pixel coordinates: rows ``y_min:y_max``, columns ``x_min:x_max`` (end-exclusive).

    ``scaling`` is the crop side as a fraction of the image side; ``quadrant`` is 0 top-left,
    1 top-right, 2 bottom-left, 3 bottom-right.
    """

    x_min: int
    x_max: int
    y_min: int
    y_max: int
    scaling: float
    quadrant: int


def allowed_scales(height: int, width: int, scales: Sequence[float] = DEFAULT_SCALES,
                   min_size: int = 70) -> list[float]:
    """Scales whose crop (``floor(scale * side)`` in both axes) is at least ``min_size`` pixels.

    Scales above 1/2 are not allowed because a crop must fit inside one quadrant.
    """
    return [s for s in scales
            if 0 < s <= 0.5 and int(s * height) >= min_size and int(s * width) >= min_size]


def cytoimagenet_crops(
    height: int, width: int, n_crops: int, *, rng: np.random.Generator,
    scales: Sequence[float] = DEFAULT_SCALES, min_size: int = 70,
) -> list[CropWindow]:
    """Draw ``n_crops`` (1-4) windows in distinct quadrants of a ``height x width`` image.

    Each crop picks a scale uniformly among :func:`allowed_scales` and a uniform position
    inside its quadrant. Returns ``[]`` when no scale gives a crop of ``min_size`` pixels.
    """
    if not 1 <= n_crops <= MAX_CROPS:
        raise ValueError(f"n_crops must be between 1 and {MAX_CROPS} (one per quadrant), got {n_crops}")
    ok = allowed_scales(height, width, scales, min_size)
    if not ok:
        return []
    half_h, half_w = height // 2, width // 2
    windows = []
    for quadrant in rng.permutation(MAX_CROPS)[:n_crops]:
        row, col = divmod(int(quadrant), 2)
        scale = float(ok[int(rng.integers(len(ok)))])
        ch, cw = int(scale * height), int(scale * width)
        y0, y1 = (0, half_h) if row == 0 else (half_h, height)
        x0, x1 = (0, half_w) if col == 0 else (half_w, width)
        y = y0 + int(rng.integers(y1 - y0 - ch + 1))
        x = x0 + int(rng.integers(x1 - x0 - cw + 1))
        windows.append(CropWindow(x, x + cw, y, y + ch, scale, int(quadrant)))
    return windows


#: CytoImageNet's crop counts: (minimum class size as a fraction of ``target``, crops per image)
CROP_STEPS: tuple[tuple[float, int], ...] = ((1.0, 1), (0.55, 2), (0.40, 3))


def n_crops_for_class(class_size: int, *, target: int = 1000) -> int:
    """Crops per image for a class of ``class_size`` images, CytoImageNet's rule.

    1 crop at >= ``target`` (1000) images, 2 at >= 0.55 ``target`` (550), 3 at >= 0.4
    ``target`` (400), else 4 (one per quadrant): ``n_crops_for_class(520) == 3``.
    """
    for frac, n in CROP_STEPS:
        if class_size >= math.ceil(frac * target):
            return n
    return MAX_CROPS


def _row_seed(seed: int, key: str) -> np.random.SeedSequence:
    # stable across processes and Python versions (unlike hash())
    digest = int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little")
    return np.random.SeedSequence([int(seed), digest])


def _sizes_of(table: pd.DataFrame, sizes) -> list[tuple[int, int] | None]:
    if sizes is None:
        sizes = ("height", "width")
    if isinstance(sizes, Mapping):
        out = []
        for key, image_id in zip(table["key"], table["image_id"]):
            hw = sizes.get(key, sizes.get(image_id))
            out.append(None if hw is None else (int(hw[0]), int(hw[1])))
        return out
    h_col, w_col = sizes
    missing = [c for c in (h_col, w_col) if c not in table.columns]
    if missing:
        raise SchemaError(
            f"crop_rows: size column(s) {missing} not found; pass sizes={{image_id: (H, W)}} "
            f"or a (height, width) column pair present in the table: {list(table.columns)}"
        )
    return [None if pd.isna(h) or pd.isna(w) else (int(h), int(w))
            for h, w in zip(table[h_col], table[w_col])]


def crop_rows(
    table: pd.DataFrame, *, seed: int = 0, target: int = 1000,
    scales: Sequence[float] = DEFAULT_SCALES, min_size: int = 70,
    sizes: Mapping[str, tuple[int, int]] | tuple[str, str] | None = None,
    label_column: str = "label",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Expand manifest rows into crop rows; returns ``(crops, rejected)``.

    ``sizes`` gives each image's ``(H, W)``: a mapping keyed by ``key`` or ``image_id``, or
    a pair of column names (default ``("height", "width")``). The number of crops per image
    follows :func:`n_crops_for_class` on the size of its ``label_column`` class (NA labels
    form one class). Each row's windows come from an rng seeded by ``(seed, key)``, so the
    result does not depend on row order or process. Crop rows copy their parent row and set
    ``crop=True``, the window columns, ``scaling``, ``parent_id`` (the parent's
    ``parent_id`` if set, else its ``image_id``), ``image_id = <parent image_id>-c<k>`` and
    a new ``key``. ``rejected`` holds the input rows whose size is unknown or too small for
    any crop; record them with ``ledger.drop(rejected, stage=..., reason=SMALLER_THAN_CROP)``.
    """
    hw = _sizes_of(table, sizes)
    labels = table[label_column] if label_column in table.columns else pd.Series(pd.NA, index=table.index)
    labels = labels.astype("string").fillna("<NA>")
    class_size = labels.map(labels.value_counts())
    records, rejected = [], []
    for pos, (idx, row) in enumerate(table.iterrows()):
        size = hw[pos]
        rng = np.random.default_rng(_row_seed(seed, row["key"]))
        n = n_crops_for_class(int(class_size.loc[idx]), target=target)
        windows = [] if size is None else cytoimagenet_crops(
            size[0], size[1], n, rng=rng, scales=scales, min_size=min_size)
        if not windows:
            rejected.append(idx)
            continue
        parent = row["parent_id"] if "parent_id" in row.index and pd.notna(row["parent_id"]) else row["image_id"]
        for k, win in enumerate(windows):
            rec = row.to_dict()
            image_id = f"{row['image_id']}-c{k}"
            rec.update(
                key=make_key(row["source"], image_id), image_id=image_id, parent_id=parent,
                crop=True, scaling=win.scaling, x_min=win.x_min, x_max=win.x_max,
                y_min=win.y_min, y_max=win.y_max,
            )
            records.append(rec)
    crops = pd.DataFrame.from_records(records, columns=list(table.columns) + [
        c for c in ("key", "image_id", "parent_id", "crop", "scaling", "x_min", "x_max", "y_min", "y_max")
        if c not in table.columns])
    crops = _restore_dtypes(crops, table)
    return crops, table.loc[rejected]


def _restore_dtypes(crops: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    from ..schema import BOOL_COLUMNS, FLOAT_COLUMNS, INT_COLUMNS, STRING_COLUMNS

    types = {}
    for col in crops.columns:
        if col in INT_COLUMNS:
            types[col] = "Int64"
        elif col in FLOAT_COLUMNS:
            types[col] = "float64"
        elif col in BOOL_COLUMNS:
            types[col] = "boolean"
        elif col in STRING_COLUMNS:
            types[col] = "string"
        elif col in table.columns and table[col].dtype != object:
            types[col] = table[col].dtype
    return crops.astype(types)


def apply_crop(img: np.ndarray, window: CropWindow) -> np.ndarray:
    """``(C, H, W)`` -> ``(C, y_max - y_min, x_max - x_min)`` view of the window."""
    h, w = img.shape[-2:]
    if not (0 <= window.y_min < window.y_max <= h and 0 <= window.x_min < window.x_max <= w):
        raise ValueError(f"crop window {window} does not fit an image of {h}x{w} pixels")
    return img[..., window.y_min:window.y_max, window.x_min:window.x_max]


def tile(img: np.ndarray, size: int, *, stride: int | None = None,
         drop_partial: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``(C, H, W)`` into ``size x size`` tiles every ``stride`` pixels (default ``size``).

    Returns ``(tiles, offsets)``: tiles ``(N, C, size, size)`` in row-major order and
    offsets ``(N, 2)`` int64 ``(y, x)`` of each tile's top-left pixel. With
    ``drop_partial=False`` tiles that run over the edge are kept, zero-padded.
    """
    img = np.asarray(img)
    if img.ndim != 3:
        raise ValueError(f"tile: expected a (C, H, W) array, got shape {img.shape}")
    stride = size if stride is None else int(stride)
    if size <= 0 or stride <= 0:
        raise ValueError(f"tile: size and stride must be positive, got size={size} stride={stride}")
    c, h, w = img.shape
    if drop_partial:
        ys = np.arange(0, h - size + 1, stride)
        xs = np.arange(0, w - size + 1, stride)
        src = img
    else:
        ys = np.arange(0, max(h - size, 0) + stride, stride)
        xs = np.arange(0, max(w - size, 0) + stride, stride)
        ys, xs = ys[ys < h], xs[xs < w]
        ph = max(int(ys[-1]) + size - h, 0) if len(ys) else 0
        pw = max(int(xs[-1]) + size - w, 0) if len(xs) else 0
        src = np.pad(img, ((0, 0), (0, ph), (0, pw)))
    offsets = np.array([(y, x) for y in ys for x in xs], dtype=np.int64).reshape(-1, 2)
    tiles = np.empty((len(offsets), c, size, size), dtype=img.dtype)
    for i, (y, x) in enumerate(offsets):
        tiles[i] = src[:, y:y + size, x:x + size]
    return tiles, offsets
