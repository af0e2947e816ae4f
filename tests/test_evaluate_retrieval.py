"""Our mAP against the copairs package (AP and mAP exactly, p-values within null noise)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytodata.errors import EvaluationError
from cytodata.evaluate import average_precision, mean_average_precision
from cytodata.evaluate.retrieval import benjamini_hochberg, null_average_precision


def random_plates(seed=1, n=60, d=8):
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({"compound": rng.choice(list("abcdef"), n),
                         "plate": rng.choice(["p1", "p2", "p3"], n)})
    x = rng.normal(size=(n, d))
    x[(meta["compound"] == "b").to_numpy()] += 0.8
    cols = [f"f{i}" for i in range(d)]
    return meta, x, pd.concat([meta, pd.DataFrame(x, columns=cols)], axis=1), cols


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "correlation"])
def test_ap_and_map_equal_copairs(tmp_path, distance):
    from copairs.map import average_precision as cp_ap
    from copairs.map import mean_average_precision as cp_map

    meta, x, table, cols = random_plates()
    rules = dict(pos_sameby=["compound"], pos_diffby=["plate"], neg_sameby=[],
                 neg_diffby=["compound"])
    ref = cp_ap(meta, x, distance=distance, progress_bar=False, **rules)
    ours = average_precision(table, features=cols, distance=distance, **rules)
    np.testing.assert_array_equal(ours["n_pos_pairs"], ref["n_pos_pairs"])
    np.testing.assert_array_equal(ours["n_total_pairs"], ref["n_total_pairs"])
    np.testing.assert_allclose(ours["average_precision"], ref["average_precision"],
                               atol=1e-6, equal_nan=True)
    ref_map = cp_map(ref, sameby=["compound"], null_size=10_000, threshold=0.05, seed=0,
                     progress_bar=False, cache_dir=tmp_path)
    res = mean_average_precision(table, features=cols, distance=distance, **rules)
    merged = res.map.merge(ref_map, on="compound", suffixes=("", "_cp"))
    assert len(merged) == 6
    np.testing.assert_allclose(merged["mean_average_precision"],
                               merged["mean_average_precision_cp"], atol=1e-6)
    # independent nulls of 10,000 draws: p-values agree within sampling noise
    np.testing.assert_allclose(merged["p_value"], merged["p_value_cp"], atol=0.03)
    np.testing.assert_allclose(merged["corrected_p_value"], merged["corrected_p_value_cp"],
                               atol=0.05)
    if distance == "cosine":
        # the planted compound is retrieved, the others are not
        assert merged.set_index("compound")["below_corrected_p"].to_dict()["b"]
        assert merged["below_corrected_p"].sum() == merged["below_corrected_p_cp"].sum()


def test_benjamini_hochberg_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(0).uniform(size=40) ** 2
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1])


def test_null_ap_is_seeded_per_configuration_and_has_the_right_mean():
    a = null_average_precision(3, 20, 5000, seed=0)
    np.testing.assert_array_equal(a, null_average_precision(3, 20, 5000, seed=0))
    assert not np.array_equal(a, null_average_precision(3, 20, 5000, seed=1))
    # expected AP of a random ranking with 1 positive among n: mean of 1/rank = H_n / n
    one = null_average_precision(1, 10, 20000, seed=0)
    assert one.mean() == pytest.approx(sum(1 / k for k in range(1, 11)) / 10, abs=0.01)


def test_map_bad_input():
    meta, x, table, cols = random_plates()
    with pytest.raises(EvaluationError, match="no positive pairs"):
        mean_average_precision(table.assign(u=np.arange(len(table))), features=cols,
                               pos_sameby=["u"], neg_diffby=["u"])
    table.loc[3, "plate"] = None
    with pytest.raises(EvaluationError, match="rows 3"):
        average_precision(table, features=cols, pos_sameby=["compound"], pos_diffby=["plate"],
                          neg_diffby=["compound"])


def test_multilabel_ap_equals_copairs():
    from copairs.map.multilabel import average_precision as cp_ml_ap

    rng = np.random.default_rng(3)
    n, d = 40, 6
    pool = ["tubulin", "dna", "actin", "kinase"]
    labels = [sorted(set(rng.choice(pool, size=rng.integers(1, 3)))) for _ in range(n)]
    meta = pd.DataFrame({"compound": [f"c{i % 13}" for i in range(n)], "moa": labels,
                         "row": np.arange(n)})
    x = rng.normal(size=(n, d))
    for i, labs in enumerate(labels):
        if "tubulin" in labs:
            x[i] += 1.0
    cols = [f"f{i}" for i in range(d)]
    table = pd.concat([meta, pd.DataFrame(x, columns=cols)], axis=1)
    ref = cp_ml_ap(meta, x, pos_sameby=["moa"], pos_diffby=["compound"], neg_sameby=[],
                   neg_diffby=["moa"], multilabel_col="moa", progress_bar=False)
    ours = average_precision(table, features=cols, pos_sameby=["moa"], pos_diffby=["compound"],
                             neg_diffby=["moa"], multilabel="moa")
    ref = ref[ref["n_pos_pairs"] > 0]
    key = ["row", "compound", "moa"]
    ref = ref.sort_values(["moa", "row"]).reset_index(drop=True)
    ours = ours.sort_values(["moa", "row"]).reset_index(drop=True)
    assert len(ours) == len(ref) > 20
    pd.testing.assert_frame_equal(ours[key], ref[key], check_dtype=False)
    np.testing.assert_array_equal(ours["n_pos_pairs"], ref["n_pos_pairs"])
    np.testing.assert_array_equal(ours["n_total_pairs"], ref["n_total_pairs"])
    np.testing.assert_allclose(ours["average_precision"], ref["average_precision"], atol=1e-6)
    res = mean_average_precision(table, features=cols, pos_sameby=["moa"],
                                 pos_diffby=["compound"], neg_diffby=["moa"], multilabel="moa",
                                 null_size=2000)
    per = res.map.set_index("moa")["mean_average_precision"]
    assert set(per.index) == set(pool) and per["tubulin"] == per.max()
