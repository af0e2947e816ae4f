"""Shard-window shuffling (``shuffle_window=K``): a pure function of (seed, epoch), windows of
whole shards, every sample once over ranks x workers, exact resume on another world size."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from cytodata.loaders import OrderOptions, StreamingDataset, WindowShuffle
from cytodata.loaders.demo import write_demo_shards
from cytodata.loaders.partition import block_bounds, interleave, partition, window_order

SIZES = [10, 10, 10, 10, 10, 10, 7]  # the 67-sample set below: 7 shards


def shard_of(rows: np.ndarray, sizes=SIZES) -> np.ndarray:
    return np.searchsorted(block_bounds(sum(sizes), shard_sizes=sizes), rows, side="right") - 1


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("window") / "set"
    write_demo_shards(out, 67, (2, 8, 8), samples_per_shard=10)
    return out


@pytest.mark.parametrize("window", [1, 2, 3, 7, 50])
def test_windows_hold_whole_shards_in_a_seeded_order(window):
    order = window_order(SIZES, seed=3, epoch=0, window=window)
    assert sorted(order.tolist()) == list(range(67))
    np.testing.assert_array_equal(order, window_order(SIZES, seed=3, epoch=0, window=window))
    assert not np.array_equal(order, window_order(SIZES, seed=3, epoch=1, window=window))
    shards = shard_of(order)
    first_seen = list(dict.fromkeys(shards.tolist()))  # the seeded shard order
    lo = 0
    for w in range(0, len(first_seen), window):
        members = first_seen[w: w + window]
        n = sum(SIZES[m] for m in members)
        assert set(shards[lo: lo + n].tolist()) == set(members)  # one window: exactly its shards
        lo += n
    if window == 1:
        assert all(len(set(shards[b: b + 7].tolist())) <= 2 for b in range(0, 67, 7))
    if window >= 7:  # one window of all shards: samples of different shards interleave
        assert len(set(shards[:10].tolist())) > 2
    with pytest.raises(ValueError, match="shuffle_window=0"):
        window_order(SIZES, seed=3, epoch=0, window=0)


def test_every_sample_once_over_ranks_and_workers_with_a_bounded_working_set():
    order = window_order(SIZES, seed=5, epoch=2, window=2)
    for world in (1, 2, 3, 4):
        for workers in (1, 2, 3):
            for bs in (1, 4):
                streams = {(r, w): partition(order, rank=r, world_size=world, worker=w, num_workers=workers,
                                             batch_size=bs, tail="drop")
                           for r in range(world) for w in range(workers)}
                seen = np.concatenate(list(streams.values()))
                assert len(seen) == len(set(seen.tolist())) == 67 - 67 % world
                rebuilt = interleave(streams, world_size=world, num_workers=workers, batch_size=bs)
                np.testing.assert_array_equal(rebuilt, order[: len(rebuilt)])
    # one step of 3 ranks x batch 4 reads 12 consecutive positions: at most two windows of 2 shards
    step = 12
    assert max(len(set(shard_of(order[lo: lo + step]).tolist())) for lo in range(0, 67, step)) <= 4


def test_window_stream_with_dataloader_workers_and_resume_on_another_world_size(shard_set):
    single = [s["__key__"] for s in StreamingDataset(shard_set, shuffle_window=2, seed=9)]
    assert sorted(single) == sorted(s["__key__"] for s in StreamingDataset(shard_set, seed=9))
    rows = StreamingDataset(shard_set, shuffle_window=2, seed=9)
    assert isinstance(rows.sampler, WindowShuffle)
    np.testing.assert_array_equal(rows.order(), window_order(SIZES, seed=9, epoch=0, window=2))
    # 2 ranks x 2 DataLoader workers for 3 steps of batch 4, then 3 ranks in one process each
    bs, steps = 4, 3
    done = {}
    for r in range(2):
        ds = StreamingDataset(shard_set, shuffle_window=2, seed=9, rank=r, world_size=2, batch_size_hint=bs)
        dl = DataLoader(ds, batch_size=bs, num_workers=2)
        done[r] = [k for b in dl for k in b["__key__"]]
        assert len(done[r]) == 34  # 67 padded to 68
    consumed = [done[r][i] for i in range(steps * bs) for r in range(2)]
    assert consumed == single[: steps * bs * 2]
    state = ds.state_dict(samples_seen=steps * bs * 2)
    rest = {}
    for r in range(3):
        again = StreamingDataset(shard_set, shuffle_window=2, rank=r, world_size=3)
        again.load_state_dict(state)
        rest[r] = [s["__key__"] for s in again]
    merged = [rest[r][i] for i in range(len(rest[0])) for r in range(3)]
    assert consumed + merged[: 67 - 24] == single and merged[67 - 24:] == single[: len(merged) - 43]


def test_window_options_are_checked():
    with pytest.raises(ValueError, match="shuffle_window=0"):
        OrderOptions(shuffle_window=0)
    with pytest.raises(ValueError, match="the window is an order of its own"):
        OrderOptions(shuffle_window=2, sampler=WindowShuffle(3))


def test_cytodata_train_reaches_the_window_and_the_cache(shard_set, tmp_path):
    from cytodata.baselines.config import parse_set
    from cytodata.baselines.data import open_dataset
    from cytodata.baselines.resolve import load_config
    from cytodata.errors import TrainingError
    from cytodata.loaders import ClassBalanced

    cfg = load_config("classifier-tiny", parse_set([f"data.train={shard_set}", "data.shuffle_window=2",
                                                    f"data.cache_dir={tmp_path}", "data.cache_limit=1000000"]))
    assert (cfg.data.shuffle_window, cfg.data.cache_dir, cfg.data.cache_limit) == (2, str(tmp_path), 1000000)
    ds = open_dataset(str(shard_set), split=None, cfg=cfg.data, seed=9, shuffle=True)
    assert isinstance(ds.sampler, WindowShuffle) and ds.sampler.window == 2
    assert ds.read_options.cache_dir == str(tmp_path) and ds.read_options.cache_limit == 1000000
    np.testing.assert_array_equal(ds.order(), window_order(SIZES, seed=9, epoch=0, window=2))
    with pytest.raises(TrainingError, match="data.shuffle_window=2 and the sampler ClassBalanced"):
        open_dataset(str(shard_set), split=None, cfg=cfg.data, seed=9, shuffle=True, sampler=ClassBalanced())
