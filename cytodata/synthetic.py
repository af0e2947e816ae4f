"""Embedded synthetic screens with known ground truth, written in the real published layouts.

Why: the demo and many tests need full pipelines on real *file layouts* (BBBC021 per-channel
16-bit TIFFs + its two CSVs, RxRx1 ``metadata.csv`` + 8-bit PNGs, folder-per-class images)
with pixels whose biology is known: every mechanism of action (MOA) has its own cell
morphology, controls (DMSO) the neutral one, and every batch/plate its own intensity gain,
offset and illumination vignette, so batch correction and NSC/NSCB have something to find.

Everything is a pure function of a :class:`SyntheticScreen` config and its ``seed``: files are
byte-identical for the same seed (no timestamps or software tags are written).

Entry points: :func:`make_cells` (one field, ``(C, H, W)`` uint16), :func:`write_bbbc021_layout`,
:func:`write_rxrx1_layout`, :func:`write_folder_layout` (each returns its paths and the ground
truth as a DataFrame) and :func:`write_demo_sources` (all three, plus two broken BBBC021 files
for the ledger). A 1024 x 1280 three-channel field renders in well under a second.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ._registry import Registry
from .errors import RecipeError

# --------------------------------------------------------------------------------------------
# phenotypes: what a treatment does to cells
# --------------------------------------------------------------------------------------------

#: image side (px) the phenotype ``count`` refers to; counts scale with the field area
REFERENCE_SIDE = 128


@dataclass(frozen=True)
class Phenotype:
    """Cell morphology of one treatment; lengths in pixels, intensities relative to ``peak``.

    ``intensities[c]`` is the brightness of channel ``c`` (channel 0 = nuclei); missing entries
    repeat the last one. ``texture_frequency`` is the cytoskeleton fibre frequency (cycles/px),
    ``micronuclei`` the mean number of nuclear fragments per cell, ``cortex`` the share of the
    actin-like signal at the cell border (rest: diffuse/fibrous).
    """

    count: float = 12.0          # mean cells per 128 x 128 px field
    radius: float = 11.0         # geometric-mean cell semi-axis (px)
    elongation: float = 1.7      # major/minor axis ratio of the cell (>= 1)
    nucleus_ratio: float = 0.45  # nucleus radius / cell radius
    intensities: tuple[float, ...] = (0.5, 0.35, 0.35)
    texture_frequency: float = 0.22
    micronuclei: float = 0.0
    cortex: float = 0.4

    def blend(self, other: "Phenotype", t: float) -> "Phenotype":
        """Linear interpolation ``(1 - t) * self + t * other`` of every field (dose response)."""
        n = max(len(self.intensities), len(other.intensities))
        a, b = _pad(self.intensities, n), _pad(other.intensities, n)
        mixed = {f.name: (1 - t) * getattr(self, f.name) + t * getattr(other, f.name)
                 for f in dataclasses.fields(self) if f.name != "intensities"}
        return Phenotype(**mixed, intensities=tuple((1 - t) * a + t * b))

    def jitter(self, rng: np.random.Generator, scale: float) -> "Phenotype":
        """Return a nearby phenotype (fields times ``exp(N(0, scale))``): one MOA's compounds."""
        vals = {f.name: getattr(self, f.name) * float(np.exp(rng.normal(0, scale)))
                for f in dataclasses.fields(self) if f.name != "intensities"}
        vals["elongation"] = max(1.0, vals["elongation"])
        ints = tuple(float(v * np.exp(rng.normal(0, scale))) for v in self.intensities)
        return Phenotype(**vals, intensities=ints)


def _pad(values: Sequence[float], n: int) -> np.ndarray:
    values = list(values) or [1.0]
    return np.asarray(values + [values[-1]] * (n - len(values)), dtype=np.float64)[:n]


#: known phenotypes (BBBC021 MOA names, controls, RxRx1 cell types, folder classes)
PHENOTYPES: dict[str, Phenotype] = {
    "DMSO": Phenotype(),
    # cytochalasin-like: shrunken round cells, bright collapsed actin at the cortex
    "Actin disruptors": Phenotype(count=12, radius=8.0, elongation=1.1, nucleus_ratio=0.55,
                                  intensities=(0.5, 0.3, 0.95), cortex=0.95),
    # nocodazole-like: mitotic arrest, round cells, condensed bright DNA, diffuse tubulin
    "Microtubule destabilizers": Phenotype(count=16, radius=8.5, elongation=1.0,
                                           nucleus_ratio=0.35, intensities=(0.95, 0.2, 0.4),
                                           texture_frequency=0.06),
    # taxol-like: bundled, bright, fine microtubules
    "Microtubule stabilizers": Phenotype(count=12, radius=11.0, elongation=2.3,
                                         intensities=(0.55, 0.8, 0.3), texture_frequency=0.45),
    # large flat cells with nuclear fragments
    "DNA damage": Phenotype(count=7, radius=15.0, elongation=1.4, nucleus_ratio=0.55,
                            intensities=(0.65, 0.35, 0.3), micronuclei=2.0),
    # fewer, smaller, dimmer cells
    "Protein synthesis": Phenotype(count=20, radius=7.5, elongation=1.5, nucleus_ratio=0.5,
                                   intensities=(0.35, 0.15, 0.15), texture_frequency=0.3),
    # polyploid giants
    "Aurora kinase inhibitors": Phenotype(count=5, radius=17.0, elongation=1.2,
                                          nucleus_ratio=0.6, intensities=(0.8, 0.4, 0.45),
                                          micronuclei=0.6),
    # folder-layout phenotype classes
    "interphase": Phenotype(),
    "mitotic": Phenotype(count=12, radius=7.0, elongation=1.0, nucleus_ratio=0.55,
                         intensities=(1.0, 0.3, 0.3)),
    "apoptotic": Phenotype(count=12, radius=6.0, elongation=1.1, nucleus_ratio=0.4,
                           intensities=(0.6, 0.2, 0.2), micronuclei=3.5),
    # RxRx1 cell-type baselines (6 channels)
    "HEPG2": Phenotype(count=18, radius=8.0, elongation=1.3,
                       intensities=(0.55, 0.4, 0.35, 0.4, 0.45, 0.3)),
    "HUVEC": Phenotype(count=10, radius=12.0, elongation=2.4,
                       intensities=(0.5, 0.35, 0.4, 0.35, 0.4, 0.35)),
    "RPE": Phenotype(count=12, radius=11.0, elongation=1.6,
                     intensities=(0.5, 0.45, 0.3, 0.45, 0.35, 0.3)),
    "U2OS": Phenotype(count=9, radius=13.0, elongation=1.9,
                      intensities=(0.45, 0.35, 0.45, 0.3, 0.5, 0.4)),
}


def phenotype_for(name: str) -> Phenotype:
    """Return the phenotype of ``name``: a known one, else one drawn from the name.

    Unknown names (MOAs, siRNAs) get a phenotype seeded by the CRC32 of the name, so the same
    name always looks the same, in every run and every layout.
    """
    if name in PHENOTYPES:
        return PHENOTYPES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
    return Phenotype(
        count=float(rng.uniform(5, 20)), radius=float(rng.uniform(7, 16)),
        elongation=float(rng.uniform(1.0, 2.5)), nucleus_ratio=float(rng.uniform(0.35, 0.6)),
        intensities=tuple(float(v) for v in rng.uniform(0.15, 0.9, size=6)),
        texture_frequency=float(rng.uniform(0.06, 0.45)),
        micronuclei=float(rng.choice([0.0, 0.0, rng.uniform(0.5, 2.5)])),
        cortex=float(rng.uniform(0.1, 0.95)),
    )


# --------------------------------------------------------------------------------------------
# acquisition: batch/plate gain and offset, illumination vignette
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

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
    intensity = _pad(pheno.intensities, n_channels)
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


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------

DEFAULT_MOAS: tuple[str, ...] = (
    "Actin disruptors", "Microtubule destabilizers", "DNA damage", "Protein synthesis",
    "Aurora kinase inhibitors",
)


@dataclass(frozen=True)
class SyntheticScreen:
    """What to generate. Defaults write the whole demo (all three layouts) in a few seconds.

    BBBC021 layout: ``n_batches`` weeks x ``plates_per_batch`` plates x ``wells_per_plate`` wells
    (``dmso_wells_per_plate`` of them DMSO) x ``sites_per_well`` fields of ``image_size`` px.
    Each MOA has ``compounds_per_moa`` compounds at every ``concentrations`` value (uM; the
    phenotype strength rises with dose). As in the real BBBC021 each compound lives in one week;
    ``single_batch_moa``'s compounds all in the first week (NSCB drops that MOA), the other
    MOAs' compounds in different weeks; DMSO is in every week.
    ``unannotated_compounds`` compounds are in the image table but not in the MOA table (as in
    the real BBBC021). ``batch_effect`` is the half range of the log gain across batches,
    ``plate_effect`` the sd of an extra per-plate log gain, ``illumination`` the vignette depth.
    ``background`` and ``peak`` are camera counts and must fit ``bit_depth`` (16-bit: 500 and
    20000; a 12-bit camera: e.g. 120 and 3000). RxRx1 sites are 8-bit (background ~10).
    """

    n_batches: int = 3
    plates_per_batch: int = 2
    wells_per_plate: int = 16
    sites_per_well: int = 2
    image_size: int = 128
    moas: tuple[str, ...] = DEFAULT_MOAS
    compounds_per_moa: int = 2
    concentrations: tuple[float, ...] = (0.3, 3.0)
    dmso_wells_per_plate: int = 4
    single_batch_moa: str | None = "Aurora kinase inhibitors"
    unannotated_compounds: int = 1
    seed: int = 0
    batch_effect: float = 0.15
    plate_effect: float = 0.03
    offset_effect: float = 60.0     # max additive offset per batch and channel (grey levels)
    illumination: float = 0.25
    background: float = 500.0
    peak: float = 20000.0
    bit_depth: int = 16
    # RxRx1 layout
    rxrx_experiments: tuple[str, ...] = ("HEPG2-01", "HEPG2-02", "U2OS-01")
    rxrx_test_experiments: tuple[str, ...] = ("HEPG2-02",)
    rxrx_plates: int = 2
    rxrx_wells_per_plate: int = 12
    rxrx_sirnas: int = 5
    rxrx_positive_controls: int = 1
    # folder layout
    folder_classes: tuple[str, ...] = ("interphase", "mitotic", "apoptotic")
    folder_images_per_class: int = 12
    folder_image_size: int = 64
    folder_format: str = "png"

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise RecipeError(f"SyntheticScreen: {what}")

        need(self.n_batches >= 1 and self.plates_per_batch >= 1 and self.sites_per_well >= 1,
             "n_batches, plates_per_batch and sites_per_well must be >= 1")
        need(0 <= self.dmso_wells_per_plate < self.wells_per_plate <= len(PLATE_WELLS),
             f"need 0 <= dmso_wells_per_plate < wells_per_plate <= {len(PLATE_WELLS)}, got "
             f"{self.dmso_wells_per_plate} and {self.wells_per_plate}")
        need(self.image_size >= 16 and self.folder_image_size >= 16, "image sizes must be >= 16 px")
        unique = len(set(self.moas)) == len(self.moas)
        need(len(self.moas) >= 1 and unique and "DMSO" not in self.moas,
             f"moas must be unique names other than DMSO, got {self.moas!r}")
        need(self.single_batch_moa is None or self.single_batch_moa in self.moas,
             f"single_batch_moa {self.single_batch_moa!r} is not one of moas {self.moas!r}")
        need(self.compounds_per_moa >= 1 and len(self.concentrations) >= 1,
             "compounds_per_moa and concentrations must be non-empty")
        need(self.bit_depth in (8, 12, 14, 16),
             f"bit_depth must be 8, 12, 14 or 16, got {self.bit_depth}")
        need(self.background + self.peak < 2**self.bit_depth,
             f"background + peak ({self.background} + {self.peak}) must stay below the "
             f"{self.bit_depth}-bit maximum {2**self.bit_depth - 1}; e.g. for 12-bit use "
             "background=120, peak=3000")
        bad = [e for e in self.rxrx_experiments if not re.fullmatch(r"[A-Za-z0-9]+-\d+", e)]
        need(not bad, f"rxrx_experiments must look like 'HEPG2-01' (<cell type>-<number>), "
             f"got {bad!r}")
        need(self.folder_format in ("png", "tif"), f"folder_format must be 'png' or 'tif', "
             f"got {self.folder_format!r}")
        need(set(self.rxrx_test_experiments) <= set(self.rxrx_experiments),
             "rxrx_test_experiments must be a subset of rxrx_experiments")
        need(self.plates_per_batch <= 99 and self.n_batches <= 38,
             "at most 38 weeks of 99 plates (plate numbers are 5 digits, as in BBBC021)")
        need(self.rxrx_sirnas >= 1 and 0 <= self.rxrx_positive_controls <= 30,
             "rxrx_sirnas must be >= 1 and rxrx_positive_controls in 0..30 (ids 1108-1137)")
        need(self.rxrx_wells_per_plate > 1 + self.rxrx_positive_controls,
             "rxrx_wells_per_plate must leave room for treatments after the control wells")

    def replace(self, **changes) -> "SyntheticScreen":
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _wells_384_interior() -> list[str]:
    """List wells in the order plates are filled.

    The 60 BBBC021 wells (B02-G11) first, then the rest of the 308-well 384-plate interior
    (B02-O23) used by RxRx1.
    """
    first = [f"{r}{c:02d}" for r in "BCDEFG" for c in range(2, 12)]
    rest = [f"{r}{c:02d}" for r in "BCDEFGHIJKLMNO" for c in range(2, 24)]
    return first + [w for w in rest if w not in set(first)]


PLATE_WELLS: tuple[str, ...] = tuple(_wells_384_interior())


def _rng(config: SyntheticScreen, *key: int) -> np.random.Generator:
    """Return an independent stream per (layout, batch, plate, well, site): order-free."""
    return np.random.default_rng([int(config.seed) & 0xFFFFFFFF, *key])


def _slug(text: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())


def _uuid(rng: np.random.Generator) -> str:
    """Draw a UUID-like upper-case hex string (8-4-4-4-12), as in BBBC021 file names."""
    h = rng.bytes(16).hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _write_tiff(path: Path, image: np.ndarray) -> None:
    """2-D uint16 TIFF, uncompressed, with no description/software/date tags (deterministic)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image, photometric="minisblack", metadata=None, software=False)


def _write_png(path: Path, image: np.ndarray) -> None:
    """2-D uint8 (mode L) or uint16 (mode I;16) PNG, no text chunks (deterministic)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def _acquisitions(config: SyntheticScreen, layout: int, n_channels: int, n_batches: int,
                  n_plates: int, shape: tuple[int, int], background: float):
    """Acquisition per (batch, plate): batch gain x plate jitter, batch offset, plate vignette."""
    rng = _rng(config, layout, 999_999)
    gains = batch_gains(rng, n_batches, n_channels, config.batch_effect)
    offsets = rng.uniform(0, 1, (n_batches, n_channels)) * config.offset_effect * background / 500.0
    out = {}
    for b in range(n_batches):
        for p in range(n_plates):
            prng = _rng(config, layout, 999_998, b, p)
            jitter = np.exp(prng.normal(0, config.plate_effect, n_channels))
            out[b, p] = Acquisition(gain=gains[b] * jitter, offset=offsets[b],
                                    field=vignette(prng, (n_channels, *shape), config.illumination))
    return out


# --------------------------------------------------------------------------------------------
# BBBC021
# --------------------------------------------------------------------------------------------

BBBC021_CHANNELS: tuple[tuple[str, int], ...] = (("DAPI", 1), ("Tubulin", 2), ("Actin", 4))
#: the real BBBC021_v1_image.csv columns, and which of them are quoted text
BBBC021_IMAGE_COLUMNS: tuple[str, ...] = (
    "TableNumber", "ImageNumber",
    "Image_FileName_DAPI", "Image_PathName_DAPI", "Image_FileName_Tubulin",
    "Image_PathName_Tubulin", "Image_FileName_Actin", "Image_PathName_Actin",
    "Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI", "Replicate",
    "Image_Metadata_Compound", "Image_Metadata_Concentration",
)
_BBBC021_NUMERIC = frozenset({"TableNumber", "ImageNumber", "Replicate",
                              "Image_Metadata_Concentration"})


def _csv_line(values: Sequence, quoted: Sequence[bool]) -> str:
    """One CSV line in the BBBC021 style: text in double quotes, numbers bare."""
    cells = []
    for v, q in zip(values, quoted, strict=True):
        s = str(v)
        cells.append('"' + s.replace('"', '""') + '"' if q else s)
    return ",".join(cells) + "\n"


def bbbc021_header() -> str:
    """Return the header line of the real ``BBBC021_v1_image.csv`` (its quoting, LF end)."""
    return _csv_line(BBBC021_IMAGE_COLUMNS,
                     [c not in _BBBC021_NUMERIC for c in BBBC021_IMAGE_COLUMNS])


def _compound_homes(config: SyntheticScreen) -> dict[str, int]:
    """Batch index of every compound: each compound lives in ONE week, as in the real BBBC021.

    ``single_batch_moa``'s compounds go to week 1; the compounds of every other MOA go to
    distinct weeks (the least loaded first), so those MOAs span several weeks through
    different compounds, which is what NSCB needs.
    """
    load = np.zeros(config.n_batches, dtype=int)
    homes: dict[str, int] = {}
    ordered = sorted(config.moas, key=lambda m: m != config.single_batch_moa)
    for moa in ordered:
        names = [f"{_slug(moa)}-{k + 1}" for k in range(config.compounds_per_moa)]
        if moa == config.single_batch_moa:
            batches = [0] * len(names)
        else:
            by_load = sorted(range(config.n_batches), key=lambda b: (load[b], b))
            batches = [by_load[k % config.n_batches] for k in range(len(names))]
        for name, b in zip(names, batches, strict=True):
            homes[name] = b
            load[b] += 1
    for k in range(config.unannotated_compounds):
        b = int(np.argmin(load))
        homes[f"unannotated-{k + 1}"] = b
        load[b] += 1
    return homes


def bbbc021_treatments(config: SyntheticScreen) -> pd.DataFrame:
    """Treatments: one row per (compound, concentration) with moa, dose strength and home week.

    Compound names are ``<moa slug>-<k>``; unannotated compounds are ``unannotated-<k>`` with
    moa NA. ``strength`` (0.6-1.0) is how far the phenotype moves from DMSO's at that dose;
    ``batch_index`` is the compound's week (0-based, see :func:`_compound_homes`).
    """
    concs = sorted(config.concentrations)
    strength = np.linspace(0.6, 1.0, len(concs)) if len(concs) > 1 else np.ones(1)
    homes = _compound_homes(config)
    rows = []
    for moa in config.moas:
        for k in range(config.compounds_per_moa):
            name = f"{_slug(moa)}-{k + 1}"
            for c, s in zip(concs, strength, strict=True):
                rows.append((name, float(c), moa, float(s), homes[name]))
    for k in range(config.unannotated_compounds):
        name = f"unannotated-{k + 1}"
        rows.append((name, float(concs[-1]), pd.NA, 1.0, homes[name]))
    out = pd.DataFrame(rows, columns=["compound", "concentration", "moa", "strength",
                                      "batch_index"])
    return out.astype({"compound": "string", "moa": "string"})


def _treatment_phenotype(config: SyntheticScreen, compound: str, moa, strength: float) -> Phenotype:
    """DMSO's phenotype moved towards the compound's (MOA phenotype + compound jitter)."""
    rng = np.random.default_rng(zlib.crc32(compound.encode("utf-8")) ^ (config.seed & 0xFFFF))
    if moa is pd.NA or moa is None:
        target = phenotype_for("compound:" + compound)
    else:
        target = phenotype_for(str(moa)).jitter(rng, 0.04)
    return PHENOTYPES["DMSO"].blend(target, strength)


def bbbc021_plate_map(config: SyntheticScreen) -> pd.DataFrame:
    """Which treatment is in which well: one row per (batch, plate, well).

    Each week's treatments (those whose compound lives there) fill the week's non-DMSO wells
    in shuffled round-robin order, so with enough wells each is on several plates of its
    week; DMSO wells (in every week, the cross-batch reference) sit at random positions.
    """
    trt = bbbc021_treatments(config)
    rng = _rng(config, 1, 0)
    rows = []
    n_trt = config.wells_per_plate - config.dmso_wells_per_plate
    for b in range(config.n_batches):
        here = trt.index[trt["batch_index"] == b].to_numpy()
        slots = np.resize(rng.permutation(here), n_trt * config.plates_per_batch)
        for p in range(config.plates_per_batch):
            positions = rng.permutation(config.wells_per_plate)
            dmso = set(positions[: config.dmso_wells_per_plate].tolist())
            chosen = iter(slots[p * n_trt:(p + 1) * n_trt])
            for i, well in enumerate(PLATE_WELLS[: config.wells_per_plate]):
                if i in dmso or len(here) == 0:
                    rows.append((b, p, well, "DMSO", 0.0, "DMSO", 0.0))
                else:
                    t = trt.loc[next(chosen)]
                    rows.append((b, p, well, t["compound"], t["concentration"], t["moa"],
                                 t["strength"]))
    return pd.DataFrame(rows, columns=["batch_index", "plate_index", "well", "compound",
                                       "concentration", "moa", "strength"])


def write_bbbc021_layout(root: str | os.PathLike, config: SyntheticScreen | None = None) -> dict:
    """Write a BBBC021-layout screen under ``root``; returns paths and the ground truth.

    Files: ``<Week>/<Week>_<plate>/<Well>_s<site>_w<1|2|4><UUID>.tif`` (uint16, one per channel
    DAPI/Tubulin/Actin), ``BBBC021_v1_image.csv`` (the real header and quoting; TableNumber =
    week number mod 10, ImageNumber counted per table, Replicate = plate number in the week,
    concentrations in uM as ``%.6f``) and ``BBBC021_v1_moa.csv`` (``compound,concentration,moa``;
    DMSO at 0.0 with moa ``DMSO``; unannotated compounds left out).

    ``BBBC021_cell_locations.csv`` (:data:`BBBC021_LOCATIONS_FILE`) holds the true nucleus
    centre of every cell, one row per cell, with CellProfiler/DeepProfiler column names
    (:data:`BBBC021_LOCATION_COLUMNS`: ``Metadata_Plate, Metadata_Well, Metadata_Site,
    Image_FileName_DAPI, ObjectNumber, Nuclei_Location_Center_X, Nuclei_Location_Center_Y``;
    x = column, y = row, in pixels) for single-cell mode (``cytodata cells``).

    Returns ``{"root", "image_csv", "moa_csv", "images", "single_batch_moa", "locations_csv"}``
    where ``images`` has one row per site: table_number, image_number, batch, plate, replicate,
    well, site, compound, concentration, moa (NA if unannotated), paths (DAPI, Tubulin, Actin;
    absolute).
    """
    config = config or SyntheticScreen()
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    size = (config.image_size, config.image_size)
    plate_map = bbbc021_plate_map(config)
    acq = _acquisitions(config, 1, len(BBBC021_CHANNELS), config.n_batches,
                        config.plates_per_batch, size, config.background)
    lines = [bbbc021_header()]
    quoted = [c not in _BBBC021_NUMERIC for c in BBBC021_IMAGE_COLUMNS]
    truth = []
    cells = [",".join(BBBC021_LOCATION_COLUMNS) + "\n"]
    image_number: dict[int, int] = {}
    for row in plate_map.itertuples(index=False):
        b, p = int(row.batch_index), int(row.plate_index)
        week = f"Week{b + 1}"
        plate = f"{week}_{22000 + 2000 * b + 20 * (p + 1) + 1}"
        rel = f"{week}/{plate}"
        strength = float(row.strength)
        pheno = (PHENOTYPES["DMSO"] if row.compound == "DMSO" else
                 _treatment_phenotype(config, str(row.compound), row.moa, strength))
        well_idx = PLATE_WELLS.index(row.well)
        for site in range(1, config.sites_per_well + 1):
            rng = _rng(config, 1, b, p, well_idx, site)
            image, centres = make_cells(rng, (3, *size), pheno, background=config.background,
                                        peak=config.peak, bit_depth=config.bit_depth,
                                        acquisition=acq[b, p], return_centres=True)
            names = []
            for c, (_, w) in enumerate(BBBC021_CHANNELS):
                name = f"{row.well}_s{site}_w{w}{_uuid(rng)}.tif"
                _write_tiff(root / rel / name, image[c])
                names.append(name)
            cells.extend(_location_line(plate, row.well, site, names[0], k, x, y)
                         for k, (x, y) in enumerate(centres, 1))
            table = (b + 1) % 10
            image_number[table] = image_number.get(table, 0) + 1
            values = [table, image_number[table], names[0], rel, names[1], rel, names[2], rel,
                      plate, row.well, p + 1, row.compound, f"{float(row.concentration):.6f}"]
            lines.append(_csv_line(values, quoted))
            truth.append({
                "table_number": table, "image_number": image_number[table], "batch": week,
                "plate": plate, "replicate": p + 1, "well": row.well, "site": site,
                "compound": row.compound, "concentration": float(row.concentration),
                "moa": row.moa, "paths": [str(root / rel / n) for n in names],
            })
    image_csv = root / "BBBC021_v1_image.csv"
    image_csv.write_text("".join(lines), encoding="utf-8", newline="\n")
    moa_csv = root / "BBBC021_v1_moa.csv"
    trt = bbbc021_treatments(config).dropna(subset=["moa"])
    moa_lines = ['"compound",concentration,"moa"\n']
    moa_lines += [_csv_line([t.compound, f"{t.concentration:.6f}", t.moa], [True, False, True])
                  for t in trt.itertuples(index=False)]
    moa_lines.append(_csv_line(["DMSO", f"{0.0:.6f}", "DMSO"], [True, False, True]))
    moa_csv.write_text("".join(moa_lines), encoding="utf-8", newline="\n")
    locations_csv = root / BBBC021_LOCATIONS_FILE
    locations_csv.write_text("".join(cells), encoding="utf-8", newline="\n")
    images = pd.DataFrame(truth).astype({"batch": "string", "plate": "string", "well": "string",
                                         "compound": "string", "moa": "string"})
    return {"root": root, "image_csv": image_csv, "moa_csv": moa_csv, "images": images,
            "single_batch_moa": config.single_batch_moa, "locations_csv": locations_csv}


#: the cell locations table written beside the BBBC021 CSVs (CellProfiler/DeepProfiler names)
BBBC021_LOCATIONS_FILE = "BBBC021_cell_locations.csv"
BBBC021_LOCATION_COLUMNS: tuple[str, ...] = (
    "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Image_FileName_DAPI", "ObjectNumber",
    "Nuclei_Location_Center_X", "Nuclei_Location_Center_Y",
)


def _location_line(plate: str, well: str, site: int, dapi: str, number: int, x: float,
                   y: float) -> str:
    # 3 decimals: CellProfiler prints centres as floats; sub-pixel digits carry no information
    return f"{plate},{well},{site},{dapi},{number},{x:.3f},{y:.3f}\n"


# --------------------------------------------------------------------------------------------
# RxRx1
# --------------------------------------------------------------------------------------------

RXRX1_COLUMNS: tuple[str, ...] = ("site_id", "well_id", "cell_type", "dataset", "experiment",
                                  "plate", "well", "site", "well_type", "sirna", "sirna_id")
RXRX1_NEGATIVE_SIRNA_ID = 1138   # sirna "EMPTY"
RXRX1_FIRST_POSITIVE_ID = 1108   # positive controls are 1108-1137


def rxrx1_sirnas(config: SyntheticScreen) -> pd.DataFrame:
    """siRNAs: ``sirna`` (ThermoFisher-like ``s<5 digits>``), ``sirna_id``, ``well_type``."""
    rng = _rng(config, 2, 0)
    n = config.rxrx_sirnas + config.rxrx_positive_controls
    numbers = rng.choice(np.arange(10_000, 99_999), size=n, replace=False)
    rows = [(f"s{numbers[i]}", i, "treatment") for i in range(config.rxrx_sirnas)]
    rows += [(f"s{numbers[config.rxrx_sirnas + j]}", RXRX1_FIRST_POSITIVE_ID + j,
              "positive_control") for j in range(config.rxrx_positive_controls)]
    rows.append(("EMPTY", RXRX1_NEGATIVE_SIRNA_ID, "negative_control"))
    return pd.DataFrame(rows, columns=["sirna", "sirna_id", "well_type"])


def write_rxrx1_layout(root: str | os.PathLike, config: SyntheticScreen | None = None) -> dict:
    """Write an RxRx1 (rxrx.ai release) layout: ``metadata.csv`` + 6-channel 8-bit PNG sites.

    ``metadata.csv``: one row per site, columns :data:`RXRX1_COLUMNS`; ``well_id`` =
    ``<experiment>_<plate>_<well>``, ``site_id`` = ``<well_id>_<site>``, sites 1 and 2,
    ``cell_type`` = experiment prefix, ``dataset`` test for ``rxrx_test_experiments``.
    Per plate: one negative control well (sirna ``EMPTY``, sirna_id 1138), the positive controls
    (ids from 1108), treatments in the other wells. Images:
    ``images/{experiment}/Plate{plate}/{well}_s{site}_w{1..6}.png`` (uint8, mode L).
    Returns ``{"root", "metadata_csv", "image_root", "sites"}`` (``sites``: the metadata rows plus
    ``paths``, the six absolute PNG paths).
    """
    config = config or SyntheticScreen()
    root = Path(root).resolve()
    image_root = root / "images"
    size = (config.image_size, config.image_size)
    sirnas = rxrx1_sirnas(config)
    treat = sirnas[sirnas["well_type"] == "treatment"].index.to_numpy()
    controls = sirnas[sirnas["well_type"] != "treatment"].index.to_numpy()
    background, peak = 10.0, 140.0
    acq = _acquisitions(config, 2, 6, len(config.rxrx_experiments), config.rxrx_plates, size,
                        background)
    rows = []
    rng_map = _rng(config, 2, 1)
    for e, experiment in enumerate(config.rxrx_experiments):
        cell_type = experiment.split("-")[0]
        base = phenotype_for(cell_type)
        dataset = "test" if experiment in config.rxrx_test_experiments else "train"
        for p in range(config.rxrx_plates):
            n_trt = config.rxrx_wells_per_plate - len(controls)
            content = np.concatenate([controls, np.resize(rng_map.permutation(treat), n_trt)])
            content = rng_map.permutation(content)
            for w, s_idx in enumerate(content):
                well = PLATE_WELLS[w]
                si = sirnas.loc[s_idx]
                pheno = (base if si["well_type"] == "negative_control"
                         else base.blend(phenotype_for("sirna:" + si["sirna"]), 0.6))
                well_id = f"{experiment}_{p + 1}_{well}"
                for site in (1, 2):
                    rng = _rng(config, 2, e, p, w, site)
                    image = make_cells(rng, (6, *size), pheno, background=background, peak=peak,
                                       bit_depth=8, acquisition=acq[e, p]).astype(np.uint8)
                    folder = image_root / experiment / f"Plate{p + 1}"
                    paths = [folder / f"{well}_s{site}_w{c}.png" for c in range(1, 7)]
                    for c, path in enumerate(paths):
                        _write_png(path, image[c])
                    rows.append({
                        "site_id": f"{well_id}_{site}", "well_id": well_id, "cell_type": cell_type,
                        "dataset": dataset, "experiment": experiment, "plate": p + 1,
                        "well": well, "site": site, "well_type": si["well_type"],
                        "sirna": si["sirna"], "sirna_id": int(si["sirna_id"]),
                        "paths": [str(x) for x in paths],
                    })
    sites = pd.DataFrame(rows)
    metadata_csv = root / "metadata.csv"
    sites[list(RXRX1_COLUMNS)].to_csv(metadata_csv, index=False, lineterminator="\n")
    return {"root": root, "metadata_csv": metadata_csv, "image_root": image_root, "sites": sites}


# --------------------------------------------------------------------------------------------
# folder per class
# --------------------------------------------------------------------------------------------


def write_folder_layout(root: str | os.PathLike, config: SyntheticScreen | None = None) -> dict:
    """Write single-channel nuclear images ``root/<class>/<class>_<k>.png``, a folder per class.

    uint8 PNG, or uint16 TIFF ``.tif`` with ``folder_format="tif"``.

    Returns ``{"root", "images"}`` (``images``: columns class, path).
    """
    config = config or SyntheticScreen()
    root = Path(root).resolve()
    size = (config.folder_image_size, config.folder_image_size)
    rows = []
    eight_bit = config.folder_format == "png"
    for k, label in enumerate(config.folder_classes):
        for i in range(config.folder_images_per_class):
            rng = _rng(config, 3, k, i)
            pheno = phenotype_for(label)
            if eight_bit:
                image = make_cells(rng, (1, *size), pheno, background=12.0, peak=150.0,
                                   bit_depth=8)[0].astype(np.uint8)
                path = root / label / f"{label}_{i + 1:03d}.png"
                _write_png(path, image)
            else:
                image = make_cells(rng, (1, *size), pheno, background=config.background,
                                   peak=config.peak, bit_depth=config.bit_depth)[0]
                path = root / label / f"{label}_{i + 1:03d}.tif"
                _write_tiff(path, image)
            rows.append({"class": label, "path": str(path)})
    return {"root": root, "images": pd.DataFrame(rows)}


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


def write_demo_sources(root: str | os.PathLike, seed: int = 0,
                       config: SyntheticScreen | None = None) -> dict[str, Path]:
    """Write the demo's three sources under ``root``: ``bbbc021/``, ``rxrx1/``, ``folder/``.

    Two inputs are broken on purpose, so the demo shows the ledger catching them; both are
    BBBC021 treatment sites (never DMSO), still listed in ``BBBC021_v1_image.csv``:

    - ``missing``: the Actin TIFF of the first treatment site of week 2 (``Week2``, first plate,
      the first non-DMSO well in file order, site 1) is deleted -> "missing file".
    - ``truncated``: the DAPI TIFF of the first treatment site of week 3 (or of the second
      treatment site of week 1 when there are fewer weeks) is cut to half its bytes, so its
      image data runs past the end of the file -> "truncated".

    Returns ``{"bbbc021": root, "rxrx1": root, "folder": root, "missing": path,
    "truncated": path}`` (absolute paths).
    """
    config = (config or SyntheticScreen()).replace(seed=seed)
    root = Path(root).resolve()
    bbbc = write_bbbc021_layout(root / "bbbc021", config)
    rxrx = write_rxrx1_layout(root / "rxrx1", config)
    folder = write_folder_layout(root / "folder", config)
    images = bbbc["images"]
    treated = images[images["compound"] != "DMSO"]
    weeks = list(dict.fromkeys(treated["batch"]))
    first = treated[treated["batch"] == weeks[min(1, len(weeks) - 1)]].iloc[0]
    second = (treated[treated["batch"] == weeks[2]].iloc[0] if len(weeks) > 2
              else treated[treated["batch"] == weeks[0]].iloc[1])
    missing, truncated = Path(first["paths"][2]), Path(second["paths"][0])
    missing.unlink()
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {"bbbc021": bbbc["root"], "rxrx1": rxrx["root"], "folder": folder["root"],
            "missing": missing, "truncated": truncated}


__all__ = [
    "Acquisition", "BBBC021_CHANNELS", "BBBC021_IMAGE_COLUMNS", "BBBC021_LOCATIONS_FILE",
    "BBBC021_LOCATION_COLUMNS", "COMPARTMENTS", "PHENOTYPES",
    "PLATE_WELLS", "Phenotype", "RXRX1_COLUMNS", "SyntheticScreen", "batch_gains",
    "bbbc021_header", "bbbc021_plate_map", "bbbc021_treatments", "channel_kinds", "make_cells",
    "phenotype_for", "rxrx1_sirnas", "shot_noise", "smooth_noise", "vignette",
    "write_bbbc021_layout", "write_demo_sources", "write_folder_layout", "write_rxrx1_layout",
]
