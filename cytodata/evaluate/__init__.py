"""Evaluation of embeddings: profiles, normalization, NSC/NSCB, k-NN, mAP and a report.

Tables in, tables out: every function takes a DataFrame of metadata + feature columns.
``run_protocol`` chains them into the published protocols; ``write_report`` renders results.
CLI: ``cytodata evaluate EMBEDDINGS --protocol NAME -o REPORT_DIR``.
"""

from __future__ import annotations

from .matching import MatchResult, ci95, knn_accuracy, nsc, nscb
from .normalize import (NORMALIZERS, TVN, RobustMAD, Spherize, Standardize, control_mask,
                        normalize, tvn)
from .profiles import (STANDARD_CHAIN, Step, aggregate, center_crop_boxes, chain,
                       feature_columns, feature_matrix)
from .protocols import PROTOCOLS, align, run_protocol
from .report import write_report
from .retrieval import MapResult, average_precision, mean_average_precision

__all__ = [
    "MatchResult", "MapResult", "NORMALIZERS", "PROTOCOLS", "STANDARD_CHAIN", "Step",
    "TVN", "RobustMAD", "Spherize", "Standardize",
    "aggregate", "align", "average_precision", "center_crop_boxes", "chain", "ci95",
    "control_mask", "feature_columns", "feature_matrix", "knn_accuracy",
    "mean_average_precision", "normalize", "nsc", "nscb", "register", "run_protocol", "tvn",
    "write_report",
]


def register(subparsers) -> None:
    """Add ``cytodata evaluate``."""
    from ._cli import add_parser

    add_parser(subparsers)
