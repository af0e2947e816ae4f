"""Per-sample checksums: written to index.parquet and KEY.json, checked by StreamingDataset and
ZarrDataset by default (a flipped payload byte anywhere, swapped index rows), ``verify=False``,
older sets without the column, and ``cytodata verify [--deep]``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xxhash
import zarr

from cytodata.errors import ShardError
from cytodata.loaders import StreamingDataset, ZarrDataset
from cytodata.loaders.demo import demo_manifest, write_demo_shards
from cytodata.shards import verify, write


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sums")
    out = {}
    for codec in ("blosc-lz4", "zstd", "npy"):
        write_demo_shards(root / codec, 12, (2, 16, 16), samples_per_shard=5, codec=codec,
                          images=root / "images")
        out[codec] = root / codec
    return out


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_checksums_in_index_and_json_match_the_tar_members(sets):
    out = sets["blosc-lz4"]
    index = pd.read_parquet(out / "index.parquet").set_index("key")
    assert index["xxh3_64"].str.fullmatch(r"[0-9a-f]{16}").all()
    seen = 0
    for tar in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar) as tf:  # independent reader: plain tarfile + xxhash
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for name, data in members.items():
            if name.endswith(".blosc"):
                key = name[: -len(".blosc")]
                meta = json.loads(members[f"{key}.json"])
                assert xxhash.xxh3_64_hexdigest(data) == index.loc[key, "xxh3_64"] == meta["xxh3_64"]
                seen += 1
    assert seen == 12


@pytest.mark.parametrize("codec", ["blosc-lz4", "zstd", "npy"])
def test_a_flipped_payload_byte_anywhere_is_caught(sets, tmp_path, codec):
    """Every sampled position in one payload: raise (naming shard and key) with checks on; with
    verify=False most flips go unnoticed (the silent wrong pixels the checksum exists for)."""
    out = copy(sets[codec], tmp_path / "set")
    row = pd.read_parquet(out / "index.parquet").iloc[6]
    path = out / row["shard"]
    clean = path.read_bytes()
    positions = sorted({int(p) for p in np.linspace(0, int(row["size"]) - 1, 31)})
    silent = 0
    for pos in positions:
        data = bytearray(clean)
        data[int(row["offset"]) + pos] ^= 0x10
        path.write_bytes(bytes(data))
        with pytest.raises(ShardError, match=f"{row['shard']}.*{row['key']}"):
            list(StreamingDataset(out, shuffle=False))
        try:
            list(StreamingDataset(out, shuffle=False, verify=False))
            silent += 1
        except ShardError:
            pass
    path.write_bytes(clean)
    assert len(list(StreamingDataset(out))) == 12
    assert silent > 0 or codec == "zstd"  # without checks, wrong pixels pass silently


def test_swapped_index_rows_are_caught(sets, tmp_path):
    out = copy(sets["blosc-lz4"], tmp_path / "set")
    index = pd.read_parquet(out / "index.parquet")
    a, b = 2, 3  # same shard, same size class: the bytes decode fine as each other's pixels
    cols = ["offset", "size", "meta_offset", "meta_size"]
    index.loc[[a, b], cols] = index.loc[[b, a], cols].to_numpy()
    index.to_parquet(out / "index.parquet", index=False)
    with pytest.raises(ShardError, match="checksum mismatch"):
        list(StreamingDataset(out, shuffle=False))
    ds = StreamingDataset(out, shuffle=False, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = [s["__key__"] for s in ds]
    assert ds.errors == 2 and sorted(ds.skipped_keys) == sorted(index["key"].iloc[[a, b]])
    assert len(got) == 10
    problems = verify(out, deep=True)
    assert {p.key for p in problems} == set(index["key"].iloc[[a, b]])


def test_older_set_without_checksums_loads_with_one_warning(sets, tmp_path):
    out = copy(sets["blosc-lz4"], tmp_path / "old")
    index = pd.read_parquet(out / "index.parquet").drop(columns=["xxh3_64"])
    index.to_parquet(out / "index.parquet", index=False)
    with pytest.warns(UserWarning, match=r"cannot be verified.*cytodata verify") as rec:
        ds = StreamingDataset(out)
        got = list(ds)
    assert len(got) == 12 and len([w for w in rec if "cannot be verified" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StreamingDataset(out, verify=False)  # opted out: nothing to warn about
    assert verify(out) == []


def test_verify_cli_names_bad_shard_and_key(sets, tmp_path, capsys):
    from cytodata.cli import main

    out = copy(sets["npy"], tmp_path / "set")
    assert main(["verify", str(out), "--deep"]) == 0 and "ok" in capsys.readouterr().out
    row = pd.read_parquet(out / "index.parquet").iloc[8]
    data = bytearray((out / row["shard"]).read_bytes())
    data[int(row["offset"]) + int(row["size"]) - 3] ^= 0xFF
    (out / row["shard"]).write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert row["shard"] in err and "sha256" in err and row["key"] not in err
    # the real entry point, once: exit status 1 and the bad key named
    deep = subprocess.run([sys.executable, "-m", "cytodata", "verify", str(out), "--deep"],
                          capture_output=True, text=True)
    assert deep.returncode == 1 and row["key"] in deep.stderr and row["shard"] in deep.stderr
    (out / "shard-000001.tar").unlink()
    problems = verify(out)
    assert any(p.shard == "shard-000001.tar" and "missing" in p.what for p in problems)


@pytest.fixture(scope="module")
def zarr_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("zsums")
    table = demo_manifest(root / "images", 6, (2, 64, 64))
    write(table, root / "z", format="zarr", chunk=32, scheduler="synchronous", progress=False)
    return root / "z"


def test_zarr_checksums_catch_corrupt_chunks_and_swapped_rows(zarr_set, tmp_path):
    out = copy(zarr_set, tmp_path / "z")
    index = pd.read_parquet(out / "index.parquet")
    arr = zarr.open_array(out / "image", mode="r")
    for r in index.itertuples():
        assert r.xxh3_64 == xxhash.xxh3_64_hexdigest(np.ascontiguousarray(arr[r.row]).tobytes())
        assert len(r.chunks_xxh3_64) == 4
    assert all(ZarrDataset(out, crop=40)[i]["image"].shape == (2, 40, 40) for i in range(6))
    # swap two index rows: every read of those samples (whole or cropped) must fail
    index.loc[[0, 1], "row"] = index.loc[[1, 0], "row"].to_numpy()
    index.to_parquet(out / "index.parquet", index=False)
    for crop in (None, 40):
        ds = ZarrDataset(out, crop=crop)
        for i in (0, 1):
            with pytest.raises(ShardError, match=f"{ds.keys[i]}.*xxh3_64"):
                ds[i]
        ds[2]
    assert len(ZarrDataset(out, crop=40, verify=False)[0]["image"]) == 2
    assert {p.key for p in verify(out, deep=True)} == set(index["key"].iloc[[0, 1]])
    # write different pixels into one chunk of row 3 (valid zstd, wrong content)
    out2 = copy(zarr_set, tmp_path / "z2")
    arr = zarr.open_array(out2 / "image", mode="r+")
    row = int(pd.read_parquet(out2 / "index.parquet")["row"].iloc[3])
    arr[row, :, 40:41, 40:41] = 7
    ds = ZarrDataset(out2, crop=16)
    hits = 0
    for epoch in range(12):  # random windows: those touching chunk (32, 32) must fail
        ds.set_epoch(epoch)
        y, x = ds.window(3)
        if y + 16 > 32 and x + 16 > 32:
            hits += 1
            with pytest.raises(ShardError, match="chunk \\(32, 32\\)"):
                ds[3]
        else:
            ds[3]
    assert hits > 0
    with pytest.raises(ShardError):
        ZarrDataset(out2)[3]


def test_zarr_set_without_checksums_warns_once(zarr_set, tmp_path):
    out = copy(zarr_set, tmp_path / "old")
    pd.read_parquet(out / "index.parquet").drop(columns=["xxh3_64", "chunks_xxh3_64"]).to_parquet(
        out / "index.parquet", index=False)
    with pytest.warns(UserWarning, match="cytodata verify"):
        ds = ZarrDataset(out, crop=20)
    assert ds[0]["image"].shape == (2, 20, 20)
    assert verify(out, deep=True) == []  # falls back to the rows' sha256


def test_plain_webdataset_decode_checks_the_json_checksum(sets, tmp_path):
    import webdataset as wds

    from cytodata.shards import decode

    out = copy(sets["zstd"], tmp_path / "set")
    row = pd.read_parquet(out / "index.parquet").iloc[1]
    data = bytearray((out / row["shard"]).read_bytes())
    data[int(row["offset"]) + 5] ^= 0x04
    (out / row["shard"]).write_bytes(bytes(data))
    raw = {s["__key__"]: s for s in wds.WebDataset(str(out / row["shard"]), shardshuffle=False)}
    with pytest.raises(ShardError, match=f"{row['key']}.*xxh3_64"):
        decode(raw[row["key"]])
    others = [k for k in raw if k != row["key"]]
    assert decode(raw[others[0]])[0].shape == (2, 16, 16)


@pytest.mark.parametrize("control", [False, True])
def test_loader_benchmark_interleaved_estimate_switches_the_check_chunk_by_chunk(tmp_path, monkeypatch, control,
                                                                                 benchmark_module):
    """benchmarks/loader.py's checks on/off estimate runs both sides in one stream: the chunks of
    the "off" side (all chunks in the A/A control) must hash nothing, those of the "on" side every
    sample, or its ratio would be a wrong figure. The figure itself is the ratio of the two sides'
    recorded chunk times over balanced, paired blocks (asserted exactly; how large it is, is a
    measurement of benchmarks/loader.py, not of this test)."""
    import cytodata.loaders.stream as stream

    bench = benchmark_module("loader")
    made = []

    class Recorded(bench._Interleaved):  # the benchmark's own dataset, kept to read its timings
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(bench, "_Interleaved", Recorded)
    shards = tmp_path / "set"
    write_demo_shards(shards, 24, (1, 256, 256), samples_per_shard=8)
    calls = {True: 0, False: 0}
    real = stream.checksum_int

    def counting(data):
        calls[bool(bench._Interleaved._local.check)] += 1
        return real(data)

    monkeypatch.setattr(stream, "checksum_int", counting)
    passes, batch = 2, 4
    r = bench.checks_interleaved(shards, threads=2, batch=batch, passes=passes, control=control)
    assert calls[False] == 0
    chunks = 24 // batch  # per pass; blocks of 2 chunks alternate, the phase flips every pass
    on_chunks = sum((i // 2 + p) % 2 == 0 for p in range(passes + 1) for i in range(chunks))
    assert calls[True] == (0 if control else on_chunks * batch)
    assert r["chunks"] == passes * (chunks - 2) and r["pairs"] >= 1
    # the kept chunks: passes 1.., the first block (2 chunks: thread start-up) of each left out;
    # every chunk index once per pass, the two sides balanced in every pass
    kept = [row for row in made[0].timings if row[0] >= 1 and row[1] >= 2]
    assert sorted((p, i) for p, i, *_ in kept) == [(p, i) for p in range(1, passes + 1) for i in range(2, chunks)]
    for p in range(1, passes + 1):
        sides = [on for q, _, on, *_ in kept if q == p]
        assert sides.count(True) == sides.count(False) == (chunks - 2) // 2
    assert all(wall > 0 and cpu >= 0 for *_, wall, cpu in kept)
    on = [row for row in kept if row[2]]
    off = [row for row in kept if not row[2]]

    def mean(rows, k):
        return sum(row[k] for row in rows) / len(rows)

    assert r["ratio"] == pytest.approx(mean(off, 3) / mean(on, 3), rel=1e-12)
    assert r["cpu_ratio"] == pytest.approx(mean(off, 4) / mean(on, 4), rel=1e-12)
    assert np.isfinite(r["ci"]).all() and r["ci"][0] <= r["ci"][1]
