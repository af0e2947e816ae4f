"""QC gates the shards on the CLI path: manifest build -> qc -> shard (and QC inside shard from
the recipe's rules); crop rows are cut the same way by QC and the writers; stage folders."""

from __future__ import annotations

import contextlib
import io
import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import webdataset as wds
import yaml

from cytodata import cli, schema
from cytodata.curate.qc import run_qc
from cytodata.shards import decode, write
from cytodata.shards._samples import load_samples, records


def _cli(*args):
    """``cytodata ARGS`` in this process (a subprocess per call costs seconds of imports)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in args])
    return types.SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


def _images(root: Path, n_good=5, uniform=("flat",)) -> None:
    rng = np.random.default_rng(0)
    (root / "cells").mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        d = root / "cells"
        tifffile.imwrite(d / f"good{i}.tif", rng.integers(100, 4000, (96, 96)).astype(np.uint16))
    for name in uniform:
        d = root / "cells"
        tifffile.imwrite(d / f"{name}.tif", np.full((96, 96), 300, np.uint16))


def _recipe(tmp: Path, root: Path, image_qc: bool) -> Path:
    data = {"name": "gate", "sources": [{"adapter": "folder", "params": {"root": str(root)}}],
            "split": None, "shards": {"samples_per_shard": 4}}
    if image_qc:
        data["image_qc"] = {"rules": ["uniform", "dim"]}
    path = tmp / ("with-qc.yaml" if image_qc else "no-qc.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def _shard_keys(out: Path) -> set[str]:
    return set(pd.read_parquet(out / "index.parquet")["key"])


def test_cli_manifest_qc_shard_puts_uniform_field_in_the_ledger(tmp_path):
    root = tmp_path / "src"
    _images(root)
    m, q, s = tmp_path / "manifest", tmp_path / "qc", tmp_path / "shards"
    r = _cli("manifest", "build", str(_recipe(tmp_path, root, False)), "-o", str(m), "-q")
    assert r.returncode == 0, r.stderr
    flat_key = "folder__cells-flat-tif"
    assert flat_key in set(pd.read_parquet(m / "manifest.parquet")["key"])
    r = _cli("qc", str(m), "-o", str(q), "--workers", "1", "--montage", "0")
    assert r.returncode == 0, r.stderr
    assert f"--qc {q}" in r.stdout  # the next step is spelled out
    r = _cli("shard", str(m), "--qc", str(q), "-o", str(s), "--scheduler", "synchronous",
             "--no-progress")
    assert r.returncode == 0, r.stderr
    assert flat_key not in _shard_keys(s) and len(_shard_keys(s)) == 5
    led = pd.read_parquet(s / "ledger.parquet")
    assert led["reason"].tolist() == ["uniform"] and "image QC" in led["detail"].iloc[0]
    meta = json.loads((s / "shards.json").read_text())
    assert meta["ledger"]["by_reason"] == {"uniform": 1} and meta["n_samples"] == 5
    # the plain tars hold the 5 good samples only
    keys = [x["__key__"] for x in wds.WebDataset(sorted(str(p) for p in s.glob("shard-*.tar")),
                                                  shardshuffle=False)]
    assert sorted(keys) == sorted(_shard_keys(s))
    # without --qc, shard applies the rules qc applied (the recipe has no image_qc: the defaults)
    r = _cli("shard", str(m), "-o", str(tmp_path / "s2"), "--scheduler", "synchronous", "--no-progress")
    assert r.returncode == 0 and "the default rules" in r.stdout, r.stderr
    assert pd.read_parquet(tmp_path / "s2" / "ledger.parquet")["reason"].tolist() == ["uniform"]
    r = _cli("shard", str(m), "-o", str(tmp_path / "s3"), "--scheduler", "synchronous", "--no-qc", "-q")
    assert r.returncode == 0 and len(_shard_keys(tmp_path / "s3")) == 6


def test_cli_shard_runs_the_recipes_qc_rules(tmp_path):
    root = tmp_path / "src"
    _images(root)
    m, s = tmp_path / "manifest", tmp_path / "shards"
    assert _cli("manifest", "build", str(_recipe(tmp_path, root, True)), "-o", str(m),
                "-q").returncode == 0
    r = _cli("shard", str(m), "-o", str(s), "--scheduler", "synchronous", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "image_qc rules (uniform, dim) run while sharding" in r.stdout
    assert "folder__cells-flat-tif" not in _shard_keys(s)
    assert pd.read_parquet(s / "ledger.parquet")["reason"].tolist() == ["uniform"]
    # the recipe's shards section set the shard size
    assert json.loads((s / "shards.json").read_text())["samples_per_shard"] == 4


def test_shard_that_keeps_nothing_exits_non_zero(tmp_path):
    root = tmp_path / "src"
    _images(root, n_good=0, uniform=("a", "b"))
    m, s = tmp_path / "manifest", tmp_path / "shards"
    assert _cli("manifest", "build", str(_recipe(tmp_path, root, True)), "-o", str(m),
                "-q").returncode == 0
    r = _cli("shard", str(m), "-o", str(s), "--scheduler", "synchronous", "--no-progress")
    assert r.returncode == 2
    assert "no samples written from 2 manifest rows; largest drop reason: 'uniform'" in r.stderr


def test_build_that_keeps_nothing_exits_non_zero(tmp_path):
    root = tmp_path / "src"
    _images(root, n_good=1, uniform=())
    recipe = _recipe(tmp_path, root, False)
    r = _cli("manifest", "build", str(recipe), "-o", str(tmp_path / "m"), "-q",
             "--set", "metadata_qc.require=[compound]")
    assert r.returncode == 2
    assert "kept 0 of 1 rows; largest drop reason: 'bad metadata'" in r.stderr


def test_stage_folders_are_never_shared(tmp_path):
    root = tmp_path / "src"
    _images(root)
    m = tmp_path / "manifest"
    assert _cli("manifest", "build", str(_recipe(tmp_path, root, False)), "-o", str(m),
                "-q").returncode == 0
    ledger_before = (m / "ledger.parquet").read_bytes()
    r = _cli("shard", str(m), "-o", str(m), "--overwrite", "--scheduler", "synchronous")
    assert r.returncode == 2 and "is the input folder" in r.stderr
    r = _cli("qc", str(m), "-o", str(m), "--workers", "1")
    assert r.returncode == 2 and "is the input folder" in r.stderr
    assert (m / "ledger.parquet").read_bytes() == ledger_before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = _cli("shard", str(m), "-o", str(other), "--scheduler", "synchronous")
    assert r.returncode == 2 and "is not empty" in r.stderr
    r = _cli("manifest", "build", str(_recipe(tmp_path, root, False)), "-o",
             str(tmp_path / "qc-out"), "-q")
    assert r.returncode == 0
    run_qc(m, tmp_path / "qcdir", n_workers=1, montage_per_reason=0)
    r = _cli("manifest", "build", str(_recipe(tmp_path, root, False)), "-o",
             str(tmp_path / "qcdir"), "-q")
    assert r.returncode == 2 and "holds qc files" in r.stderr


def test_qc_and_writer_see_the_same_crop_pixels(tmp_path):
    img = np.arange(2 * 200 * 300, dtype=np.uint16).reshape(2, 200, 300)
    paths = []
    for c in range(2):
        p = tmp_path / f"f_w{c}.tif"
        tifffile.imwrite(p, img[c])
        paths.append(str(p))
    rows = pd.DataFrame([
        {"source": "s", "image_id": "whole", "channel_paths": paths, "channels": ["a", "b"]},
        {"source": "s", "image_id": "whole-c0", "parent_id": "whole", "channel_paths": paths,
         "channels": ["a", "b"], "crop": True, "x_min": 10, "x_max": 60, "y_min": 20, "y_max": 90},
    ])
    rows["key"] = [schema.make_key(s, i)
                   for s, i in zip(rows["source"], rows["image_id"], strict=True)]
    table = schema.validate(schema.conform(rows))
    recs = {r["key"]: r for r in records(table)}
    crop = load_samples(recs["s__whole-c0"], "own")[0].image
    assert crop.shape == (2, 70, 50) and np.array_equal(crop, img[:, 20:90, 10:60])
    out = tmp_path / "wds"
    write(table, out, samples_per_shard=8, scheduler="synchronous", progress=False)
    tars = sorted(str(p) for p in out.glob("shard-*.tar"))
    got = {x["__key__"]: decode(x)[0] for x in wds.WebDataset(tars, shardshuffle=False)}
    assert np.array_equal(got["s__whole-c0"], img[:, 20:90, 10:60])
    assert got["s__whole"].shape == (2, 200, 300)
    qc = run_qc(table, tmp_path / "qc", n_workers=1, montage_per_reason=0)
    assert qc["reason"].isna().all()


def test_window_that_does_not_fit_is_ledgered(tmp_path):
    p = tmp_path / "f.tif"
    tifffile.imwrite(p, np.ones((64, 64), np.uint16))
    rows = pd.DataFrame([{"source": "s", "image_id": "x-c0", "parent_id": "x",
                          "channel_paths": [str(p)], "channels": ["a"], "crop": True,
                          "x_min": 10, "x_max": 100, "y_min": 0, "y_max": 30}])
    rows["key"] = ["s__x-c0"]
    summary = write(schema.conform(rows), tmp_path / "out", scheduler="synchronous", progress=False)
    assert summary["dropped"] == {"window does not fit": 1}


def test_class_under_the_floor_after_qc_and_a_source_emptied_by_qc(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for source, label, n_good, n_bad in (("s1", "big", 4, 1), ("s1", "small", 2, 1),
                                         ("s2", "big", 0, 2)):
        for i in range(n_good + n_bad):
            p = tmp_path / f"{source}-{label}-{i}.tif"
            pixels = rng.integers(100, 4000, (32, 32)) if i < n_good else np.full((32, 32), 9)
            tifffile.imwrite(p, pixels.astype(np.uint16))
            rows.append({"source": source, "image_id": f"{label}{i}", "label": label,
                         "channel_paths": [str(p)], "channels": ["a"]})
    table = schema.conform(pd.DataFrame(rows))
    table["key"] = [schema.make_key(s, i)
                    for s, i in zip(table["source"], table["image_id"], strict=True)]
    qc = run_qc(table, tmp_path / "qc", n_workers=1, montage_per_reason=0)
    assert int(qc["reason"].eq("uniform").sum()) == 4
    with pytest.warns(UserWarning, match="source 's2' has no row left after image QC"):
        summary = write(table, tmp_path / "out", qc_results=tmp_path / "qc", min_class_size=3,
                        scheduler="synchronous", progress=False)
    assert summary["dropped"] == {"uniform": 4, "below floor": 2}
    assert summary["samples"] == 4
    led = pd.read_parquet(tmp_path / "out" / "ledger.parquet")
    assert len(led) + summary["samples"] == len(table)  # every row: a sample or a ledger row
