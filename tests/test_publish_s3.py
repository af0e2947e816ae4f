"""Publishing to and from a real S3-compatible server (moto in server mode on localhost)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
from conftest import moto_s3

from cytodata.loaders.demo import write_demo_shards
from cytodata.publish import PublishWarning, publish, verify

pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3("pub") as options:
        local = tmp_path_factory.mktemp("s3pub") / "set"
        write_demo_shards(local, 17, (2, 10, 10), samples_per_shard=5)
        yield options, local, s3fs.S3FileSystem(**options)


def _quiet_publish(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PublishWarning)
        return publish(*args, **kw)


def test_publish_to_s3_then_verify_catches_damage(s3, tmp_path):
    options, local, fs = s3
    summary = _quiet_publish(local, "s3://pub/a", storage_options=options)
    shards = [s["name"] for s in json.loads(fs.cat_file("pub/a/shards.json"))["shards"]]
    assert summary["shards"] == len(shards) and summary["codec"] == "npy"
    names = sorted(p.rsplit("/", 1)[1] for p in fs.find("pub/a"))
    for name in ("README.md", "croissant.json", "SHA256SUMS", "index.parquet", "provenance.parquet",
                 "train.txt", "val.txt", *shards):
        assert name in names
    assert verify("s3://pub/a", storage_options=options) == []
    from cytodata.shards import verify as verify_set

    assert verify_set("s3://pub/a", deep=True, storage_options=options) == []  # DEST is a shard set
    meta = {p: fs.cat_file(f"pub/a/{p}") for p in ("README.md", "croissant.json", "SHA256SUMS")}
    _quiet_publish(local, "s3://pub/a", storage_options=options)  # unchanged set: same bytes
    assert all(fs.cat_file(f"pub/a/{p}") == data for p, data in meta.items())
    # the same metadata as a local publication
    _quiet_publish(local, tmp_path / "here")
    assert all((tmp_path / "here" / p).read_bytes() == data for p, data in meta.items())

    fs.pipe_file(f"pub/a/{shards[1]}", fs.cat_file(f"pub/a/{shards[1]}")[:-1024])
    fs.rm("pub/a/splits/val.txt")
    problems = verify("s3://pub/a", storage_options=options)
    assert sorted(p.split(" (")[0] for p in problems) == ["missing: splits/val.txt",
                                                          f"truncated: {shards[1]}"]


def test_publish_from_s3_in_place_and_cli(s3, tmp_path):
    options, local, fs = s3
    fs.put(str(local) + "/", "pub/src/", recursive=True)
    _quiet_publish("s3://pub/src", tmp_path / "meta", in_place=True, storage_options=options)
    sums = (tmp_path / "meta" / "SHA256SUMS").read_text()
    assert "  s3://pub/src/shard-000000.tar\n" in sums  # referenced where they are
    assert verify(tmp_path / "meta", storage_options=options) == []
    doc = json.loads((tmp_path / "meta" / "croissant.json").read_text())
    urls = {d["@id"]: d.get("contentUrl") for d in doc["distribution"]}
    assert urls["shard-000003.tar"] == "s3://pub/src/shard-000003.tar"
    shard_files = next(d for d in doc["distribution"] if d["@id"] == "shard-files")
    assert shard_files["includes"] == "s3://pub/src/shard-*.tar"

    cmd = [sys.executable, "-m", "cytodata", "publish", str(local), "-o", "s3://pub/cli",
           "--storage-options", json.dumps(options), "--license", "demo=CC0-1.0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert verify("s3://pub/cli", storage_options=options) == []
    again = subprocess.run(cmd[:6] + ["s3://pub/a"] + cmd[7:], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0  # same dataset as pub/a: accepted
    other = tmp_path / "other"
    write_demo_shards(other, 5, (1, 8, 8), samples_per_shard=5)
    refused = subprocess.run([sys.executable, "-m", "cytodata", "publish", str(other), "-o", "s3://pub/cli",
                              "--storage-options", json.dumps(options)], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "already holds another dataset" in refused.stderr
