"""Transforms: seeded per sample, exact pixel moves, plate statistics, multi-crop views; ZarrDataset crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cytodata.loaders import StreamingDataset
from cytodata.loaders.demo import demo_manifest, sample_pixels
from cytodata.loaders.transforms import (
    ChannelDropout,
    ChannelSubset,
    Compose,
    MultiCrop,
    PlateNormalize,
    RandomCrop,
    RandomErasing,
    RandomFlip,
    RandomResizedCrop,
    RandomRot90,
    RandomRotation,
    ToFloat,
)


def sample(seed=1, c=5, size=32, dtype=torch.uint16):
    img = torch.arange(c * size * size, dtype=torch.int32).reshape(c, size, size).to(dtype)
    return {"__key__": "k", "__seed__": seed, "image": img, "meta": {"plate": "P1"}}


def test_same_seed_same_result_and_pixels_only_move():
    pipe = Compose([RandomCrop(20), RandomFlip(), RandomRot90(), ToFloat(), RandomErasing(p=1.0),
                    ChannelDropout(p=0.5)])
    a, b = pipe(sample(3)), pipe(sample(3))
    torch.testing.assert_close(a["image"], b["image"])
    assert "__rng__" not in a and a["image"].shape == (5, 20, 20) and a["image"].dtype == torch.float32
    outs = {tuple(pipe(sample(s))["image"].flatten().tolist()) for s in range(8)}
    assert len(outs) > 4
    # flips / rot90 / crops keep uint16 and only permute pixels of each channel
    raw = sample(5)
    moved = Compose([RandomCrop(32), RandomFlip(), RandomRot90()])(raw)["image"]
    assert moved.dtype == torch.uint16
    for c in range(5):
        assert sorted(moved[c].flatten().tolist()) == sorted(raw["image"][c].flatten().tolist())


def test_crop_rot90_flip_match_numpy_exactly():
    raw = sample(7, c=3, size=8)
    out = Compose([RandomRot90()])(raw)["image"].numpy()
    ref = raw["image"].numpy()
    assert any(np.array_equal(out, np.rot90(ref, k, axes=(1, 2))) for k in range(4))
    crop = RandomCrop(5)(raw)["image"].numpy()
    hits = [(y, x) for y in range(4) for x in range(4) if np.array_equal(crop, ref[:, y:y + 5, x:x + 5])]
    assert len(hits) == 1


def test_plate_normalize_uses_the_plate_statistics_and_fallback():
    stats = {"normalization": {"plate": {"P1": {"mean": [10.0, 20.0], "std": [2.0, 4.0]}},
                               "all": {"all": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}}}}
    s = {"__seed__": 0, "image": torch.full((2, 4, 4), 30.0), "meta": {"plate": "P1"}}
    out = PlateNormalize(stats)(s)["image"]
    torch.testing.assert_close(out[0], torch.full((4, 4), 10.0))
    torch.testing.assert_close(out[1], torch.full((4, 4), 2.5))
    other = PlateNormalize(stats)(dict(s, meta={"plate": "P9"}))["image"]
    torch.testing.assert_close(other, s["image"])
    with pytest.raises(Exception, match="P9"):
        PlateNormalize(stats, fallback=None)(dict(s, meta={"plate": "P9"}))
    with pytest.raises(TypeError, match="ToFloat"):
        PlateNormalize(stats)(dict(s, image=torch.zeros((2, 4, 4), dtype=torch.uint16)))


def test_multicrop_views_and_float_ops():
    mc = MultiCrop(global_size=16, local_size=8, n_local=4, view_transform=Compose([RandomFlip()]))
    out = Compose([ToFloat(65535.0), mc])(sample(2, c=4, size=40))
    assert "image" not in out and len(out["views"]) == 6
    assert [tuple(v.shape) for v in out["views"]] == [(4, 16, 16)] * 2 + [(4, 8, 8)] * 4
    assert all(v.dtype == torch.float32 and float(v.max()) <= 1.0 for v in out["views"])
    again = Compose([ToFloat(65535.0), mc])(sample(2, c=4, size=40))
    assert all(torch.equal(a, b) for a, b in zip(out["views"], again["views"]))
    rot = Compose([ToFloat(), RandomRotation(90)])(sample(1, c=2, size=16))["image"]
    assert rot.shape == (2, 16, 16) and torch.isfinite(rot).all()
    rrc = Compose([ToFloat(), RandomResizedCrop(12)])(sample(1, c=7, size=30))["image"]
    assert rrc.shape == (7, 12, 12)
    assert ChannelSubset([0, 2])(sample(1, c=3))["image"].shape == (2, 32, 32)
    with pytest.raises(TypeError, match="ToFloat"):
        RandomRotation()(sample(1))


def test_channel_dropout_keeps_min_channels():
    for seed in range(20):
        out = ChannelDropout(p=1.0, min_keep=2)(dict(sample(seed, c=5), image=torch.ones(5, 4, 4)))["image"]
        assert int((out.flatten(1).sum(1) > 0).sum()) == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_transforms_on_cuda_match_cpu():
    pipe = Compose([ToFloat(), RandomCrop(20), RandomFlip(), RandomRot90(), RandomErasing(p=1.0)])
    cpu = pipe(sample(4))["image"]
    s = sample(4)
    s["image"] = s["image"].to(torch.int32).cuda()
    torch.testing.assert_close(pipe(s)["image"].cpu(), cpu)


def test_transform_inside_streaming_dataset_is_seeded_per_epoch(tmp_path):
    from cytodata.loaders.demo import write_demo_shards

    write_demo_shards(tmp_path / "set", 12, (2, 16, 16), samples_per_shard=5)
    stats = json.loads((tmp_path / "set" / "shards.json").read_text())
    pipe = Compose([RandomCrop(8), RandomFlip(), ToFloat(), PlateNormalize(stats)])
    ds = StreamingDataset(tmp_path / "set", transform=pipe, seed=0)
    a = {s["__key__"]: s["image"] for s in ds}
    b = {s["__key__"]: s["image"] for s in ds}
    assert all(torch.equal(a[k], b[k]) and a[k].shape == (2, 8, 8) for k in a)
    ds.set_epoch(1)
    c = {s["__key__"]: s["image"] for s in ds}
    assert sum(not torch.equal(a[k], c[k]) for k in a) >= 8


def test_zarr_dataset_crops_read_the_right_window(tmp_path):
    from torch.utils.data import DataLoader

    from cytodata.loaders import ZarrDataset
    from cytodata.shards import write

    table = demo_manifest(tmp_path / "img", 9, (3, 32, 32))
    write(table, tmp_path / "z", format="zarr", scheduler="synchronous", progress=False)
    ds = ZarrDataset(tmp_path / "z", crop=12, seed=3)
    assert len(ds) == 9
    for i in range(len(ds)):
        s = ds[i]
        y, x = ds.window(i)
        full = sample_pixels(int(s["__key__"].rsplit("im", 1)[1]), (3, 32, 32))
        assert s["image"].dtype == torch.uint16
        np.testing.assert_array_equal(s["image"].numpy(), full[:, y:y + 12, x:x + 12])
    first = [ds.window(i) for i in range(9)]
    assert first == [ZarrDataset(tmp_path / "z", crop=12, seed=3).window(i) for i in range(9)]
    ds.set_epoch(1)
    assert [ds.window(i) for i in range(9)] != first
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert batch["image"].shape == (4, 3, 12, 12) and len(batch["__key__"]) == 4


def test_draws_come_from_the_stdlib_generator_with_pinned_values():
    """Draws are the standard library's Mersenne Twister seeded from ``__seed__`` (stable across
    machines and Python versions, and never releasing the GIL on decode threads); these values
    are the contract that an augmented epoch replays exactly after an upgrade."""
    import random

    from cytodata.loaders.partition import seed_for
    from cytodata.loaders.transforms import generator, plan, randint

    g = generator({"__seed__": 123}, "crop")
    ref = random.Random(seed_for(123, "crop"))
    assert isinstance(g, random.Random)
    assert [randint(g, 0, 31) for _ in range(6)] == [ref.randint(0, 31) for _ in range(6)]
    pinned = []
    for seed in (0, 1, 2):
        geo = plan(Compose([RandomCrop(24), RandomFlip()]), {"__seed__": seed, "__key__": "k"}, (3, 32, 32))
        pinned.append((geo.top, geo.left, geo.flip_y, geo.flip_x))
    assert pinned == [(0, 1, True, False), (0, 0, True, False), (7, 1, True, True)]
