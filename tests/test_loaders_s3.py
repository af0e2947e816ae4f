"""Stream a shard set from a real S3-compatible server (moto in server mode on localhost)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import moto_s3
from torch.utils.data import DataLoader

from cytodata.errors import ShardError
from cytodata.loaders import StreamingDataset
from cytodata.loaders.demo import write_demo_shards

pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")



@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3("cyto") as options:
        fs = s3fs.S3FileSystem(**options)
        local = tmp_path_factory.mktemp("s3src") / "set"
        write_demo_shards(local, 23, (2, 12, 12), samples_per_shard=6)
        fs.put(str(local) + "/", "cyto/set/", recursive=True)
        yield options, local, fs


def test_s3_stream_equals_local(s3):
    options, local, fs = s3
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("cyto/set") if p.endswith(".tar")) == [
        f"shard-{i:06d}.tar" for i in range(4)]
    remote = StreamingDataset("s3://cyto/set", seed=2, storage_options=options, read_ahead=5)
    here = StreamingDataset(local, seed=2)
    assert remote.shards.fingerprint == here.shards.fingerprint
    got, want = list(remote), list(here)
    assert [s["__key__"] for s in got] == [s["__key__"] for s in want] and len(got) == 23
    for a, b in zip(got, want):
        assert a["image"].dtype == torch.uint16
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
        assert a["label"] == b["label"] and a["meta"] == b["meta"]
    # the state carries over between the object store and a local copy of the same set
    it = iter(remote)
    [next(it) for _ in range(9)]
    here.load_state_dict(remote.state_dict())
    assert [s["__key__"] for s in here] == [s["__key__"] for s in want[9:]]


def test_s3_with_dataloader_workers(s3):
    options, local, _ = s3
    ds = StreamingDataset("s3://cyto/set", seed=4, storage_options=options, batch_size_hint=4)
    keys = [k for b in DataLoader(ds, batch_size=4, num_workers=2) for k in b["__key__"]]
    assert keys == [s["__key__"] for s in StreamingDataset(local, seed=4)]


def test_s3_missing_shard_is_reported(s3):
    options, _, fs = s3
    fs.copy("cyto/set/", "cyto/broken/", recursive=True)
    fs.rm("cyto/broken/shard-000001.tar")
    with pytest.raises(ShardError, match="shard-000001.tar"):
        StreamingDataset("s3://cyto/broken", storage_options=options)


def test_s3_hash_mismatch_in_one_sample_is_named_and_verify_finds_it(s3):
    """One flipped payload byte in one sample of a remote shard: same size, so only the per-sample
    checksum can notice; the loader names shard and key, `verify --deep` too."""
    import pandas as pd

    from cytodata.shards import verify

    options, local, fs = s3
    fs.copy("cyto/set/", "cyto/flipped/", recursive=True)
    row = pd.read_parquet(local / "index.parquet").iloc[7]
    data = bytearray(fs.cat_file(f"cyto/flipped/{row['shard']}"))
    data[int(row["offset"]) + int(row["size"]) // 2] ^= 0x01
    fs.pipe_file(f"cyto/flipped/{row['shard']}", bytes(data))
    with pytest.raises(ShardError, match=f"{row['shard']}.*{row['key']}.*checksum mismatch"):
        list(StreamingDataset("s3://cyto/flipped", storage_options=options))
    ds = StreamingDataset("s3://cyto/flipped", storage_options=options, on_error="skip")
    with pytest.warns(UserWarning, match=row["key"]):
        got = list(ds)
    assert len(got) == 22 and ds.skipped_keys == [row["key"]]
    problems = verify("s3://cyto/flipped", deep=True, storage_options=options)
    assert {(p.shard, p.key) for p in problems} == {(row["shard"], None), (row["shard"], row["key"])}
