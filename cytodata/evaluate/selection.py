"""Feature selection with pycytominer's ``feature_select`` definitions.

Each operation looks at the feature columns (of the ``samples`` rows) and names the columns
to drop; ``select_features`` applies them in order and returns the table without those
columns, with the reasons in ``out.attrs["dropped_features"]`` (operation -> columns).

- ``drop_na_columns``: share of NaN rows > ``na_cutoff`` (0.05).
- ``variance_threshold``: population variance (ddof=0, NaN ignored) <= ``min_variance``
  (1e-6), sklearn's ``VarianceThreshold`` rule.
- ``frequency_threshold``: count of the second most common value / count of the most common
  < ``freq_cut`` (0.05), or distinct values / rows < ``unique_cut`` (0.01); catches features
  that are almost always one value (caret's ``nearZeroVar``).
- ``correlation_threshold``: of every pair with correlation > ``corr_threshold`` (0.9;
  signed, as pycytominer), drop the member whose summed |correlation| with all features is
  larger (the more redundant one). Exact duplicates of a column are always caught.
- ``blocklist``: columns named in ``blocklist`` (a list, or a text file with one name per
  line, optionally under a ``blocklist`` header as pycytominer's files).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._registry import Registry
from ..errors import EvaluationError, preview
from .normalize import Controls, control_mask
from .profiles import Features, resolve_features

SELECTORS: Registry[Callable[..., list[str]]] = Registry("feature selection operation")

#: pycytominer's default order when several operations are asked for
DEFAULT_OPERATIONS: tuple[str, ...] = ("drop_na_columns", "variance_threshold",
                                       "correlation_threshold", "blocklist")


def _fraction(name: str, value: float) -> float:
    if not 0 <= value <= 1:
        raise EvaluationError(f"{name}={value!r} must be between 0 and 1")
    return float(value)


@SELECTORS.register("drop_na_columns")
def na_columns(data: pd.DataFrame, *, na_cutoff: float = 0.05, **_) -> list[str]:
    """Columns whose share of NaN rows exceeds ``na_cutoff``."""
    share = data.isna().mean()
    return [c for c, s in share.items() if s > _fraction("na_cutoff", na_cutoff)]


@SELECTORS.register("variance_threshold")
def low_variance(data: pd.DataFrame, *, min_variance: float = 1e-6, **_) -> list[str]:
    """Columns with variance <= ``min_variance`` (all-NaN columns count as variance 0)."""
    if min_variance < 0:
        raise EvaluationError(f"min_variance={min_variance!r} must be >= 0")
    x = data.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(all="ignore"):
        var = np.nan_to_num(np.nanvar(x, axis=0) if len(x) else np.zeros(x.shape[1]), nan=0.0)
    return [c for c, v in zip(data.columns, var, strict=False) if v <= min_variance]


def _frequency_ratio(col: pd.Series) -> float:
    counts = col.value_counts()
    return 0.0 if len(counts) < 2 else counts.iloc[1] / counts.iloc[0]


@SELECTORS.register("frequency_threshold")
def low_frequency(data: pd.DataFrame, *, freq_cut: float = 0.05, unique_cut: float = 0.01,
                  **_) -> list[str]:
    """Near-constant columns: rare second value, or few distinct values per row."""
    freq_cut, unique_cut = _fraction("freq_cut", freq_cut), _fraction("unique_cut", unique_cut)
    n = max(len(data), 1)
    return [c for c in data.columns
            if _frequency_ratio(data[c]) < freq_cut or data[c].nunique() / n < unique_cut]


CORRELATION_METHODS = ("pearson", "spearman", "kendall")


@SELECTORS.register("correlation_threshold")
def correlated(data: pd.DataFrame, *, corr_threshold: float = 0.9, corr_method: str = "pearson",
               **_) -> list[str]:
    """One column of every pair correlated above ``corr_threshold`` (the more redundant)."""
    threshold = _fraction("corr_threshold", corr_threshold)
    if corr_method not in CORRELATION_METHODS:
        raise EvaluationError(f"unknown corr_method {corr_method!r}; valid: "
                              f"{CORRELATION_METHODS}")
    x = data.to_numpy(dtype=np.float64, na_value=np.nan)
    if corr_method == "pearson" and np.isfinite(x).all():
        with np.errstate(all="ignore"):
            corr = pd.DataFrame(np.corrcoef(x.T), index=data.columns, columns=data.columns)
    else:
        corr = data.corr(method=corr_method)
    # pycytominer: rank columns by summed |r| (ascending); of a pair, drop the later one
    order = corr.abs().sum().sort_values().index
    rank = {c: i for i, c in enumerate(order)}
    values = corr.to_numpy()
    i, j = np.nonzero(np.tril(np.ones_like(values, dtype=bool), k=-1) & (values > threshold))
    cols = list(data.columns)
    pairs = zip(i, j, strict=True)
    return sorted({cols[a] if rank[cols[a]] > rank[cols[b]] else cols[b] for a, b in pairs},
                  key=cols.index)


def read_blocklist(blocklist: Sequence[str] | str | Path | None) -> list[str]:
    """Read names from a list, or from a text file (one per line, optional header)."""
    if blocklist is None:
        return []
    if isinstance(blocklist, (str, Path)):
        path = Path(blocklist)
        if not path.exists():
            raise EvaluationError(f"blocklist file {path} does not exist; pass a list of "
                                  "column names or a text file with one name per line")
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        return names[1:] if names and names[0].lower() == "blocklist" else names
    return [str(c) for c in blocklist]


@SELECTORS.register("blocklist")
def blocklisted(data: pd.DataFrame, *, blocklist=None, **_) -> list[str]:
    """Columns named in ``blocklist`` (names not present are ignored, as pycytominer)."""
    names = set(read_blocklist(blocklist))
    return [c for c in data.columns if c in names]


def drop_features(table: pd.DataFrame, *, features: Features = None,
                  operations: Sequence[str] | str = DEFAULT_OPERATIONS,
                  samples: Controls | str = None, **params) -> dict[str, list[str]]:
    """Operation -> feature columns it drops, applied in order on the remaining columns.

    ``samples``: rows the statistics are computed on: ``None``/``"all"`` (every row), a
    pandas query string as pycytominer (``"Metadata_control_type == 'negcon'"``), a boolean
    mask or a query dict (see :func:`cytodata.evaluate.normalize.control_mask`).
    ``params``: ``na_cutoff``, ``min_variance``, ``freq_cut``, ``unique_cut``,
    ``corr_threshold``, ``corr_method``, ``blocklist``.
    """
    ops = [operations] if isinstance(operations, str) else list(operations)
    for op in ops:
        SELECTORS.get(op) if op in SELECTORS else _unknown(op)
    known = {"na_cutoff", "min_variance", "freq_cut", "unique_cut", "corr_threshold",
             "corr_method", "blocklist"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise EvaluationError(f"unknown feature selection option(s) {unknown}; valid: "
                              f"{sorted(known)}")
    cols = resolve_features(table, features)
    if isinstance(samples, str) and samples != "all":
        try:
            rows = table.query(samples)
        except Exception as exc:  # noqa: BLE001 - pandas raises many kinds for a bad query
            raise EvaluationError(f"samples query {samples!r} failed: {exc}") from None
    else:
        rows = table[control_mask(table, None if samples in (None, "all") else samples)]
    if len(rows) == 0:
        raise EvaluationError(f"samples={samples!r} selects no rows for feature selection")
    dropped: dict[str, list[str]] = {}
    remaining = list(cols)
    for op in ops:
        out = SELECTORS.get(op)(rows[remaining], **params)
        dropped[op] = out
        remaining = [c for c in remaining if c not in set(out)]
    return dropped


def _unknown(op: str) -> None:
    raise EvaluationError(f"unknown feature selection operation {op!r}; valid: "
                          f"{SELECTORS.names()}")


def select_features(table: pd.DataFrame, *, features: Features = None,
                    operations: Sequence[str] | str = DEFAULT_OPERATIONS,
                    samples: Controls | str = None, **params) -> pd.DataFrame:
    """``table`` without the columns :func:`drop_features` names (reasons in ``.attrs``).

    Dropping every feature column is an :class:`EvaluationError` naming the operations.
    """
    dropped = drop_features(table, features=features, operations=operations, samples=samples,
                            **params)
    gone = {c for cols in dropped.values() for c in cols}
    cols = resolve_features(table, features)
    if len(gone) == len(cols):
        raise EvaluationError(
            f"feature selection dropped all {len(cols)} feature columns "
            f"({', '.join(f'{op}: {len(c)}' for op, c in dropped.items())}); loosen the "
            f"thresholds. First dropped: {preview(sorted(gone))}")
    out = table.drop(columns=[c for c in cols if c in gone])
    out.attrs["dropped_features"] = dropped
    return out
