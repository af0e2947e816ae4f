"""Mean average precision (mAP) retrieval with permutation p-values (copairs' definitions).

For each query profile, its *positive* pairs share every ``pos_sameby`` column and differ in
every ``pos_diffby`` column; its *negative* pairs share every ``neg_sameby`` column and differ
in every ``neg_diffby`` column. Candidates are ranked by decreasing similarity (ties: positives
first, as copairs), and AP = mean over positives of precision at the positive's rank. A query
without positives has AP = NaN and is left out of mAP.

mAP is the mean AP per group (``pos_sameby`` by default). Its p-value comes from a null of
``null_size`` random rankings per (n_pos, n_total) configuration of each member; the group null
is the sample-wise mean of its members' nulls and p = (#{null > mAP} + 1) / (null_size + 1).
p-values are corrected with Benjamini-Hochberg. The null of one configuration is seeded from
(seed, n_pos, n_total), so it does not depend on which other configurations occur.

Multi-label (copairs ``multilabel``): with ``multilabel="moa"`` the column holds a list of
labels per row (or ``a|b`` text); each (query, label) pair gets its own AP, positives are
rows carrying that label (and the other positive rules), negatives rows sharing no label
with the query (and the other negative rules); mAP is then per label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import EvaluationError, preview
from .profiles import Features, feature_matrix, resolve_features


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _cosine(x: np.ndarray) -> np.ndarray:
    u = _unit(x)
    return u @ u.T


def _correlation(x: np.ndarray) -> np.ndarray:
    return _cosine(x - x.mean(axis=1, keepdims=True))


def _euclidean(x: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(1)
    d = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0, None))
    return 1.0 / (1.0 + d)


#: similarity (larger = closer) by name, copairs' definitions
SIMILARITIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "cosine": _cosine,
    "abs_cosine": lambda x: np.abs(_cosine(x)),
    "correlation": _correlation,
    "euclidean": _euclidean,
}


def _as_list(cols) -> list[str]:
    return [cols] if isinstance(cols, str) else list(cols)


def pair_mask(meta: pd.DataFrame, sameby: Sequence[str], diffby: Sequence[str]) -> np.ndarray:
    """(n, n) bool: rows equal in all ``sameby`` and different in all ``diffby``; no self pairs."""
    n = len(meta)
    mask = np.ones((n, n), dtype=bool)
    for col in sameby:
        codes = pd.factorize(meta[col])[0]
        mask &= codes[:, None] == codes[None, :]
    for col in diffby:
        codes = pd.factorize(meta[col])[0]
        mask &= codes[:, None] != codes[None, :]
    np.fill_diagonal(mask, False)
    return mask


def _check_columns(meta: pd.DataFrame, cols: list[str]) -> None:
    missing = [c for c in cols if c not in meta.columns]
    if missing:
        raise EvaluationError(f"mAP: column(s) {missing} not in the table; columns are "
                              f"{preview(meta.columns, 10)}")
    null = meta[cols].isna().any(axis=1)
    if null.any():
        raise EvaluationError(f"mAP: pairing columns {cols} are NA in rows "
                              f"{preview(meta.index[null])}; fill or drop them")


def _ap_of(sim_row: np.ndarray, p_idx: np.ndarray, n_idx: np.ndarray) -> float:
    """AP of one query: positives ranked among positives + negatives (ties: positives first)."""
    s = np.concatenate([sim_row[p_idx], sim_row[n_idx]])
    rel = np.concatenate([np.ones(len(p_idx)), np.zeros(len(n_idx))])
    order = np.lexsort((-rel, -s))  # by similarity desc, positives first on ties
    rel = rel[order]
    hits = np.cumsum(rel)
    return float((hits / np.arange(1, len(rel) + 1) * rel).sum() / len(p_idx))


def label_sets(values: pd.Series) -> list[frozenset[str]]:
    """Each cell as a set of labels: a list/tuple/array, or ``a|b`` text; NA -> empty."""
    out = []
    for v in values:
        if isinstance(v, (list, tuple, set, frozenset, np.ndarray)):
            out.append(frozenset(str(t) for t in v))
        elif v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            out.append(frozenset())
        else:
            out.append(frozenset(t for t in str(v).split("|") if t))
    return out


def multilabel_average_precision(table: pd.DataFrame, *, features: Features, multilabel: str,
                                 pos_sameby=(), pos_diffby=(), neg_sameby=(), neg_diffby=(),
                                 distance: str = "cosine") -> pd.DataFrame:
    """Per (query, label) AP, copairs' multilabel definition (see the module docstring).

    Returns the metadata columns (``multilabel`` holding the one label scored) plus
    ``average_precision``, ``n_pos_pairs``, ``n_total_pairs``; rows whose label has no
    other carrier are left out.
    """
    if multilabel not in table.columns:
        raise EvaluationError(f"multilabel column {multilabel!r} not in the table; columns "
                              f"are {preview(table.columns, 10)}")
    pos_sameby = [c for c in _as_list(pos_sameby) if c != multilabel]
    neg_diffby = [c for c in _as_list(neg_diffby) if c != multilabel]
    pos_diffby, neg_sameby = _as_list(pos_diffby), _as_list(neg_sameby)
    if distance not in SIMILARITIES:
        raise EvaluationError(f"unknown distance {distance!r}; valid: {sorted(SIMILARITIES)}")
    cols = resolve_features(table, features)
    x = feature_matrix(table, cols)
    _check_columns(table, sorted(set(pos_sameby + pos_diffby + neg_sameby + neg_diffby)))
    labels = label_sets(table[multilabel])
    all_labels = sorted(set().union(*labels))
    carries = np.array([[lab in s for lab in all_labels] for s in labels], dtype=bool)
    shares = (carries.astype(np.int64) @ carries.T.astype(np.int64)) > 0
    pos_rule = pair_mask(table, pos_sameby, pos_diffby)
    neg = pair_mask(table, neg_sameby, neg_diffby) & ~shares if (neg_sameby or neg_diffby) \
        else ~shares
    np.fill_diagonal(neg, False)
    sim = SIMILARITIES[distance](x)
    meta = table.drop(columns=[*cols, multilabel])
    rows = []
    for li, lab in enumerate(all_labels):
        have = carries[:, li]
        for i in np.flatnonzero(have):
            p_idx = np.flatnonzero(have & pos_rule[i])
            if len(p_idx) == 0:
                continue
            n_idx = np.flatnonzero(neg[i])
            rows.append((i, lab, _ap_of(sim[i], p_idx, n_idx), len(p_idx),
                         len(p_idx) + len(n_idx)))
    if not rows:
        raise EvaluationError(f"multilabel mAP: no label of {multilabel!r} is carried by two "
                              "rows; nothing to retrieve")
    idx = [r[0] for r in rows]
    out = meta.iloc[idx].copy()
    out[multilabel] = [r[1] for r in rows]
    out["n_pos_pairs"] = [r[3] for r in rows]
    out["n_total_pairs"] = [r[4] for r in rows]
    out["average_precision"] = [r[2] for r in rows]
    return out


def average_precision(table: pd.DataFrame, *, features: Features, pos_sameby, pos_diffby=(),
                      neg_sameby=(), neg_diffby=(), distance: str = "cosine",
                      multilabel: str | None = None) -> pd.DataFrame:
    """Compute per-query AP: the metadata columns plus ``average_precision``.

    Also ``n_pos_pairs``, ``n_total_pairs`` (positives + negatives ranked).
    ``multilabel``: see the module docstring.
    """
    if multilabel is not None:
        return multilabel_average_precision(
            table, features=features, multilabel=multilabel, pos_sameby=pos_sameby,
            pos_diffby=pos_diffby, neg_sameby=neg_sameby, neg_diffby=neg_diffby,
            distance=distance)
    pos_sameby, pos_diffby = _as_list(pos_sameby), _as_list(pos_diffby)
    neg_sameby, neg_diffby = _as_list(neg_sameby), _as_list(neg_diffby)
    if not (pos_sameby or pos_diffby) or not (neg_sameby or neg_diffby):
        raise EvaluationError("mAP needs pos_sameby/pos_diffby and neg_sameby/neg_diffby rules")
    if distance not in SIMILARITIES:
        raise EvaluationError(f"unknown distance {distance!r}; valid: {sorted(SIMILARITIES)}")
    cols = resolve_features(table, features)
    x = feature_matrix(table, cols)
    _check_columns(table, sorted(set(pos_sameby + pos_diffby + neg_sameby + neg_diffby)))
    pos = pair_mask(table, pos_sameby, pos_diffby)
    neg = pair_mask(table, neg_sameby, neg_diffby)
    if not pos.any():
        raise EvaluationError(f"mAP: no positive pairs for pos_sameby={pos_sameby}, "
                              f"pos_diffby={pos_diffby}: each group needs >= 2 rows (replicates)")
    if not neg.any():
        raise EvaluationError(f"mAP: no negative pairs for neg_sameby={neg_sameby}, "
                              f"neg_diffby={neg_diffby}")
    sim = SIMILARITIES[distance](x)
    n = len(table)
    ap = np.full(n, np.nan)
    n_pos = pos.sum(1)
    n_total = n_pos + neg.sum(1)
    for i in np.flatnonzero(n_pos > 0):
        ap[i] = _ap_of(sim[i], np.flatnonzero(pos[i]), np.flatnonzero(neg[i]))
    out = table.drop(columns=cols).copy()
    out["n_pos_pairs"] = n_pos
    out["n_total_pairs"] = n_total
    out["average_precision"] = ap
    return out


def null_average_precision(n_pos: int, n_total: int, size: int, seed: int,
                           chunk: int = 2048) -> np.ndarray:
    """AP of ``size`` random rankings with ``n_pos`` positives among ``n_total`` (float64)."""
    rng = np.random.default_rng([seed, n_pos, n_total])
    out = np.empty(size)
    rank = np.arange(1, n_pos + 1)
    for start in range(0, size, chunk):
        m = min(chunk, size - start)
        perm = np.tile(np.arange(n_total, dtype=np.uint32), (m, 1))
        rng.permuted(perm, axis=1, out=perm)
        pos_ranks = np.sort(perm[:, :n_pos], axis=1) + 1  # 1-based ranks of the positives
        out[start:start + m] = (rank / pos_ranks).mean(axis=1)
    return out


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (step-up, monotone, clipped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(adj, 0, 1)
    return out


@dataclass
class MapResult:
    """Per-query AP and per-group mAP with p-values."""

    name: str
    ap: pd.DataFrame
    map: pd.DataFrame
    fdr: float

    @property
    def mean_map(self) -> float:
        """Mean of the per-group mAP."""
        return float(self.map["mean_average_precision"].mean())

    @property
    def fraction_retrieved(self) -> float:
        """Share of groups whose corrected p-value is below ``fdr``."""
        return float(self.map["below_corrected_p"].mean())

    def summary(self) -> dict:
        """Plain numbers for JSON/report tables."""
        return {"metric": self.name, "mean_mAP": self.mean_map, "groups": len(self.map),
                "fraction_retrieved": self.fraction_retrieved, "fdr": self.fdr}


def mean_average_precision(table: pd.DataFrame, *, features: Features, pos_sameby,
                           pos_diffby=(), neg_sameby=(), neg_diffby=(), group_by=None,
                           null_size: int = 10_000, seed: int = 0, fdr: float = 0.05,
                           distance: str = "cosine", name: str = "mAP",
                           multilabel: str | None = None) -> MapResult:
    """AP per query, then mAP, p-value and BH-corrected p-value per ``group_by`` group.

    With ``multilabel`` the groups default to the labels of that column.
    """
    ap = average_precision(table, features=features, pos_sameby=pos_sameby,
                           pos_diffby=pos_diffby, neg_sameby=neg_sameby,
                           neg_diffby=neg_diffby, distance=distance, multilabel=multilabel)
    default = [multilabel] if multilabel is not None else pos_sameby
    group_by = _as_list(default if group_by is None else group_by)
    valid = ap[ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)]
    confs = sorted(set(zip(valid["n_pos_pairs"], valid["n_total_pairs"], strict=False)))
    nulls = {c: null_average_precision(int(c[0]), int(c[1]), null_size, seed) for c in confs}
    rows = []
    for key, grp in valid.groupby(group_by, sort=True, observed=True):
        score = float(grp["average_precision"].mean())
        confs = zip(grp["n_pos_pairs"], grp["n_total_pairs"], strict=True)
        null = np.mean([nulls[c] for c in confs], axis=0)
        p = (np.sum(null > score) + 1) / (null_size + 1)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(group_by, key, strict=False)), "mean_average_precision": score,
                     "n_queries": len(grp), "p_value": float(p)})
    result = pd.DataFrame(rows, columns=[*group_by, "mean_average_precision", "n_queries",
                                         "p_value"])
    result["corrected_p_value"] = benjamini_hochberg(result["p_value"].to_numpy())
    result["below_p"] = result["p_value"] < fdr
    result["below_corrected_p"] = result["corrected_p_value"] < fdr
    return MapResult(name, ap, result, fdr)
