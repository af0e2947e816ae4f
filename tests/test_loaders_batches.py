"""StreamingDataset.batches: whole batches written straight into one preallocated tensor.

Bit-identical to DataLoader(per-sample stream, batch_size=B) for the same seed (inline, on
threads, in worker processes, int32, pairs), exact resume, errors per sample; the grouped
options; no process-global blosc switch flipped by the loader.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from cytodata.errors import ShardError
from cytodata.loaders import (
    Batches,
    MixedShapeError,
    OrderOptions,
    ReadOptions,
    StreamingDataset,
    WeakLabelPairs,
    collate,
)
from cytodata.loaders.demo import write_demo_shards
from cytodata.loaders.transforms import (
    ChannelSubset,
    Compose,
    Geometry,
    RandomCrop,
    RandomFlip,
    ToFloat,
    placeable,
    plan,
)

SHAPE = (3, 16, 20)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("batches") / "set"
    write_demo_shards(out, 29, SHAPE, samples_per_shard=8, label_na=2)
    return out


def assert_same_batch(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            assert_same_batch(a[k], b[k])
        else:
            assert a[k] == b[k], k


def per_sample(ds: StreamingDataset, batch_size: int) -> list[dict]:
    return list(DataLoader(ds, batch_size=batch_size, num_workers=0, collate_fn=collate))


AUGMENTS = {
    "crop+flip": lambda: Compose([RandomCrop(12), RandomFlip()]),
    "flip-then-crop, channels": lambda: Compose([RandomFlip(p=0.7), RandomCrop(9), ChannelSubset([2, 0]),
                                                 RandomFlip(vertical=False)]),
    "lone crop": lambda: RandomCrop(11),
    "none": lambda: None,
}


@pytest.mark.parametrize("name", list(AUGMENTS))
def test_batches_equal_the_collated_per_sample_path(shard_set, name):
    for threads, as_int32, seed in ((0, False, 3), (2, True, 5)):
        kw = dict(seed=seed, transform=AUGMENTS[name](), threads=threads, as_int32=as_int32)
        old = per_sample(StreamingDataset(shard_set, **kw), 8)
        new = list(StreamingDataset(shard_set, **kw).batches(8, pin_memory=False))
        assert [len(b["__key__"]) for b in new] == [8, 8, 8, 5]
        assert len(new) == len(old)
        for a, b in zip(old, new):
            assert_same_batch(a, b)
        assert new[0]["image"].dtype == (torch.int32 if as_int32 else torch.uint16)


def test_geometry_of_random_pipelines_matches_call():
    """plan(...).write(...) equals transform(sample)["image"] for random compositions."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 65535, (4, 23, 17), dtype=np.uint16))
    steps = [lambda: RandomCrop(int(rng.integers(5, 12))), lambda: RandomFlip(p=float(rng.random())),
             lambda: RandomFlip(vertical=False), lambda: ChannelSubset(list(rng.permutation(4)[:3]))]
    for trial in range(40):
        picks = [steps[i]() for i in rng.integers(0, len(steps), size=int(rng.integers(1, 5)))]
        subset_twice = sum(isinstance(p, ChannelSubset) for p in picks) > 1
        if subset_twice:
            picks = [p for p in picks if not isinstance(p, ChannelSubset)] or [RandomFlip()]
        t = Compose(picks)
        sample = {"__key__": f"k{trial}", "__seed__": trial * 7919, "image": image}
        try:
            want = t(sample)["image"]
        except ShardError:  # a second crop larger than the first: plan refuses it the same way
            with pytest.raises(ShardError, match="smaller than"):
                plan(t, sample, image.shape)
            continue
        geo = plan(t, sample, image.shape)
        assert placeable(t) and geo.shape == tuple(want.shape)
        for dtype in (torch.uint16, torch.int32):
            out = torch.empty(geo.shape, dtype=dtype)
            geo.write(image, out)
            assert torch.equal(out, want.to(dtype)), (trial, picks, dtype)
    assert not placeable(Compose([RandomCrop(4), ToFloat()]))
    assert plan(ToFloat(), {"__seed__": 0}, (1, 4, 4)) is None
    with pytest.raises(ShardError, match="smaller than the 30 crop"):
        plan(RandomCrop(30), {"__key__": "big", "__seed__": 0}, image.shape)
    with pytest.raises(ValueError, match="only -1 and -2"):
        Geometry((1, 2, 2)).flip([0])


def test_other_transforms_are_stacked_into_the_batch(shard_set):
    aug = Compose([RandomCrop(10), ToFloat(65535.0)])
    old = per_sample(StreamingDataset(shard_set, seed=2, transform=aug), 6)
    new = list(StreamingDataset(shard_set, seed=2, transform=aug, threads=2).batches(6, pin_memory=False))
    assert len(new) == len(old) == 5
    for a, b in zip(old, new):
        assert_same_batch(a, b)
    assert new[0]["image"].dtype == torch.float32


def test_pairs_batch_anchor_and_partner(shard_set):
    def ds():
        return StreamingDataset(shard_set, seed=1, sampler=WeakLabelPairs(column="plate", allow_self=True),
                                transform=Compose([RandomCrop(12), RandomFlip()]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old, new = per_sample(ds(), 4), list(ds().batches(4, pin_memory=False))
    assert len(old) == len(new) and "partner" in new[0]
    for a, b in zip(old, new):
        assert_same_batch(a, b)


def test_batches_resume_and_worker_processes(shard_set):
    aug = Compose([RandomCrop(12), RandomFlip()])
    full = list(StreamingDataset(shard_set, seed=7, transform=aug, threads=2).batches(4, pin_memory=False))
    ds = StreamingDataset(shard_set, seed=7, transform=aug, threads=2)
    it = iter(ds.batches(4, pin_memory=False))
    head = [next(it) for _ in range(3)]
    it.close()
    state = ds.state_dict()
    assert state["samples_seen"] == 12
    again = StreamingDataset(shard_set, seed=7, transform=aug)
    batches = again.batches(4, pin_memory=False)
    batches.load_state_dict(state)
    rest = list(batches)
    assert len(head) + len(rest) == len(full) == 8
    for a, b in zip(head + rest, full):
        assert_same_batch(a, b)
    # DataLoader worker processes each build whole batches; round-robin keeps the order
    via = list(DataLoader(StreamingDataset(shard_set, seed=7, transform=aug).batches(4, pin_memory=False),
                          batch_size=None, num_workers=2))
    assert len(via) == len(full)
    for a, b in zip(via, full):
        assert_same_batch(a, b)
    assert len(Batches(StreamingDataset(shard_set), 4)) == 8


def test_a_flipped_byte_fails_its_sample_only(shard_set, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shard_set, bad)
    index = pd.read_parquet(bad / "index.parquet")
    row = index.iloc[5]
    with open(bad / row["shard"], "r+b") as fh:  # one byte inside the payload
        fh.seek(int(row["offset"]) + int(row["size"]) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(ShardError, match=f"{row['key']}.*checksum mismatch"):
        list(StreamingDataset(bad, seed=1, threads=2).batches(8))
    ds = StreamingDataset(bad, seed=1, on_error="skip", threads=2)
    with pytest.warns(UserWarning, match=row["key"]):
        got = list(ds.batches(8, pin_memory=False))
    keys = [k for b in got for k in b["__key__"]]
    assert len(keys) == 28 and row["key"] not in keys and sorted(len(b["__key__"]) for b in got) == [5, 7, 8, 8]
    good = {k: img for b in list(StreamingDataset(shard_set, seed=1).batches(8, pin_memory=False))
            for k, img in zip(b["__key__"], b["image"])}
    for b in got:
        for k, img in zip(b["__key__"], b["image"]):
            assert torch.equal(img, good[k])
    assert ds.errors == 1 and ds.state_dict()["samples_seen"] == 29


def test_mixed_shapes_in_a_batch_name_the_keys(shard_set, tmp_path):
    other = tmp_path / "other"
    write_demo_shards(other, 6, (3, 16, 14), samples_per_shard=6)
    mixed = tmp_path / "mixed"
    shutil.copytree(shard_set, mixed)
    shutil.copy(other / "shard-000000.tar", mixed / "shard-000099.tar")
    import json

    meta = json.loads((mixed / "shards.json").read_text())
    extra = json.loads((other / "shards.json").read_text())["shards"][0]
    meta["shards"].append(dict(extra, name="shard-000099.tar"))
    meta.pop("shape", None)
    (mixed / "shards.json").write_text(json.dumps(meta))
    rows = pd.read_parquet(other / "index.parquet").assign(shard="shard-000099.tar")
    rows["key"] = "x" + rows["key"]
    pd.concat([pd.read_parquet(mixed / "index.parquet"), rows]).to_parquet(mixed / "index.parquet")
    with pytest.raises(MixedShapeError, match=r"\(3, 16, 14\)"):
        list(StreamingDataset(mixed, shuffle=False).batches(35))
    # a crop to one size makes them stackable again
    got = list(StreamingDataset(mixed, shuffle=False, transform=RandomCrop(12)).batches(35, pin_memory=False))
    assert got[0]["image"].shape == (35, 3, 12, 12)


def test_grouped_options_equal_flat_keywords(shard_set):
    flat = StreamingDataset(shard_set, seed=3, threads=2, read_ahead=5, verify=False, split=None, tail="drop")
    grouped = StreamingDataset(shard_set, read=ReadOptions(threads=2, read_ahead=5, verify=False),
                               order=OrderOptions(seed=3, tail="drop"))
    assert flat.read_options == grouped.read_options and flat.order_options == grouped.order_options
    assert (grouped.threads, grouped.read_ahead, grouped.verify, grouped.seed, grouped.tail) == (2, 5, False, 3, "drop")
    assert [s["__key__"] for s in flat] == [s["__key__"] for s in grouped]
    # a flat keyword overrides the group's field
    assert StreamingDataset(shard_set, read=ReadOptions(threads=2), threads=1).threads == 1
    with pytest.raises(TypeError, match="thread.*valid:.*read_ahead"):
        StreamingDataset(shard_set, thread=2)
    with pytest.raises(ValueError, match="on_error"):
        ReadOptions(on_error="ignore")
    with pytest.raises(ValueError, match="tail"):
        OrderOptions(tail="wrap")


def test_loading_leaves_the_global_blosc_switch_alone(shard_set):
    from numcodecs import blosc

    aug = Compose([RandomCrop(12), RandomFlip()])
    before = blosc.use_threads
    try:
        for value in (before, True):
            blosc.use_threads = value
            list(StreamingDataset(shard_set, transform=aug, threads=2))
            list(StreamingDataset(shard_set, transform=aug, threads=2).batches(8, pin_memory=False))
            list(StreamingDataset(shard_set, transform=aug))
            assert blosc.use_threads is value
    finally:
        blosc.use_threads = before


def test_codec_decodes_on_one_thread_per_call():
    from numcodecs import blosc

    from cytodata.shards.codecs import CODECS

    image = np.random.default_rng(1).integers(0, 4096, (5, 64, 48), dtype=np.uint16)
    before = blosc.use_threads
    for name in ("blosc-lz4", "blosc-zstd"):
        codec = CODECS.get(name)
        data = codec.encode(image)
        out = np.empty_like(image)
        assert codec.decode(data, image.shape, image.dtype, out=out, threads=1) is out
        np.testing.assert_array_equal(out, image)
        np.testing.assert_array_equal(codec.decode(data, image.shape, image.dtype), image)
        with pytest.raises(ShardError, match="decoded to"):  # more room than the frame holds
            codec.decode(data, (5, 64, 96), image.dtype, threads=1)
    assert blosc.use_threads is before


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batches_are_pinned_when_cuda_is_available(shard_set):
    aug = Compose([RandomCrop(12), RandomFlip()])
    pinned = list(StreamingDataset(shard_set, seed=2, transform=aug, threads=2).batches(8))
    plain = list(StreamingDataset(shard_set, seed=2, transform=aug).batches(8, pin_memory=False))
    assert all(b["image"].is_pinned() for b in pinned) and not plain[0]["image"].is_pinned()
    for a, b in zip(pinned, plain):
        assert_same_batch(a, b)
        assert torch.equal(a["image"].cuda(non_blocking=True).cpu(), b["image"])
