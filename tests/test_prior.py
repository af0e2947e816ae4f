"""The per-plate, plate-group and per-experiment priors of ``cytodata predict`` (DeepNoise)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytodata.baselines.plate_groups import (
    PlateGroups,
    discover_groups,
    group_columns,
    match_groups,
)
from cytodata.baselines.predict import predictions
from cytodata.baselines.prior import (
    apply_prior,
    assign_deepnoise,
    column_normalise,
    deepnoise_balance,
    deepnoise_score,
)
from cytodata.errors import TrainingError


def _two_site_screen(plates: int = 3, k: int = 12, wells: int = 6, seed: int = 0):
    """Index rows of ``plates`` plates, ``wells`` wells each (distinct classes of ``k``), two
    sites per well (RxRx1: 277 wells of 1,108 classes, so a plate's sites fit distinct classes)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(plates):
        for w, c in enumerate(rng.permutation(k)[:wells]):
            for site in (1, 2):
                rows.append(dict(key=f"P{p}_W{w}_s{site}", plate=f"P{p}", well=f"W{w:02d}",
                                 site=site, batch="E1", label=f"c{c}"))
    return pd.DataFrame(rows), [f"c{i}" for i in range(k)]


def _perfect(meta: pd.DataFrame, classes: list[str]) -> np.ndarray:
    probs = np.full((len(meta), len(classes)), 0.01)
    probs[np.arange(len(meta)), [classes.index(v) for v in meta["label"]]] = 0.95
    return probs / probs.sum(1, keepdims=True)


def test_defaults_keep_a_perfect_classifier_at_one_on_two_site_wells():
    meta, classes = _two_site_screen()
    table, summary = predictions(meta, _perfect(meta, classes), classes, label="label")
    assert summary["accuracy_argmax"] == 1.0
    assert summary["accuracy"] == 1.0                   # the prior must not split a well's sites
    assert summary["per"] == "well" and len(table) == 18   # wells, sites averaged


def test_sites_inherit_their_wells_class_per_key_and_per_well_needs_a_well_column():
    meta, classes = _two_site_screen()
    table, summary = predictions(meta, _perfect(meta, classes), classes, per="key")
    assert len(table) == 36 and summary["accuracy"] == 1.0
    assert (table.groupby(["plate", "well"])["prediction"].nunique() == 1).all()
    one_site = meta[meta["site"] == 1].reset_index(drop=True)
    assert predictions(one_site, _perfect(one_site, classes), classes)[1]["per"] == "key"
    with pytest.raises(TrainingError, match=r"--per well needs a 'well'.*--per key"):
        predictions(meta.drop(columns=["well"]), _perfect(meta, classes), classes, per="well")


# ----------------------------------------------------------------------------- plate groups
def test_group_discovery_recovers_rxrx1s_four_groups_of_277_from_the_real_metadata(shared_data):
    from cytodata.sources.rxrx1 import read_rxrx1

    table = read_rxrx1(shared_data / "rxrx1")
    train = table[table["dataset"] == "train"]
    groups = discover_groups(train["plate"], train["sirna"], train["batch"])
    assert groups.sizes() == [277, 277, 277, 277]
    assert len({c for g in groups.groups for c in g}) == 1108
    # the 31 controls (1108-1138) are on every plate: shared, in no group
    assert groups.shared == sorted(str(i) for i in range(1108, 1139))
    assert len(groups.plates) == 33 * 4 and set(groups.plates.values()) == {0, 1, 2, 3}
    # every experiment holds each group on exactly one of its four plates
    per_exp = pd.Series(groups.plates).groupby(lambda p: p.rsplit("_", 1)[0]).apply(sorted)
    assert all(v == [0, 1, 2, 3] for v in per_exp)
    # the authors' leaked table (leaks/plate_groups.csv) lists the same sets: a group's siRNAs
    # share one plate number in every assignment column, e.g. 0 and 3 (p0 = 4 and 1) differ
    assert PlateGroups.from_dict(groups.to_dict()).groups == groups.groups


def _grouped(seed: int, n_groups: int = 3, size: int = 8, plates: int = 6, noise: float = 1.0):
    """Plates each holding one group's classes (a random group), noisy softmax probabilities."""
    rng = np.random.default_rng(seed)
    k = n_groups * size
    truth, names, gids = [], [], []
    for p in range(plates):
        g = p % n_groups
        truth.append(g * size + rng.permutation(size))
        names += [f"T{p}"] * size
        gids.append(g)
    truth = np.concatenate(truth)
    logits = rng.normal(0, noise, (len(truth), k))
    logits[np.arange(len(truth)), truth] += 3.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    classes = [f"c{i:02d}" for i in range(k)]
    groups = PlateGroups([classes[g * size:(g + 1) * size] for g in range(n_groups)])
    return probs, np.array(names), truth, classes, groups, gids


def test_group_prior_exact_equals_linear_sum_assignment_on_the_restricted_matrix():
    from scipy.optimize import linear_sum_assignment

    probs, plates, truth, classes, groups, gids = _grouped(0)
    match = match_groups(probs, plates, classes, groups)
    assert [match.group[f"T{p}"] for p in range(6)] == gids
    cols = group_columns(groups, classes)
    res = apply_prior(probs, plates, "exact",
                      allowed={p: cols[g] for p, g in match.group.items()})
    for p in range(6):
        rows = np.flatnonzero(plates == f"T{p}")
        c = cols[gids[p]]
        r, j = linear_sum_assignment(-np.log(probs[np.ix_(rows, c)]))
        assert res.classes[rows[r]].tolist() == c[j].tolist()
    # the restriction helps: group >= plate >= argmax here
    plate = apply_prior(probs, plates, "exact").classes
    acc = [(x == truth).mean() for x in (probs.argmax(1), plate, res.classes)]
    assert acc[0] <= acc[1] <= acc[2] and acc[2] > acc[0] + 0.1


def test_group_prior_in_predictions_reports_a_plate_that_fits_no_group():
    probs, plates, truth, classes, groups, _ = _grouped(1)
    meta = pd.DataFrame({"key": [f"k{i}" for i in range(len(plates))], "plate": plates,
                         "well": [f"W{i:03d}" for i in range(len(plates))],
                         "label": [classes[t] for t in truth]})
    odd = np.flatnonzero(plates == "T5")
    probs = probs.copy()
    probs[odd] = 1.0 / probs.shape[1]          # a plate the model cannot place in any group
    with pytest.warns(UserWarning, match=r"1 plate\(s\) fit no learned group \(T5: its best "
                                         r"group \(0\) is only 0\.00 nats .* the plate prior is "
                                         r"used"):
        table, summary = predictions(meta, probs, classes, prior="group", groups=groups)
    assert summary["plates_without_group"] == ["T5"] and summary["plate_groups"]["T5"] == -1
    assert table[table["plate"] == "T5"]["prediction"].is_unique   # plate prior held there
    with pytest.raises(TrainingError, match=r"--prior group needs plate groups.*--train-plates"):
        predictions(meta, probs, classes, prior="group", groups=None)


def test_experiment_prior_each_class_once_per_experiment():
    probs, plates, truth, classes, groups, _ = _grouped(2, plates=3)  # 3 plates = 24 classes
    meta = pd.DataFrame({"key": [f"k{i}" for i in range(len(plates))], "plate": plates,
                         "well": [f"W{i:03d}" for i in range(len(plates))], "batch": "E1",
                         "label": [classes[t] for t in truth]})
    table, summary = predictions(meta, probs, classes, prior="experiment")
    assert table["prediction"].is_unique and summary["accuracy"] >= summary["accuracy_argmax"]
    with pytest.raises(TrainingError, match=r"--prior experiment needs a 'batch'"):
        predictions(meta.drop(columns=["batch"]), probs, classes, prior="experiment")


# ----------------------------------------------------------------------------- DeepNoise's balancing
def test_deepnoise_balancing_on_a_hand_worked_example():
    # Two wells both prefer class 0. Each step lowers the weight of the most-predicted class by
    # alpha = 0.01 (ensemble.py:55-56). Well 1 moves to class 1 when 0.8 w < 0.3, i.e. w < 0.375:
    # after 63 steps (w = 1 - 0.63 = 0.37); well 0 keeps class 0 (0.9 * 0.37 = 0.333 > 0.1).
    # The score then is 100 (each class once; ensemble.py:41-47) and the search stops.
    scores = np.array([[0.9, 0.1], [0.8, 0.3]])
    res = deepnoise_balance(scores)
    assert res.assignment.tolist() == [0, 1]
    assert res.coefficients[0] == pytest.approx(0.37, abs=1e-5) and res.coefficients[1] == 1.0
    assert res.score == 100.0 and res.rounds == 1 and res.history == [100.0]
    assert deepnoise_score(np.array([2, 0]), 2) == 50.0      # min(100, 50) + min(0, 50)
    # the class-wise normalisation over wells (ensemble.py:202-204): columns sum to 1
    p = np.array([[0.6, 0.4], [0.2, 0.8]])
    assert np.allclose(column_normalise(p), [[0.75, 1 / 3], [0.25, 2 / 3]])
    # on a larger plate it balances (every class once) like the exact assignment usually does
    probs, plates, truth, *_ = _grouped(3, n_groups=1, size=20, plates=1, noise=1.0)
    got = assign_deepnoise(probs)
    assert len(set(got.tolist())) == 20
    assert (got == truth).mean() >= (probs.argmax(1) == truth).mean()
    assert apply_prior(probs, plates, "deepnoise").classes.tolist() == got.tolist()


def test_experiment_prior_lets_shared_controls_occur_once_per_plate():
    # two plates of one experiment, each: 3 group classes + the control "ctl"; the control
    # occurs twice in the experiment and must keep both wells
    classes = ["a", "b", "c", "d", "e", "f", "ctl"]
    labels = ["a", "b", "c", "ctl", "d", "e", "f", "ctl"]
    meta = pd.DataFrame({"key": [f"k{i}" for i in range(8)], "plate": ["P1"] * 4 + ["P2"] * 4,
                         "well": [f"W{i}" for i in range(8)], "batch": "E1", "label": labels})
    probs = _perfect(meta, classes)
    groups = discover_groups(["T1"] * 4 + ["T2"] * 4, labels, ["X"] * 8)
    assert groups.shared == ["ctl"] and groups.sizes() == [3, 3]
    _, summary = predictions(meta, probs, classes, prior="experiment", groups=groups)
    assert summary["accuracy"] == 1.0 and summary["shared_classes"] == 1
    # without the training plates every class is once per experiment: 8 wells, 7 classes
    with pytest.warns(UserWarning, match=r"experiment\(s\) \['E1'\] have more wells"):
        _, without = predictions(meta, probs, classes, prior="experiment")
    assert without["fallback_plates"] == ["E1"]
