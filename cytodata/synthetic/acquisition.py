"""Microscope effects of one plate: per-channel gain and offset, illumination vignette.

The hard screen adds per-plate focus blur and a background gradient (:class:`Plate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

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



@dataclass(frozen=True)
class Plate:
    """Acquisition of one plate in the hard screen.

    The easy screen's gain, offset and vignette plus ``blur`` (focus blur, px sd) and a
    background ``gradient`` (relative ramp across the field, direction ``angle`` in radians).
    """

    acquisition: Acquisition
    blur: float
    gradient: float
    angle: float


def hard_plates(config: SyntheticScreen, layout: int, n_channels: int, n_batches: int,
                n_plates: int, shape: tuple[int, int], background: float) -> dict:
    """:class:`Plate` per (batch, plate): :func:`acquisitions` plus focus blur ``U(0,
    focus_blur)`` and a background gradient ``background_gradient * U(0.5, 1)`` per plate.
    """
    acq = acquisitions(config, layout, n_channels, n_batches, n_plates, shape, background)
    out = {}
    for (b, p), a in acq.items():
        rng = screen_rng(config, layout, 999_997, b, p)
        out[b, p] = Plate(acquisition=a, blur=float(rng.uniform(0, config.focus_blur)),
                          gradient=float(config.background_gradient * rng.uniform(0.5, 1.0)),
                          angle=float(rng.uniform(0, 2 * np.pi)))
    return out


def plates_table(plates: dict, names: dict) -> pd.DataFrame:
    """Ground-truth rows of :func:`hard_plates` (``names``: (batch, plate) -> (batch, plate
    names)): batch, plate, blur, gradient, gradient_angle, gain_<c>, offset_<c>.
    """
    rows = []
    for key, pl in plates.items():
        row = {"batch": names[key][0], "plate": names[key][1], "blur": pl.blur,
               "gradient": pl.gradient, "gradient_angle": pl.angle}
        row.update({f"gain_{c}": float(g) for c, g in enumerate(pl.acquisition.gain)})
        row.update({f"offset_{c}": float(o) for c, o in enumerate(pl.acquisition.offset)})
        rows.append(row)
    return pd.DataFrame(rows)
