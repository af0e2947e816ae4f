"""Nearest-neighbour MOA matching (NSC, NSCB) and k-NN label accuracy.

NSC ("not same compound", Ljosa et al. 2013): each treatment profile takes the MOA of its
nearest neighbour (cosine distance) among treatments of *other* compounds. NSCB ("not same
compound or batch", Ando et al. 2017) also excludes neighbours from the query's batch(es), and
drops MOAs whose treatments all lie in one batch (they can never be matched). Profiles that
share a batch with every profile of another compound (BBBC021's taxol 0.3, the positive control
on every plate) have no admissible neighbour: they are left out and listed in ``unmatched``.

Batch cells may hold one batch (``"Week1"``), a ``|``-joined set (``"Week1|Week2"``, what
:func:`cytodata.evaluate.profiles.aggregate` writes for treatments spanning batches) or a
list/set. With ``multi_batch="any"`` (Ando et al.; the default) a neighbour is excluded when
it shares ANY batch with the query; with ``multi_batch="median"`` (WS-DINO) a profile in several
batches is given the median of its batches (natural order, lower median: Week1..Week10 ->
Week5) and only neighbours in that batch are excluded, so taxol 0.3 is scored.

Every result carries a Wilson 95% interval (``ci_low``/``ci_high``; ``proportion_ci`` also
gives Clopper-Pearson ``"exact"``) and a chance level: the expected accuracy of a neighbour
drawn at random from each query's admissible neighbours.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
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


CI_METHODS = ("wilson", "exact", "normal")


def proportion_ci(correct: int, total: int, method: str = "wilson",
                  level: float = 0.95) -> tuple[float, float]:
    """Two-sided confidence interval of a proportion, as fractions in [0, 1].

    ``wilson`` (score interval; sane at 0/n and n/n), ``exact`` (Clopper-Pearson, never
    below the nominal level) or ``normal`` (Wald: p +/- z sqrt(p(1-p)/n), clipped).
    """
    if method not in CI_METHODS:
        raise EvaluationError(f"unknown interval method {method!r}; valid: {CI_METHODS}")
    if total == 0:
        return float("nan"), float("nan")
    if method == "normal":
        from scipy.stats import norm

        p = correct / total
        half = norm.ppf(0.5 + level / 2) * np.sqrt(p * (1 - p) / total)
        return max(0.0, p - half), min(1.0, p + half)
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=level,
                                                          method=method)
    return float(ci.low), float(ci.high)


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
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    chance: float = float("nan")
    #: profiles left out and why: columns ``profile``, the label column, ``reason``
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["profile", "reason"]))
    definition: str = ""

    def summary(self) -> dict:
        """Plain numbers for JSON/report tables."""
        return {"metric": self.name, "accuracy": self.accuracy, "correct": self.correct,
                "total": self.total, "ci95": self.ci95, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "ci_method": "wilson", "chance": self.chance,
                "dropped": list(self.dropped), "unmatched": [str(u) for u in self.unmatched],
                "excluded": self.excluded.astype(str).to_dict("records")}


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
            f"{what} column {column!r} not in the profiles; columns are "
            f"{preview(table.columns, 10)}"
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


def _chance(allowed: np.ndarray, truth: np.ndarray, ref_truth: np.ndarray | None = None
            ) -> float:
    """Mean over queries of the share of admissible neighbours with the query's label."""
    ref_truth = truth if ref_truth is None else ref_truth
    same = truth[:, None] == ref_truth[None, :]
    n_allowed = allowed.sum(axis=1)
    ok = n_allowed > 0
    if not ok.any():
        return float("nan")
    return float(((allowed & same).sum(axis=1)[ok] / n_allowed[ok]).mean())


def _result(name: str, table: pd.DataFrame, cols: list[str], truth: np.ndarray,
            pred: np.ndarray, neighbour: np.ndarray, dist: np.ndarray, label: str,
            dropped=(), unmatched=(), *, chance: float = float("nan"),
            neighbours: pd.DataFrame | None = None, excluded: pd.DataFrame | None = None,
            definition: str = "") -> MatchResult:
    """Assemble a MatchResult; ``neighbour`` holds the nearest neighbours' index labels.

    ``neighbours``: the neighbour rows' metadata (same order as the queries), copied into
    ``neighbour_<column>`` prediction columns so a reader sees which treatment matched.
    """
    ok = truth == pred
    preds = table.drop(columns=cols).copy()
    preds["predicted"] = pred
    preds["neighbour"] = neighbour
    if neighbours is not None:
        for col in neighbours.columns:
            preds[f"neighbour_{col}"] = neighbours[col].to_numpy()
    preds["distance"] = dist
    preds["correct"] = ok
    per = (pd.DataFrame({label: truth, "correct": ok})
           .groupby(label, sort=True).agg(correct=("correct", "sum"), total=("correct", "size")))
    per["accuracy"] = per["correct"] / per["total"]
    pairs = list(zip(per["correct"], per["total"], strict=True))
    per["ci95"] = [ci95(int(c), int(t)) for c, t in pairs]
    bounds = [proportion_ci(int(c), int(t)) for c, t in pairs]
    per["ci_low"] = [b[0] for b in bounds]
    per["ci_high"] = [b[1] for b in bounds]
    classes = sorted(set(truth) | set(pred))
    confusion = (pd.crosstab(pd.Series(truth, name="true"), pd.Series(pred, name="predicted"))
                 .reindex(index=classes, columns=classes, fill_value=0))
    correct, total = int(ok.sum()), len(ok)
    low, high = proportion_ci(correct, total)
    if excluded is None:
        excluded = pd.DataFrame(columns=["profile", label, "reason"])
    return MatchResult(name, correct / total, correct, total, ci95(correct, total),
                       per.reset_index(), confusion, preds, list(dropped), list(unmatched),
                       low, high, chance, excluded, definition)


def _neighbour_meta(table: pd.DataFrame, nn: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    keep = [c for c in columns if c in table.columns]
    return table[keep].iloc[nn].reset_index(drop=True)


NSC_DEFINITION = ("NSC (not-same-compound, Ljosa et al. 2013): each treatment profile takes the "
                  "MOA of its nearest neighbour (cosine) among profiles of other compounds; the "
                  "score is the share of treatments whose MOA is matched.")
NSCB_DEFINITION = ("NSCB (not-same-compound-or-batch, Ando et al. 2017): as NSC, and neighbours "
                   "from the query's batch are excluded too, so batch effects cannot help; MOAs "
                   "seen in a single batch are dropped.")


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
                   moa, chance=_chance(allowed, truth),
                   neighbours=_neighbour_meta(profiles, nn, [compound, "concentration", moa]),
                   definition=NSC_DEFINITION)


def _natural_key(text: str) -> list:
    """Sort key putting Week2 before Week10."""
    return [int(t) if t.isdigit() else t.casefold() for t in re.split(r"(\d+)", text)]


def median_batch(batches: frozenset[str]) -> str:
    """Return the lower median of a set of batches in natural order ({Week1..Week10} -> Week5)."""
    ordered = sorted(batches, key=_natural_key)
    return ordered[(len(ordered) - 1) // 2]


MULTI_BATCH: dict[str, Callable[[frozenset[str]], frozenset[str]]] = {
    "any": lambda s: s,
    "median": lambda s: frozenset([median_batch(s)]),
}


def nscb(profiles: pd.DataFrame, *, features: Features, moa: str = "moa",
         compound: str = "compound", batch: str = "batch",
         multi_batch: str = "any") -> MatchResult:
    """NSC that also excludes neighbours sharing a batch; single-batch MOAs are dropped.

    ``multi_batch``: how a profile seen in several batches counts: ``"any"`` (all of them;
    a profile sharing a batch with every other compound is left out, Ando et al.) or
    ``"median"`` (its median batch only, WS-DINO). ``excluded`` lists every profile left
    out with the reason.
    """
    if multi_batch not in MULTI_BATCH:
        raise EvaluationError(f"unknown multi_batch {multi_batch!r}; valid: {sorted(MULTI_BATCH)}")
    cols = resolve_features(profiles, features)
    truth = _labels(profiles, moa, "MOA")
    if batch not in profiles.columns:
        raise EvaluationError(f"NSCB needs a batch column {batch!r}; columns are "
                              f"{preview(profiles.columns, 10)}")
    sets = [MULTI_BATCH[multi_batch](s) for s in batch_sets(profiles[batch])]
    moa_batches: dict[str, set[str]] = {}
    for m, s in zip(truth, sets, strict=False):
        moa_batches.setdefault(m, set()).update(s)
    dropped = sorted(m for m, s in moa_batches.items() if len(s) < 2)
    keep = ~np.isin(truth, dropped)
    excluded = [{"profile": str(p), moa: m,
                 "reason": f"MOA {m!r} is only in batch {'|'.join(sorted(moa_batches[m]))}"}
                for p, m, k in zip(profiles.index, truth, keep, strict=False) if not k]
    if keep.sum() < 2:
        all_batches = sorted(set().union(*sets))
        raise EvaluationError(
            f"NSCB: every MOA lies in a single batch (batches present: {preview(all_batches)}); "
            "NSCB needs MOAs observed in at least two batches. Report NSC instead."
        )
    kept = profiles[keep]
    x = feature_matrix(kept, cols)
    comp = _labels(kept, compound, "compound")
    kept_sets = [s for s, k in zip(sets, keep, strict=False) if k]
    share = np.array([[not a.isdisjoint(b) for b in kept_sets] for a in kept_sets])
    allowed = (comp[:, None] != comp[None, :]) & ~share
    # a profile sharing a batch with every other-compound profile (e.g. a positive control on
    # every plate) has no admissible neighbour; the relation is symmetric, so it is never a
    # neighbour either: leave it out and list it in ``unmatched``
    lone = ~allowed.any(axis=1)
    unmatched = list(kept.index[lone])
    t_all = truth[keep]
    excluded += [{"profile": str(p), moa: m,
                  "reason": "shares a batch with every profile of another compound "
                            f"(batches {'|'.join(sorted(s, key=_natural_key))}): no admissible "
                            "neighbour"}
                 for p, m, s, lo in zip(kept.index, t_all, kept_sets, lone, strict=False) if lo]
    if lone.all():
        raise EvaluationError(
            f"NSCB: no profile has a neighbour of another compound and batch "
            f"(profiles {preview(kept.index)}); NSCB needs several batches per MOA"
        )
    kept, x, allowed = kept[~lone], x[~lone], allowed[~lone][:, ~lone]
    nn, dist = _nearest(x, allowed, kept, "other compound and batch")
    t = t_all[~lone]
    definition = NSCB_DEFINITION + (
        " A profile in several batches counts as its median batch (WS-DINO)."
        if multi_batch == "median" else
        " A profile in several batches excludes neighbours from all of them.")
    return _result("NSCB", kept, cols, t, t[nn], kept.index.to_numpy()[nn], dist, moa,
                   dropped, unmatched, chance=_chance(allowed, t),
                   neighbours=_neighbour_meta(kept, nn, [compound, "concentration", moa, batch]),
                   excluded=pd.DataFrame(excluded, columns=["profile", moa, "reason"]),
                   definition=definition)


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
                 fallback: str = "nearest", query_mask=None,
                 exclude_same: str | None = None) -> MatchResult:
    """k-NN majority-vote accuracy (CytoImageNet COOS-7 / CyCLOPS style).

    Without ``query_mask`` every row is a query against all others (``leave_one_out`` drops
    the row itself). With a boolean ``query_mask`` the masked rows are queries and the others
    the reference set (train/test). Ties in the vote go to ``fallback`` (``"nearest"``: the
    label of the nearest neighbour among the tied labels; ``"sorted"``: alphabetical).
    ``exclude_same``: a column (e.g. ``compound``); rows sharing the query's value are not
    neighbours (NSC's rule at the image level: replicates of the query's own compound cannot
    vote for its MOA). A query left without any neighbour is an error naming it.
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
    if exclude_same is not None:
        group = _labels(table, exclude_same, "exclude_same")
        dist[group[q][:, None] == group[ref][None, :]] = np.inf
        n_ref = int(np.isfinite(dist).sum(axis=1).min()) if len(q) else 0
        if n_ref < 1:
            lonely = table.index[q][~np.isfinite(dist).any(axis=1)]
            raise EvaluationError(f"k-NN with exclude_same={exclude_same!r}: rows {preview(lonely)} "
                                  f"have no neighbour of another {exclude_same!r}; drop them or add rows")
    kk = min(k, n_ref)
    if kk < 1:
        raise EvaluationError("k-NN needs at least one reference row per query")
    order = np.argsort(dist, axis=1, kind="stable")[:, :kk]
    vote = TIE_BREAKERS[fallback]
    pred = np.array([vote(y[ref][o], dist[i, o]) for i, o in enumerate(order)])
    nearest = ref[order[:, 0]]
    allowed = np.isfinite(dist)
    definition = (f"{kk}-NN accuracy: each row takes the majority {label!r} of its {kk} nearest "
                  f"rows ({metric} distance; "
                  + ("leave-one-out" if query_mask is None else "queries vs reference rows")
                  + (f"; rows of the query's own {exclude_same!r} excluded" if exclude_same else "")
                  + f"; ties: {fallback}); chance = share of admissible reference rows with the "
                  "query's label.")
    return _result(f"{kk}-NN", table.iloc[q], cols, y[q], pred, table.index.to_numpy()[nearest],
                   dist[np.arange(len(q)), order[:, 0]], label,
                   chance=_chance(allowed, y[q], y[ref]), definition=definition)
