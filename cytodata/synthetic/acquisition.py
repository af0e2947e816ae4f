"""Microscope effects of one plate: per-channel gain and offset, illumination vignette."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SyntheticScreen, screen_rng


@dataclass(frozen=True)
class Acquisition:
    """Per-channel microscope effects of one plate.

    ``gain`` (C,) multiplicative, ``offset`` (C,) additive in grey levels, and a smooth
    multiplicative illumination ``field`` (C, H, W) (1 at its brightest).
    """

    gain: np.ndarray
    offset: np.ndarray
    field: np.ndarray


def vignette(rng: np.random.Generator, shape: tuple[int, int, int], strength: float) -> np.ndarray:
    """(C, H, W) float32 radial fall-off ``1 - strength * r^2``, centre jittered per channel."""
    n_channels, height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy = height / 2 * (1 + rng.uniform(-0.2, 0.2, n_channels))
    cx = width / 2 * (1 + rng.uniform(-0.2, 0.2, n_channels))
    amp = strength * rng.uniform(0.7, 1.3, n_channels)
    dist2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
    r2 = dist2 / (height**2 + width**2) * 4   # 1 at the corners of a centred field
    return np.clip(1.0 - amp[:, None, None] * r2 / 2, 0.2, 1.0).astype(np.float32)


def batch_gains(rng: np.random.Generator, n_batches: int, n_channels: int,
                strength: float) -> np.ndarray:
    """Return (B, C) multiplicative batch gains ``exp(strength * z)``.

    z is evenly spread in [-1, 1] and shuffled per channel, so the brightest and dimmest batch
    of every channel differ by ``exp(2 * strength)``.
    """
    z = np.linspace(-1.0, 1.0, n_batches) if n_batches > 1 else np.zeros(1)
    return np.exp(strength * np.stack([rng.permutation(z) for _ in range(n_channels)], axis=1))



def acquisitions(config: SyntheticScreen, layout: int, n_channels: int, n_batches: int,
                  n_plates: int, shape: tuple[int, int], background: float):
    """Acquisition per (batch, plate): batch gain x plate jitter, batch offset, plate vignette."""
    rng = screen_rng(config, layout, 999_999)
    gains = batch_gains(rng, n_batches, n_channels, config.batch_effect)
    offsets = rng.uniform(0, 1, (n_batches, n_channels)) * config.offset_effect * background / 500.0
    out = {}
    for b in range(n_batches):
        for p in range(n_plates):
            prng = screen_rng(config, layout, 999_998, b, p)
            jitter = np.exp(prng.normal(0, config.plate_effect, n_channels))
            out[b, p] = Acquisition(gain=gains[b] * jitter, offset=offsets[b],
                                    field=vignette(prng, (n_channels, *shape), config.illumination))
    return out

