"""Embedded synthetic screens with known ground truth, written in the real published layouts.

Why: the demo and many tests need full pipelines on real *file layouts* (BBBC021 per-channel
16-bit TIFFs + its two CSVs, RxRx1 ``metadata.csv`` + 8-bit PNGs, folder-per-class images)
with pixels whose biology is known: every mechanism of action (MOA) has its own cell
morphology, controls (DMSO) the neutral one, and every batch/plate its own intensity gain,
offset and illumination vignette, so batch correction and NSC/NSCB have something to find.

Everything is a pure function of a :class:`SyntheticScreen` config and its ``seed``: files are
byte-identical for the same seed (no timestamps or software tags are written).

Modules, one job each: ``config`` (:class:`SyntheticScreen`, wells, random streams),
``phenotypes`` (what a treatment does to cells), ``acquisition`` (gains, offsets, vignette),
``cells`` (drawing one field), ``bbbc021`` / ``rxrx1`` / ``folder`` (the layouts),
``demo_sources`` (the demo's three sources with two broken inputs); the hard screen
(``SyntheticScreen(difficulty="hard")``): ``morphology`` (MOA -> cell states, per-cell latents,
the oracle features), ``hard_cells`` (drawing one field with intensities and sizes matched
across treatments), ``truth`` (the ground truth written beside the screen, read back).

Entry points: :func:`make_cells` (one field, ``(C, H, W)`` uint16), :func:`write_bbbc021_layout`,
:func:`write_rxrx1_layout`, :func:`write_folder_layout` (each returns its paths and the ground
truth as a DataFrame) and :func:`write_demo_sources` (all three, plus two broken BBBC021 files
for the ledger). A 1024 x 1280 three-channel field renders in well under a second.
"""

from .acquisition import Acquisition, batch_gains, vignette
from .bbbc021 import (
    BBBC021_CHANNELS,
    BBBC021_IMAGE_COLUMNS,
    BBBC021_LOCATION_COLUMNS,
    BBBC021_LOCATIONS_FILE,
    bbbc021_header,
    bbbc021_plate_map,
    bbbc021_treatments,
    write_bbbc021_layout,
)
from .cells import COMPARTMENTS, channel_kinds, make_cells, shot_noise, smooth_noise
from .config import DEFAULT_MOAS, PLATE_WELLS, SyntheticScreen
from .demo_sources import write_demo_sources
from .folder import write_folder_layout
from .phenotypes import PHENOTYPES, Phenotype, phenotype_for
from .rxrx1 import RXRX1_COLUMNS, rxrx1_plate_map, rxrx1_sirnas, write_rxrx1_layout
from .truth import oracle_columns, read_ground_truth

__all__ = [
    "Acquisition", "BBBC021_CHANNELS", "BBBC021_IMAGE_COLUMNS", "BBBC021_LOCATIONS_FILE",
    "BBBC021_LOCATION_COLUMNS", "COMPARTMENTS", "DEFAULT_MOAS", "PHENOTYPES",
    "PLATE_WELLS", "Phenotype", "RXRX1_COLUMNS", "SyntheticScreen", "batch_gains",
    "bbbc021_header", "bbbc021_plate_map", "bbbc021_treatments", "channel_kinds", "make_cells",
    "oracle_columns", "phenotype_for", "read_ground_truth", "rxrx1_plate_map", "rxrx1_sirnas",
    "shot_noise", "smooth_noise", "vignette",
    "write_bbbc021_layout", "write_demo_sources", "write_folder_layout", "write_rxrx1_layout",
]
