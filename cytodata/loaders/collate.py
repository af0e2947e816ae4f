"""Batch collation for sample dicts: torch's default, with a clear error when shapes differ.

``collate`` is torch's ``default_collate`` plus a readable :class:`MixedShapeError` (which keys,
which shapes, and the ways out) instead of "stack expects each tensor to be equal size".
``pad_collate`` is one way out: zero-pad images to the largest ``(C, H, W)`` of the batch and
return each sample's true size. :class:`~cytodata.loaders.StreamingDataLoader` uses ``collate``
by default; pass ``collate_fn=cytodata.loaders.collate`` to a plain DataLoader.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import torch
from torch.utils.data import default_collate

from ..errors import CytodataError

#: keys whose value is an image tensor ``(C, H, W)`` in the samples the loaders yield
IMAGE_KEYS: tuple[str, ...] = ("image",)

WAYS_OUT = (
    "ways out: (1) one shape per sample: StreamingDataset(..., transform=Compose(["
    "ChannelSubset([0, 1, 2]), RandomCrop(224)])) from cytodata.loaders.transforms; "
    "(2) pad: collate_fn=cytodata.loaders.pad_collate (zero-pads to the batch's largest shape, "
    "returns image_size); (3) one loader per source or shape: shard the sources separately; "
    "(4) batches of one source: sampler=GroupedBatches('source', batch_size) from "
    "cytodata.loaders; (5) no batching: DataLoader(..., batch_size=None)"
)


class MixedShapeError(CytodataError, ValueError):
    """A batch holds tensors of different shapes under one key (names keys, shapes, ways out)."""


def _shape_groups(values: Sequence[torch.Tensor], keys: Sequence[Any]) -> dict[tuple, list]:
    groups: dict[tuple, list] = defaultdict(list)
    for v, k in zip(values, keys, strict=True):
        groups[tuple(v.shape)].append(k)
    return groups


def check_shapes(batch: Sequence[dict], field: str = "image") -> None:
    """Raise :class:`MixedShapeError` when ``batch[i][field]`` tensors differ in shape."""
    values = [s.get(field) for s in batch]
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        return
    if len({tuple(v.shape) for v in values}) <= 1:
        return
    keys = [s.get("__key__", f"#{i}") for i, s in enumerate(batch)]
    groups = _shape_groups(values, keys)
    parts = []
    for shape, ks in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        more = f", ... ({len(ks)} samples)" if len(ks) > 3 else ""
        shown = ", ".join(repr(k) for k in ks[:3]) + more
        parts.append(f"{field} {tuple(shape)} for {shown}")
    raise MixedShapeError(
        f"cannot stack a batch of {len(batch)} samples: their {field!r} tensors differ in shape: "
        + "; ".join(parts) + ". The shard set mixes sources of different channel counts or sizes; "
        + WAYS_OUT)


def collate(batch: list) -> Any:
    """``default_collate`` with a :class:`MixedShapeError` naming keys and shapes on a mismatch.

    Works on any nesting torch's default handles; image fields of sample dicts (and their
    ``partner`` dicts) are checked first so the message names samples, not tensor indices.
    """
    if batch and isinstance(batch[0], dict):
        for field in IMAGE_KEYS:
            check_shapes(batch, field)
        if "partner" in batch[0]:
            partners = [s["partner"] for s in batch if isinstance(s.get("partner"), dict)]
            for field in IMAGE_KEYS:
                check_shapes(partners, field)
    try:
        return default_collate(batch)
    except RuntimeError as exc:  # another tensor field of unequal size: still say what to do
        if "equal size" not in str(exc) and "stack expects" not in str(exc):
            raise
        raise MixedShapeError(f"cannot stack the batch: {exc}; {WAYS_OUT}") from exc


def pad_collate(batch: list[dict], *, value: float = 0) -> dict:
    """Zero-pad each ``image`` to the batch's largest ``(C, H, W)`` (bottom/right), then collate.

    Adds ``image_size`` (``(B, 3)`` int64: each sample's true C, H, W) so a model can mask the
    padding. Other fields are collated as by :func:`collate`.
    """
    if not batch:
        return default_collate(batch)
    sizes = torch.tensor([list(s["image"].shape) for s in batch], dtype=torch.int64)
    top = sizes.max(dim=0).values.tolist()
    padded = []
    for s in batch:
        img = s["image"]
        if list(img.shape) != top:
            out = torch.full(top, value, dtype=img.dtype, device=img.device)
            out[: img.shape[0], : img.shape[1], : img.shape[2]] = img
            img = out
        padded.append(dict(s, image=img))
    result = collate(padded)
    result["image_size"] = sizes
    return result
