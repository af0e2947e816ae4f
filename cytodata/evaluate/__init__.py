"""Evaluation of embeddings: profiles, normalization, feature selection, metrics and a report.

Tables in, tables out: every function takes a DataFrame of metadata + feature columns.
``run_protocol`` chains them into the published protocols (``bbbc021-ws-dino``,
``bbbc021-ando``, ``bbbc021-ljosa``, ``bbbc021-cytoimagenet``, ``knn``, ``map``);
``write_report`` renders results for a reader.
CLI: ``cytodata evaluate EMBEDDINGS --protocol NAME -o REPORT_DIR``.
"""

from __future__ import annotations

from ._checks import EvaluationWarning
from .interop import from_metadata_names, infer_features, to_metadata_names
from .matching import MatchResult, ci95, knn_accuracy, median_batch, nsc, nscb, proportion_ci
from .normalize import (
    CORAL,
    NORMALIZERS,
    TVN,
    RobustMAD,
    Spherize,
    Standardize,
    control_mask,
    normalize,
    tvn,
)
from .profiles import (
    STANDARD_CHAIN,
    Step,
    aggregate,
    center_crop_boxes,
    chain,
    consensus,
    feature_columns,
    feature_matrix,
)
from .protocols import PROTOCOLS, align, run_protocol
from .replicates import (
    ReplicationResult,
    ScoreResult,
    enrichment,
    grit,
    hit_at_k,
    percent_matching,
    percent_replicating,
    precision_at_k,
)
from .report import summary_table, write_report
from .retrieval import (
    MapResult,
    average_precision,
    mean_average_precision,
    multilabel_average_precision,
)
from .selection import SELECTORS, drop_features, select_features

__all__ = [
    "CORAL", "EvaluationWarning", "MatchResult", "MapResult", "NORMALIZERS", "PROTOCOLS",
    "ReplicationResult", "SELECTORS", "STANDARD_CHAIN", "ScoreResult", "Step",
    "TVN", "RobustMAD", "Spherize", "Standardize",
    "aggregate", "align", "average_precision", "center_crop_boxes", "chain", "ci95",
    "consensus", "control_mask", "drop_features", "enrichment", "feature_columns",
    "feature_matrix", "from_metadata_names", "grit", "hit_at_k", "infer_features",
    "knn_accuracy", "mean_average_precision", "median_batch", "multilabel_average_precision",
    "normalize", "nsc", "nscb", "percent_matching", "percent_replicating", "precision_at_k",
    "proportion_ci", "run_protocol", "select_features", "summary_table",
    "to_metadata_names", "tvn", "write_report",
]
