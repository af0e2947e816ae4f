"""Phenotypes: what a treatment does to cells (shape, size, texture, per-channel brightness)."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
        a, b = pad(self.intensities, n), pad(other.intensities, n)
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


def pad(values: Sequence[float], n: int) -> np.ndarray:
    """Return ``values`` as a float64 array of length ``n``, the last value repeated."""
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

