"""What to generate: :class:`SyntheticScreen`, the plate wells and the per-key random streams."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from ..errors import RecipeError
from .morphology import check_moas

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

    ``difficulty``: ``"easy"`` (each MOA its own cell size, count, brightness and texture:
    simple features solve it; kept for fast tests) or ``"hard"`` (:mod:`.morphology`: MOAs
    differ only in morphology and arrangement; per-channel intensity histograms and cell sizes
    are the same for every treatment). Hard-screen parameters: ``response_fraction`` (share of
    cells responding at the top dose, lower doses fewer and weaker: at the default 1.0, every
    cell at the top dose and 60% at the lowest), ``spontaneous_fraction``
    (share of every well's cells showing a random non-DMSO state), ``focus_blur`` (the largest
    per-plate defocus, px sd) and ``background_gradient`` (relative background ramp across a
    field, per plate). Each hard screen writes its ground truth beside it (:mod:`.truth`).

    RxRx1 layout, the real plate structure scaled down: the ``rxrx_sirnas`` treatment siRNAs
    fall into ``rxrx_sirna_groups`` fixed groups of equal size (real: 1,108 siRNAs in 4 groups
    of 277); every experiment (``rxrx_experiments``, ``<cell type>-<number>``) has one plate
    per group, so each siRNA is in exactly one well of every experiment; every plate also holds
    the ``rxrx_positive_controls`` positive controls (real: 30) and one negative control well
    (``EMPTY``); two sites per well. Which group sits on which plate number rotates between
    experiments.
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
    difficulty: str = "easy"
    response_fraction: float = 1.0
    spontaneous_fraction: float = 0.05
    focus_blur: float = 1.0
    background_gradient: float = 0.2
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
    rxrx_sirna_groups: int = 4
    rxrx_sirnas: int = 8
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
        need(self.difficulty in ("easy", "hard"),
             f"difficulty must be 'easy' or 'hard', got {self.difficulty!r}")
        if self.difficulty == "hard":
            self._check_hard(need)
        need(self.rxrx_sirna_groups >= 1 and 0 <= self.rxrx_positive_controls <= 30,
             "rxrx_sirna_groups must be >= 1 and rxrx_positive_controls in 0..30 "
             "(ids 1108-1137)")
        need(self.rxrx_sirnas >= self.rxrx_sirna_groups
             and self.rxrx_sirnas % self.rxrx_sirna_groups == 0,
             f"rxrx_sirnas ({self.rxrx_sirnas}) must be a positive multiple of "
             f"rxrx_sirna_groups ({self.rxrx_sirna_groups}): the groups are of equal size, "
             "one per plate (real RxRx1: 1,108 = 4 x 277)")
        need(self.rxrx_wells_per_plate <= len(PLATE_WELLS),
             f"rxrx_sirnas / rxrx_sirna_groups + rxrx_positive_controls + 1 = "
             f"{self.rxrx_wells_per_plate} wells per plate; at most {len(PLATE_WELLS)} fit "
             "the 384-well plate's interior")

    def _check_hard(self, need) -> None:
        """Parameters that would make a hard-screen phenotype invisible or the screen degenerate."""
        need(0 < self.response_fraction <= 1,
             f"response_fraction={self.response_fraction}: must be in (0, 1]; at 0 no cell "
             "responds and every MOA looks like DMSO")
        need(0 <= self.spontaneous_fraction < 0.5,
             f"spontaneous_fraction={self.spontaneous_fraction}: must be in [0, 0.5)")
        need(self.compounds_per_moa >= 2,
             f"compounds_per_moa={self.compounds_per_moa}: the hard screen needs >= 2 compounds "
             "per MOA (NSC matches each compound to another compound of its MOA)")
        need(len(self.moas) >= 2, f"moas={self.moas!r}: the hard screen needs >= 2 MOAs")
        need(0 <= self.focus_blur <= 2.0,
             f"focus_blur={self.focus_blur}: must be in [0, 2] px; the finest patterns (4.5 px "
             "stress fibres) vanish above ~2 px")
        need(0 <= self.background_gradient < 0.5,
             f"background_gradient={self.background_gradient}: must be in [0, 0.5)")
        need(self.image_size >= 48,
             f"image_size={self.image_size}: the hard screen's cells (~28 px long) need fields of "
             ">= 48 px")
        try:
            check_moas(self.moas)
        except ValueError as err:
            need(False, str(err))

    @property
    def rxrx_wells_per_plate(self) -> int:
        """Wells of one RxRx1 plate: one siRNA group + the positive controls + one EMPTY well."""
        return self.rxrx_sirnas // self.rxrx_sirna_groups + self.rxrx_positive_controls + 1

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


def screen_rng(config: SyntheticScreen, *key: int) -> np.random.Generator:
    """Return an independent stream per (layout, batch, plate, well, site): order-free."""
    return np.random.default_rng([int(config.seed) & 0xFFFFFFFF, *key])

