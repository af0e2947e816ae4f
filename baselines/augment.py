"""Batch augmentations on the device: ``(B, C, H, W)`` float tensors, one op per batch.

Random parameters are drawn on the CPU from a ``torch.Generator`` seeded by (seed, step, rank),
so a resumed run draws exactly what the uninterrupted run drew; the pixel work runs where the
batch lives (CUDA or CPU). Crops are gathered with one advanced-indexing op, flips and 90-degree
rotations with ``torch.where`` over per-sample masks: no Python loop over samples.
"""

from __future__ import annotations

import torch

from cytodata.loaders.partition import seed_for


def step_generator(seed: int, step: int, rank: int, salt: str = "augment") -> torch.Generator:
    """The CPU generator of one (step, rank): the same draws after a resume."""
    return torch.Generator().manual_seed(seed_for(seed, salt, step, rank) % (2**63))


def random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A ``size`` x ``size`` window per sample at a uniform random position (no resize)."""
    b, _, h, w = x.shape
    if size > h or size > w:
        raise ValueError(f"crop {size} is larger than the images ({h}x{w}); lower data.crop")
    if size == h and size == w:
        return x
    oy = torch.randint(0, h - size + 1, (b,), generator=g).to(x.device)
    ox = torch.randint(0, w - size + 1, (b,), generator=g).to(x.device)
    return crop_at(x, oy, ox, size)


def crop_at(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample windows with top-left corners ``(oy, ox)`` (``(B,)`` long), one gather."""
    ar = torch.arange(size, device=x.device)
    rows = (oy[:, None] + ar)[:, :, None]                   # (B, S, 1)
    cols = (ox[:, None] + ar)[:, None, :]                   # (B, 1, S)
    bidx = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[bidx, rows, cols].permute(0, 3, 1, 2)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centred ``size`` window (or the whole image when it is not larger)."""
    h, w = x.shape[-2:]
    if size >= h and size >= w:
        return x
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[..., top: top + size, left: left + size]


def flips_rot90(x: torch.Tensor, g: torch.Generator, *, flips: bool = True, rot90: bool = True) -> torch.Tensor:
    """Random flips and (square images) a random quarter turn ``k ~ U{0, 1, 2, 3}`` per sample.

    ``flips``: horizontal and vertical flips, each with p 0.5. ``rot90`` alone draws rotations
    only (DeepProfiler's ``tf.image.rot90`` with ``k ~ U{0..3}``, augmentations.py:37-38); with
    ``flips`` the two together reach all eight symmetries of the square.
    """
    b = x.shape[0]
    shape = (b, 1, 1, 1)
    if flips:
        m = (torch.rand(b, generator=g) < 0.5).to(x.device).view(shape)
        x = torch.where(m, x.flip(-1), x)
        m = (torch.rand(b, generator=g) < 0.5).to(x.device).view(shape)
        x = torch.where(m, x.flip(-2), x)
    if rot90 and x.shape[-1] == x.shape[-2]:
        k = torch.randint(0, 4, (b,), generator=g).to(x.device).view(shape)
        out = x
        for turn in (1, 2, 3):
            out = torch.where(k == turn, torch.rot90(x, turn, dims=(-2, -1)), out)
        x = out
    return x


def intensity_jitter(x: torch.Tensor, g: torch.Generator, gain: float, shift: float) -> torch.Tensor:
    """Per sample and channel ``x * U(1-gain, 1+gain) + U(-shift, shift)`` (normalised units)."""
    if gain <= 0 and shift <= 0:
        return x
    b, c = x.shape[:2]
    a = (1 + gain * (2 * torch.rand(b, c, 1, 1, generator=g) - 1)).to(x.device, x.dtype)
    s = (shift * (2 * torch.rand(b, c, 1, 1, generator=g) - 1)).to(x.device, x.dtype)
    return x * a + s


def rotation_angles(b: int, g: torch.Generator, degrees: float) -> torch.Tensor:
    """``(B,)`` angles in degrees, ``U(-degrees, degrees)`` (Keras ``rotation_range``)."""
    return (2 * torch.rand(b, generator=g, dtype=torch.float64) - 1) * float(degrees)


def _sample_affine(x: torch.Tensor, theta: torch.Tensor, padding: str) -> torch.Tensor:
    """Bilinear resampling of ``x`` through per-sample ``(B, 2, 3)`` affine maps (output -> input,
    in normalised coordinates, half-pixel centres as ``tf.image.resize``).
    """
    import torch.nn.functional as F

    grid = F.affine_grid(theta.to(x.device, torch.float32), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode=padding,
                         align_corners=False).to(x.dtype)


def rotate(x: torch.Tensor, g: torch.Generator, degrees: float, padding: str = "reflection"
           ) -> torch.Tensor:
    """Rotate each sample by its own angle ``U(-degrees, degrees)`` about the centre (bilinear;
    corners filled by ``padding``: ``reflection`` as Keras ``fill_mode='reflect'``, or ``zeros``).
    """
    if degrees <= 0:
        return x
    b, _, h, w = x.shape
    a = torch.deg2rad(rotation_angles(b, g, degrees))
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    # normalised coordinates scale x by w and y by h: keep the rotation rigid in pixels
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    return _sample_affine(x, theta, padding)


def scale_jitter(x: torch.Tensor, g: torch.Generator, p: float, min_fraction: float) -> torch.Tensor:
    """With probability ``p`` per sample, a random square window of side
    ``U{int(min_fraction * side), side - 1}`` resized back to the input size (bilinear), as
    DeepProfiler's ``random_crop`` (augmentations.py:43-53); the output keeps ``x``'s shape.
    """
    b, _, h, w = x.shape
    if p <= 0 or min_fraction >= 1:
        return x
    side = min(h, w)
    lo = int(side * min_fraction)
    size = torch.randint(lo, max(lo + 1, side), (b,), generator=g).double()
    apply = torch.rand(b, generator=g) < p
    size = torch.where(apply, size, torch.full_like(size, float(side)))
    sy, sx = size / h, size / w                       # window extent in normalised units (0..1]
    oy = torch.rand(b, generator=g, dtype=torch.float64) * (1 - sy)
    ox = torch.rand(b, generator=g, dtype=torch.float64) * (1 - sx)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    theta[:, 0, 2] = -1 + sx + 2 * ox                 # window centre in [-1, 1] coordinates
    theta[:, 1, 2] = -1 + sy + 2 * oy
    out = _sample_affine(x, theta, "border")
    return torch.where(apply.to(x.device).view(b, 1, 1, 1), out, x)


def brightness_contrast(x: torch.Tensor, g: torch.Generator, brightness: float, contrast: float
                        ) -> torch.Tensor:
    """Per sample and channel: ``+ U(-brightness, brightness)``, then the contrast about the
    channel's mean scaled by ``U(1 - contrast, 1 + contrast)`` (``tf.image.adjust_brightness`` and
    ``adjust_contrast`` as in DeepProfiler's ``random_illumination``, augmentations.py:8-29).
    """
    if brightness <= 0 and contrast <= 0:
        return x
    b, c = x.shape[:2]
    add = (brightness * (2 * torch.rand(b, c, 1, 1, generator=g) - 1)).to(x.device, x.dtype)
    fac = (1 + contrast * (2 * torch.rand(b, c, 1, 1, generator=g) - 1)).to(x.device, x.dtype)
    x = x + add
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (x - mean) * fac + mean


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``(B, C, H, W)`` to ``size`` x ``size`` (half-pixel centres, no
    antialias: Keras ``flow_from_dataframe(interpolation='bilinear')``).
    """
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False
                         ).to(x.dtype)


def augment_batch(x: torch.Tensor, cfg, crop: int, g: torch.Generator) -> torch.Tensor:
    """The classifier's training augmentation, in this order (each step off when its setting is):
    random crop, scale jitter, flips/rot90, arbitrary rotation, brightness/contrast, gain/shift.
    """
    x = random_crop(x, min(crop, x.shape[-2], x.shape[-1]), g)
    x = scale_jitter(x, g, cfg.scale_p, cfg.scale_min)
    x = flips_rot90(x, g, flips=cfg.flips, rot90=cfg.rot90)
    x = rotate(x, g, cfg.rotate)
    x = brightness_contrast(x, g, cfg.brightness, cfg.contrast)
    return intensity_jitter(x, g, cfg.intensity, cfg.shift)
