"""Baseline image features: hand-made intensity/texture statistics and random timm embeddings.

Both take (C, H, W) images of any numeric dtype and return float32 vectors, so a demo can
compare "pixels statistics" against a randomly initialized CNN without downloading weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ..errors import EvaluationError

PERCENTILES: tuple[float, ...] = (1, 5, 25, 50, 75, 95, 99)
#: per channel: mean, std, 7 percentiles, gradient energy, 4 co-occurrence statistics
N_PER_CHANNEL = 2 + len(PERCENTILES) + 1 + 4


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or min(arr.shape) == 0:
        raise EvaluationError(f"expected a (C, H, W) image, got shape {arr.shape}")
    return arr.astype(np.float64)


def _downsample(plane: np.ndarray, size: int) -> np.ndarray:
    """Block-mean downsample so the longer side is at most ``size`` pixels."""
    f = max(1, int(np.ceil(max(plane.shape) / size)))
    h, w = (plane.shape[0] // f) * f, (plane.shape[1] // f) * f
    if f == 1 or h == 0 or w == 0:
        return plane
    return plane[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _cooccurrence(q: np.ndarray, levels: int) -> np.ndarray:
    """Haralick-lite: contrast, homogeneity, energy, correlation of a plane.

    From the horizontal+vertical grey-level co-occurrence matrix of a plane quantized to
    ``levels`` grey levels.
    """
    pairs = [(q[:, :-1], q[:, 1:]), (q[:-1, :], q[1:, :])]
    glcm = np.zeros((levels, levels))
    for a, b in pairs:
        np.add.at(glcm, (a.ravel(), b.ravel()), 1)
    glcm = glcm + glcm.T
    total = glcm.sum()
    if total == 0:
        return np.zeros(4)
    p = glcm / total
    i, j = np.indices(p.shape)
    contrast = (p * (i - j) ** 2).sum()
    homogeneity = (p / (1 + np.abs(i - j))).sum()
    energy = (p ** 2).sum()
    mu = (p * i).sum()
    var = (p * (i - mu) ** 2).sum()
    corr = ((p * (i - mu) * (j - mu)).sum() / var) if var > 0 else 0.0
    return np.array([contrast, homogeneity, energy, corr])


def intensity_texture_features(image: np.ndarray, *, size: int = 128, levels: int = 16
                               ) -> np.ndarray:
    """(C * 14,) float32 features of a (C, H, W) image, channel by channel.

    Per channel: mean, std, percentiles 1/5/25/50/75/95/99 (raw intensity units), mean
    squared gradient of the ``size``-px downsampled plane scaled to [0, 1], and co-occurrence
    contrast/homogeneity/energy/correlation at ``levels`` grey levels.
    """
    arr = _check_image(image)
    out = []
    for plane in arr:
        stats = [plane.mean(), plane.std(), *np.percentile(plane, PERCENTILES)]
        small = _downsample(plane, size)
        lo, hi = small.min(), small.max()
        scaled = (small - lo) / (hi - lo) if hi > lo else np.zeros_like(small)
        gy, gx = np.gradient(scaled) if min(scaled.shape) > 1 else (scaled * 0, scaled * 0)
        q = np.minimum((scaled * levels).astype(np.int64), levels - 1)
        out.append(np.concatenate([stats, [(gx ** 2 + gy ** 2).mean()],
                                   _cooccurrence(q, levels)]))
    return np.concatenate(out).astype(np.float32)


def _batches(images: Iterable[np.ndarray], batch_size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for img in images:
        batch.append(_check_image(img))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prepare(batch: list[np.ndarray], size: int):
    """Per-image, per-channel min-max scaling to [0, 1], then bilinear resize to size x size."""
    import torch
    import torch.nn.functional as F

    shapes = {img.shape[0] for img in batch}
    if len(shapes) != 1:
        raise EvaluationError(f"images in a batch have different channel counts {sorted(shapes)}")
    tensors = []
    for img in batch:
        lo = img.min(axis=(1, 2), keepdims=True)
        hi = img.max(axis=(1, 2), keepdims=True)
        scaled = np.where(hi > lo, (img - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
        t = torch.from_numpy(scaled.astype(np.float32))[None]
        tensors.append(F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(tensors)


def timm_embeddings(images: Iterable[np.ndarray], model_name: str = "resnet18",
                    pretrained: bool = False, device: str = "cpu", batch_size: int = 32,
                    size: int = 128, seed: int = 0) -> np.ndarray:
    """(N, D) float32 pooled features of a timm backbone (num_classes=0, in_chans=C).

    The backbone is randomly initialized (seeded) unless ``pretrained``; ``size`` is the input
    side (128 or 224). The channel count is taken from the first image.
    """
    import timm
    import torch

    model = None
    chunks = []
    for batch in _batches(images, batch_size):
        if model is None:
            torch.manual_seed(seed)
            model = timm.create_model(model_name, pretrained=pretrained, num_classes=0,
                                      in_chans=batch[0].shape[0]).to(device).eval()
        with torch.no_grad():
            chunks.append(model(_prepare(batch, size).to(device)).float().cpu().numpy())
    if model is None:
        raise EvaluationError("timm_embeddings got no images")
    return np.concatenate(chunks).astype(np.float32)
