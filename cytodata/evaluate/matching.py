"""Nearest-neighbour MOA matching (NSC, NSCB) and k-NN label accuracy.

NSC ("not same compound", Ljosa et al. 2013): each treatment profile takes the MOA of its
nearest neighbour (cosine distance) among treatments of *other* compounds. NSCB ("not same
compound or batch", Ando et al. 2017) also excludes neighbours from the query's batch(es), and
drops MOAs whose treatments all lie in one batch (they can never be matched). Profiles that
share a batch with every profile of another compound (BBBC021's taxol 0.3, the positive control
on every plate) have no admissible neighbour: they are left out and listed in ``unmatched``.

Batch cells may hold one batch (``"Week1"``), a ``|``-joined set (``"Week1|Week2"``, what
:func:`cytodata.evaluate.profiles.aggregate` writes for treatments spanning batches) or a
list/set. A neighbour is excluded when it shares ANY batch with the query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import EvaluationError, preview
from .profiles import Features, feature_matrix, resolve_features


def ci95(correct: int, total: int) -> float:
    """Normal-approximation 95% half-width of a proportion: 1.96*sqrt(p(1-p)/n)."""
    if total == 0:
        return float("nan")
    p = correct / total
    return 1.96 * float(np.sqrt(p * (1 - p) / total))


@dataclass
class MatchResult:
    """Accuracy of a nearest-neighbour label match, with its breakdown."""

    name: str
    accuracy: float
    correct: int
    total: int
    ci95: float
    per_moa: pd.DataFrame
    confusion: pd.DataFrame
    predictions: pd.DataFrame
    dropped: list = field(default_factory=list)
    unmatched: list = field(default_factory=list)

    def summary(self) -> dict:
        """Plain numbers for JSON/report tables."""
        return {"metric": self.name, "accuracy": self.accuracy, "correct": self.correct,
                "total": self.total, "ci95": self.ci95, "dropped": list(self.dropped),
                "unmatched": list(self.unmatched)}


def cosine_distance(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """(n, m) cosine distances 1 - cos; a zero vector is at distance 1 from everything."""
    y = x if y is None else y

    def unit(a):
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        return a / np.where(norm > 0, norm, 1.0)

    return 1.0 - unit(x) @ unit(y).T


def euclidean_distance(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """(n, m) Euclidean distances."""
    y = x if y is None else y
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return np.sqrt(np.clip(sq, 0, None))


DISTANCES: dict[str, Callable[..., np.ndarray]] = {
    "cosine": cosine_distance,
    "euclidean": euclidean_distance,
}


def _distance_fn(metric: str) -> Callable[..., np.ndarray]:
    try:
        return DISTANCES[metric]
    except KeyError:
        raise EvaluationError(f"unknown metric {metric!r}; valid: {sorted(DISTANCES)}") from None


def _labels(table: pd.DataFrame, column: str, what: str) -> np.ndarray:
    if column not in table.columns:
        raise EvaluationError(
            f"{what} column {column!r} not in the profiles; columns are {preview(table.columns, 10)}"
        )
    null = table[column].isna()
    if null.any():
        raise EvaluationError(
            f"{what} column {column!r} is NA in rows {preview(table.index[null])}; "
            "drop unannotated profiles (e.g. controls) before matching"
        )
    return table[column].astype(str).to_numpy()


def batch_sets(values: pd.Series) -> list[frozenset[str]]:
    """Each cell as a set of batches: ``"a|b"`` -> {a, b}; a list/set -> its items."""
    out = []
    for idx, v in values.items():
        if isinstance(v, (list, tuple, set, frozenset, np.ndarray)):
            items = frozenset(str(t) for t in v)
        elif v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            items = frozenset()
        else:
            items = frozenset(t for t in str(v).split("|") if t)
        if not items:
            raise EvaluationError(f"batch is missing in row {idx!r}; every profile needs a batch")
        out.append(items)
    return out


def _result(name: str, table: pd.DataFrame, cols: list[str], truth: np.ndarray,
            pred: np.ndarray, neighbour: np.ndarray, dist: np.ndarray, label: str,
            dropped=(), unmatched=()) -> MatchResult:
    """Assemble a MatchResult; ``neighbour`` holds the nearest neighbours' index labels."""
    ok = truth == pred
    preds = table.drop(columns=cols).copy()
    preds["predicted"] = pred
    preds["neighbour"] = neighbour
    preds["distance"] = dist
    preds["correct"] = ok
    per = (pd.DataFrame({label: truth, "correct": ok})
           .groupby(label, sort=True).agg(correct=("correct", "sum"), total=("correct", "size")))
    per["accuracy"] = per["correct"] / per["total"]
    per["ci95"] = [ci95(int(c), int(t)) for c, t in zip(per["correct"], per["total"])]
    classes = sorted(set(truth) | set(pred))
    confusion = (pd.crosstab(pd.Series(truth, name="true"), pd.Series(pred, name="predicted"))
                 .reindex(index=classes, columns=classes, fill_value=0))
    correct, total = int(ok.sum()), len(ok)
    return MatchResult(name, correct / total, correct, total, ci95(correct, total),
                       per.reset_index(), confusion, preds, list(dropped), list(unmatched))


def _nearest(x: np.ndarray, allowed: np.ndarray, table: pd.DataFrame, why: str):
    dist = cosine_distance(x)
    dist = np.where(allowed, dist, np.inf)
    empty = ~allowed.any(axis=1)
    if empty.any():
        raise EvaluationError(
            f"no allowed neighbour ({why}) for profiles {preview(table.index[empty])}; "
            "these treatments cannot be matched: add treatments or drop them"
        )
    nn = dist.argmin(axis=1)  # ties: the first row in table order
    return nn, dist[np.arange(len(x)), nn]


def nsc(profiles: pd.DataFrame, *, features: Features, moa: str = "moa",
        compound: str = "compound") -> MatchResult:
    """1-NN MOA accuracy over treatment profiles, neighbours of the same compound excluded."""
    cols = resolve_features(profiles, features)
    x = feature_matrix(profiles, cols)
    truth = _labels(profiles, moa, "MOA")
    comp = _labels(profiles, compound, "compound")
    if len(profiles) < 2:
        raise EvaluationError(f"NSC needs at least 2 treatment profiles, got {len(profiles)}")
    allowed = comp[:, None] != comp[None, :]
    nn, dist = _nearest(x, allowed, profiles, "other compound")
    return _result("NSC", profiles, cols, truth, truth[nn], profiles.index.to_numpy()[nn], dist,
                   moa)


def nscb(profiles: pd.DataFrame, *, features: Features, moa: str = "moa",
         compound: str = "compound", batch: str = "batch") -> MatchResult:
    """NSC that also excludes neighbours sharing any batch; single-batch MOAs are dropped."""
    cols = resolve_features(profiles, features)
    truth = _labels(profiles, moa, "MOA")
    if batch not in profiles.columns:
        raise EvaluationError(f"NSCB needs a batch column {batch!r}; columns are "
                              f"{preview(profiles.columns, 10)}")
    sets = batch_sets(profiles[batch])
    moa_batches: dict[str, set[str]] = {}
    for m, s in zip(truth, sets):
        moa_batches.setdefault(m, set()).update(s)
    dropped = sorted(m for m, s in moa_batches.items() if len(s) < 2)
    keep = ~np.isin(truth, dropped)
    if keep.sum() < 2:
        all_batches = sorted(set().union(*sets))
        raise EvaluationError(
            f"NSCB: every MOA lies in a single batch (batches present: {preview(all_batches)}); "
            "NSCB needs MOAs observed in at least two batches. Report NSC instead."
        )
    kept = profiles[keep]
    x = feature_matrix(kept, cols)
    comp = _labels(kept, compound, "compound")
    kept_sets = [s for s, k in zip(sets, keep) if k]
    share = np.array([[not a.isdisjoint(b) for b in kept_sets] for a in kept_sets])
    allowed = (comp[:, None] != comp[None, :]) & ~share
    # a profile sharing a batch with every other-compound profile (e.g. a positive control on
    # every plate) has no admissible neighbour; the relation is symmetric, so it is never a
    # neighbour either: leave it out and list it in ``unmatched``
    lone = ~allowed.any(axis=1)
    unmatched = list(kept.index[lone])
    if lone.all():
        raise EvaluationError(
            f"NSCB: no profile has a neighbour of another compound and batch "
            f"(profiles {preview(kept.index)}); NSCB needs several batches per MOA"
        )
    kept, x, allowed = kept[~lone], x[~lone], allowed[~lone][:, ~lone]
    nn, dist = _nearest(x, allowed, kept, "other compound and batch")
    t = truth[keep][~lone]
    return _result("NSCB", kept, cols, t, t[nn], kept.index.to_numpy()[nn], dist, moa,
                   dropped, unmatched)


def _vote_nearest(labels: np.ndarray, dists: np.ndarray) -> str:
    """Majority label; on a tie the label of the nearest neighbour among the tied labels."""
    values, counts = np.unique(labels, return_counts=True)
    tied = set(values[counts == counts.max()])
    for lab in labels[np.argsort(dists, kind="stable")]:
        if lab in tied:
            return lab
    raise AssertionError("unreachable")


def _vote_sorted(labels: np.ndarray, dists: np.ndarray) -> str:
    """Majority label; on a tie the alphabetically first of the tied labels."""
    values, counts = np.unique(labels, return_counts=True)
    return values[counts == counts.max()][0]


TIE_BREAKERS: dict[str, Callable[[np.ndarray, np.ndarray], str]] = {
    "nearest": _vote_nearest,
    "sorted": _vote_sorted,
}


def knn_accuracy(table: pd.DataFrame, *, features: Features, label: str, k: int = 11,
                 metric: str = "euclidean", leave_one_out: bool = True,
                 fallback: str = "nearest", query_mask=None) -> MatchResult:
    """k-NN majority-vote accuracy (CytoImageNet COOS-7 / CyCLOPS style).

    Without ``query_mask`` every row is a query against all others (``leave_one_out`` drops
    the row itself). With a boolean ``query_mask`` the masked rows are queries and the others
    the reference set (train/test). Ties in the vote go to ``fallback`` (``"nearest"``: the
    label of the nearest neighbour among the tied labels; ``"sorted"``: alphabetical).
    """
    if fallback not in TIE_BREAKERS:
        raise EvaluationError(f"unknown fallback {fallback!r}; valid: {sorted(TIE_BREAKERS)}")
    if k < 1:
        raise EvaluationError(f"k must be >= 1, got {k}")
    cols = resolve_features(table, features)
    x = feature_matrix(table, cols)
    y = _labels(table, label, "label")
    if query_mask is None:
        q = np.arange(len(table))
        ref = np.arange(len(table))
    else:
        mask = np.asarray(query_mask, dtype=bool)
        if mask.shape != (len(table),):
            raise EvaluationError(f"query_mask must have {len(table)} booleans, got {mask.shape}")
        q, ref = np.flatnonzero(mask), np.flatnonzero(~mask)
    dist = _distance_fn(metric)(x[q], x[ref])
    if query_mask is None and leave_one_out:
        np.fill_diagonal(dist, np.inf)
    n_ref = len(ref) - (1 if query_mask is None and leave_one_out else 0)
    kk = min(k, n_ref)
    if kk < 1:
        raise EvaluationError("k-NN needs at least one reference row per query")
    order = np.argsort(dist, axis=1, kind="stable")[:, :kk]
    vote = TIE_BREAKERS[fallback]
    pred = np.array([vote(y[ref][o], dist[i, o]) for i, o in enumerate(order)])
    nearest = ref[order[:, 0]]
    return _result(f"{kk}-NN", table.iloc[q], cols, y[q], pred, table.index.to_numpy()[nearest],
                   dist[np.arange(len(q)), order[:, 0]], label)
