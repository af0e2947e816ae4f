"""Deterministic file writers and name helpers shared by the layouts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def slug(text: str) -> str:
    """Lower-case ``text`` with runs of non-alphanumerics as one hyphen (compound names)."""
    return "-".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())


def uuid_name(rng: np.random.Generator) -> str:
    """Draw a UUID-like upper-case hex string (8-4-4-4-12), as in BBBC021 file names."""
    h = rng.bytes(16).hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def write_tiff(path: Path, image: np.ndarray) -> None:
    """2-D uint16 TIFF, uncompressed, with no description/software/date tags (deterministic)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image, photometric="minisblack", metadata=None, software=False)


def write_png(path: Path, image: np.ndarray) -> None:
    """2-D uint8 (mode L) or uint16 (mode I;16) PNG, no text chunks (deterministic)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", compress_level=1)



def csv_line(values: Sequence, quoted: Sequence[bool]) -> str:
    """One CSV line in the BBBC021 style: text in double quotes, numbers bare."""
    cells = []
    for v, q in zip(values, quoted, strict=True):
        s = str(v)
        cells.append('"' + s.replace('"', '""') + '"' if q else s)
    return ",".join(cells) + "\n"

