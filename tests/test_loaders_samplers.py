"""Samplers: class balance (median rule), source mixing, weak-label pairs, plate-grouped batches;
all deterministic per (seed, epoch) and streamed through StreamingDataset."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader

from cytodata.loaders import ClassBalanced, GroupedBatches, SourceMix, StreamingDataset, WeakLabelPairs, grouped_batches


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    from cytodata.loaders.demo import write_demo_shards

    out = tmp_path_factory.mktemp("samplers") / "set"
    write_demo_shards(out, 37, (2, 8, 8), samples_per_shard=10, label_na=2)
    return out


def toy_index() -> pd.DataFrame:
    labels = ["a"] * 10 + ["b"] * 6 + ["c"] * 3 + ["d"] * 1 + [None] * 2
    return pd.DataFrame({
        "key": [f"k{i}" for i in range(22)],
        "shard": [f"s{i // 5}" for i in range(22)],
        "label": pd.array(labels, dtype="string"),
        "plate": [f"p{i % 3}" for i in range(22)],
        "source": ["x"] * 16 + ["y"] * 6,
        "parent_id": [f"img{i // 2}" for i in range(22)],
    })


def test_class_balanced_median_rule_and_equal_mode():
    index = toy_index()
    sampler = ClassBalanced("label")
    order = sampler.order(index, seed=0, epoch=0)
    counts = Counter(index["label"].iloc[order])
    assert counts == {"a": 4, "b": 4, "c": 3, "d": 1}  # median of (10, 6, 3, 1) is 4.5 -> 4
    assert len(set(order.tolist())) == len(order) and sampler.excluded == 2
    np.testing.assert_array_equal(order, ClassBalanced("label").order(index, seed=0, epoch=0))
    assert set(order.tolist()) != set(ClassBalanced("label").order(index, seed=0, epoch=1).tolist())
    equal = ClassBalanced("label", mode="equal").order(index, seed=0, epoch=0)
    assert Counter(index["label"].iloc[equal]) == {"a": 10, "b": 10, "c": 10, "d": 10}
    c_rows = equal[index["label"].iloc[equal].to_numpy() == "c"]
    assert sorted(Counter(c_rows.tolist()).values()) == [3, 3, 4]  # three whole passes + one more


def test_source_mix_counts():
    index = toy_index()
    mix = SourceMix({"x": 1, "y": 3}, num_samples=20)
    assert mix.counts(index) == {"x": 5, "y": 15}
    order = mix.order(index, seed=1, epoch=0)
    assert Counter(index["source"].iloc[order]) == {"x": 5, "y": 15}
    # y has 6 rows: each appears 2 or 3 times (two whole passes + 3 more)
    assert sorted(Counter(order[index["source"].iloc[order].to_numpy() == "y"].tolist()).values()) == [2, 2, 2, 3, 3, 3]
    with pytest.raises(KeyError, match="'z'"):
        SourceMix({"z": 1}).counts(index)


def test_weak_label_pairs_share_the_label_and_differ_in_image():
    index = toy_index()
    pairs = WeakLabelPairs("label", image_column="parent_id")
    with pytest.warns(UserWarning, match="1 anchors skipped"):
        order = pairs.order(index, seed=0, epoch=0)
    assert order.shape == (19, 2) and pairs.skipped == 1  # "d" has one image; 2 NA rows excluded
    lab, img = index["label"].to_numpy(dtype=object), index["parent_id"].to_numpy()
    assert all(lab[a] == lab[b] and img[a] != img[b] for a, b in order)
    assert sorted(order[:, 0].tolist()) == list(range(19))
    assert not np.array_equal(order, pairs.order(index, seed=0, epoch=1))
    with_self = WeakLabelPairs("label", image_column="parent_id", allow_self=True).order(index, seed=0, epoch=0)
    assert [19, 19] in with_self.tolist() and len(with_self) == 20


def test_grouped_batches_hold_one_plate_each():
    index = toy_index()
    batches = grouped_batches(index, "plate", 3, seed=0, epoch=0)
    plates = index["plate"].to_numpy()
    assert all(len(set(plates[b])) == 1 for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(22))
    assert [len(b) for b in grouped_batches(index, "plate", 3, seed=0, epoch=0, drop_last=True)].count(3) == 6


def test_pairs_stream_through_the_dataset(shard_set):
    ds = StreamingDataset(shard_set, seed=0, sampler=WeakLabelPairs("label"))
    got = list(ds)
    assert len(got) == 35 == len(ds)
    for s in got:
        assert s["label"] == s["partner"]["label"] >= 0
        assert s["__key__"] != s["partner"]["__key__"]
        assert s["image"].shape == s["partner"]["image"].shape == (2, 8, 8)


def test_plate_grouped_batches_per_rank_through_dataloader(shard_set):
    for world in (1, 2):
        for rank in range(world):
            ds = StreamingDataset(shard_set, seed=1, sampler=GroupedBatches("plate", 4), rank=rank, world_size=world)
            assert ds.batch_size_hint == 4
            batches = list(DataLoader(ds, batch_size=4, num_workers=2))
            assert batches and all(len(set(b["meta"]["plate"])) == 1 and len(b["__key__"]) == 4 for b in batches)


def test_balanced_sampler_streams_balanced_labels(shard_set):
    ds = StreamingDataset(shard_set, seed=0, sampler=ClassBalanced("label"))
    labels = Counter(s["label"] for s in ds)
    meta_counts = sorted(Counter(ds.index["label"].dropna()).values())
    median = int(np.median(meta_counts))
    assert sorted(labels.values()) == sorted(min(c, median) for c in meta_counts) and -1 not in labels
