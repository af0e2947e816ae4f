"""Multi-crop views: batched random resized crops with the square's symmetries."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: the 8 symmetries of the square as 2x2 matrices acting on output coordinates (u, v)
_DIHEDRAL = torch.tensor([[[a, 0.0], [0.0, b]] for a in (1.0, -1.0) for b in (1.0, -1.0)]
                         + [[[0.0, a], [b, 0.0]] for a in (1.0, -1.0) for b in (1.0, -1.0)])


def resized_crops(x: torch.Tensor, size: int, scale: "tuple[float, float] | list[float]",
                  g: torch.Generator, *, flips: bool = True, rot90: bool = True,
                  ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crops of a whole batch in one ``grid_sample`` (torchvision's rule, batched).

    ``x`` ``(B, C, H, W)`` float -> ``(B, C, size, size)``: per sample an area fraction
    ``U(scale)`` of the image and a log-uniform aspect ratio in ``ratio`` (clipped to the image),
    a uniform position, and (``flips``/``rot90``) a random symmetry of the square folded into
    the same affine map, resampled bilinearly. Parameters come from ``g`` (CPU).
    """
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(float(scale[0]), float(scale[1]), generator=g) * (h * w)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    cw = torch.sqrt(area * torch.exp(log_r)).clamp(1.0, float(w))
    ch = torch.sqrt(area / torch.exp(log_r)).clamp(1.0, float(h))
    cx = cw / 2 + torch.rand(b, generator=g) * (w - cw)          # centre, pixels
    cy = ch / 2 + torch.rand(b, generator=g) * (h - ch)
    n_sym = (4 if flips else 1) * (2 if rot90 else 1)
    pick = torch.randint(0, n_sym, (b,), generator=g)
    if flips and not rot90:
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
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


#: views resampled by more than this factor (either way) from native resolution get a warning
ZOOM_TOLERANCE = 1.6
