"""CytoImageNet's upsampling step: crops for small classes, a cut back to ``target``, a floor.

CytoImageNet (``prepare_dataset.Upsampler``) replaces each image of a weak-label class by 1-4
crops, one per quadrant, the count set by the class size (1 at >= 1000 images, 2 at >= 550,
3 at >= 400, else 4: :func:`cytodata.images.crops.n_crops_for_class`); images under 140 px a
side stay whole; a class over 1000 rows afterwards is cut back to 1000 (removing one crop per
image before any image loses a second), and classes under 500 rows are dropped.

Here every choice is keyed by the row's ``key`` and the seed (the crop windows of an image are
drawn from a generator seeded by ``(seed, key)``, the cut-back order is a seeded hash of the
crop keys), so the result does not depend on row order. Every input row either survives (whole
or as >= 1 crop) or is recorded in the ledger with its reason (``unreadable``,
``not sampled`` for the cut back, ``below floor``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..images.crops import (
    DEFAULT_SCALES,
    _restore_dtypes,
    _row_seed,
    cytoimagenet_crops,
    n_crops_for_class,
)
from ..ledger import Ledger
from ..schema import make_key
from .sampling import row_hashes

__all__ = ["upsample_classes", "image_size", "BELOW_FLOOR", "STAGE"]

BELOW_FLOOR = "below floor"
STAGE = "upsample"


def image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header (no pixel decoding).

    Raises :class:`~cytodata.errors.ImageReadError` naming the file when it cannot be opened.
    """
    from ..errors import ImageReadError

    try:
        if "://" in path and not path.startswith("file://"):
            import fsspec  # object stores: the header is read through a file handle

            opener = fsspec.open(path, "rb")
        else:
            from ..images.io import check_regular_file

            opener = open(check_regular_file(path), "rb")  # not a pipe or device: it would hang
        with opener as fh:
            magic = fh.read(4)
            fh.seek(0)
            if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                import tifffile

                with tifffile.TiffFile(fh) as tif:
                    page = tif.pages[0]
                    return int(page.imagelength), int(page.imagewidth)
            from PIL import Image

            with Image.open(fh) as img:
                return int(img.size[1]), int(img.size[0])
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found; check channel_paths", path=path,
                             reason="missing file") from None
    except ImageReadError:
        raise
    except Exception as exc:  # any decoder error: the header is unreadable
        raise ImageReadError(f"{path}: cannot read the image header ({exc})", path=path,
                             reason="unreadable") from None


def _sizes(table: pd.DataFrame, sizes) -> tuple[list, list]:
    """Per row ``(H, W)`` or None, and per row the read error (or None)."""
    from ..errors import ImageReadError

    out, errors = [], []
    for key, image_id, paths in zip(table["key"], table["image_id"], table["channel_paths"],
                                    strict=True):
        hw, err = None, None
        if isinstance(sizes, Mapping):
            hw = sizes.get(key, sizes.get(image_id))
            if hw is None:
                err = ("unreadable", f"{key}: no (height, width) in the sizes given")
        elif len(paths):
            try:
                hw = image_size(str(paths[0]))
            except ImageReadError as exc:
                err = (exc.reason, str(exc))
        else:
            err = ("bad metadata", f"{key}: no channel files")
        out.append(None if hw is None else (int(hw[0]), int(hw[1])))
        errors.append(err)
    return out, errors


def upsample_classes(
    table: pd.DataFrame, *, seed: int = 0, target: int = 1000, floor: int = 500,
    scales: Sequence[float] = DEFAULT_SCALES, min_size: int = 70, min_image: int = 140,
    sizes: Mapping[str, tuple[int, int]] | None = None, label_column: str = "label",
    ledger: Ledger | None = None,
) -> pd.DataFrame:
    """Upsample weak-label classes as CytoImageNet did; returns whole rows + crops by key.

    Crop rows for each class (CytoImageNet's counts), classes cut back to ``target``, classes
    under ``floor`` dropped.

    ``sizes`` maps ``key``/``image_id`` -> ``(H, W)``; by default each image's first channel
    header is read. Rows without a label are returned untouched. Crop rows copy their parent
    and set ``crop=True``, the window, ``scaling``, ``parent_id`` (the parent's, else its
    ``image_id``), ``image_id = <image_id>-c<k>`` and a new ``key``. Dropped input rows are
    recorded in ``ledger`` (stage ``upsample``).
    """
    ledger = ledger if ledger is not None else Ledger()
    table = table.reset_index(drop=True)
    labelled = table[label_column].notna().to_numpy()
    rest, table = table[~labelled], table[labelled].reset_index(drop=True)
    if not len(table):
        return rest
    hw, errors = _sizes(table, sizes)
    bad = np.array([e is not None for e in errors])
    for reason in sorted({e[0] for e in errors if e is not None}):
        idx = [i for i, e in enumerate(errors) if e is not None and e[0] == reason]
        ledger.drop(table.iloc[idx], stage=STAGE, reason=reason,
                    detail=[errors[i][1] for i in idx])
    table = table[~bad].reset_index(drop=True)
    hw = [s for s, b in zip(hw, bad, strict=True) if not b]
    if not len(table):  # every labelled row unreadable: all of them are in the ledger
        return rest.reset_index(drop=True)

    class_size = table[label_column].map(table[label_column].value_counts()).to_numpy()
    windows: list[list] = []
    for key, size, n_class in zip(table["key"], hw, class_size, strict=True):
        if size[0] < min_image or size[1] < min_image:
            windows.append([])  # too small to crop: kept whole, as CytoImageNet did
            continue
        rng = np.random.default_rng(_row_seed(seed, key))
        n = n_crops_for_class(int(n_class), target=target)
        windows.append(cytoimagenet_crops(size[0], size[1], n, rng=rng, scales=scales,
                                          min_size=min_size))
    out = _expand(table, windows)

    # cut each class back to `target`: rank-0 crops of every image before any rank-1 crop
    parent_pos = out.pop("_parent").to_numpy()
    order = row_hashes(out["key"], seed, "upsample")
    by_parent = np.lexsort((order, parent_pos))  # exact uint64 order within each parent
    first = np.searchsorted(parent_pos[by_parent], parent_pos[by_parent], side="left")
    rank = np.empty(len(out), dtype=np.int64)
    rank[by_parent] = np.arange(len(out)) - first
    sort = np.lexsort((order, rank, out[label_column].astype(str).to_numpy()))
    out, parent_pos = out.iloc[sort].reset_index(drop=True), parent_pos[sort]
    keep = out.groupby(label_column, sort=False).cumcount().to_numpy() < target
    lost = np.setdiff1d(np.arange(len(table)), parent_pos[keep])
    ledger.drop(table.iloc[lost], stage=STAGE, reason="not sampled",
                detail=f"all crops removed when the class was cut back to {target}")
    out, parent_pos = out[keep].reset_index(drop=True), parent_pos[keep]

    n_rows = out[label_column].map(out[label_column].value_counts()).to_numpy()
    small = n_rows < floor
    if small.any():
        parents = np.unique(parent_pos[small])
        sizes_of = out[label_column][small].value_counts()
        detail = table[label_column].iloc[parents].map(
            lambda lab: f"class {lab!r} has {int(sizes_of[lab])} rows after upsampling; "
                        f"floor {floor}")
        ledger.drop(table.iloc[parents], stage=STAGE, reason=BELOW_FLOOR, detail=detail.to_numpy())
        out = out[~small]
    out = pd.concat([out, rest], ignore_index=True) if len(rest) else out
    return out.sort_values("key", kind="stable").reset_index(drop=True)


def _expand(table: pd.DataFrame, windows: list[list]) -> pd.DataFrame:
    """Whole rows (no windows) and one row per window, with ``_parent`` = input position."""
    counts = np.array([max(len(w), 1) for w in windows], dtype=np.int64)
    pos = np.repeat(np.arange(len(table)), counts)
    out = table.iloc[pos].reset_index(drop=True)
    out["_parent"] = pos
    # every row names its source image, so splits keep an image and its crops together
    out["parent_id"] = out["parent_id"].astype("string").fillna(out["image_id"].astype("string"))
    flat = [(i, k, w) for i, ws in enumerate(windows) for k, w in enumerate(ws)]
    if not flat:
        return out
    cropped = np.array([len(w) > 0 for w in windows])[pos]
    k_of = np.concatenate([np.arange(c) for c in counts])
    idx = np.flatnonzero(cropped)
    wins = [w for _, _, w in flat]  # same order as idx (rows expanded in input order)
    image_id = out["image_id"].astype(str).to_numpy()
    new_ids = np.array([f"{image_id[j]}-c{k_of[j]}" for j in idx], dtype=object)
    parent = out["parent_id"].astype("string").fillna(out["image_id"].astype("string"))
    out.loc[idx, "parent_id"] = parent.iloc[idx].to_numpy()
    out.loc[idx, "image_id"] = new_ids
    out.loc[idx, "key"] = [make_key(s, i)
                           for s, i in zip(out["source"].iloc[idx], new_ids, strict=True)]
    out["crop"] = out["crop"].astype("boolean") if "crop" in out.columns else pd.array(
        [pd.NA] * len(out), dtype="boolean")
    out.loc[idx, "crop"] = True
    for col in ("x_min", "x_max", "y_min", "y_max"):
        out.loc[idx, col] = [getattr(w, col) for w in wins]
    out.loc[idx, "scaling"] = [w.scaling for w in wins]
    return _restore_dtypes(out, table).assign(_parent=pos)
