"""The Cell Painting CNN's evaluation (Moshkov et al. 2024), as its released notebooks compute it.

Sources: broadinstitute/DeepProfilerExperiments@bf5eaa0 ``profiling/profiling.py`` (whitening),
``profiling/quality.py`` (enrichment), ``profiling/metrics.py`` (interpolated precision-recall)
and ``bbbc022/01-create-profiles.ipynb`` / ``04-downstream-analysis.ipynb`` (the chain and the
metrics). Pure functions over arrays; :func:`profiles` and :func:`score` are what the
``cellpainting-cnn`` protocol (``cytodata.evaluate.protocols``) runs:

cells -> site median (01 cell 8) -> well mean (cell 11) -> whitening fitted on the control
wells, ``1 / sqrt(eig + lambda)`` with ``lambda = 1e-2`` (cell 1 REG_PARAM, cell 13;
profiling.py:5-22) -> treatment mean (cell 17) -> cosine similarity (cell 23); then over the
treatments with an MOA (cell 21): enrichment at the top 1% (04 cell 10, quality.py:5-18),
precision at the top 1% (cells 14, 17), recall at the top 10% (cells 20, 23) and the mean of the
interpolated precision-recall curve (cell 26, metrics.py:22-61).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import EvaluationError

#: the notebooks' whitening regulariser (01-create-profiles.ipynb cell 1: REG_PARAM = 1e-2)
REG_PARAM = 1e-2


def whiten(controls: np.ndarray, x: np.ndarray, lam: float = REG_PARAM) -> np.ndarray:
    """ZCA whitening fitted on ``controls`` (n, d), applied to ``x`` (m, d).

    ``mu`` = control mean; ``C = Xc^T Xc / n`` (population covariance); ``W = V diag(1 /
    sqrt(s + lam)) V^T`` (profiling.py:5-22, ``rotate=True``); returns ``(x - mu) W``.
    """
    controls = np.asarray(controls, dtype=np.float64)
    if len(controls) < 2:
        raise EvaluationError(f"whitening needs at least 2 control wells, got {len(controls)}; "
                              "check the control column/value")
    mu = controls.mean(axis=0)
    xc = controls - mu
    cov = xc.T @ xc / xc.shape[0]
    s, v = np.linalg.eigh(cov)
    w = (v / np.sqrt(np.clip(s, 0, None) + lam)) @ v.T
    return (np.asarray(x, dtype=np.float64) - mu) @ w


def cosine_similarity(x: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of ``x`` (zero rows: similarity 0)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norm, out=np.zeros_like(x, dtype=np.float64), where=norm > 0)
    return unit @ unit.T


def moa_matches(moas: list[str]) -> np.ndarray:
    """``(n, n)`` bool: treatments share an MOA (``|``-separated lists: any in common; 04 cell 7).

    The diagonal is True, as in the notebook.
    """
    sets = [set(str(m).split("|")) for m in moas]
    return np.array([[bool(a & b) for b in sets] for a in sets])


def _queries(matches: np.ndarray) -> np.ndarray:
    """Treatments with at least one other of their MOA (``matches.sum(axis=0) > 1``)."""
    return matches.sum(axis=0) > 1


def enrichment(sim: np.ndarray, matches: np.ndarray, percentile: float = 99.0) -> dict:
    """Fold enrichment of same-MOA pairs above each query's ``percentile`` of similarities.

    Per query (04 cell 10, quality.py:5-18): the other treatments' similarities; threshold =
    ``np.percentile(., percentile)``; one-sided Fisher exact test on (above, same MOA); an
    infinite odds ratio is replaced by the count of (below, other MOA), as the code does.
    Returns ``{"mean": mean odds ratio, "per_query": [...], "p_values": [...]}``.
    """
    from scipy.stats import fisher_exact

    odds, pvals = [], []
    for i in np.flatnonzero(_queries(matches)):
        idx = np.arange(sim.shape[1]) != i
        s, m = sim[i, idx], matches[i, idx]
        thr = np.percentile(s, percentile)
        above = s > thr
        v11, v12 = int(np.sum(above & m)), int(np.sum(above & ~m))
        v21, v22 = int(np.sum(~above & m)), int(np.sum(~above & ~m))
        ratio, p = fisher_exact([[v11, v12], [v21, v22]], alternative="greater")
        odds.append(float(v22) if np.isinf(ratio) else float(ratio))
        pvals.append(float(p))
    return {"mean": float(np.mean(odds)) if odds else float("nan"), "per_query": odds,
            "p_values": pvals}


def _ranked_others(sim: np.ndarray, i: int) -> np.ndarray:
    """Columns of row ``i`` by decreasing similarity, the query itself left out."""
    order = np.argsort(-sim[i], kind="stable")
    return order[order != i]


def precision_at(sim: np.ndarray, matches: np.ndarray, k: int) -> float:
    """Mean over queries of the share of same-MOA treatments among the ``k`` most similar others
    (04 cells 14, 17: ``metrics.precision_at_k(matches[i, ranking[1:]], k)``).
    """
    vals = [float(np.mean(matches[i, _ranked_others(sim, i)[:k]]))
            for i in np.flatnonzero(_queries(matches))]
    return float(np.mean(vals)) if vals else float("nan")


def recall_at(sim: np.ndarray, matches: np.ndarray, k: int) -> float:
    """Mean over queries of ``sum(matches[i, ranking[1:k]]) / sum(matches[i, :])`` (04 cell 20).

    As the code: the ``k - 1`` most similar others are counted, and the denominator counts the
    query itself (the diagonal of ``matches`` is True), so a query with ``p`` same-MOA others
    reaches at most ``p / (p + 1)``.
    """
    vals = [float(np.sum(matches[i, _ranked_others(sim, i)[:k - 1]]) / np.sum(matches[i]))
            for i in np.flatnonzero(_queries(matches))]
    return float(np.mean(vals)) if vals else float("nan")


def interpolated_map(sim: np.ndarray, matches: np.ndarray) -> dict:
    """The mean of the interpolated precision-recall curve over queries (metrics.py:22-61).

    Self matches are removed first (similarity -1, not a match), so queries are treatments with
    at least two others of their MOA; each query's curve is the running maximum of precision,
    read at ``n`` recall points ``linspace(1, 0, n)`` the way the code steps through them;
    curves are averaged point by point and the mAP is their mean. Returns ``{"map",
    "recall", "precision", "queries"}``. The per-query curve is scikit-learn's
    ``precision_recall_curve``, as in the notebook (scikit-learn >= 1.1 returns every threshold;
    older versions stopped at full recall, which can only raise the first curve points).
    """
    from sklearn.metrics import precision_recall_curve

    sim = np.array(sim, dtype=np.float64, copy=True)
    y = np.array(matches, dtype=bool, copy=True)
    np.fill_diagonal(sim, -1)
    np.fill_diagonal(y, False)
    n = y.shape[0]
    recall_axis = np.linspace(0.0, 1.0, num=n)[::-1]
    curves = []
    for t in np.flatnonzero(y.sum(axis=0) > 1):
        precision_t, recall_t, _ = precision_recall_curve(y[t], sim[t])
        best = np.maximum.accumulate(precision_t)
        interp = np.zeros_like(recall_axis)
        j = 0
        for i in range(n):
            interp[i] = best[j]
            while recall_axis[i] < recall_t[j]:
                j += 1
        curves.append(interp)
    if not curves:
        return {"map": float("nan"), "recall": recall_axis, "precision": np.full(n, np.nan),
                "queries": 0}
    curve = np.mean(curves, axis=0)
    return {"map": float(np.mean(curve)), "recall": recall_axis, "precision": curve,
            "queries": len(curves)}


def profiles(table: pd.DataFrame, cols: list[str], *, treatment: str, plate: str, well: str,
             site: str | None, is_control: np.ndarray, lam: float = REG_PARAM
             ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Rows (cells, sites or wells) -> whitened well profiles -> treatment profiles.

    Cells (several rows per ``(plate, well, site)``) are reduced to the site median, sites to
    the well mean; a well-level table passes through. Returns ``(wells, treatments, counts)``:
    whitened wells (with ``treatment`` and ``is_control``) and treatment means of the
    non-control wells.
    """
    keycols = [plate, well] + ([site] if site else [])
    keys = table[keycols].reset_index(drop=True)
    feat = pd.DataFrame(table[cols].to_numpy(np.float64), columns=cols)
    meta = keys.assign(**{treatment: table[treatment].to_numpy(),
                          "_control": np.asarray(is_control, dtype=bool)})
    counts = {"rows": len(feat)}
    if site and keys.duplicated().any():
        feat = feat.groupby([keys[c] for c in keycols], sort=True, dropna=False).median()
        meta = meta.groupby(keycols, sort=True, dropna=False).first()
        keys, feat = meta.index.to_frame(index=False), feat.reset_index(drop=True)
        meta = meta.reset_index()
        counts["sites"] = len(feat)
    by = [keys[plate].reset_index(drop=True), keys[well].reset_index(drop=True)]
    mixed = meta.groupby([plate, well], dropna=False)[treatment].nunique()
    if (mixed > 1).any():
        raise EvaluationError(f"wells {preview_index(mixed[mixed > 1].index)} hold several "
                              f"treatments in column {treatment!r}; one treatment per well")
    means = feat.groupby(by, sort=True, dropna=False).mean()
    first = meta.groupby([plate, well], sort=True, dropna=False)[[treatment, "_control"]].first()
    wells = pd.concat([first, means], axis=1).reset_index()
    counts["wells"] = len(wells)
    ctrl = wells["_control"].to_numpy(bool)
    counts["control_wells"] = int(ctrl.sum())
    x = wells[cols].to_numpy(np.float64)
    wells[cols] = whiten(x[ctrl], x, lam)
    treat = wells[~ctrl].groupby(treatment, sort=True)[cols].mean()
    counts["treatments"] = len(treat)
    return wells, treat, counts


def preview_index(index, n: int = 5) -> str:
    items = [str(i) for i in list(index)[:n]]
    return ", ".join(items) + (f" (+{len(index) - n} more)" if len(index) > n else "")


def score(treat: pd.DataFrame, moas: pd.Series) -> dict:
    """The four metrics over treatment profiles with an MOA (index = treatment).

    ``k`` for precision = ``max(int(0.01 n), 1)`` and for recall ``10 k`` (04 cells 17, 23),
    ``n`` = treatments with an MOA. Chance levels beside each: the expected value under a random
    ranking (enrichment 1; precision the mean share of same-MOA others; recall ``(k' / (n - 1))
    p / (p + 1)`` with ``k' = 10 k - 1``; mAP approximately the mean share of same-MOA others).
    """
    keep = moas.reindex(treat.index).notna().to_numpy()
    treat = treat[keep]
    names = moas.reindex(treat.index).astype(str).tolist()
    n = len(treat)
    if n < 3:
        raise EvaluationError(f"{n} treatment(s) with an MOA; the cellpainting-cnn metrics need "
                              "at least 3 (check the moa column)")
    sim = cosine_similarity(treat.to_numpy(np.float64))
    match = moa_matches(names)
    k = max(int(n * 0.01), 1)
    q = _queries(match)
    pos = match.sum(axis=1) - 1
    share = (pos / (n - 1))[q]
    kr = min(10 * k - 1, n - 1)
    out = {"enrichment_top1": enrichment(sim, match, 99.0)["mean"],
           "precision_top1": precision_at(sim, match, k),
           "recall_top10": recall_at(sim, match, 10 * k),
           "map": interpolated_map(sim, match)["map"],
           "k_precision": k, "k_recall": 10 * k, "treatments": n, "queries": int(q.sum()),
           "chance": {"enrichment_top1": 1.0,
                      "precision_top1": float(share.mean()) if q.any() else float("nan"),
                      "recall_top10": float(np.mean(kr / (n - 1) * pos[q] / (pos[q] + 1)))
                      if q.any() else float("nan"),
                      "map": float(share.mean()) if q.any() else float("nan")}}
    return out


__all__ = ["REG_PARAM", "whiten", "cosine_similarity", "moa_matches", "enrichment",
           "precision_at", "recall_at", "interpolated_map", "profiles", "score"]
