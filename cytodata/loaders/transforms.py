"""Seeded augmentations on ``(C, H, W)`` torch tensors of any channel count, CPU or CUDA.

Every transform takes and returns the sample dict (``image``; after :class:`MultiCrop` a list
``views``). Randomness comes from a ``torch.Generator`` seeded by the sample's ``__seed__``
(the loaders derive it from ``(seed, epoch, key, position)``), so an augmented epoch is
reproducible on any machine and worker layout. Inside :class:`Compose` all steps share one
generator; a lone transform seeds its own from ``__seed__`` and its class name. Random
parameters are drawn on the CPU (a few scalars), the pixel work runs where the tensor lives.
Geometric ops that only move pixels (flips, rot90, crops, channel selection) keep the dtype
(uint16 included); interpolating ones (rotation, resized crops) and normalization need float
input: put :class:`ToFloat` first.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ShardError
from .partition import seed_for

RNG = "__rng__"


def generator(sample: dict, salt: str = "") -> torch.Generator:
    """The sample's generator (shared inside Compose) or a fresh one from ``__seed__`` + ``salt``."""
    g = sample.get(RNG)
    if g is None:
        g = torch.Generator().manual_seed(seed_for(sample.get("__seed__", 0), salt))
    return g


def uniform(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    """A float in ``[low, high)`` from ``g``."""
    return low + (high - low) * float(torch.rand((), generator=g))


def randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def map_images(sample: dict, fn: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """Apply ``fn`` to every view when the sample has ``views``, else to ``image``."""
    out = dict(sample)
    if "views" in out:
        out["views"] = [fn(v) for v in out["views"]]
    else:
        out["image"] = fn(out["image"])
    return out


def _need_float(x: torch.Tensor, who: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{who} needs a float tensor, got {x.dtype}; put ToFloat() before it")


class Compose:
    """Run transforms in order with one generator seeded from the sample's ``__seed__``."""

    def __init__(self, transforms: Sequence[Callable[[dict], dict]]):
        self.transforms = list(transforms)

    def __call__(self, sample: dict) -> dict:
        sample = dict(sample)
        sample[RNG] = torch.Generator().manual_seed(seed_for(sample.get("__seed__", 0), "compose"))
        for t in self.transforms:
            sample = t(sample)
        sample.pop(RNG, None)
        return sample


class ToFloat:
    """Integer pixels -> float32; ``scale`` divides (e.g. 65535.0 maps uint16 to [0, 1])."""

    def __init__(self, scale: float | None = None):
        self.scale = scale

    def __call__(self, sample: dict) -> dict:
        def fn(x):
            x = x.to(torch.float32)
            return x / self.scale if self.scale else x
        return map_images(sample, fn)


class RandomFlip:
    """Horizontal and (if ``vertical``) vertical flips, each with probability ``p``."""

    def __init__(self, p: float = 0.5, vertical: bool = True):
        self.p, self.vertical = p, vertical

    def __call__(self, sample: dict) -> dict:
        g = generator(sample, "flip")

        def fn(x):
            dims = [d for d, on in ((-1, True), (-2, self.vertical)) if on and uniform(g) < self.p]
            return x.flip(dims) if dims else x
        return map_images(sample, fn)


class RandomRot90:
    """Rotation by a uniform multiple of 90 degrees (exact: no interpolation)."""

    def __call__(self, sample: dict) -> dict:
        g = generator(sample, "rot90")
        return map_images(sample, lambda x: torch.rot90(x, randint(g, 0, 3), dims=(-2, -1)))


class RandomRotation:
    """Free rotation by a uniform angle in ``[-degrees, degrees]`` (bilinear, ``fill`` outside)."""

    def __init__(self, degrees: float = 180.0, fill: float = 0.0):
        self.degrees, self.fill = degrees, fill

    def __call__(self, sample: dict) -> dict:
        g = generator(sample, "rotation")

        def fn(x):
            _need_float(x, "RandomRotation")
            a = math.radians(uniform(g, -self.degrees, self.degrees))
            theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                                 dtype=x.dtype, device=x.device)[None]
            grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
            shifted = x[None] - self.fill
            out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            return out[0] + self.fill
        return map_images(sample, fn)


class RandomCrop:
    """A ``size x size`` window at a uniform position (any dtype; images smaller than size raise)."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, sample: dict) -> dict:
        g = generator(sample, "crop")

        def fn(x):
            h, w = x.shape[-2:]
            if h < self.size or w < self.size:
                raise ShardError(f"sample {sample.get('__key__')!r} is {h}x{w}, smaller than the {self.size} crop")
            y, xx = randint(g, 0, h - self.size), randint(g, 0, w - self.size)
            return x[..., y: y + self.size, xx: xx + self.size]
        return map_images(sample, fn)


def resized_crop_box(g: torch.Generator, h: int, w: int, scale: tuple[float, float],
                     ratio: tuple[float, float], tries: int = 10) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an area fraction in ``scale`` with aspect in ``ratio``."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(tries):
        target = area * uniform(g, *scale)
        aspect = math.exp(uniform(g, *log_r))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return randint(g, 0, h - ch), randint(g, 0, w - cw), ch, cw
    side = min(h, w)  # fallback: central square
    return (h - side) // 2, (w - side) // 2, side, side


class RandomResizedCrop:
    """Crop a random area/aspect and resize to ``size x size`` (bilinear, antialiased)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)

    def crop(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        _need_float(x, "RandomResizedCrop")
        top, left, ch, cw = resized_crop_box(g, x.shape[-2], x.shape[-1], self.scale, self.ratio)
        patch = x[..., top: top + ch, left: left + cw]
        return F.interpolate(patch[None], size=(self.size, self.size), mode="bilinear",
                             align_corners=False, antialias=True)[0]

    def __call__(self, sample: dict) -> dict:
        g = generator(sample, "rrc")
        return map_images(sample, lambda x: self.crop(x, g))


class MultiCrop:
    """DINO multi-crop: ``n_global`` large + ``n_local`` small resized crops in ``views``.

    Scales are area fractions of the image (DINO: global (0.4, 1.0), local (0.05, 0.4));
    ``view_transform`` (e.g. flips, erasing) then runs on each view with the same generator.
    The original ``image`` is removed (views are what the model sees).
    """

    def __init__(self, global_size: int = 224, local_size: int = 96, n_global: int = 2, n_local: int = 6,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4),
                 view_transform: Callable[[dict], dict] | None = None):
        self.globals = RandomResizedCrop(global_size, global_scale)
        self.locals = RandomResizedCrop(local_size, local_scale)
        self.n_global, self.n_local, self.view_transform = n_global, n_local, view_transform

    def __call__(self, sample: dict) -> dict:
        g = generator(sample, "multicrop")
        x = sample["image"]
        views = [self.globals.crop(x, g) for _ in range(self.n_global)]
        views += [self.locals.crop(x, g) for _ in range(self.n_local)]
        out = {k: v for k, v in sample.items() if k != "image"}
        out["views"] = views
        if self.view_transform is not None:
            out[RNG] = g
            out = self.view_transform(out)
            if RNG not in sample:
                out.pop(RNG, None)
        return out


class PlateNormalize:
    """``(x - mean) / std`` per channel with the statistics of the sample's plate (``meta["plate"]``).

    ``stats``: a shards.json dict, its ``normalization`` section, or ``{plate: {"mean", "std"}}``.
    Plates without statistics use ``fallback`` (the ``"all"`` entry by default); with
    ``fallback=None`` they raise. Needs float input. Means/stds are in raw stored intensities,
    so apply it before any scaling (``ToFloat()`` without ``scale``).
    """

    def __init__(self, stats: dict, level: str = "plate", fallback: str | None = "all", eps: float = 1e-6):
        norm = stats.get("normalization", stats)
        self.table = norm[level] if level in norm else norm
        if fallback == "all":
            self.fallback = (norm.get("all") or {}).get("all")
        else:
            self.fallback = self.table.get(fallback) if fallback else None
        self.level, self.eps = level, eps
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats(self, group, device, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.table.get(group) or self.fallback
        if entry is None:
            raise ShardError(f"PlateNormalize: no {self.level} statistics for {group!r} and no fallback; "
                             f"known: {sorted(self.table)[:10]}")
        if len(entry["mean"]) != n:
            raise ShardError(f"PlateNormalize: {self.level} {group!r} has {len(entry['mean'])} channel "
                             f"statistics, the image has {n} channels (normalize before channel selection)")
        key = (group, str(device))
        if key not in self._cache:
            mean = torch.tensor(entry["mean"], dtype=torch.float32, device=device)[:, None, None]
            std = torch.tensor(entry["std"], dtype=torch.float32, device=device)[:, None, None]
            self._cache[key] = (mean, std.clamp_min(self.eps))
        return self._cache[key]

    def __call__(self, sample: dict) -> dict:
        group = (sample.get("meta") or {}).get(self.level)

        def fn(x):
            _need_float(x, "PlateNormalize")
            mean, std = self._stats(group, x.device, x.shape[-3])
            return (x - mean) / std
        return map_images(sample, fn)


class RandomErasing:
    """With probability ``p`` set a random rectangle (area in ``scale``, aspect in ``ratio``) to ``value``."""

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0):
        self.p, self.scale, self.ratio, self.value = p, scale, ratio, value

    def __call__(self, sample: dict) -> dict:
        g = generator(sample, "erase")

        def fn(x):
            if uniform(g) >= self.p:
                return x
            top, left, h, w = resized_crop_box(g, x.shape[-2], x.shape[-1], self.scale, self.ratio)
            x = x.clone()
            x[..., top: top + h, left: left + w] = self.value
            return x
        return map_images(sample, fn)


class ChannelSubset:
    """Keep channels by position (``[0, 2, 4]``); order as given."""

    def __init__(self, channels: Sequence[int]):
        self.channels = list(channels)

    def __call__(self, sample: dict) -> dict:
        return map_images(sample, lambda x: x[..., self.channels, :, :])


class ChannelDropout:
    """Set each channel to ``value`` with probability ``p``, always keeping ``min_keep`` channels."""

    def __init__(self, p: float = 0.2, min_keep: int = 1, value: float = 0.0):
        self.p, self.min_keep, self.value = p, min_keep, value

    def __call__(self, sample: dict) -> dict:
        g = generator(sample, "chdrop")

        def fn(x):
            c = x.shape[-3]
            drop = torch.rand(c, generator=g) < self.p
            keep_needed = self.min_keep - int((~drop).sum())
            if keep_needed > 0:  # revive random dropped channels
                dropped = torch.nonzero(drop).flatten()
                revive = dropped[torch.randperm(len(dropped), generator=g)[:keep_needed]]
                drop[revive] = False
            if not drop.any():
                return x
            x = x.clone()
            x[..., drop.to(x.device), :, :] = self.value
            return x
        return map_images(sample, fn)
