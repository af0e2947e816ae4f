"""Published sets read to pixels by every client: webdataset, Hugging Face datasets, mlcroissant,
cytodata's loader; the card's snippets run as written; missing shards and unholdable dtypes fail."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytodata.errors import PublishError, ShardError
from cytodata.loaders.demo import sample_pixels, write_demo_shards
from cytodata.publish import PublishWarning, publish

SHAPE = (3, 16, 16)
N = 10


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny shard set (blosc-lz4, splits mixed in shards) published portable and fast."""
    root = tmp_path_factory.mktemp("clients")
    write_demo_shards(root / "set", N, SHAPE, samples_per_shard=4)
    index = pd.read_parquet(root / "set" / "index.parquet")
    # the source pixels, recomputed independently of any decoder (demo images are seeded)
    truth = {k: sample_pixels(int(k.rsplit("im", 1)[1]), SHAPE) for k in index["key"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PublishWarning)
        publish(root / "set", root / "portable")
        publish(root / "set", root / "fast", payload="fast")
    return root, truth


def _split_keys(pub: Path, split: str) -> list[str]:
    return (pub / "splits" / f"{split}.txt").read_text().split()


def test_portable_set_reads_to_source_pixels_in_every_client(published, tmp_path, caplog):
    import datasets
    import mlcroissant as mlc
    import webdataset as wds

    root, truth = published
    pub = root / "portable"
    meta = json.loads((pub / "shards.json").read_text())
    assert meta["codec"] == "npy" and all(s["name"].startswith("shard-") for s in meta["shards"])
    assert {tuple(np.asarray(truth[k]).shape) for k in truth} == {SHAPE}

    # plain webdataset: .decode() alone yields (C, H, W) uint16 arrays
    urls = [str(pub / s["name"]) for s in meta["shards"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False).decode():
        image = sample["npy"]
        assert isinstance(image, np.ndarray) and image.dtype == np.uint16 and image.shape == SHAPE
        seen[sample["__key__"]] = image
        assert sample["json"]["key"] == sample["__key__"]
    assert seen.keys() == truth.keys()
    assert all(np.array_equal(seen[k], truth[k]) for k in truth)

    # Hugging Face datasets: load_dataset(DEST) gives each split's samples with pixels + metadata
    dd = datasets.load_dataset(str(pub), cache_dir=str(tmp_path / "hf"))
    assert set(dd) == {"train", "val"}
    for split, ds in dd.items():
        assert ds["__key__"] == _split_keys(pub, split)
        feature = ds.features["npy"]
        assert (feature.shape, feature.dtype) == (SHAPE, "uint16")
        for row in ds:
            image = np.asarray(row["npy"], dtype=row["json"]["dtype"])
            assert np.array_equal(image, truth[row["__key__"]]) and row["json"]["split"] == split

    # mlcroissant: the images record set yields the payload bytes; numpy decodes them
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        croissant = mlc.Dataset(jsonld=str(pub / "croissant.json"))
        got = {r["images/key"].decode(): np.load(io.BytesIO(r["images/image"]), allow_pickle=False)
               for r in croissant.records(record_set="images")}
    assert got.keys() == truth.keys() and all(np.array_equal(got[k], truth[k]) for k in truth)
    assert not [r for r in caplog.records if "Could not match" in r.getMessage()]  # key regex fits

    # the project's own loader reads the published folder (checksums verified per sample)
    from cytodata.loaders import StreamingDataset

    loaded = {s["__key__"]: s["image"].numpy() for s in StreamingDataset(pub, shuffle=False)}
    assert loaded.keys() == truth.keys() and all(np.array_equal(loaded[k], truth[k]) for k in truth)


def test_fast_set_decodes_with_wds_handler_and_numcodecs(published):
    import numcodecs
    import webdataset as wds

    from cytodata.shards import wds_handler

    root, truth = published
    pub = root / "fast"
    urls = [str(pub / s["name"]) for s in json.loads((pub / "shards.json").read_text())["shards"]]
    raw = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert all(isinstance(s["blosc"], bytes) for s in raw)  # webdataset has no blosc decoder
    handled = list(wds.WebDataset(urls, shardshuffle=False).decode().map(wds_handler))
    assert {s["__key__"] for s in handled} == truth.keys()
    for s in handled:
        assert s["blosc"].dtype == np.uint16 and np.array_equal(s["blosc"], truth[s["__key__"]])
    for s in raw:  # the numcodecs-only way the card gives
        m = s["json"]
        image = np.frombuffer(numcodecs.Blosc().decode(s["blosc"]), m["dtype"]).reshape(m["shape"])
        assert np.array_equal(image, truth[s["__key__"]])
    bad = dict(raw[0], blosc=raw[0]["blosc"][:-3] + b"\0\0\0")  # a damaged payload is named
    with pytest.raises(ShardError, match=raw[0]["__key__"]):
        wds_handler(bad)


def test_card_snippets_run_as_written(published, tmp_path, monkeypatch):
    """Each python block of the generated card runs from the published folder, in this process."""
    import contextlib

    import datasets

    root, _ = published
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")  # not the user's cache
    clients = {"portable": ["webdataset", "datasets", "mlcroissant", "cytodata"],
               "fast": ["webdataset", "numcodecs", "datasets", "mlcroissant", "cytodata"]}
    for name, expect in clients.items():
        monkeypatch.chdir(root / name)
        blocks = re.findall(r"```python\n(.*?)```", Path("README.md").read_text(), re.S)
        assert len(blocks) == len(expect)
        for block, client in zip(blocks, expect, strict=True):
            assert f"import {client}" in block or f"from {client}" in block, (client, block)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block, f"{name} card: {client}", "exec"), {"__name__": "__main__"})
            # each snippet printed one real sample: its key, shape (3, 16, 16) and a uint16 dtype
            assert re.match(r"demo__im\d+ \(3, 16, 16\) (torch\.)?uint16", out.getvalue()), (client, out.getvalue())


def test_missing_shard_fails_in_every_client(published, tmp_path, capsys):
    import shutil

    import datasets
    import mlcroissant as mlc
    import webdataset as wds

    root, _ = published
    pub = tmp_path / "pub"
    shutil.copytree(root / "portable", pub)
    meta = json.loads((pub / "shards.json").read_text())
    gone = next(s["name"] for s in meta["shards"] if s["name"].startswith("shard-train-"))
    (pub / gone).unlink()

    from cytodata.cli import main as cli

    assert cli(["verify", str(pub)]) == 1  # `cytodata verify DEST`, in this process
    assert f"missing: {gone}" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=gone):
        list(wds.WebDataset([str(pub / s["name"]) for s in meta["shards"]], shardshuffle=False).decode())
    with pytest.raises(FileNotFoundError, match=gone):  # listed files, not a glob: no silent skip
        datasets.load_dataset(str(pub), split="train", cache_dir=str(tmp_path / "hf"))
    with pytest.raises(Exception, match=gone):  # GenerationError from the missing FileObject
        list(mlc.Dataset(jsonld=str(pub / "croissant.json")).records(record_set="images"))
    from cytodata.loaders import StreamingDataset

    with pytest.raises(ShardError, match=gone):
        StreamingDataset(pub)


def test_payload_choice_and_refusals(published, tmp_path, capsys):
    import shutil

    from cytodata.shards.codecs import CODECS, payload_codec

    root, _ = published
    assert payload_codec("portable").name == "npy" and payload_codec("fast").name == "blosc-lz4"
    with pytest.raises(ShardError, match="cannot hold dtype 'float16'"):
        CODECS.get("npy").check_dtype("float16")
    # a set whose images are uint32: png16 cannot hold them, and the refusal names the dtype
    wide = tmp_path / "wide"
    shutil.copytree(root / "set", wide)
    meta = json.loads((wide / "shards.json").read_text())
    meta.update(dtype="uint32", dtypes=["uint32"])
    (wide / "shards.json").write_text(json.dumps(meta))
    from cytodata.cli import main as cli

    code = cli(["publish", str(wide), "-o", str(tmp_path / "x"), "-q", "--payload", "png16"])
    assert code == 2 and "cannot hold dtype 'uint32'" in capsys.readouterr().err
    assert not (tmp_path / "x" / "README.md").exists()
    meta.update(dtype="float16", dtypes=["float16"])  # numpy holds it; Arrow/Croissant clients do not
    (wide / "shards.json").write_text(json.dumps(meta))
    with pytest.raises(PublishError, match="codec 'npy' cannot hold dtype 'float16'"):
        publish(wide, tmp_path / "half", payload="portable")
    with pytest.raises(PublishError, match=r"unknown payload 'gif'.*\['fast', 'portable'\]"):
        publish(root / "set", tmp_path / "y", payload="gif")
    with pytest.raises(PublishError, match="--in-place publishes the shards as written"):
        publish(root / "set", tmp_path / "z", in_place=True, payload="portable")


def test_shard_payload_portable_is_read_by_plain_webdataset(tmp_path):
    """`cytodata shard --payload portable` writes npy members that .decode() alone reads."""
    import webdataset as wds

    from cytodata.cli import main as cli
    from cytodata.loaders.demo import demo_manifest

    table = demo_manifest(tmp_path / "img", 3, SHAPE)
    table.to_parquet(tmp_path / "manifest.parquet")
    assert cli(["shard", str(tmp_path / "manifest.parquet"), "-o", str(tmp_path / "set"), "--payload",
                "portable", "--scheduler", "synchronous", "--no-qc", "-q"]) == 0
    assert json.loads((tmp_path / "set" / "shards.json").read_text())["codec"] == "npy"
    urls = [str(p) for p in sorted((tmp_path / "set").glob("shard-*.tar"))]
    got = {s["__key__"]: s["npy"] for s in wds.WebDataset(urls, shardshuffle=False).decode()}
    assert got.keys() == set(table["key"])
    for i, key in enumerate(table["key"]):
        assert got[key].dtype == np.uint16 and np.array_equal(got[key], sample_pixels(i, SHAPE))
