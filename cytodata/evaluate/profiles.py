"""Profiles: aggregate per-crop/per-image feature rows to images, wells and treatments.

The standard chain (Ando et al. 2017; WS-DINO) is crop -> image (median of crops, e.g. the 4
centre crops) -> well (mean, per plate) -> treatment (median over wells/plates). Each step is
one :func:`aggregate` call, so the chain is data: a tuple of :class:`Step`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import EvaluationError, preview
from ..schema import COLUMNS

#: how rows of one group are reduced (names valid for ``how=``)
REDUCERS: dict[str, str] = {"mean": "mean", "median": "median"}

Features = Sequence[str] | str | None


def feature_columns(table: pd.DataFrame, *, prefix: str | None = None,
                    regex: str | None = None) -> list[str]:
    """Numeric feature columns of ``table``, in table order.

    ``prefix`` keeps columns starting with it; ``regex`` keeps columns it matches
    (``re.search``); neither: every numeric column that is not a harmonized metadata column.
    """
    if prefix is not None:
        cols = [c for c in table.columns if str(c).startswith(prefix)]
    elif regex is not None:
        pattern = re.compile(regex)
        cols = [c for c in table.columns if pattern.search(str(c))]
    else:
        cols = [c for c in table.columns
                if c not in COLUMNS and pd.api.types.is_numeric_dtype(table[c])
                and not pd.api.types.is_bool_dtype(table[c])]
    if not cols:
        how = f"prefix {prefix!r}" if prefix is not None else (
            f"regex {regex!r}" if regex is not None else "numeric non-metadata columns")
        raise EvaluationError(
            f"no feature columns found by {how}; columns are {preview(table.columns, 10)}. "
            "Name the feature columns by their prefix: `cytodata evaluate ... --features emb_` "
            "(Python: features='emb_' or a list)."
        )
    return cols


def resolve_features(table: pd.DataFrame, features: Features) -> list[str]:
    """Return a list of feature column names from a list, a prefix string, or None (auto)."""
    if features is None:
        return feature_columns(table)
    if isinstance(features, str):
        return feature_columns(table, prefix=features)
    cols = list(features)
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise EvaluationError(
            f"feature column(s) {preview(missing)} not in the table; "
            f"columns are {preview(table.columns, 10)}"
        )
    return cols


def feature_matrix(table: pd.DataFrame, features: Features) -> np.ndarray:
    """Return the (n_rows, n_features) float64 matrix; NaN/inf rows are an error naming them."""
    cols = resolve_features(table, features)
    try:
        x = table[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"feature columns are not numeric ({exc}); check "
                              f"{preview(cols)}") from None
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise EvaluationError(
            f"{int(bad.sum())} row(s) have NaN/inf features: rows {preview(table.index[bad])}. "
            "Drop or re-embed those images before evaluating."
        )
    return x


def _check_keys(table: pd.DataFrame, by: Sequence[str]) -> None:
    missing = [c for c in by if c not in table.columns]
    if missing:
        raise EvaluationError(
            f"group column(s) {missing} not in the table; columns are {preview(table.columns, 10)}"
        )
    null = table[list(by)].isna().any(axis=1)
    if null.any():
        raise EvaluationError(
            f"group key(s) {list(by)} are missing (NA) in rows {preview(table.index[null])}; "
            "fill them or drop those rows before aggregating."
        )


def _join_unique(values: pd.Series) -> object:
    """One value kept as is; several distinct values joined as sorted ``a|b`` text."""
    uniq = values.dropna().unique()
    if len(uniq) == 0:
        return pd.NA
    if len(uniq) == 1:
        return uniq[0]
    tokens = sorted({t for v in uniq for t in str(v).split("|")})
    return "|".join(tokens)


def _carry_columns(table: pd.DataFrame, grouped, extra: Sequence[str],
                   index: pd.Index) -> pd.DataFrame:
    """Per group: the one value of each carry column, or its sorted ``a|b`` join.

    Vectorized for the usual case (one value per group); only groups holding several
    distinct values go through :func:`_join_unique`.
    """
    codes = grouped.ngroup().to_numpy()
    out = {}
    for col in extra:
        values = table[col]
        try:
            frame = pd.DataFrame({"g": codes, "v": values.to_numpy()}).dropna()
            distinct = frame.drop_duplicates()
        except TypeError:  # unhashable cells (lists): the slow, general path
            out[col] = grouped[col].agg(_join_unique).to_numpy()
            continue
        n_unique = distinct.groupby("g")["v"].size()
        first = distinct.groupby("g")["v"].first()
        result = pd.Series(pd.NA, index=range(len(index)), dtype=object)
        result.loc[first.index] = first.to_numpy(dtype=object)
        for g in n_unique.index[n_unique.to_numpy() > 1]:
            result.loc[g] = _join_unique(distinct.loc[distinct["g"] == g, "v"])
        out[col] = result.to_numpy()
    return pd.DataFrame(out, index=index)


def aggregate(table: pd.DataFrame, *, features: Features, by: Sequence[str] | str,
              how: str = "mean", carry: Sequence[str] = (), count: str | None = None
              ) -> pd.DataFrame:
    """Reduce feature rows per group of ``by`` (mean or median), keys kept as columns.

    ``carry``: metadata columns kept per group; several distinct values are joined with
    ``|`` in sorted order (a treatment spanning batches gets ``Week1|Week2``).
    ``count``: name of a column holding the number of rows per group.
    """
    if how not in REDUCERS:
        raise EvaluationError(f"unknown aggregation {how!r}; valid: {sorted(REDUCERS)}")
    by = [by] if isinstance(by, str) else list(by)
    _check_keys(table, by)
    cols = resolve_features(table, features)
    feature_matrix(table, cols)  # NaN check with row names
    grouped = table.groupby(by, sort=True, observed=True, dropna=False)
    out = grouped[cols].agg(REDUCERS[how])
    extra = [c for c in carry if c in table.columns and c not in by]
    parts = [out]
    if extra:
        parts.append(_carry_columns(table, grouped, extra, out.index))
    if count:
        parts.append(grouped.size().rename(count))
    out = pd.concat(parts, axis=1) if len(parts) > 1 else out
    keys = out.index.to_frame(index=False)
    out = pd.concat([keys, out.reset_index(drop=True)], axis=1)
    # one block per dtype: later column assignments on wide profiles stay cheap
    return out[by + extra + ([count] if count else []) + cols].copy()


@dataclass(frozen=True)
class Step:
    """One aggregation level: group keys and the reducer."""

    by: tuple[str, ...]
    how: str = "mean"


#: crop -> image (median) -> well (mean per plate) -> treatment (median); Ando et al./WS-DINO
STANDARD_CHAIN: tuple[Step, ...] = (
    Step(("image_id",), "median"),
    Step(("plate", "well"), "mean"),
    Step(("compound", "concentration"), "median"),
)
#: metadata carried through the chain
STANDARD_CARRY: tuple[str, ...] = ("moa", "batch", "plate", "well", "control_type", "compound",
                                   "concentration")


def chain(table: pd.DataFrame, *, features: Features, steps: Sequence[Step] = STANDARD_CHAIN,
          carry: Sequence[str] = STANDARD_CARRY, count: str | None = "n_rows") -> pd.DataFrame:
    """Apply aggregation ``steps`` in order; ``carry`` columns follow (joined with ``|``).

    A step whose keys are missing from the table (e.g. no ``image_id`` on image-level rows
    without crops) is an error: drop it from ``steps`` instead.
    """
    cols = resolve_features(table, features)
    out = table
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        # the count of the last step is the replicate count (rows of the previous level)
        out = aggregate(out, features=cols, by=step.by, how=step.how, carry=carry,
                        count=count if last else None)
    return out


def center_crop_boxes(height: int, width: int, size: int, n: int = 4
                      ) -> list[tuple[int, int, int, int]]:
    """``n`` (4) ``size``x``size`` boxes tiling the image centre 2x2: (y0, x0, y1, x1) pixels.

    WS-DINO embeds the four centre crops of each field and takes their median as the image
    embedding; the boxes cover the central ``2*size`` square.
    """
    if n != 4:
        raise EvaluationError(f"center_crop_boxes supports n=4 (a 2x2 grid), got {n}")
    if 2 * size > min(height, width):
        raise EvaluationError(
            f"4 centre crops of {size}px do not fit a {height}x{width} image; use size <= "
            f"{min(height, width) // 2}"
        )
    y0, x0 = (height - 2 * size) // 2, (width - 2 * size) // 2
    return [(y0 + dy, x0 + dx, y0 + dy + size, x0 + dx + size)
            for dy in (0, size) for dx in (0, size)]


CONSENSUS = ("median", "mean", "modz")


def _modz_weights(x: np.ndarray, method: str, min_weight: float, precision: int) -> np.ndarray:
    """Pycytominer's MODZ weights of the (n, d) replicate rows (sum to ~1, rounded)."""
    n = len(x)
    if n == 1:
        return np.ones(1)
    if method == "pearson" and np.isfinite(x).all():
        cor = np.corrcoef(x)
    else:
        cor = pd.DataFrame(x.T).corr(method=method).to_numpy()
    cor = cor.copy()
    np.fill_diagonal(cor, np.nan)
    raw = np.nanmean(np.clip(cor, 0, None), axis=1)
    raw = np.clip(np.nan_to_num(raw, nan=min_weight), min_weight, None)
    total = raw.sum()
    weights = raw / total if total > 0 else np.full(n, 1 / n)
    return np.round(weights, precision)


def consensus(table: pd.DataFrame, *, features: Features, by: Sequence[str] | str,
              how: str = "median", carry: Sequence[str] = (), count: str | None = None,
              modz_method: str = "spearman", min_weight: float = 0.01,
              precision: int = 4) -> pd.DataFrame:
    """Consensus profiles per ``by`` group, as pycytominer's ``consensus``.

    ``how``: ``median``/``mean`` (as :func:`aggregate`) or ``modz`` (moderated z-score,
    Subramanian et al. 2017): replicates weighted by their mean positive ``modz_method``
    (Spearman) correlation with the other replicates, floored at ``min_weight``, normalized
    and rounded to ``precision`` decimals, then summed.
    """
    if how not in CONSENSUS:
        raise EvaluationError(f"unknown consensus {how!r}; valid: {CONSENSUS}")
    if how != "modz":
        return aggregate(table, features=features, by=by, how=how, carry=carry, count=count)
    if modz_method not in ("pearson", "spearman", "kendall"):
        raise EvaluationError(f"unknown modz_method {modz_method!r}; valid: pearson, "
                              "spearman, kendall")
    by = [by] if isinstance(by, str) else list(by)
    base = aggregate(table, features=features, by=by, how="mean", carry=carry, count=count)
    cols = resolve_features(table, features)
    x = feature_matrix(table, cols)
    grouped = table.groupby(by, sort=True, observed=True, dropna=False)
    rows = np.empty((len(base), len(cols)))
    for i, (_, idx) in enumerate(grouped.indices.items()):
        block = x[idx]
        rows[i] = _modz_weights(block, modz_method, min_weight, precision) @ block
    base[cols] = rows
    return base
