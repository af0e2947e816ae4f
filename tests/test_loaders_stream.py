"""StreamingDataset on a real shard set written by cytodata.shards.write: exact coverage with
DataLoader workers (fork and spawn), same global order for any layout, resume, corrupt and
inconsistent shard sets."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from cytodata.errors import ShardError
from cytodata.loaders import StreamingDataset
from cytodata.loaders.demo import sample_pixels, write_demo_shards

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "set"
    write_demo_shards(out, 37, SHAPE, samples_per_shard=10, label_na=2)
    return out


def number(key: str) -> int:
    return int(key.rsplit("im", 1)[1])


def keys(samples) -> list[str]:
    return [s["__key__"] for s in samples]


def test_samples_decode_bit_exact_with_labels_and_meta(shard_set):
    ds = StreamingDataset(shard_set, seed=1)
    got = list(ds)
    assert len(got) == len(ds) == 37 and sorted(number(k) for k in keys(got)) == list(range(37))
    meta = json.loads((shard_set / "shards.json").read_text())
    assert ds.classes == sorted(meta["label_counts"]) == ["l0", "l1", "l2", "l3"]
    index = pd.read_parquet(shard_set / "index.parquet").set_index("key")
    for s in got:
        assert s["image"].dtype == torch.uint16 and tuple(s["image"].shape) == SHAPE
        np.testing.assert_array_equal(s["image"].numpy(), sample_pixels(number(s["__key__"]), SHAPE))
        label = index.loc[s["__key__"], "label"]
        assert s["label"] == (-1 if pd.isna(label) else ds.classes.index(label))
        assert s["meta"]["plate"] == index.loc[s["__key__"], "plate"]
    assert sum(s["label"] == -1 for s in got) == 2
    assert [s["__pos__"] for s in got] == list(range(37))
    assert StreamingDataset(shard_set, as_int32=True, seed=1).__iter__().__next__()["image"].dtype == torch.int32


def test_epochs_differ_and_repeat(shard_set):
    ds = StreamingDataset(shard_set, seed=1)
    e0 = keys(ds)
    assert keys(ds) == e0
    ds.set_epoch(1)
    e1 = keys(ds)
    assert e1 != e0 and sorted(e1) == sorted(e0)
    assert keys(StreamingDataset(shard_set, seed=2)) != e0


@pytest.mark.parametrize("tail,expected", [("pad", 40), ("drop", 36)])
def test_four_ranks_three_workers_rebuild_the_single_process_order(shard_set, tail, expected):
    single = keys(StreamingDataset(shard_set, seed=7))
    per_rank = {}
    for rank in range(4):
        ds = StreamingDataset(shard_set, seed=7, rank=rank, world_size=4, tail=tail)
        assert len(ds) == expected // 4
        # batch_size=None: the DataLoader takes one sample per worker in turn
        per_rank[rank] = keys(DataLoader(ds, batch_size=None, num_workers=3))
        assert len(per_rank[rank]) == expected // 4
    got = [per_rank[r][j] for j in range(expected // 4) for r in range(4)]
    assert got[:36] == single[:36] and len(got) == expected
    if tail == "pad":
        assert got[37:] == single[:3]


def loader_keys(ds, workers, batch_size=4, context=None):
    dl = DataLoader(ds, batch_size=batch_size, num_workers=workers, multiprocessing_context=context)
    return [k for batch in dl for k in batch["__key__"]], dl


def test_dataloader_two_workers_yields_the_global_order_once(shard_set):
    single = keys(StreamingDataset(shard_set, seed=3))
    got, _ = loader_keys(StreamingDataset(shard_set, seed=3, batch_size_hint=4), workers=2)
    assert got == single
    # world_size > shards: 6 ranks x 2 workers, every sample once (pad repeats the first 5)
    seen = []
    for rank in range(6):
        ds = StreamingDataset(shard_set, seed=3, rank=rank, world_size=6, batch_size_hint=2)
        ks, _ = loader_keys(ds, workers=2, batch_size=2)
        assert len(ks) == len(ds) == 7
        seen += ks
    assert sorted(set(seen)) == sorted(single) and len(seen) == 42


def test_spawn_workers(shard_set):
    ds = StreamingDataset(shard_set, seed=5, batch_size_hint=4)
    got, _ = loader_keys(ds, workers=2, context="spawn")
    assert got == keys(StreamingDataset(shard_set, seed=5))


def test_resume_equals_the_uninterrupted_run_on_any_world_size(shard_set):
    full = keys(StreamingDataset(shard_set, seed=11))
    ds = StreamingDataset(shard_set, seed=11)
    it = iter(ds)
    first = [next(it)["__key__"] for _ in range(13)]
    state = ds.state_dict()
    assert state["samples_seen"] == 13 and state["epoch"] == 0
    again = StreamingDataset(shard_set, seed=0)  # the state's seed wins
    again.load_state_dict(state)
    assert first + keys(again) == full
    # two ranks with a 2-worker DataLoader, then resumed on three ranks
    steps, bs = 2, 3
    dls = [StreamingDataset(shard_set, seed=11, rank=r, world_size=2, batch_size_hint=bs) for r in range(2)]
    done = {r: loader_keys(dls[r], workers=2, batch_size=bs)[0][: steps * bs] for r in range(2)}
    state = dls[0].state_dict(samples_seen=steps * bs * 2)
    consumed = [done[r][i] for i in range(steps * bs) for r in range(2)]
    assert consumed == full[:12]
    rest = {}
    for r in range(3):
        ds3 = StreamingDataset(shard_set, rank=r, world_size=3)
        ds3.load_state_dict(state)
        assert len(ds3) == 9  # 25 left -> padded to 27
        rest[r] = keys(ds3)
    merged = [rest[r][i] for i in range(9) for r in range(3)]
    assert consumed + merged[:25] == full and merged[25:] == full[:2]
    # the next epoch starts from its beginning
    ds3.set_epoch(1)
    assert len(ds3) == 13


def test_state_from_another_shard_set_or_split_is_rejected(shard_set, tmp_path):
    other = tmp_path / "other"
    write_demo_shards(other, 12, SHAPE, samples_per_shard=5, seed=1)
    state = StreamingDataset(other).state_dict()
    with pytest.raises(ShardError, match="saved for shard set"):
        StreamingDataset(shard_set).load_state_dict(state)
    with pytest.raises(ShardError, match="split"):
        StreamingDataset(shard_set, split="train").load_state_dict(StreamingDataset(shard_set).state_dict())


def test_split_selects_rows(shard_set):
    ds = StreamingDataset(shard_set, split="val")
    got = keys(ds)
    assert sorted(number(k) for k in got) == [i for i in range(37) if i % 5 == 0]


def corrupt_copy(shard_set, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shard_set, bad)
    index = pd.read_parquet(bad / "index.parquet")
    row = index.iloc[14]
    with open(bad / row["shard"], "r+b") as fh:  # same size, garbage payload
        fh.seek(int(row["offset"]))
        fh.write(b"\xff" * int(row["size"]))
    return bad, row


def test_corrupt_payload_raises_with_shard_and_key_or_is_skipped_and_counted(shard_set, tmp_path):
    bad, row = corrupt_copy(shard_set, tmp_path)
    with pytest.raises(ShardError, match=f"{row['shard']}.*{row['key']}"):
        list(StreamingDataset(bad, seed=1))
    ds = StreamingDataset(bad, seed=1, on_error="skip")
    with pytest.warns(UserWarning, match=row["key"]):
        got = list(ds)
    assert len(got) == 36 and row["key"] not in keys(got)
    assert ds.errors == 1 and ds.skipped_keys == [row["key"]]
    assert got[-1]["__errors__"] == 1 or any(s["__errors__"] == 1 for s in got)
    # through DataLoader workers the count travels in the stream
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dl = DataLoader(StreamingDataset(bad, seed=1, on_error="skip"), batch_size=None, num_workers=2)
        errors = [s["__errors__"] for s in dl]
    assert len(errors) == 36 and max(errors) == 1


def test_missing_or_inconsistent_shards_fail_at_construction(shard_set, tmp_path):
    bad = tmp_path / "missing"
    shutil.copytree(shard_set, bad)
    (bad / "shard-000002.tar").unlink()
    with pytest.raises(ShardError, match="shard-000002.tar"):
        StreamingDataset(bad)
    short = tmp_path / "short"
    shutil.copytree(shard_set, short)
    data = (short / "shard-000001.tar").read_bytes()
    (short / "shard-000001.tar").write_bytes(data[:-1024])
    with pytest.raises(ShardError, match="sizes differ"):
        StreamingDataset(short)
    stale = tmp_path / "stale"
    shutil.copytree(shard_set, stale)
    index = pd.read_parquet(stale / "index.parquet")
    index.iloc[:-1].to_parquet(stale / "index.parquet")
    with pytest.raises(ShardError, match="36 rows"):
        StreamingDataset(stale)
    index.loc[3, "offset"] = 10**9
    index.to_parquet(stale / "index.parquet")
    with pytest.raises(ShardError, match="past the shard end"):
        StreamingDataset(stale)
    with pytest.raises(ShardError, match="no shards.json"):
        StreamingDataset(tmp_path)


def test_decode_threads_change_nothing_but_speed(shard_set, tmp_path):
    """threads=N: same keys, order, positions and bit-identical augmented pixels as inline;
    inside DataLoader workers too; a broken-off pass leaves no threads behind; resume works."""
    import threading

    from cytodata.loaders.transforms import Compose, RandomCrop, RandomFlip

    aug = Compose([RandomCrop(12), RandomFlip()])
    inline = list(StreamingDataset(shard_set, seed=4, transform=aug, read_ahead=4))
    threaded = list(StreamingDataset(shard_set, seed=4, transform=aug, read_ahead=4, threads=3))
    assert keys(threaded) == keys(inline) and len(inline) == 37
    assert [s["__pos__"] for s in threaded] == list(range(37))
    for a, b in zip(inline, threaded):
        assert torch.equal(a["image"], b["image"]) and a["meta"] == b["meta"]
    got, _ = loader_keys(StreamingDataset(shard_set, seed=4, batch_size_hint=4, read_ahead=3, threads=2),
                         workers=2)
    assert got == keys(inline)
    # samples cross process boundaries one by one (no collate copy): pixels still intact, i.e.
    # no recycled decode buffer was reused while a tensor could see it
    via_workers = DataLoader(StreamingDataset(shard_set, seed=4, transform=aug, read_ahead=3, threads=2),
                             batch_size=None, num_workers=2)
    by_key = {s["__key__"]: s["image"] for s in inline}
    held = list(via_workers)
    assert len(held) == 37
    for s in held:
        assert torch.equal(s["image"], by_key[s["__key__"]])

    def decoders() -> int:
        return sum(t.name.startswith("cytodata-decode") for t in threading.enumerate())

    ds = StreamingDataset(shard_set, seed=4, read_ahead=2, threads=2)
    it = iter(ds)
    head = [next(it) for _ in range(5)]
    assert decoders() == 2
    it.close()  # the consumer stops early: pool shut down, no thread left running
    assert decoders() == 0
    state = ds.state_dict()
    assert state["samples_seen"] == 5
    rest = StreamingDataset(shard_set, seed=4, read_ahead=2, threads=2)
    rest.load_state_dict(state)
    assert keys(head) + keys(rest) == keys(inline)

    bad, row = corrupt_copy(shard_set, tmp_path)
    ds = StreamingDataset(bad, seed=1, on_error="skip", threads=2, read_ahead=3)
    with pytest.warns(UserWarning, match=row["key"]):
        assert len(list(ds)) == 36
    assert ds.errors == 1 and ds.skipped_keys == [row["key"]]
    with pytest.raises(ShardError, match=row["key"]):
        list(StreamingDataset(bad, seed=1, threads=2, read_ahead=3))
    with pytest.raises(ValueError, match="threads"):
        StreamingDataset(shard_set, threads=-1)


# --- local shards are memory-mapped (ReadOptions.mmap) ---

def test_mapped_reads_equal_copied_reads_in_both_paths(shard_set):
    mapped = StreamingDataset(shard_set, seed=3, threads=2, mmap=True)
    copied = StreamingDataset(shard_set, seed=3, threads=2)  # the default copies (pread)
    a, b = list(mapped), list(copied)
    assert keys(a) == keys(b)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert mapped.shards._maps and all(v is not None for v in mapped.shards._maps.values())
    assert not copied.shards._maps  # mmap=False never maps
    ba = [x["image"] for x in mapped.batches(8)]
    bb = [x["image"] for x in copied.batches(8)]
    assert len(ba) == len(bb) and all(torch.equal(x, y) for x, y in zip(ba, bb))
    mapped.shards.close()
    assert not mapped.shards._maps
    assert len(list(mapped)) == 37  # maps again after close


def test_a_byte_flipped_in_a_mapped_shard_is_caught(shard_set, tmp_path):
    bad = tmp_path / "set"
    shutil.copytree(shard_set, bad)
    ds = StreamingDataset(bad, shuffle=False, mmap=True)
    first = next(iter(ds))["__key__"]
    row = pd.read_parquet(bad / "index.parquet").set_index("key").loc[first]
    with open(bad / row["shard"], "r+b") as f:  # in place, after the shard was mapped
        f.seek(int(row["offset"]) + int(row["size"]) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(ShardError, match="checksum mismatch") as err:
        list(ds)
    assert first in str(err.value)


def test_a_shard_truncated_before_it_is_mapped_is_read_not_mapped(shard_set, tmp_path):
    bad = tmp_path / "set"
    shutil.copytree(shard_set, bad)
    ds = StreamingDataset(bad, shuffle=False, mmap=True)  # sizes checked here
    name = sorted(p.name for p in bad.glob("*.tar"))[-1]
    path = bad / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut after the check
    with pytest.raises(ShardError, match=name):
        list(ds)
    assert ds.shards._maps.get(name, "absent") is None  # refused the mapping: no SIGBUS later


def test_batch_threads_run_torch_on_one_intra_op_thread_each_and_leave_the_process_setting(shard_set):
    """Batches: the pool already fills the cores, so a torch op on a decode thread must not
    start an OpenMP team of its own (n threads x cores on the cores, spinning; measured ~10-15%
    of throughput on 2 cores). The training thread's count, and the count threads started later
    get, stay as set. (The per-sample path keeps torch's default: see _one_intra_op_thread_each.)"""
    import threading

    seen: list[int] = []

    def record(sample: dict) -> dict:  # not placeable: runs per sample on the decode threads
        if threading.current_thread().name.startswith("cytodata-decode"):
            seen.append(torch.get_num_threads())
        return sample

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what a 2+ core machine has by default; deterministic on 1 core
    try:
        batches = StreamingDataset(shard_set, seed=3, transform=record, threads=2).batches(5)
        assert sum(len(b["image"]) for b in batches) == 37
        assert len(seen) == 37 and set(seen) == {1}
        assert torch.get_num_threads() == 2
        later: list[int] = []
        t = threading.Thread(target=lambda out=later: out.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert later == [2]
    finally:
        torch.set_num_threads(before)
