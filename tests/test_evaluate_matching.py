"""NSC/NSCB on hand-made tables, k-NN against a naive loop, confidence intervals, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytodata.errors import EvaluationError
from cytodata.evaluate import ci95, knn_accuracy, nsc, nscb
from cytodata.evaluate.matching import batch_sets


def hand_table() -> pd.DataFrame:
    # A's nearest other compound is C (same batch, other MOA); excluding batch b1 leaves B (M1).
    # E/F form an MOA seen in batch b1 only: NSC matches them, NSCB drops them.
    return pd.DataFrame({
        "compound": ["a", "b", "c", "d", "e", "f"],
        "moa": ["M1", "M1", "M2", "M2", "M3", "M3"],
        "batch": ["b1", "b2", "b1", "b2", "b1", "b1"],
        "x": [1.0, 0.6, 0.95, 0.0, -1.0, -1.0],
        "y": [0.0, 0.8, 0.31, 1.0, 0.0, -0.1],
    }, index=list("ABCDEF"))


def test_nsc_by_hand():
    res = nsc(hand_table(), features=["x", "y"])
    assert res.predictions["predicted"].tolist() == ["M2", "M2", "M1", "M1", "M3", "M3"]
    assert res.predictions["neighbour"].tolist() == ["C", "C", "A", "B", "F", "E"]
    assert (res.correct, res.total) == (2, 6)
    assert res.accuracy == pytest.approx(2 / 6)
    per = res.per_moa.set_index("moa")
    assert per.loc["M3", "accuracy"] == 1.0 and per.loc["M1", "accuracy"] == 0.0
    assert res.confusion.loc["M1", "M2"] == 2 and res.confusion.to_numpy().sum() == 6


def test_nscb_by_hand_differs_and_drops_single_batch_moa():
    res = nscb(hand_table(), features=["x", "y"])
    assert res.dropped == ["M3"]
    assert res.predictions.index.tolist() == ["A", "B", "C", "D"]
    assert res.predictions["neighbour"].tolist() == ["B", "C", "B", "C"]
    assert res.predictions["correct"].tolist() == [True, False, False, True]
    assert (res.correct, res.total, res.accuracy) == (2, 4, 0.5)
    assert res.ci95 == pytest.approx(1.96 * np.sqrt(0.25 / 4))


def test_nscb_excludes_neighbours_sharing_any_batch():
    t = hand_table()
    # A now spans b1 and b2: every other compound shares a batch with it -> unmatched
    t.loc["A", "batch"] = "b1|b2"
    res = nscb(t, features=["x", "y"])
    assert res.unmatched == ["A"]
    assert "A" not in res.predictions.index
    # a list cell works like the |-joined text
    t2 = hand_table().astype({"batch": object})
    t2.at["A", "batch"] = ["b1", "b2"]
    assert nscb(t2, features=["x", "y"]).unmatched == ["A"]
    assert batch_sets(pd.Series(["w1|w2", ["w3"]])) == [frozenset({"w1", "w2"}), frozenset({"w3"})]


def test_ci95_at_86_of_103():
    p = 86 / 103
    assert ci95(86, 103) == pytest.approx(1.96 * np.sqrt(p * (1 - p) / 103))
    assert round(100 * ci95(86, 103), 2) == 7.17


def test_nscb_single_batch_is_an_error():
    t = hand_table().assign(batch="b1")
    with pytest.raises(EvaluationError, match="single batch"):
        nscb(t, features=["x", "y"])


def test_nan_features_and_missing_moa_name_rows():
    t = hand_table()
    t.loc["C", "x"] = np.nan
    with pytest.raises(EvaluationError, match="'C'"):
        nsc(t, features=["x", "y"])
    t = hand_table()
    t.loc["D", "moa"] = None
    with pytest.raises(EvaluationError, match="'D'"):
        nsc(t, features=["x", "y"])


def naive_knn(x, y, k, metric, group=None):
    preds = []
    for i in range(len(x)):
        d = []
        for j in range(len(x)):
            if j == i or (group is not None and group[j] == group[i]):
                continue
            if metric == "euclidean":
                d.append((float(np.sqrt(((x[i] - x[j]) ** 2).sum())), j))
            else:
                cos = x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
                d.append((1 - float(cos), j))
        d.sort(key=lambda t: t[0])
        top = d[:k]
        counts: dict = {}
        for _, j in top:
            counts[y[j]] = counts.get(y[j], 0) + 1
        best = max(counts.values())
        tied = {lab for lab, c in counts.items() if c == best}
        preds.append(next(y[j] for _, j in top if y[j] in tied))
    return np.array(preds)


@pytest.mark.parametrize("metric,k", [("euclidean", 11), ("cosine", 4), ("euclidean", 1)])
def test_knn_matches_naive_loop(metric, k):
    rng = np.random.default_rng(3)
    y = rng.choice(["a", "b", "c"], 60)
    x = rng.normal(size=(60, 5)) + (y[:, None] == "a") * 0.8
    table = pd.DataFrame(x, columns=list("pqrst")).assign(label=y)
    res = knn_accuracy(table, features=list("pqrst"), label="label", k=k, metric=metric)
    expected = naive_knn(x, y, k, metric)
    assert res.predictions["predicted"].tolist() == expected.tolist()
    assert res.correct == int((expected == y).sum())


def test_knn_excluding_the_querys_own_compound_matches_naive_loop():
    # replicates of a compound sit together: with them voting, every image is "right"
    rng = np.random.default_rng(5)
    compound = np.repeat([f"c{i}" for i in range(12)], 5)
    moa = np.repeat(["m0", "m1", "m2"], 20)
    x = rng.normal(size=(12, 4))[np.arange(60) // 5] * 3 + rng.normal(size=(60, 4)) * 0.1
    table = pd.DataFrame(x, columns=list("pqrs")).assign(moa=moa, compound=compound)
    loose = knn_accuracy(table, features=list("pqrs"), label="moa", k=3)
    assert loose.accuracy == 1.0
    res = knn_accuracy(table, features=list("pqrs"), label="moa", k=3, exclude_same="compound")
    expected = naive_knn(x, moa, 3, "euclidean", group=compound)
    assert res.predictions["predicted"].tolist() == expected.tolist()
    assert res.accuracy < 1.0 and "own 'compound' excluded" in res.definition
    assert res.chance == pytest.approx(15 / 55)     # 3 other compounds x 5 of the 55 admissible rows
    one = table.iloc[:5]                             # one compound only: nobody to compare with
    with pytest.raises(EvaluationError, match="no neighbour of another 'compound'"):
        knn_accuracy(one, features=list("pqrs"), label="moa", k=3, exclude_same="compound")


def test_knn_train_test_split():
    table = pd.DataFrame({"f": [0.0, 0.1, 5.0, 5.1, 0.08, 5.08], "label": list("aabbab")})
    mask = np.array([False, False, False, False, True, True])
    res = knn_accuracy(table, features=["f"], label="label", k=1, query_mask=mask)
    assert res.total == 2 and res.accuracy == 1.0
    assert res.predictions["neighbour"].tolist() == [1, 3]
