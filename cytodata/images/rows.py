"""One way to turn a manifest row into pixels, shared by image QC and every shard writer.

A row names its channel files (``channel_paths``) and, for a crop made by the upsampling step,
a window (``x_min, x_max, y_min, y_max``; ``crop`` true or absent). QC and the writers must see
the SAME pixels, so both call :func:`load_row` (before, QC cut crops to their window and the
writers wrote them whole).

A window is cut only when the file is larger than it: CytoImageNet's release rows point at
crop files that were already cut (their window says where they came from), and cutting a file
that has exactly the window's size would be wrong, while a window that does not fit a larger
image is an error (:class:`WindowError`, reason ``wrong shape``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .crops import CropWindow

__all__ = ["WindowError", "window_of", "load_row", "read_window"]

_WINDOW = ("x_min", "x_max", "y_min", "y_max")


class WindowError(ValueError):
    """A row's crop window does not fit its image; ``reason`` is the ledger reason."""

    reason = "wrong shape"


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) \
        and value is not pd.NA


def window_of(row: Mapping) -> CropWindow | None:
    """The crop window of a manifest row or shard record, or ``None`` (a whole image).

    A window needs all four bounds; ``crop=False`` (when the key is there) means none.
    """
    if "crop" in row and _present(row["crop"]) and not bool(row["crop"]):
        return None
    if not all(_present(row.get(c)) for c in _WINDOW):
        return None
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
    if not (0 <= window.y_min < window.y_max <= h and 0 <= window.x_min < window.x_max <= w):
        raise WindowError(f"{where}: crop window x {window.x_min}:{window.x_max}, y "
                          f"{window.y_min}:{window.y_max} does not fit the {h}x{w} image; "
                          "rebuild the manifest from the current images")
    return image[..., window.y_min:window.y_max, window.x_min:window.x_max]


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
