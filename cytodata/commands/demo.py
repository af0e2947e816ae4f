"""``cytodata demo``."""

from __future__ import annotations

from . import handler

DESCRIPTION = """`cytodata demo`: the end-to-end pipeline on embedded synthetic screens.

synthetic screens -> manifest (weak labels, splits, ledger) -> image QC -> shards (WebDataset,
Zarr, OME-Zarr) -> one streamed epoch -> training (weak-label classifier, WS-DINO, DINO) -> embeddings
-> evaluation (NSC/NSCB with and without TVN vs random init and classical features) -> publish
-> verify -> ``report/index.html``.
Everything lands under one output folder, whose layout is printed at the end.
"""


def register(subparsers) -> None:
    """Add ``cytodata demo``."""
    p = subparsers.add_parser("demo", help="run the end-to-end demo on synthetic screens",
                              description=DESCRIPTION)
    p.add_argument("-o", "--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic screens and sampling")
    p.add_argument("--workers", type=int, default=2, help="dask workers / loader workers")
    p.add_argument("--quick", action="store_true",
                   help="short training runs, no OME-Zarr export (about 2 minutes)")
    p.add_argument("--screen", choices=("hard", "easy"), default="hard",
                   help="the synthetic screens' difficulty: hard (MOAs differ only in morphology; "
                        "intensity histograms matched) or easy (default: hard)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=handler("cytodata.demo", "_cmd"))
