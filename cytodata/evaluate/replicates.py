"""Replicate and MOA consistency metrics as cytominer-eval / copairs users know them.

- :func:`percent_replicating` (Way et al. 2022): per group (a treatment's wells), the median
  pairwise similarity of its members; the group is "replicating" when that median exceeds
  the ``quantile`` (95th percentile) of a null of medians over random sets of the same size
  drawn from *different* groups. The score is the share of groups that replicate.
- :func:`percent_matching`: the same over treatment profiles grouped by MOA, counting only
  pairs of different compounds (``diff_by="compound"``).
- :func:`grit` (cytominer-eval): per profile, its similarities to its replicates z-scored
  against its similarities to the control profiles (mean, population std), averaged; then
  averaged per group. Above ~1: the replicates resemble each other more than controls.
- :func:`precision_at_k` / :func:`hit_at_k`: rank every other profile by similarity; share
  of the top k in the query's group, and share of queries with at least one group member in
  the top k. Rows of the same group that do not differ in ``diff_by`` are not ranked.
- :func:`enrichment` (cytominer-eval): pairs above the ``percentile`` of all pairwise
  similarities; odds ratio (Fisher's exact test, one-sided) of same-group pairs among them.

Similarities are copairs' (``correlation`` = Pearson across features, ``cosine``...).
Every share comes with a Wilson 95% interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import EvaluationError, preview
from .matching import proportion_ci
from .normalize import Controls, control_mask
from .profiles import Features, feature_matrix, resolve_features
from .retrieval import SIMILARITIES


def _as_list(cols) -> list[str]:
    return [] if cols is None else [cols] if isinstance(cols, str) else list(cols)


def _codes(table: pd.DataFrame, cols: list[str], what: str) -> np.ndarray:
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise EvaluationError(f"{what}: column(s) {missing} not in the table; columns are "
                              f"{preview(table.columns, 10)}")
    null = table[cols].isna().any(axis=1)
    if null.any():
        raise EvaluationError(f"{what}: {cols} are NA in rows {preview(table.index[null])}; "
                              "fill or drop them")
    if not cols:
        return np.zeros(len(table), dtype=np.int64)
    return table.groupby(cols, sort=True, observed=True).ngroup().to_numpy()


def _similarity(table: pd.DataFrame, features: Features, similarity: str) -> np.ndarray:
    if similarity not in SIMILARITIES:
        raise EvaluationError(f"unknown similarity {similarity!r}; valid: {sorted(SIMILARITIES)}")
    return SIMILARITIES[similarity](feature_matrix(table, resolve_features(table, features)))


@dataclass
class ReplicationResult:
    """Share of groups whose within-group similarity beats a null of non-replicates."""

    name: str
    fraction: float
    strong: int
    total: int
    ci_low: float
    ci_high: float
    per_group: pd.DataFrame
    quantile: float
    null: dict = field(default_factory=dict, repr=False)
    definition: str = ""

    @property
    def accuracy(self) -> float:
        """Alias of ``fraction`` so tables of results read alike."""
        return self.fraction

    def summary(self) -> dict:
        """Plain numbers for JSON/report tables."""
        return {"metric": self.name, "fraction": self.fraction, "strong": self.strong,
                "total": self.total, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "ci_method": "wilson", "chance": 1 - self.quantile,
                "skipped": self.per_group.loc[self.per_group["median_similarity"].isna()]
                .iloc[:, 0].astype(str).tolist()}


def percent_replicating(table: pd.DataFrame, *, features: Features, group_by, diff_by=(),
                        similarity: str = "correlation", null_size: int = 1000,
                        quantile: float = 0.95, seed: int = 0,
                        name: str = "percent replicating") -> ReplicationResult:
    """Share of ``group_by`` groups whose median within-group similarity beats the null.

    Groups with fewer than 2 members (or no pair differing in ``diff_by``) are listed in
    ``per_group`` with a NaN median and not counted.
    """
    group_by, diff_by = _as_list(group_by), _as_list(diff_by)
    if not group_by:
        raise EvaluationError(f"{name}: group_by must name at least one column")
    if not 0 < quantile < 1:
        raise EvaluationError(f"{name}: quantile={quantile} must be in (0, 1)")
    codes = _codes(table, group_by, name)
    diff = [_codes(table, [c], name) for c in diff_by]
    sim = _similarity(table, features, similarity)
    rows, n_groups = [], codes.max() + 1 if len(codes) else 0
    members = [np.flatnonzero(codes == g) for g in range(n_groups)]
    sizes: set[int] = set()
    for _g, idx in enumerate(members):
        iu, ju = np.triu_indices(len(idx), k=1)
        ok = np.ones(len(iu), dtype=bool)
        for d in diff:
            ok &= d[idx[iu]] != d[idx[ju]]
        key = table.iloc[idx[0]][group_by].tolist()
        med = float(np.median(sim[idx[iu[ok]], idx[ju[ok]]])) if ok.any() else float("nan")
        if ok.any():
            sizes.add(len(idx))
        rows.append({**dict(zip(group_by, key, strict=True)), "n": len(idx),
                     "n_pairs": int(ok.sum()), "median_similarity": med})
    null = {}
    for k in sorted(sizes):
        if k > n_groups:
            raise EvaluationError(f"{name}: a group has {k} members but there are only "
                                  f"{n_groups} groups to draw a null of {k} non-replicates from")
        rng = np.random.default_rng([seed, k])
        iu, ju = np.triu_indices(k, k=1)
        draws = np.empty(null_size)
        for s in range(null_size):
            picked = [rng.choice(members[g]) for g in rng.choice(n_groups, size=k, replace=False)]
            p = np.asarray(picked)
            draws[s] = np.median(sim[p[iu], p[ju]])
        null[k] = draws
    per = pd.DataFrame(rows)
    per["threshold"] = [np.quantile(null[n], quantile) if n in null and np.isfinite(m)
                        else np.nan
                        for n, m in zip(per["n"], per["median_similarity"], strict=True)]
    per["replicating"] = per["median_similarity"] > per["threshold"]
    scored = per["median_similarity"].notna()
    if not scored.any():
        raise EvaluationError(f"{name}: no group of {group_by} has two members"
                              + (f" differing in {diff_by}" if diff_by else "")
                              + "; nothing to score")
    strong, total = int(per.loc[scored, "replicating"].sum()), int(scored.sum())
    low, high = proportion_ci(strong, total)
    definition = (f"{name}: share of {'/'.join(group_by)} groups whose median pairwise "
                  f"{similarity} similarity"
                  + (f" (pairs differing in {'/'.join(diff_by)})" if diff_by else "")
                  + f" exceeds the {100 * quantile:g}th percentile of {null_size} random sets of"
                  f" the same size from different groups (chance: {100 * (1 - quantile):g}%).")
    return ReplicationResult(name, strong / total, strong, total, low, high, per, quantile,
                             null, definition)


def percent_matching(table: pd.DataFrame, *, features: Features, group_by="moa",
                     diff_by="compound", **kw) -> ReplicationResult:
    """Percent replicating over MOA groups, counting pairs of different compounds only."""
    kw.setdefault("name", "percent matching")
    return percent_replicating(table, features=features, group_by=group_by, diff_by=diff_by,
                               **kw)


@dataclass
class ScoreResult:
    """A per-group score table and its mean (grit, precision@k, hit@k)."""

    name: str
    score: float
    per_group: pd.DataFrame
    per_query: pd.DataFrame
    definition: str = ""
    total: int = 0
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    chance: float = float("nan")

    @property
    def accuracy(self) -> float:
        """Alias of ``score``."""
        return self.score

    def summary(self) -> dict:
        """Plain numbers for JSON/report tables."""
        return {"metric": self.name, "score": self.score, "total": self.total,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "chance": self.chance}


def grit(table: pd.DataFrame, *, features: Features, group_by, controls: Controls,
         similarity: str = "correlation") -> ScoreResult:
    """cytominer-eval's grit per group (controls are not scored themselves)."""
    group_by = _as_list(group_by)
    codes = _codes(table, group_by, "grit")
    ctrl = control_mask(table, controls)
    if ctrl.sum() < 2:
        raise EvaluationError(f"grit needs at least 2 control profiles, got {int(ctrl.sum())} "
                              f"(controls={controls!r})")
    sim = _similarity(table, features, similarity)
    rows = []
    for i in np.flatnonzero(~ctrl):
        reps = np.flatnonzero((codes == codes[i]) & ~ctrl)
        reps = reps[reps != i]
        c_idx = np.flatnonzero(ctrl)
        c_idx = c_idx[c_idx != i]
        if len(reps) == 0:
            continue
        mu, sd = sim[i, c_idx].mean(), sim[i, c_idx].std()
        value = float(np.mean((sim[i, reps] - mu) / sd)) if sd > 0 else float("nan")
        rows.append({"profile": str(table.index[i]), **table.iloc[i][group_by].to_dict(),
                     "grit": value})
    per_query = pd.DataFrame(rows, columns=["profile", *group_by, "grit"])
    if per_query.empty:
        raise EvaluationError(f"grit: no non-control group of {group_by} has two profiles")
    per_group = per_query.groupby(group_by, sort=True)["grit"].mean().reset_index()
    definition = (f"grit: similarity ({similarity}) of a profile to its {'/'.join(group_by)} "
                  "replicates, z-scored against its similarities to the controls, averaged "
                  "per group (0: no more alike than controls).")
    return ScoreResult("grit", float(per_group["grit"].mean()), per_group, per_query,
                       definition, total=len(per_group))


def _topk(table, features, group_by, diff_by, ks, similarity):
    group_by, diff_by = _as_list(group_by), _as_list(diff_by)
    codes = _codes(table, group_by, "precision@k")
    diff = [_codes(table, [c], "precision@k") for c in diff_by]
    sim = _similarity(table, features, similarity)
    same = codes[:, None] == codes[None, :]
    admissible = np.ones_like(same)
    for d in diff:
        admissible &= d[:, None] != d[None, :]
    np.fill_diagonal(admissible, False)
    # same group but not differing in diff_by (e.g. the same compound): not ranked at all
    candidates = admissible | ~same
    np.fill_diagonal(candidates, False)
    positive = same & admissible
    rows = []
    for i in range(len(table)):
        cand = np.flatnonzero(candidates[i])
        if not positive[i].any() or len(cand) == 0:
            continue
        order = cand[np.argsort(-sim[i, cand], kind="stable")]
        rel = positive[i, order]
        row = {"profile": str(table.index[i]), **table.iloc[i][group_by].to_dict(),
               "n_positives": int(rel.sum()), "n_candidates": len(cand)}
        for k in ks:
            top = rel[:k]
            row[f"precision@{k}"] = float(top.mean())
            row[f"hit@{k}"] = bool(top.any())
            row[f"chance_precision@{k}"] = float(rel.mean())
        rows.append(row)
    if not rows:
        raise EvaluationError(f"precision@k: no profile has another member of its {group_by} "
                              "group to retrieve")
    return pd.DataFrame(rows), group_by


def _check_k(k) -> list[int]:
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    if not ks or min(ks) < 1:
        raise EvaluationError(f"k must be a positive integer or a list of them, got {k!r}")
    return [int(v) for v in ks]


def precision_at_k(table: pd.DataFrame, *, features: Features, group_by, k: int = 5,
                   diff_by=(), similarity: str = "cosine") -> ScoreResult:
    """Mean over queries of the share of group members among the k most similar profiles."""
    (kk,) = _check_k(k)
    per_query, group_by = _topk(table, features, group_by, diff_by, [kk], similarity)
    col = f"precision@{kk}"
    per_group = per_query.groupby(group_by, sort=True)[col].mean().reset_index()
    return ScoreResult(col, float(per_query[col].mean()), per_group, per_query,
                       f"{col}: share of the {kk} most similar profiles ({similarity}) in the "
                       f"query's {'/'.join(group_by)} group, averaged over queries",
                       total=len(per_query),
                       chance=float(per_query[f"chance_precision@{kk}"].mean()))


def hit_at_k(table: pd.DataFrame, *, features: Features, group_by, k: int = 5, diff_by=(),
             similarity: str = "cosine") -> ScoreResult:
    """Share of queries with at least one group member among their k most similar profiles."""
    (kk,) = _check_k(k)
    per_query, group_by = _topk(table, features, group_by, diff_by, [kk], similarity)
    col = f"hit@{kk}"
    hits, total = int(per_query[col].sum()), len(per_query)
    low, high = proportion_ci(hits, total)
    per_group = per_query.groupby(group_by, sort=True)[col].mean().reset_index()
    # chance: 1 - P(no positive in k draws without replacement), per query
    chance = float(np.mean([1 - _hypergeom_none(int(r["n_positives"]), int(r["n_candidates"]),
                                                kk) for _, r in per_query.iterrows()]))
    return ScoreResult(col, hits / total, per_group, per_query,
                       f"{col}: share of queries with a profile of their {'/'.join(group_by)} "
                       f"group among their {kk} most similar ({similarity})",
                       total=total, ci_low=low, ci_high=high, chance=chance)


def _hypergeom_none(n_pos: int, n_total: int, k: int) -> float:
    from scipy.stats import hypergeom

    return float(hypergeom(n_total, n_pos, min(k, n_total)).pmf(0))


def enrichment(table: pd.DataFrame, *, features: Features, group_by,
               percentile: float | Sequence[float] = (0.95, 0.99), diff_by=(),
               similarity: str = "correlation") -> pd.DataFrame:
    """Odds ratio of same-group pairs among the most similar pairs, per ``percentile``.

    Returns one row per percentile: ``threshold``, the 2x2 counts, ``odds_ratio`` and the
    one-sided Fisher ``p_value``. Same-group pairs not differing in ``diff_by`` are left out.
    """
    from scipy.stats import fisher_exact

    group_by, diff_by = _as_list(group_by), _as_list(diff_by)
    pcts = [percentile] if isinstance(percentile, float) else list(percentile)
    if any(not 0 < p < 1 for p in pcts):
        raise EvaluationError(f"enrichment percentiles must be in (0, 1), got {pcts}")
    codes = _codes(table, group_by, "enrichment")
    diff = [_codes(table, [c], "enrichment") for c in diff_by]
    sim = _similarity(table, features, similarity)
    iu, ju = np.triu_indices(len(table), k=1)
    same = codes[iu] == codes[ju]
    keep = np.ones(len(iu), dtype=bool)
    for d in diff:
        keep &= ~same | (d[iu] != d[ju])
    s, same = sim[iu, ju][keep], same[keep]
    rows = []
    for p in pcts:
        thr = float(np.quantile(s, p))
        above = s > thr
        a, b = int((same & above).sum()), int((~same & above).sum())
        c, d_ = int((same & ~above).sum()), int((~same & ~above).sum())
        odds, pval = fisher_exact([[a, b], [c, d_]], alternative="greater")
        rows.append({"percentile": p, "threshold": thr, "same_above": a, "diff_above": b,
                     "same_below": c, "diff_below": d_, "odds_ratio": float(odds),
                     "p_value": float(pval)})
    return pd.DataFrame(rows)
