"""DINO's per-view photometric augmentations, batched, for multi-channel microscopy views.

facebookresearch/dino (M = ``main_dino.py``, U = ``utils.py``) follows each view's random
resized crop and horizontal flip with colour jitter (p 0.8: brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1, M:423-426), random grayscale (p 0.2, M:427), Gaussian blur (p 1.0 on
global view 1, 0.1 on global view 2, 0.5 on local views, M:438, M:445, M:454; std U(0.1, 2.0)
px, U:36-54) and solarisation (p 0.2, global view 2 only, M:446, U:57-68). torchvision and PIL
run them on RGB images in [0, 1] (0..255). Here a view's channels are stains in the units the
loader normalised them to, so every op runs on each channel scaled to [0, 1] by the view's own
minimum and maximum (the range the ops assume) and the result is mapped back to the view's
units. Per-channel affine normalisations (plate, controls) therefore commute with these ops.

- brightness: ``y * f``, ``f ~ U(1 - b, 1 + b)``, one ``f`` per view for all its channels
  (``ColorJitter`` draws one factor per image), clipped to [0, 1] as torchvision and PIL clip;
- contrast: ``f * y + (1 - f) * mean(y)``, ``f ~ U(1 - c, 1 + c)``, each channel about its own
  mean (torchvision blends toward the image's luma mean; for one channel that is its mean),
  clipped to [0, 1]; brightness and contrast in a random order per view (``ColorJitter``'s
  ``randperm``; the clipping makes the order matter);
- blur: a Gaussian of std ``sigma ~ U(lo, hi)`` px (PIL's ``GaussianBlur`` radius is the
  std), truncated at 3 std of ``hi``, edges replicated (PIL extends the edge pixels);
- solarisation: ``y >= 0.5`` becomes ``1 - y`` (PIL's ``ImageOps.solarize`` inverts 128..255
  of 0..255).

Saturation, hue and grayscale are RGB operations (blends toward the ITU-R 601 luma
``0.299 R + 0.587 G + 0.114 B``, rotations of the HSV hue): on stains they would mix one
stain's signal into another's by weights that mean nothing for fluorescence, so they are
not applied (for a one-channel image torchvision's saturation, hue and grayscale are the
identity).

Each op draws its parameters from the step's generator only when its probability is above
zero, so a pipeline without photometric ops (``ws-dino``: flips only) draws exactly what it
drew before they existed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: view kinds, the index into the per-kind probabilities: DINO's three transform pipelines
GLOBAL_1, GLOBAL_2, LOCAL = 0, 1, 2
#: PIL's ImageOps.solarize threshold 128 of 0..255, as a fraction of the scaled range
SOLARIZE_THRESHOLD = 0.5


def _per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(like.device).view(-1, *([1] * (like.dim() - 1)))


def color_jitter(y: torch.Tensor, g: torch.Generator, p: float, brightness: float,
                 contrast: float) -> torch.Tensor:
    """``ColorJitter(brightness, contrast)`` applied to each view with probability ``p``.

    ``y`` ``(B, C, H, W)`` in [0, 1] per channel -> same shape, in [0, 1].
    """
    b = y.shape[0]
    apply = torch.rand(b, generator=g) < p
    fb = torch.empty(b).uniform_(max(0.0, 1 - brightness), 1 + brightness, generator=g)
    fc = torch.empty(b).uniform_(max(0.0, 1 - contrast), 1 + contrast, generator=g)
    brightness_first = torch.rand(b, generator=g) < 0.5
    fb, fc = (_per_sample(f, y).to(y.dtype) for f in (fb, fc))

    def bright(z):
        return (z * fb).clamp(0.0, 1.0)

    def contr(z):
        return (fc * z + (1 - fc) * z.mean(dim=(-2, -1), keepdim=True)).clamp(0.0, 1.0)

    first = _per_sample(brightness_first, y)
    once = torch.where(first, bright(y), contr(y))
    twice = torch.where(first, contr(once), bright(once))
    return torch.where(_per_sample(apply, y), twice, y)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels ``(n, 2 radius + 1)`` of std ``sigma`` ``(n,)`` px."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t[None, :] / sigma.double()[:, None]) ** 2)
    return (k / k.sum(dim=1, keepdim=True)).float()


def gaussian_blur(y: torch.Tensor, g: torch.Generator, p: float,
                  sigma: "tuple[float, float] | list[float]") -> torch.Tensor:
    """``utils.GaussianBlur(p, radius_min, radius_max)``: each view blurred with probability
    ``p`` by a Gaussian of std ``U(sigma)`` px (separable, edges replicated).
    """
    b, c, h, w = y.shape
    apply = torch.rand(b, generator=g) < p
    stds = torch.empty(b).uniform_(float(sigma[0]), float(sigma[1]), generator=g)
    idx = apply.nonzero().flatten()
    if len(idx) == 0:
        return y
    n = len(idx)
    radius = max(1, math.ceil(3 * float(sigma[1])))
    k = gaussian_kernels(stds[idx], radius).to(y.device, y.dtype).repeat_interleave(c, dim=0)
    z = y[idx.to(y.device)].reshape(1, n * c, h, w)
    z = F.conv2d(F.pad(z, (radius, radius, 0, 0), mode="replicate"),
                 k.view(n * c, 1, 1, -1), groups=n * c)
    z = F.conv2d(F.pad(z, (0, 0, radius, radius), mode="replicate"),
                 k.view(n * c, 1, -1, 1), groups=n * c)
    out = y.clone()
    out[idx.to(y.device)] = z.view(n, c, h, w)
    return out


def solarize(y: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """``utils.Solarization(p)``: with probability ``p`` per view, values at or above
    :data:`SOLARIZE_THRESHOLD` of the [0, 1] range become ``1 - y``.
    """
    apply = torch.rand(y.shape[0], generator=g) < p
    flipped = torch.where(y >= SOLARIZE_THRESHOLD, 1.0 - y, y)
    return torch.where(_per_sample(apply, y), flipped, y)


def photometric(x: torch.Tensor, g: torch.Generator, cfg, kind: int) -> torch.Tensor:
    """DINO's photometric ops of view ``kind`` (:data:`GLOBAL_1`, :data:`GLOBAL_2`,
    :data:`LOCAL`) on a batch of views ``x`` ``(B, C, H, W)`` float, in ``x``'s units.

    ``cfg``: a :class:`~cytodata.baselines.methods.dino.config.PhotometricConfig`. Views no op
    touched are returned bit for bit; with every probability 0 nothing is drawn from ``g``.
    """
    jitter = cfg.jitter_p > 0 and (cfg.brightness > 0 or cfg.contrast > 0)
    p_blur, p_sol = float(cfg.blur_p[kind]), float(cfg.solarize_p[kind])
    if not (jitter or p_blur > 0 or p_sol > 0):
        return x
    lo = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    span = torch.where(span > 0, span, torch.ones_like(span))   # a flat channel stays flat
    y0 = (x - lo) / span
    y = y0
    if jitter:
        y = color_jitter(y, g, cfg.jitter_p, cfg.brightness, cfg.contrast)
    if p_blur > 0:
        y = gaussian_blur(y, g, p_blur, cfg.blur_sigma)
    if p_sol > 0:
        y = solarize(y, g, p_sol)
    touched = (y != y0).flatten(1).any(dim=1)
    return torch.where(_per_sample(touched, x), y * span + lo, x)
