"""Loader ergonomics: mixed-shape batches explained, StreamingDataLoader resume, readable repr."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from cytodata.loaders import (
    MixedShapeError,
    StreamingDataLoader,
    StreamingDataset,
    collate,
    pad_collate,
)
from cytodata.loaders.demo import demo_manifest, write_demo_shards
from cytodata.shards import write


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("ergo") / "set"
    write_demo_shards(out, 37, (3, 16, 16), samples_per_shard=10)
    return out


@pytest.fixture(scope="module")
def mixed_set(tmp_path_factory):
    """Two sources: 3-channel 16x16 and 1-channel 24x24 images in one shard set."""
    import pandas as pd

    root = tmp_path_factory.mktemp("mixed")
    a = demo_manifest(root / "a", 6, (3, 16, 16), seed=0)
    b = demo_manifest(root / "b", 6, (1, 24, 20), seed=1)
    b["source"] = "other"
    b["key"] = ["other__" + k for k in b["key"]]
    out = root / "set"
    write(pd.concat([a, b], ignore_index=True), out, samples_per_shard=4, scheduler="synchronous",
          progress=False)
    return out


def test_mixed_shapes_raise_a_clear_error_naming_keys_shapes_and_ways_out(mixed_set):
    ds = StreamingDataset(mixed_set, seed=0)
    samples = list(ds)
    shapes = {tuple(s["image"].shape) for s in samples}
    assert shapes == {(3, 16, 16), (1, 24, 20)}
    with pytest.raises(MixedShapeError) as err:
        collate(samples)
    msg = str(err.value)
    assert "(3, 16, 16)" in msg and "(1, 24, 20)" in msg
    assert samples[0]["__key__"] in msg or "samples)" in msg
    for way in ("ChannelSubset", "RandomCrop", "pad_collate", "GroupedBatches", "batch_size=None"):
        assert way in msg
    # the loader wrapper uses it by default, so the README pattern fails with this message
    with pytest.raises(MixedShapeError, match="differ in shape"):
        for _ in StreamingDataLoader(StreamingDataset(mixed_set, seed=0), batch_size=12):
            pass
    # and torch's own DataLoader accepts it as collate_fn
    with pytest.raises(MixedShapeError):
        ds = StreamingDataset(mixed_set, seed=0)
        next(iter(DataLoader(ds, batch_size=12, collate_fn=collate)))


def test_pad_collate_and_grouped_batches_are_ways_out(mixed_set):
    from cytodata.loaders import GroupedBatches

    samples = list(StreamingDataset(mixed_set, seed=0))
    batch = pad_collate(samples)
    assert batch["image"].shape == (12, 3, 24, 20)
    assert batch["image"].dtype == samples[0]["image"].dtype
    for i, s in enumerate(samples):
        c, h, w = s["image"].shape
        assert batch["image_size"][i].tolist() == [c, h, w]
        assert torch.equal(batch["image"][i, :c, :h, :w], s["image"])
        assert int(batch["image"][i].sum()) == int(s["image"].sum())  # padding is zeros
    ds = StreamingDataset(mixed_set, seed=0, sampler=GroupedBatches("source", 3))
    batches = list(StreamingDataLoader(ds, batch_size=3))
    assert len(batches) == 4 and all(b["image"].shape[0] == 3 for b in batches)


def test_collate_of_one_shape_is_default_collate(shard_set):
    samples = list(StreamingDataset(shard_set, seed=0))[:5]
    ours, theirs = collate(samples), torch.utils.data.default_collate(samples)
    assert torch.equal(ours["image"], theirs["image"]) and ours["__key__"] == theirs["__key__"]


def _keys(loader):
    return [k for batch in loader for k in batch["__key__"]]


def test_resume_through_the_loader_with_two_workers_equals_the_uninterrupted_run(shard_set):
    full = _keys(StreamingDataLoader(StreamingDataset(shard_set, seed=7), batch_size=4,
                                     num_workers=2))
    assert sorted(full) == sorted(set(full)) and len(full) == 37
    loader = StreamingDataLoader(StreamingDataset(shard_set, seed=7), batch_size=4, num_workers=2)
    first = []
    for step, batch in enumerate(loader):
        first += batch["__key__"]
        if step == 4:  # stop mid-epoch with prefetched batches still in flight
            state = loader.state_dict()
            break
    assert state["samples_seen"] == 20 and state["epoch"] == 0
    resumed = StreamingDataLoader(StreamingDataset(shard_set, seed=0), batch_size=4, num_workers=2)
    resumed.load_state_dict(state)
    rest = _keys(resumed)
    assert first + rest == full
    assert resumed.state_dict()["samples_seen"] == 37
    # and again mid-way through the resumed run, on a different worker count
    again = StreamingDataLoader(StreamingDataset(shard_set), batch_size=4, num_workers=0)
    again.load_state_dict(state)
    it = iter(again)
    more = next(it)["__key__"] + next(it)["__key__"]
    state2 = again.state_dict()
    assert state2["samples_seen"] == 28
    last = StreamingDataLoader(StreamingDataset(shard_set), batch_size=4, num_workers=2)
    last.load_state_dict(state2)
    assert first + more + _keys(last) == full
    # a new epoch starts at its beginning
    last.set_epoch(1)
    assert last.state_dict()["samples_seen"] == 0 and len(_keys(last)) == 37


def test_loader_rejects_other_datasets_and_samplers(shard_set):
    with pytest.raises(TypeError, match="StreamingDataset"):
        StreamingDataLoader(list(range(4)), batch_size=2)
    with pytest.raises(ValueError, match="shuffle"):
        StreamingDataLoader(StreamingDataset(shard_set), batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match="persistent_workers"):
        StreamingDataLoader(StreamingDataset(shard_set), batch_size=2, num_workers=1,
                            persistent_workers=True)


def test_streaming_dataset_repr_is_readable(shard_set):
    text = repr(StreamingDataset(shard_set, seed=3, split="train"))
    assert text.startswith("StreamingDataset(") and "object at 0x" not in text
    for part in (str(shard_set), "samples=", "shards=4", "codec='blosc-lz4'", "shape=(3, 16, 16)",
                 "split='train'", "seed=3", "epoch=0"):
        assert part in text
