"""Protocol ``cellpainting-cnn``: the chain and the four metrics against hand computations and a
transcription of DeepProfilerExperiments' notebook code (sklearn's precision_recall_curve)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_recall_curve

from cytodata.errors import EvaluationError
from cytodata.evaluate import deepprofiler as dp
from cytodata.evaluate import run_protocol

NAMES = ["A", "B", "C", "D", "E"]
MOAS = ["m1", "m1", "m2", "m2", "m1"]


def _sim() -> np.ndarray:
    """Nearest others: A->E (same MOA), B->C (other), C->D (same), D->E (other), E->A (same)."""
    s = np.full((5, 5), 0.0)
    pairs = {("A", "B"): 0.9, ("B", "C"): 0.95, ("C", "D"): 0.97, ("D", "E"): 0.98, ("E", "A"): 0.99,
             ("A", "C"): 0.1, ("A", "D"): 0.2, ("B", "D"): 0.3, ("B", "E"): 0.4, ("C", "E"): 0.5}
    for (a, b), v in pairs.items():
        i, j = NAMES.index(a), NAMES.index(b)
        s[i, j] = s[j, i] = v
    np.fill_diagonal(s, 1.0)
    return s


def test_metrics_by_hand():
    sim, match = _sim(), dp.moa_matches(MOAS)
    assert match.diagonal().all() and match[0, 4] and not match[0, 2]
    # precision@1: A (E, same), B (C, other), C (D, same), D (E, other), E (A, same)
    assert dp.precision_at(sim, match, 1) == pytest.approx(3 / 5)
    # recall@10 counts the 9 nearest others (all 4): p / (p + 1) with p = 2, 2, 1, 1, 2
    assert dp.recall_at(sim, match, 10) == pytest.approx((2 / 3 * 3 + 1 / 2 * 2) / 5)
    # recall@2 counts only the nearest other: A 1/3, B 0, C 1/2, D 0, E 1/3
    assert dp.recall_at(sim, match, 2) == pytest.approx((1 / 3 + 0 + 1 / 2 + 0 + 1 / 3) / 5)
    # enrichment at the 99th percentile of 4 others: only the nearest is above; a perfect
    # table (odds inf) scores v22 as the code does: A 2, B 0, C 3, D 0, E 2
    assert dp.enrichment(sim, match, 99.0)["per_query"] == [2.0, 0.0, 3.0, 0.0, 2.0]
    assert dp.enrichment(sim, match, 99.0)["mean"] == pytest.approx(1.4)
    multi = dp.moa_matches(["a|b", "b", "c", "c|a"])
    assert multi[0, 1] and multi[0, 3] and not multi[1, 2] and multi[2, 3]


def _reference_interpolated(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeepProfilerExperiments profiling/metrics.py:22-61, transcribed."""
    y_pred, y_true = y_pred.copy(), y_true.copy()
    y_pred[np.diag_indices(y_pred.shape[0])] = -1
    y_true[np.diag_indices(y_true.shape[0])] = False
    recall_axis = np.linspace(0.0, 1.0, num=y_true.shape[0])[::-1]
    precision_axis = []
    is_query = y_true.sum(axis=0) > 1
    for t in range(y_true.shape[0]):
        if not is_query[t]:
            continue
        precision_t, recall_t, _ = precision_recall_curve(y_true[t, :], y_pred[t, :])
        max_precision = np.maximum.accumulate(precision_t)
        interpolated = np.zeros_like(recall_axis)
        j = 0
        for i in range(recall_axis.shape[0]):
            interpolated[i] = max_precision[j]
            while recall_axis[i] < recall_t[j]:
                j += 1
        precision_axis.append(interpolated[:, np.newaxis])
    return recall_axis, np.mean(np.concatenate(precision_axis, axis=1), axis=1)


def test_interpolated_map_matches_the_notebook_code():
    rng = np.random.default_rng(0)
    for n, n_moa in ((5, 2), (23, 4), (40, 6)):
        x = rng.normal(size=(n, 8))
        sim = dp.cosine_similarity(x)
        moas = [f"m{i % n_moa}" for i in range(n)]
        match = dp.moa_matches(moas)
        ours = dp.interpolated_map(sim, match)
        axis, ref = _reference_interpolated(match, sim)
        np.testing.assert_allclose(ours["recall"], axis)
        np.testing.assert_allclose(ours["precision"], ref, atol=1e-12)
        assert ours["map"] == pytest.approx(float(np.mean(ref)))
    # by hand, one query: A's others by similarity E (same), B (same), C, D
    sim, match = _sim(), dp.moa_matches(MOAS)
    assert dp.interpolated_map(sim, match)["queries"] == 3          # A, B, E (>= 2 same-MOA others)


def _cells() -> pd.DataFrame:
    """2 plates x 8 wells (2 control wells each) x 2 sites x 2-3 cells, 3 features."""
    rng = np.random.default_rng(1)
    rows = []
    treat = {"w1": ("dmso", None), "w2": ("dmso", None), "w3": ("t1", "m1"), "w4": ("t2", "m1"),
             "w5": ("t3", "m2"), "w6": ("t4", "m1"), "w7": ("t5", "m2"), "w8": ("t6", "m2")}
    for plate in ("p1", "p2"):
        for well, (t, moa) in treat.items():
            for site in (1, 2):
                for cell in range(2 + (site == 2)):
                    f = rng.normal(size=3) + (0 if t == "dmso" else int(t[1]))
                    rows.append({"key": f"{plate}-{well}-{site}-{cell}", "plate": plate, "well": well,
                                 "site": site, "compound": t, "concentration": 1.0,
                                 "moa": moa, "control_type": "negcon" if t == "dmso" else "trt",
                                 "f0": f[0], "f1": f[1], "f2": f[2]})
    return pd.DataFrame(rows)


def test_the_chain_by_hand_and_the_protocol():
    cells = _cells()
    feats = ["f0", "f1", "f2"]
    # by hand: site median, well mean, ZCA on control wells with population covariance + 1e-2
    wells = {}
    for (p, w), g in cells.groupby(["plate", "well"]):
        sites = [np.median(s[feats].to_numpy(), axis=0) for _, s in g.groupby("site")]
        wells[(p, w)] = (np.mean(sites, axis=0), g["compound"].iloc[0])
    ctrl = np.array([v for (p, w), (v, t) in wells.items() if t == "dmso"])
    mu = ctrl.mean(0)
    cov = (ctrl - mu).T @ (ctrl - mu) / len(ctrl)
    s, v = np.linalg.eigh(cov)
    w_mat = v @ np.diag(1 / np.sqrt(s + 1e-2)) @ v.T
    white = {k: (vec - mu) @ w_mat for k, (vec, t) in wells.items()}
    expect = {}
    for t in ("t1", "t2", "t3", "t4", "t5", "t6"):
        expect[f"{t}@1"] = np.mean([white[k] for k, (vec, tt) in wells.items() if tt == t], axis=0)
    emb = cells[["key"] + feats]
    meta = cells.drop(columns=feats)
    res = run_protocol("cellpainting-cnn", emb, meta)
    prof = res["profiles"]
    assert sorted(prof.index) == sorted(expect)
    for name, vec in expect.items():
        np.testing.assert_allclose(prof.loc[name, feats].to_numpy(float), vec, atol=1e-10)
    assert res["counts"]["wells"] == 16 and res["counts"]["control_wells"] == 4
    assert res["counts"]["sites"] == 32
    m = res["metrics"]
    sim = dp.cosine_similarity(np.stack([expect[k] for k in sorted(expect)]))
    match = dp.moa_matches(["m1", "m1", "m2", "m1", "m2", "m2"])
    assert m["precision_top1"] == pytest.approx(dp.precision_at(sim, match, 1))
    assert m["map"] == pytest.approx(dp.interpolated_map(sim, match)["map"])
    assert m["map"] == pytest.approx(np.mean(_reference_interpolated(match, sim)[1]))
    assert m["recall_top10"] == pytest.approx(dp.recall_at(sim, match, 10)) and m["k_recall"] == 10
    assert m["queries"] == 6 and set(m["chance"]) == {"enrichment_top1", "precision_top1",
                                                      "recall_top10", "map"}
    # a well-level table (one row per well, no site column) gives the same profiles
    well_rows = pd.DataFrame([{"key": f"{p}-{w}", "plate": p, "well": w, "compound": t,
                               "concentration": 1.0, "control_type": "negcon" if t == "dmso" else "x",
                               "moa": {"t1": "m1", "t2": "m1", "t3": "m2", "t4": "m1", "t5": "m2",
                                       "t6": "m2"}.get(t),
                               **dict(zip(feats, vec))} for (p, w), (vec, t) in wells.items()])
    res2 = run_protocol("cellpainting-cnn", well_rows, well_rows, features=feats)
    np.testing.assert_allclose(res2["profiles"].loc[sorted(expect), feats].to_numpy(float),
                               prof.loc[sorted(expect), feats].to_numpy(float), atol=1e-10)
    with pytest.raises(EvaluationError, match="no control rows"):
        run_protocol("cellpainting-cnn", emb, meta, control_column="control_type", control_value="none")
