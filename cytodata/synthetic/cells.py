"""Cell drawing: one field of view of cells, ``(C, H, W)`` uint16 camera counts.

Cells are rotated ellipses with a nucleus; each channel renders one compartment (nuclei,
fibres, cortex, ...) from soft masks; acquisition effects and shot noise come last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .._registry import Registry
from .acquisition import Acquisition
from .phenotypes import REFERENCE_SIDE, Phenotype, pad, phenotype_for

#: compartment renderers: ``(layers: dict[str, (H, W) array], phenotype) -> (H, W) signal``
COMPARTMENTS: Registry[Callable[[dict, Phenotype], np.ndarray]] = Registry("compartment")


@COMPARTMENTS.register("nuclei")
def _nuclei(layers: dict, pheno: Phenotype) -> np.ndarray:
    return layers["nucleus"] * (0.8 + 0.4 * layers["noise_fine"])


@COMPARTMENTS.register("fibers")
def _fibers(layers: dict, pheno: Phenotype) -> np.ndarray:
    return 0.3 * layers["cell"] + 0.7 * layers["fiber"] * (0.4 + 0.6 * layers["noise_fine"])


@COMPARTMENTS.register("cortex")
def _cortex(layers: dict, pheno: Phenotype) -> np.ndarray:
    c = min(max(pheno.cortex, 0.0), 1.0)
    return c * layers["ring"] + (1 - c) * layers["cell"] * (0.4 + 0.6 * layers["noise_coarse"])


@COMPARTMENTS.register("granular")
def _granular(layers: dict, pheno: Phenotype) -> np.ndarray:
    return layers["cell"] * (0.3 + 0.7 * layers["noise_coarse"])


@COMPARTMENTS.register("nucleoli")
def _nucleoli(layers: dict, pheno: Phenotype) -> np.ndarray:
    spots = np.clip((layers["noise_fine"] - 0.6) * 3.0, 0.0, 1.0)
    return layers["nucleus"] * (0.25 + spots) + 0.1 * layers["cell"]


@COMPARTMENTS.register("puncta")
def _puncta(layers: dict, pheno: Phenotype) -> np.ndarray:
    return layers["cell"] * (0.15 + 1.5 * layers["noise_fine"] ** 4)


#: channel compartments by channel count (channel 0 is always nuclei)
DEFAULT_KINDS: dict[int, tuple[str, ...]] = {
    1: ("nuclei",),
    3: ("nuclei", "fibers", "cortex"),                                     # DAPI/Tubulin/Actin
    6: ("nuclei", "granular", "fibers", "nucleoli", "puncta", "cortex"),   # RxRx1 w1..w6
}
_CYCLE = ("fibers", "cortex", "granular", "nucleoli", "puncta")


def channel_kinds(n_channels: int) -> tuple[str, ...]:
    """Default compartment per channel for ``n_channels`` channels."""
    if n_channels in DEFAULT_KINDS:
        return DEFAULT_KINDS[n_channels]
    return ("nuclei",) + tuple(_CYCLE[i % len(_CYCLE)] for i in range(n_channels - 1))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(H, W) float32 Gaussian-filtered white noise (FFT), rescaled to [0, 1]; sigma in px."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    out = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=shape)
    lo, hi = out.min(), out.max()
    return ((out - lo) / (hi - lo + 1e-12)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.tanh(x * np.float32(0.5))
    out += 1.0
    out *= 0.5
    return out


def _splat_max(target: np.ndarray, top: np.ndarray, left: np.ndarray, values: np.ndarray) -> None:
    """``target[top + i, left + j] = max(target, values[n, i, j])`` for every window ``n``.

    Windows may hang over the edges: outside pixels are dropped (clipped indices, value 0, and
    every layer is >= 0, so the maximum is unchanged).
    """
    height, width = target.shape
    size = values.shape[1]
    offs = np.arange(size)
    rows = top[:, None, None] + offs[None, :, None]
    cols = left[:, None, None] + offs[None, None, :]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    rows, cols = np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)
    vals = np.where(inside, values, 0.0).astype(target.dtype)
    np.maximum.at(target, (np.broadcast_to(rows, vals.shape).ravel(),
                           np.broadcast_to(cols, vals.shape).ravel()), vals.ravel())


def _cell_layers(rng: np.random.Generator, shape: tuple[int, int], pheno: Phenotype,
                 chunk: int = 64) -> dict[str, np.ndarray]:
    """Soft masks (H, W) float32 in ~[0, 1.3]: cell, nucleus, fibre texture, cortical ring.

    Also ``centres``: (N, 2) float64 nucleus centres ``(x, y)`` in pixels (x = column), one per
    cell (micronuclei fragments are not cells), clipped to the field.

    Cells are rotated ellipses drawn from distance maps in one square window per cell (all
    cells of a ``chunk`` at once, shape (chunk, S, S)), splatted into the field by maximum, so
    the cost scales with the cells' area, not with cells x field.
    """
    height, width = shape
    area = height * width / REFERENCE_SIDE**2
    n = max(1, int(rng.poisson(pheno.count * area)))
    cy, cx = rng.uniform(0, height, n), rng.uniform(0, width, n)
    radius = pheno.radius * np.exp(rng.normal(0, 0.12, n))
    elong = np.maximum(1.0, pheno.elongation * np.exp(rng.normal(0, 0.08, n)))
    theta = rng.uniform(0, np.pi, n)
    bright = np.exp(rng.normal(0, 0.15, n))
    nuc_dy, nuc_dx = rng.normal(0, 0.1, (2, n)) * radius
    phase = rng.uniform(0, 2 * np.pi, n)
    # nucleus centres in pixel-index coordinates (x = column, y = row): the nucleus ellipse sits
    # at (nuc_dx, nuc_dy) in the cell's rotated frame; computed from the draws, none added
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    centres = np.stack([cx + nuc_dx * cos_t - nuc_dy * sin_t,
                        cy + nuc_dx * sin_t + nuc_dy * cos_t], axis=1)
    half = int(np.ceil((radius * np.sqrt(elong)).max())) + 4
    top, left = np.floor(cy).astype(np.int64) - half, np.floor(cx).astype(np.int64) - half
    # float32 throughout: the distance maps dominate the cost
    f32 = np.float32
    radius, elong, theta, bright, nuc_dy, nuc_dx, phase = (
        a.astype(f32) for a in (radius, elong, theta, bright, nuc_dy, nuc_dx, phase))
    freq = f32(2 * np.pi * pheno.texture_frequency)
    grid = np.arange(2 * half + 1, dtype=f32)
    layers = {k: np.zeros(shape, f32) for k in ("cell", "nucleus", "fiber", "ring")}
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        col = (slice(None), None, None)
        dy = (top[sl] - cy[sl]).astype(f32)[col] + grid[None, :, None]
        dx = (left[sl] - cx[sl]).astype(f32)[col] + grid[None, None, :]
        cos, sin = np.cos(theta[sl])[col], np.sin(theta[sl])[col]
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        r, e, b = radius[sl][col], elong[sl][col], bright[sl][col]
        se = np.sqrt(e)
        rho = np.sqrt((u / (r * se)) ** 2 + (v * se / r) ** 2)
        m = _sigmoid((1.0 - rho) * (r * f32(1.2)))              # ~1 px soft edge
        nr, en = f32(pheno.nucleus_ratio) * r, 1.0 + (e - 1.0) * f32(0.4)
        sen = np.sqrt(en)
        un, vn = u - nuc_dx[sl][col], v - nuc_dy[sl][col]
        rho_n = np.sqrt((un / (nr * sen)) ** 2 + (vn * sen / nr) ** 2)
        mn = _sigmoid((1.0 - rho_n) * (nr * f32(1.5)))
        waves = 0.5 + 0.5 * np.cos(freq * v + phase[sl][col])
        for name, vals in (("cell", m * b), ("nucleus", mn * b), ("fiber", m * b * waves),
                           ("ring", 4.0 * m * (1.0 - m) * b)):
            _splat_max(layers[name], top[sl], left[sl], vals)
    n_frag = int(rng.poisson(pheno.micronuclei * n))
    if n_frag:
        parent = rng.integers(0, n, n_frag)
        angle = rng.uniform(0, 2 * np.pi, n_frag)
        dist = radius[parent] * pheno.nucleus_ratio * rng.uniform(1.2, 2.0, n_frag)
        fy, fx = cy[parent] + dist * np.sin(angle), cx[parent] + dist * np.cos(angle)
        fh = 5
        ftop, fleft = np.floor(fy).astype(np.int64) - fh, np.floor(fx).astype(np.int64) - fh
        fgrid = np.arange(2 * fh + 1, dtype=f32)
        dy = (ftop - fy).astype(f32)[:, None, None] + fgrid[None, :, None]
        dx = (fleft - fx).astype(f32)[:, None, None] + fgrid[None, None, :]
        blobs = f32(1.2) * np.exp(-(dy**2 + dx**2) / f32(2 * 1.3**2))
        _splat_max(layers["nucleus"], ftop, fleft, blobs)
    # a nucleus centre just outside the field would not be found by segmentation: clip it in
    layers["centres"] = np.clip(centres, 0.0, [width - 1.0, height - 1.0])
    return layers


def make_cells(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    moa_params: Phenotype | str,
    *,
    kinds: Sequence[str] | None = None,
    background: float = 500.0,
    peak: float = 20000.0,
    bit_depth: int = 16,
    acquisition: Acquisition | None = None,
    return_centres: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """One field of view, ``(C, H, W)`` uint16 camera counts.

    With ``return_centres=True`` returns ``(image, centres)``: ``centres`` (N, 2) float64 are
    the true nucleus centres ``(x, y)`` in pixels, one row per cell (the same random draws, so
    the image is bit-identical either way).

    Channel 0 holds nuclei, the others cytoskeleton/cytoplasm-like compartments (``kinds``,
    names in :data:`COMPARTMENTS`; default :func:`channel_kinds`). Expected counts are
    ``background + peak * intensity_c * signal_c``, then ``* field_c * gain_c + offset_c``
    (``acquisition``), then Poisson noise, clipped to ``2**bit_depth - 1``.
    """
    n_channels, height, width = shape
    pheno = phenotype_for(moa_params) if isinstance(moa_params, str) else moa_params
    kinds = tuple(kinds) if kinds is not None else channel_kinds(n_channels)
    if len(kinds) != n_channels:
        raise ValueError(f"kinds has {len(kinds)} entries {kinds!r} for {n_channels} channels; "
                         "give one compartment name per channel")
    layers = _cell_layers(rng, (height, width), pheno)
    layers["noise_fine"] = smooth_noise(rng, (height, width), 1.0)
    layers["noise_coarse"] = smooth_noise(rng, (height, width), 1.0 / (2 * np.pi * max(
        pheno.texture_frequency, 0.02)))
    intensity = pad(pheno.intensities, n_channels)
    signal = np.stack([COMPARTMENTS.get(k)(layers, pheno) for k in kinds]).astype(np.float32)
    lam = background + peak * intensity[:, None, None].astype(np.float32) * signal
    if acquisition is not None:
        lam = (lam * acquisition.field * acquisition.gain[:, None, None].astype(np.float32)
               + acquisition.offset[:, None, None].astype(np.float32))
    counts = shot_noise(rng, lam)
    image = np.clip(counts, 0, 2**bit_depth - 1).astype(np.uint16)
    return (image, layers["centres"]) if return_centres else image


def shot_noise(rng: np.random.Generator, lam: np.ndarray, exact_below: float = 30.0) -> np.ndarray:
    """Poisson counts with mean ``lam`` (float array -> float32 of whole numbers).

    Exact Poisson draws where ``lam < exact_below``; above it the normal approximation
    ``lam + sqrt(lam) * N(0, 1)`` (3-4x faster, indistinguishable at those counts).
    """
    lam = np.maximum(lam, 0.0).astype(np.float32)
    out = np.rint(lam + np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=np.float32))
    low = lam < exact_below
    if low.any():
        out[low] = rng.poisson(lam[low])
    return np.maximum(out, 0.0)

