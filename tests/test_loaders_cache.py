"""The local shard cache of remote sets, on a real S3-compatible server (moto in server mode):
hits, misses and LRU eviction under a limit; processes sharing one cache; corrupt, partial and
stale cached shards; a folder that cannot store shards; a limit below one shard."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading

import numpy as np
import pytest
from conftest import moto_s3

from cytodata.errors import ShardError
from cytodata.loaders import StreamingDataset
from cytodata.loaders.demo import sample_pixels, write_demo_shards

pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

SHAPE = (2, 12, 12)



@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3("cache") as options:
        fs = s3fs.S3FileSystem(**options)
        local = tmp_path_factory.mktemp("cachesrc") / "set"
        write_demo_shards(local, 23, SHAPE, samples_per_shard=6)  # 4 shards: 6, 6, 6, 5 samples
        fs.put(str(local) + "/", "cache/set/", recursive=True)
        yield options, local, fs


def number(key: str) -> int:
    return int(key.rsplit("im", 1)[1])


def check_pixels(samples, seed: int = 0) -> None:
    for s in samples:
        np.testing.assert_array_equal(s["image"].numpy(), sample_pixels(number(s["__key__"]), SHAPE, seed=seed))


def shard_meta(local) -> list[dict]:
    return json.loads((local / "shards.json").read_text())["shards"]


def cached_files(cache_dir) -> list[str]:
    return sorted(p for p in os.listdir(cache_dir / "shards") if p.endswith(".tar"))


def test_hits_misses_and_lru_eviction_under_a_limit(s3, tmp_path):
    options, local, _ = s3
    cache = tmp_path / "cache"
    ds = StreamingDataset("s3://cache/set", storage_options=options, cache_dir=cache, seed=1, threads=2)
    first = list(ds)
    assert len(first) == 23 and ds.cache.fetched == 4 and ds.cache.bytes_fetched == sum(
        s["bytes"] for s in shard_meta(local))
    check_pixels(first)
    assert cached_files(cache) == sorted(f"{s['sha256']}.tar" for s in shard_meta(local))
    requests = ds.shards.requests
    assert requests == 4  # one GET per shard, no per-sample ranged reads
    ds.set_epoch(1)
    second = list(ds)
    assert ds.cache.fetched == 4 and ds.shards.requests == requests  # the second epoch reads only the cache
    assert sorted(s["__key__"] for s in second) == sorted(s["__key__"] for s in first)
    check_pixels(second)
    # a new run (a new dataset, a new process would do the same) reuses the folder
    again = StreamingDataset("s3://cache/set", storage_options=options, cache_dir=cache, seed=1)
    assert [s["__key__"] for s in again] == [s["__key__"] for s in first]
    assert again.cache.fetched == 0 and again.cache.hits > 0 and again.shards.requests == 0
    # a limit of three shards, read in index order one shard per chunk with nothing fetched
    # ahead: the least recently used shard goes, the folder stays under the limit
    sizes = sorted(s["bytes"] for s in shard_meta(local))
    limit = sum(sizes[-3:])
    small = tmp_path / "small"
    tight = StreamingDataset("s3://cache/set", storage_options=options, cache_dir=small, cache_limit=limit,
                             shuffle=False, read_ahead=6, prefetch_bytes=0)
    got = list(tight)
    check_pixels(got)
    assert len(got) == 23 and tight.cache.fetched == 4 and tight.cache.evicted == 1
    held = cached_files(small)
    assert sum(os.path.getsize(small / "shards" / f) for f in held) <= limit
    assert held == sorted(f"{s['sha256']}.tar" for s in shard_meta(local)[1:])


def _read_all(args) -> dict:
    options, cache, seed = args
    ds = StreamingDataset("s3://cache/set", storage_options=options, cache_dir=cache, seed=seed, threads=2)
    samples = list(ds)
    check_pixels(samples)  # every payload also passed its XXH3 check
    return {"keys": sorted(s["__key__"] for s in samples), **ds.cache.stats()}


def test_two_processes_share_one_cache_and_never_see_a_partial_shard(s3, tmp_path):
    options, local, _ = s3
    cache = tmp_path / "shared"
    want = {f"{s['sha256']}.tar": (s["bytes"], s["sha256"]) for s in shard_meta(local)}
    seen_partial, stop = [], threading.Event()

    def watch():  # what any reader could open under a final name: always a whole, intact shard
        while not stop.is_set():
            try:
                names = os.listdir(cache / "shards")
            except FileNotFoundError:
                continue
            for name in names:
                if name in want:
                    try:
                        data = (cache / "shards" / name).read_bytes()
                    except FileNotFoundError:
                        continue
                    if len(data) != want[name][0] or hashlib.sha256(data).hexdigest() != want[name][1]:
                        seen_partial.append(name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(_read_all, [(options, str(cache), 0), (options, str(cache), 1)])
    finally:
        stop.set()
        watcher.join()
    assert not seen_partial
    for r in results:
        assert len(r["keys"]) == 23 and r["refetched"] == 0
    assert sum(r["fetched"] for r in results) == 4  # each shard crossed the network once for the node
    assert not [p for p in os.listdir(cache / "shards") if ".tmp-" in p]


def test_corrupt_or_partial_cached_shards_are_fetched_again_never_served(s3, tmp_path):
    options, local, _ = s3
    cache = tmp_path / "cache"
    list(StreamingDataset("s3://cache/set", storage_options=options, cache_dir=cache))
    meta = shard_meta(local)
    flipped = cache / "shards" / f"{meta[1]['sha256']}.tar"
    data = bytearray(flipped.read_bytes())
    import pandas as pd

    row = pd.read_parquet(local / "index.parquet").query(f"shard == '{meta[1]['name']}'").iloc[2]
    data[int(row["offset"]) + int(row["size"]) // 2] ^= 0x04  # one byte inside a payload
    flipped.write_bytes(bytes(data))
    short = cache / "shards" / f"{meta[2]['sha256']}.tar"
    short.write_bytes(short.read_bytes()[:-700])
    ds = StreamingDataset("s3://cache/set", storage_options=options, cache_dir=cache, seed=3)
    got = list(ds)  # the short copy fails its size check, the flipped byte its sample's XXH3
    assert len(got) == 23 and ds.errors == 0
    check_pixels(got)
    assert ds.cache.refetched == 2 and ds.cache.fetched == 2  # only the damaged shards crossed again
    flipped.write_bytes(bytes(data))
    # without per-sample checks, a shard found in the cache is sha256-checked once per process
    ds = StreamingDataset("s3://cache/set", storage_options=options, cache_dir=cache, verify=False, seed=3)
    got = list(ds)
    check_pixels(got)
    assert ds.cache.refetched == 1 and ds.cache.fetched == 1
    assert hashlib.sha256(flipped.read_bytes()).hexdigest() == meta[1]["sha256"]


def test_a_changed_remote_set_is_never_answered_from_the_old_cache(s3, tmp_path):
    options, _, fs = s3
    cache = tmp_path / "cache"
    old = tmp_path / "old"
    write_demo_shards(old, 12, SHAPE, samples_per_shard=6, seed=0)
    fs.put(str(old) + "/", "cache/changing/", recursive=True)
    check_pixels(list(StreamingDataset("s3://cache/changing", storage_options=options, cache_dir=cache)), seed=0)
    new = tmp_path / "new"  # same names, other pixels: rewritten in place on the object store
    write_demo_shards(new, 12, SHAPE, samples_per_shard=6, seed=1)
    fs.put(str(new) + "/", "cache/changing/", recursive=True)
    with pytest.warns(UserWarning, match="changed since"):
        ds = StreamingDataset("s3://cache/changing", storage_options=options, cache_dir=cache)
    got = list(ds)
    check_pixels(got, seed=1)
    assert ds.cache.fetched == 2 and len(got) == 12
    # a shard rewritten after the dataset was opened: refused by its sha256, never cached
    fresh = tmp_path / "fresh"
    opened = StreamingDataset("s3://cache/changing", storage_options=options, cache_dir=fresh)
    fs.put(str(old) + "/shard-000000.tar", "cache/changing/shard-000000.tar")
    with pytest.raises(ShardError, match="shard-000000.tar.*rewritten after it was opened"):
        list(opened)
    assert not [p for p in os.listdir(fresh / "shards") if p.startswith(opened.cache.sha["shard-000000.tar"])]


def _limited_disk(args) -> dict:
    """In a process whose files may not grow past ``limit`` bytes: the kernel refuses the write
    (EFBIG) as a full disk does (ENOSPC)."""
    import resource
    import signal
    import warnings

    options, cache, limit = args
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = StreamingDataset("s3://cache/set", storage_options=options, cache_dir=cache, seed=5)
        samples = list(ds)
        check_pixels(samples)
    return {"n": len(samples), "warnings": [str(w.message) for w in caught if "cannot store" in str(w.message)],
            "disabled": ds.cache.disabled}


def test_a_cache_folder_that_cannot_store_shards_streams_without_caching_and_warns_once(s3, tmp_path):
    options, local, _ = s3
    cache = tmp_path / "full"
    cache.mkdir()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        r = pool.apply(_limited_disk, ((options, str(cache), 1024),))
    assert r["n"] == 23 and len(r["warnings"]) == 1 and "File too large" in r["disabled"]
    assert not cached_files(cache)


def test_a_limit_below_one_shard_is_refused_naming_both_sizes(s3, tmp_path):
    options, local, _ = s3
    biggest = max(shard_meta(local), key=lambda s: s["bytes"])
    with pytest.raises(ValueError, match=f"cache_limit=1000 bytes .*{biggest['name']} \\({biggest['bytes']} bytes"):
        StreamingDataset("s3://cache/set", storage_options=options, cache_dir=tmp_path, cache_limit=1000)


def test_connection_pool_follows_the_loader_and_storage_options_override_it(s3, tmp_path):
    options, _, _ = s3
    ds = StreamingDataset("s3://cache/set", storage_options=options, threads=2, read_ahead=32)
    assert ds.shards.storage_options["config_kwargs"]["max_pool_connections"] == 2 * 32 + 2
    assert len(list(ds)) == 23
    assert ds.shards.fs.s3.meta.config.max_pool_connections == 66  # the client botocore built
    mine = dict(options, config_kwargs={"max_pool_connections": 7})
    ds = StreamingDataset("s3://cache/set", storage_options=mine, threads=2)
    assert ds.shards.storage_options["config_kwargs"]["max_pool_connections"] == 7
    # unshuffled, neighbouring payloads travel in one request per shard and chunk
    plain = StreamingDataset("s3://cache/set", storage_options=options, shuffle=False, read_ahead=6)
    check_pixels(list(plain))
    assert plain.shards.requests == 4
