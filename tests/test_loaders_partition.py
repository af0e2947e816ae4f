"""Partitioning is exact: every sample once per epoch over ranks x workers, same global order for
any cluster shape, resume from ``start`` on another shape, uneven tails padded or dropped."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cytodata.loaders.partition import epoch_order, interleave, partition, rank_length

LAYOUTS = [(1, 1, 1), (1, 3, 1), (2, 2, 1), (4, 3, 1), (4, 3, 2), (5, 2, 4), (7, 1, 3), (40, 2, 1), (3, 4, 5)]


def streams(order, world, workers, bs, tail="pad", start=0):
    return {(r, w): partition(order, rank=r, world_size=world, worker=w, num_workers=workers, batch_size=bs,
                              tail=tail, start=start)
            for r in range(world) for w in range(workers)}


def test_epoch_order_is_a_block_shuffle_that_depends_on_seed_and_epoch_only():
    sizes = [10, 10, 10, 7]
    a = epoch_order(37, seed=3, epoch=0, shard_sizes=sizes)
    assert sorted(a.tolist()) == list(range(37))
    np.testing.assert_array_equal(a, epoch_order(37, seed=3, epoch=0, shard_sizes=sizes))
    assert not np.array_equal(a, epoch_order(37, seed=3, epoch=1, shard_sizes=sizes))
    assert not np.array_equal(a, epoch_order(37, seed=4, epoch=0, shard_sizes=sizes))
    # consecutive runs come from one shard (read locality), and the shard order is shuffled
    shard_of = np.repeat(np.arange(4), sizes)[a]
    assert (np.diff(shard_of) != 0).sum() == 3
    firsts = [shard_of[0]] + [shard_of[i + 1] for i in np.flatnonzero(np.diff(shard_of))]
    assert sorted(firsts) == [0, 1, 2, 3]
    assert not np.array_equal(a, np.arange(37))
    np.testing.assert_array_equal(epoch_order(37, seed=3, epoch=0, shuffle=False), np.arange(37))


@pytest.mark.parametrize("world,workers,bs", LAYOUTS)
@pytest.mark.parametrize("n", [37, 1, 0, 100])
def test_pad_covers_every_sample_once_and_interleave_rebuilds_the_global_order(n, world, workers, bs):
    order = epoch_order(n, seed=0, epoch=2, block_size=10)
    parts = streams(order, world, workers, bs, "pad")
    per_rank = [sum(len(parts[r, w]) for w in range(workers)) for r in range(world)]
    assert len(set(per_rank)) == 1 and per_rank[0] == rank_length(n, world_size=world, tail="pad")
    seq = interleave(parts, world_size=world, num_workers=workers, batch_size=bs)
    expected = np.concatenate([order, np.resize(order, (-n) % world)]) if n else order
    np.testing.assert_array_equal(seq, expected)
    all_items = np.concatenate(list(parts.values()))
    assert set(all_items.tolist()) == set(range(n))
    # padding repeats only the first (-n % world) units of the order
    assert len(all_items) - n == (-n) % world if n else len(all_items) == 0


@pytest.mark.parametrize("world,workers,bs", LAYOUTS)
def test_drop_gives_equal_counts_and_no_repeats(world, workers, bs):
    order = epoch_order(37, seed=1, epoch=0, shard_sizes=[10, 10, 10, 7])
    parts = streams(order, world, workers, bs, "drop")
    all_items = np.concatenate(list(parts.values()))
    assert len(all_items) == 37 - 37 % world == len(set(all_items.tolist()))
    seq = interleave(parts, world_size=world, num_workers=workers, batch_size=bs)
    np.testing.assert_array_equal(seq, order[: len(seq)])
    assert len({sum(len(parts[r, w]) for w in range(workers)) for r in range(world)}) == 1


def test_same_global_order_for_one_process_and_twelve():
    order = epoch_order(37, seed=5, epoch=1, shard_sizes=[10, 10, 10, 7])
    one = partition(order, rank=0, world_size=1, worker=0, num_workers=1)
    np.testing.assert_array_equal(one, order)
    many = interleave(streams(order, 4, 3, 1, "drop"), world_size=4, num_workers=3)
    np.testing.assert_array_equal(many, one[:36])
    # rank 0 worker 0 of (4 ranks, 3 workers) takes positions 0, 12, 24, 36
    np.testing.assert_array_equal(partition(order, rank=0, world_size=4, worker=0, num_workers=3),
                                  order[[0, 12, 24, 36]])


@pytest.mark.parametrize("before,after", list(itertools.product([(1, 1, 1), (4, 3, 2), (2, 2, 4)],
                                                                 [(1, 1, 1), (3, 2, 1), (8, 1, 2)])))
def test_resume_after_changing_world_size_and_workers(before, after):
    order = epoch_order(37, seed=9, epoch=0, block_size=8)
    world, workers, bs = before
    k_steps = 2
    consumed = k_steps * bs * world  # lock-step: every rank took k batches
    first = interleave(streams(order, world, workers, bs), world_size=world, num_workers=workers,
                       batch_size=bs)[:consumed]
    world2, workers2, bs2 = after
    rest = interleave(streams(order, world2, workers2, bs2, start=consumed), world_size=world2,
                      num_workers=workers2, batch_size=bs2)
    np.testing.assert_array_equal(np.concatenate([first, rest])[:37], order)
    assert set(np.concatenate([first, rest]).tolist()) == set(range(37))
    assert len(rest) == rank_length(37, world_size=world2, start=consumed) * world2


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="rank=4"):
        partition(np.arange(5), rank=4, world_size=4)
    with pytest.raises(ValueError, match="tail='wrap'"):
        partition(np.arange(5), tail="wrap")
    with pytest.raises(ValueError, match="start=9"):
        partition(np.arange(5), start=9)
    with pytest.raises(ValueError, match="shard_sizes"):
        epoch_order(5, seed=0, epoch=0, shard_sizes=[2, 2])
