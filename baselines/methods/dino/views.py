"""Multi-crop views: batched random resized crops with the square's symmetries, and the view
geometry (area fractions) that keeps cells at the resolution ``embed`` sees them at.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cytodata.errors import TrainingError

#: the 8 symmetries of the square as 2x2 matrices acting on output coordinates (u, v)
_DIHEDRAL = torch.tensor([[[a, 0.0], [0.0, b]] for a in (1.0, -1.0) for b in (1.0, -1.0)]
                         + [[[0.0, a], [b, 0.0]] for a in (1.0, -1.0) for b in (1.0, -1.0)])

#: views resampled by more than this factor (either way) from native resolution get a warning
ZOOM_TOLERANCE = 1.6

#: native-resolution views: area fractions ``[a / NATIVE_SPREAD, a * NATIVE_SPREAD]`` around
#: ``a = side^2 / (H * W)``, i.e. cells scaled by 0.95-1.05x (a mild scale jitter)
NATIVE_SPREAD = 1.1

#: ``view_interpolation`` values (``grid_sample`` modes; WS-DINO resizes with cv2.INTER_CUBIC)
INTERPOLATIONS = ("bilinear", "bicubic")


def crop_boxes(b: int, h: int, w: int, scale: "tuple[float, float] | list[float]",
               g: torch.Generator, ratio: "tuple[float, float] | list[float]" = (3 / 4, 4 / 3)
               ) -> tuple[torch.Tensor, ...]:
    """Per-sample crop boxes of torchvision's ``RandomResizedCrop`` rule, drawn from ``g``.

    Area ``U(scale) * H * W``, log-uniform aspect ratio in ``ratio`` (clipped to the image),
    uniform position. Returns ``(cw, ch, cx, cy)`` in source pixels (``cx, cy``: centres), each
    ``(b,)`` float.
    """
    area = torch.empty(b).uniform_(float(scale[0]), float(scale[1]), generator=g) * (h * w)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    cw = torch.sqrt(area * torch.exp(log_r)).clamp(1.0, float(w))
    ch = torch.sqrt(area / torch.exp(log_r)).clamp(1.0, float(h))
    cx = cw / 2 + torch.rand(b, generator=g) * (w - cw)
    cy = ch / 2 + torch.rand(b, generator=g) * (h - ch)
    return cw, ch, cx, cy


def resized_crops(x: torch.Tensor, size: int, scale: "tuple[float, float] | list[float]",
                  g: torch.Generator, *, flips: bool = True, rot90: bool = True,
                  ratio: "tuple[float, float] | list[float]" = (3 / 4, 4 / 3),
                  mode: str = "bilinear", vflip: bool = True) -> torch.Tensor:
    """Random resized crops of a whole batch in one ``grid_sample`` (torchvision's rule, batched).

    ``x`` ``(B, C, H, W)`` float -> ``(B, C, size, size)``: per sample a box of
    :func:`crop_boxes` and (``flips``/``rot90``) a random symmetry of the square folded into
    the same affine map, resampled with ``mode`` (bilinear or bicubic). ``flips`` with
    ``vflip=False``: horizontal flips only, p 0.5 (DINO's ``RandomHorizontalFlip``); with
    ``rot90`` the symmetries are all eight either way. Parameters come from ``g`` (CPU).
    """
    b, _, h, w = x.shape
    cw, ch, cx, cy = crop_boxes(b, h, w, scale, g, ratio)
    hflip_only = flips and not vflip and not rot90
    n_sym = 2 if hflip_only else (4 if flips else 1) * (2 if rot90 else 1)
    pick = torch.randint(0, n_sym, (b,), generator=g)
    if hflip_only:
        sym = _DIHEDRAL[pick * 2]         # (1, 1) or (-1, 1): u mirrored, v kept
    elif flips and not rot90:
        sym = _DIHEDRAL[pick]
    elif rot90 and not flips:
        sym = _DIHEDRAL[pick * 4]
    else:
        sym = _DIHEDRAL[pick]
    theta = torch.zeros(b, 2, 3)
    theta[:, :, :2] = torch.diag_embed(torch.stack([cw / w, ch / h], 1)) @ sym
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 2] = 2 * cy / h - 1
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def native_scale(side: int, h: int, w: int, what: str) -> list[float]:
    """Area fractions ``[lo, hi]`` whose ``side``-px views of ``h x w`` images keep cells at
    native resolution (zoom 1 at the centre of the range); a view that cannot fit is an error.
    """
    frac = side * side / (float(h) * float(w))
    if side > min(h, w):
        raise TrainingError(f"{what}={side} px cannot fit the {h}x{w} training images at native "
                            f"resolution; lower it to at most {min(h, w)} (or set the area "
                            "fractions explicitly, which resamples cells)")
    return [frac / NATIVE_SPREAD, min(1.0, frac * NATIVE_SPREAD)]


def cell_zoom(side: int, h: int, w: int, scale, ratio, n: int = 4096, seed: int = 0) -> float:
    """Mean output-px-per-source-px of ``side``-px views (geometric mean of the two axes)."""
    g = torch.Generator().manual_seed(seed)
    cw, ch, _, _ = crop_boxes(n, h, w, scale, g, ratio)
    return float((side / torch.sqrt(cw * ch)).mean())
