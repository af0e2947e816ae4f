"""Percent replicating/matching, grit, precision@k, hit@k, enrichment, CIs: definitions checked
against naive loops, scipy and planted signal."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from cytodata.errors import EvaluationError
from cytodata.evaluate.matching import proportion_ci
from cytodata.evaluate.replicates import (
    enrichment,
    grit,
    hit_at_k,
    percent_matching,
    percent_replicating,
    precision_at_k,
)


def wells(seed=0, n_trt=12, reps=3, n_ctrl=12, d=10, strong=6):
    """``strong`` treatments with a planted profile, the rest noise; DMSO controls."""
    rng = np.random.default_rng(seed)
    rows, x = [], []
    for t in range(n_trt):
        mean = rng.normal(size=d) * (3.0 if t < strong else 0.0)
        for _r in range(reps):
            rows.append({"treatment": f"t{t:02d}", "moa": f"m{t % 4}", "compound": f"c{t}",
                         "control": False})
            x.append(mean + rng.normal(size=d))
    for _c in range(n_ctrl):
        rows.append({"treatment": "dmso", "moa": "none", "compound": "dmso", "control": True})
        x.append(rng.normal(size=d))
    cols = [f"f{i}" for i in range(d)]
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(np.array(x), columns=cols)], axis=1), cols


def test_percent_replicating_finds_the_planted_treatments():
    table, cols = wells()
    trt = table[~table["control"]].reset_index(drop=True)
    res = percent_replicating(trt, features=cols, group_by="treatment", null_size=500)
    per = res.per_group.set_index("treatment")
    assert per.loc[[f"t{t:02d}" for t in range(6)], "replicating"].all()
    assert res.strong >= 6 and res.strong <= 8 and res.total == 12
    # the statistic is the median pairwise Pearson correlation, as a naive loop gives
    x = trt[cols].to_numpy()
    for t in ("t00", "t07"):
        idx = np.flatnonzero(trt["treatment"] == t)
        naive = np.median([np.corrcoef(x[a], x[b])[0, 1] for a, b in
                           itertools.combinations(idx, 2)])
        assert per.loc[t, "median_similarity"] == pytest.approx(naive)
    # the null: medians of random sets of 3 from different treatments; 95th percentile
    assert np.quantile(res.null[3], 0.95) == pytest.approx(per["threshold"].iloc[0])
    assert res.ci_low < res.fraction < res.ci_high
    again = percent_replicating(trt, features=cols, group_by="treatment", null_size=500)
    assert again.per_group.equals(res.per_group)  # seeded


def test_percent_matching_uses_pairs_of_different_compounds():
    table, cols = wells(reps=1, n_trt=16)
    trt = table[~table["control"]].reset_index(drop=True)
    trt.loc[trt["treatment"] == "t01", "compound"] = "c0"  # t00 and t01: same compound
    res = percent_matching(trt, features=cols, null_size=200)
    per = res.per_group.set_index("moa")
    # moa m1 holds t01, t05, t09, t13; m0 holds t00, t04, t08, t12
    assert per.loc["m0", "n_pairs"] == 6 and per.loc["m1", "n_pairs"] == 6
    trt.loc[trt["moa"] == "m1", "compound"] = "same"
    res = percent_matching(trt, features=cols, null_size=200)
    assert np.isnan(res.per_group.set_index("moa").loc["m1", "median_similarity"])
    assert res.total == 3


def test_grit_against_a_naive_loop():
    from scipy.stats import zscore

    table, cols = wells()
    res = grit(table, features=cols, group_by="treatment", controls=table["control"])
    x = table[cols].to_numpy()
    ctrl = np.flatnonzero(table["control"])
    sim = np.corrcoef(x)
    i = int(np.flatnonzero(table["treatment"] == "t00")[0])
    reps = [j for j in np.flatnonzero(table["treatment"] == "t00") if j != i]
    both = np.concatenate([sim[i, ctrl], sim[i, reps]])
    z = (sim[i, reps] - sim[i, ctrl].mean()) / sim[i, ctrl].std()
    assert res.per_query.iloc[0]["grit"] == pytest.approx(z.mean())
    assert zscore(both[: len(ctrl)]).std() == pytest.approx(1.0)  # ddof=0 as StandardScaler
    per = res.per_group.set_index("treatment")["grit"]
    assert per[[f"t{t:02d}" for t in range(6)]].min() > per[[f"t{t:02d}" for t in
                                                             range(6, 12)]].max()
    with pytest.raises(EvaluationError, match="2 control"):
        grit(table, features=cols, group_by="treatment", controls=np.zeros(len(table), bool))


def test_precision_and_hit_at_k_against_a_naive_loop():
    table, cols = wells(seed=2)
    trt = table[~table["control"]].reset_index(drop=True)
    p = precision_at_k(trt, features=cols, group_by="treatment", k=2)
    h = hit_at_k(trt, features=cols, group_by="treatment", k=1)
    x = trt[cols].to_numpy()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    prec, hits = [], []
    for i in range(len(trt)):
        order = [j for j in np.argsort(-sim[i], kind="stable") if j != i]
        same = [trt["treatment"][j] == trt["treatment"][i] for j in order]
        prec.append(np.mean(same[:2]))
        hits.append(same[0])
    assert p.score == pytest.approx(np.mean(prec))
    assert h.score == pytest.approx(np.mean(hits))
    # chance: 2 replicates among 35 candidates
    assert p.chance == pytest.approx(2 / 35)
    assert h.chance == pytest.approx(2 / 35)
    assert h.ci_low <= h.score <= h.ci_high


def test_enrichment_against_scipy():
    from scipy.stats import fisher_exact

    table, cols = wells(seed=3)
    trt = table[~table["control"]].reset_index(drop=True)
    out = enrichment(trt, features=cols, group_by="treatment", percentile=[0.9, 0.99])
    x = trt[cols].to_numpy()
    sim = np.corrcoef(x)
    iu, ju = np.triu_indices(len(trt), 1)
    same = trt["treatment"].to_numpy()[iu] == trt["treatment"].to_numpy()[ju]
    s = sim[iu, ju]
    thr = np.quantile(s, 0.9)
    a, b = (same & (s > thr)).sum(), (~same & (s > thr)).sum()
    c, d = (same & (s <= thr)).sum(), (~same & (s <= thr)).sum()
    odds, p = fisher_exact([[a, b], [c, d]], alternative="greater")
    row = out.iloc[0]
    assert (row["same_above"], row["diff_above"]) == (a, b)
    assert row["odds_ratio"] == pytest.approx(odds) and row["p_value"] == pytest.approx(p)
    assert out["odds_ratio"].min() > 1


def test_proportion_intervals():
    from statsmodels.stats.proportion import proportion_confint

    for k, n in ((5, 5), (0, 12), (86, 103), (40, 91)):
        for ours, ref in (("wilson", "wilson"), ("exact", "beta"), ("normal", "normal")):
            lo, hi = proportion_ci(k, n, method=ours)
            rlo, rhi = proportion_confint(k, n, alpha=0.05, method=ref)
            assert (lo, hi) == pytest.approx((max(rlo, 0), min(rhi, 1)), abs=1e-9)
    lo, hi = proportion_ci(5, 5)
    assert hi == 1.0 and lo == pytest.approx(0.566, abs=1e-3)  # not "100 +/- 0"
    with pytest.raises(EvaluationError, match="valid"):
        proportion_ci(1, 2, method="bayes")
