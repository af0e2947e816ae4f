import numpy as np
import pandas as pd
import pytest

from cytodata.curate.splits import assign_splits, split_report
from cytodata.errors import RecipeError, SchemaError


def crops_table(n_parents=3000, n_labels=30, seed=0):
    """Crops of source images: each parent 1-6 crops, one label per parent (Zipf-ish)."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(1, 7, n_parents)
    p = 1 / np.arange(1, n_labels + 1)
    parent_label = rng.choice(n_labels, n_parents, p=p / p.sum())
    parent = np.repeat(np.arange(n_parents), crops)
    labels = np.array([f"lab{i}" for i in range(n_labels)], dtype=object)[parent_label[parent]]
    return pd.DataFrame({
        "parent_id": pd.array([f"img{i}" for i in parent], dtype="string"),
        "plate": pd.array([f"P{i % 40}" for i in parent], dtype="string"),
        "label": pd.array(labels, dtype="string"),
    }, index=pd.RangeIndex(len(parent)) * 2)


def test_groups_never_straddle_splits():
    table = crops_table()
    split = assign_splits(table)
    assert split.name == "split" and split.index.equals(table.index)
    assert str(split.dtype) == "string" and set(split) == {"train", "val", "test"}
    assert (split.groupby(table["parent_id"]).nunique() == 1).all()
    by_plate = assign_splits(table, group="plate", stratify=None)
    assert (by_plate.groupby(table["plate"]).nunique() == 1).all()
    assert by_plate.nunique() == 3


def test_fractions_roughly_met_on_large_data():
    table = crops_table(n_parents=20_000, seed=1)
    share = assign_splits(table, seed=1).value_counts(normalize=True)
    assert abs(share["train"] - 0.8) < 0.01
    assert abs(share["val"] - 0.1) < 0.01 and abs(share["test"] - 0.1) < 0.01
    share = assign_splits(table, fractions={"train": 0.6, "test": 0.4}).value_counts(normalize=True)
    assert set(share.index) == {"train", "test"} and abs(share["test"] - 0.4) < 0.01


def test_every_label_with_three_groups_is_in_every_split():
    table = crops_table(n_parents=2000, n_labels=60, seed=2)
    # plus a label with exactly 3 parents and one with 2
    extra = pd.DataFrame({"parent_id": ["t1", "t2", "t2", "t3", "u1", "u2"],
                          "plate": ["Q"] * 6,
                          "label": ["three"] * 4 + ["two"] * 2}).astype("string")
    table = pd.concat([table, extra], ignore_index=True)
    split = assign_splits(table, seed=5)
    report = split_report(table.assign(split=split))
    groups = table.groupby("label")["parent_id"].nunique()
    for label in groups[groups >= 3].index:
        assert (report.loc[label, ["train", "val", "test"]] > 0).all(), label
    assert report.loc["two", "total"] == 2  # 2 groups cannot cover 3 splits; kept whole
    assert report["total"].sum() == len(table)
    assert report.loc["three", "total"] == 4


def test_dominant_label_decides_for_mixed_groups():
    table = pd.DataFrame({"parent_id": ["a", "a", "a", "b", "c", "d"],
                          "label": ["x", "x", "y", "y", "y", "y"]}).astype("string")
    split = assign_splits(table)
    # 'a' is an x-group (2 of 3 rows): a one-group class -> train; y has 3 groups -> all splits
    assert split.iloc[:3].tolist() == ["train"] * 3
    assert sorted(split.iloc[3:]) == ["test", "train", "val"]


def test_deterministic_for_a_seed():
    table = crops_table(seed=3)
    a = assign_splits(table, seed=11)
    assert a.equals(assign_splits(table, seed=11))
    assert not a.equals(assign_splits(table, seed=12))


def test_input_errors():
    table = crops_table(n_parents=20)
    with pytest.raises(SchemaError, match=r"\['batch'\].*available"):
        assign_splits(table, group="batch")
    with pytest.raises(RecipeError, match="sum to 0.9"):
        assign_splits(table, fractions={"train": 0.8, "val": 0.1})
    with pytest.raises(RecipeError, match="unknown split"):
        assign_splits(table, fractions={"train": 0.5, "holdout": 0.5})
    bad = table.copy()
    bad.loc[[4, 10], "parent_id"] = pd.NA
    with pytest.raises(SchemaError, match=r"rows 4, 10"):
        assign_splits(bad)
    with pytest.raises(SchemaError, match=r"\['split'\]"):
        split_report(table)
