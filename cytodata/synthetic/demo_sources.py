"""The demo's three sources, two of them with a deliberately broken input."""

from __future__ import annotations

import os
from pathlib import Path

from .bbbc021 import write_bbbc021_layout
from .config import SyntheticScreen
from .folder import write_folder_layout
from .rxrx1 import write_rxrx1_layout


def write_demo_sources(root: str | os.PathLike, seed: int = 0,
                       config: SyntheticScreen | None = None) -> dict[str, Path]:
    """Write the demo's three sources under ``root``: ``bbbc021/``, ``rxrx1/``, ``folder/``.

    Two inputs are broken on purpose, so the demo shows the ledger catching them; both are
    BBBC021 treatment sites (never DMSO), still listed in ``BBBC021_v1_image.csv``:

    - ``missing``: the Actin TIFF of the first treatment site of week 2 (``Week2``, first plate,
      the first non-DMSO well in file order, site 1) is deleted -> "missing file".
    - ``truncated``: the DAPI TIFF of the first treatment site of week 3 (or of the second
      treatment site of week 1 when there are fewer weeks) is cut to half its bytes, so its
      image data runs past the end of the file -> "truncated".

    Returns ``{"bbbc021": root, "rxrx1": root, "folder": root, "missing": path,
    "truncated": path}`` (absolute paths).
    """
    config = (config or SyntheticScreen()).replace(seed=seed)
    root = Path(root).resolve()
    bbbc = write_bbbc021_layout(root / "bbbc021", config)
    rxrx = write_rxrx1_layout(root / "rxrx1", config)
    folder = write_folder_layout(root / "folder", config)
    images = bbbc["images"]
    treated = images[images["compound"] != "DMSO"]
    weeks = list(dict.fromkeys(treated["batch"]))
    first = treated[treated["batch"] == weeks[min(1, len(weeks) - 1)]].iloc[0]
    second = (treated[treated["batch"] == weeks[2]].iloc[0] if len(weeks) > 2
              else treated[treated["batch"] == weeks[0]].iloc[1])
    missing, truncated = Path(first["paths"][2]), Path(second["paths"][0])
    missing.unlink()
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {"bbbc021": bbbc["root"], "rxrx1": rxrx["root"], "folder": folder["root"],
            "missing": missing, "truncated": truncated}
