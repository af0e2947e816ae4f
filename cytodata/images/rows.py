"""One way to turn a manifest row into pixels, shared by image QC and every shard writer.

A row names its channel files (``channel_paths``) and, for a crop made by the upsampling step,
a window (``x_min, x_max, y_min, y_max``; ``crop`` true or absent). QC and the writers must see
the SAME pixels, so both call :func:`load_row` (before, QC cut crops to their window and the
writers wrote them whole).

A window is cut only when the file is larger than it: CytoImageNet's release rows point at
crop files that were already cut (their window says where they came from), and cutting a file
that has exactly the window's size would be wrong. A window hanging over an edge (a cell near
the border of its field) is moved inside, keeping its size, so every sample of a set has one
shape; a window larger than the image is an error (:class:`WindowError`, reason ``window does
not fit``), and so is a window with only some bounds set or no area (reason ``bad window``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .crops import CropWindow

__all__ = ["WindowError", "window_of", "fit", "cut", "load_row", "read_window"]

_WINDOW = ("x_min", "x_max", "y_min", "y_max")


class WindowError(ValueError):
    """A row's crop window is malformed or does not fit its image; ``reason`` is the ledger reason."""

    def __init__(self, message: str, reason: str = "window does not fit"):
        super().__init__(message)
        self.reason = reason


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) \
        and value is not pd.NA


def window_of(row: Mapping) -> CropWindow | None:
    """The crop window of a manifest row or shard record, or ``None`` (a whole image).

    A window needs all four bounds; ``crop=False`` (when the key is there) means none.
    """
    if "crop" in row and _present(row["crop"]) and not bool(row["crop"]):
        return None
    present = [_present(row.get(c)) for c in _WINDOW]
    if not any(present):
        return None
    vals = [row.get(c) for c in _WINDOW]
    if not all(present) or int(vals[1]) <= int(vals[0]) or int(vals[3]) <= int(vals[2]):
        raise WindowError(f"{row.get('key', '')}: crop window x {vals[0]}..{vals[1]}, y {vals[2]}.."
                          f"{vals[3]} is incomplete or empty; set all four of {list(_WINDOW)} with "
                          "x_min < x_max and y_min < y_max", reason="bad window")
    scaling = row.get("scaling")
    return CropWindow(int(row["x_min"]), int(row["x_max"]), int(row["y_min"]), int(row["y_max"]),
                      float(scaling) if _present(scaling) else float("nan"), -1)


def cut(image: np.ndarray, window: CropWindow | None, where: str = "") -> np.ndarray:
    """``image`` ``(C, H, W)`` cut to ``window`` unless it already has the window's size."""
    if window is None:
        return image
    h, w = image.shape[-2:]
    if (h, w) == (window.y_max - window.y_min, window.x_max - window.x_min):
        return image  # the file is the crop already (CytoImageNet release rows)
    x0, y0, ww, wh = fit(window, h, w, where)
    return np.ascontiguousarray(image[..., y0:y0 + wh, x0:x0 + ww])


def fit(window: CropWindow, h: int, w: int, where: str = "") -> tuple[int, int, int, int]:
    """``(x0, y0, width, height)`` of ``window`` moved inside an ``h x w`` image (same size)."""
    wh, ww = window.y_max - window.y_min, window.x_max - window.x_min
    if wh > h or ww > w:
        raise WindowError(f"{where}: crop window {ww} x {wh} px (x {window.x_min}..{window.x_max}, "
                          f"y {window.y_min}..{window.y_max}) is larger than its {w} x {h} px "
                          "image; use a smaller crop size or rebuild the manifest from the "
                          "current images")
    return min(max(window.x_min, 0), w - ww), min(max(window.y_min, 0), h - wh), ww, wh


def read_window(paths: Sequence[str], window: CropWindow | None, *, gray="auto",
                expected_channels: int | None = None) -> np.ndarray:
    """``read_image(paths)`` cut to ``window``: ``(C, h, w)`` at the files' dtype.

    Raises :class:`~cytodata.errors.ImageReadError` (with its reason) or :class:`WindowError`.
    """
    from .io import read_image

    image = read_image(list(paths), gray=gray, expected_channels=expected_channels)
    return cut(image, window, where=str(paths[0]) if paths else "")


def load_row(row: Mapping, *, gray="auto") -> np.ndarray:
    """The pixels of one manifest row / shard record: its channels, cut to its window."""
    paths = list(row["channel_paths"])
    return read_window(paths, window_of(row), gray=gray, expected_channels=len(paths) or None)
