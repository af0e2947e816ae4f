"""Protocols on the real BBBC021 metadata and synthetic screens; report, CLI, features."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_evaluate_helpers import bbbc021_metadata, random_embeddings, simulate_screen

from cytodata.errors import EvaluationError
from cytodata.evaluate import (
    PROTOCOLS,
    aggregate,
    center_crop_boxes,
    chain,
    nscb,
    run_protocol,
    write_report,
)
from cytodata.evaluate.features import intensity_texture_features, timm_embeddings


@pytest.fixture(scope="module")
def bbbc021():
    meta = bbbc021_metadata()
    return meta, random_embeddings(meta)


@pytest.fixture(scope="module")
def ando(bbbc021):
    meta, emb = bbbc021
    return run_protocol("bbbc021-ando", emb, meta)


def test_ando_on_real_bbbc021_metadata(ando):
    res = ando["metrics"]["nsc"]
    assert res.total == 103 and len(ando["profiles"]) == 103
    assert res.accuracy * 103 == pytest.approx(round(res.accuracy * 103))
    assert ando["profiles"]["n_wells"].min() >= 2  # every treatment has replicate wells
    b = ando["metrics"]["nscb"]
    # MOAs imaged in one week only are dropped; taxol 0.3 (on every plate) has no neighbour
    assert [m.lower() for m in b.dropped] == ["cholesterol-lowering", "kinase inhibitors"]
    assert len(b.unmatched) == 1
    n_single = int(ando["profiles"]["moa"].isin(b.dropped).sum())
    assert b.total == 103 - n_single - 1 == 91
    assert set(b.per_moa["moa"]).isdisjoint(b.dropped)
    assert res.accuracy < 0.3  # random embeddings carry no MOA signal


def test_cytoimagenet_and_knn_and_map_on_real_metadata(bbbc021):
    meta, emb = bbbc021
    cyto = run_protocol("bbbc021-cytoimagenet", emb, meta)
    assert cyto["metrics"]["nsc"].total == 103
    knn = run_protocol("knn", emb, meta, label="moa")
    assert knn["metrics"]["knn"].total == int(meta["moa"].notna().sum())
    sub = meta[meta["plate"].isin(meta["plate"].unique()[:6])]
    m = run_protocol("map", emb[emb["key"].isin(sub["key"])], sub, null_size=500)
    rep = m["metrics"]["replicate_map"].map
    assert "dmso" not in set(rep["treatment"]) and len(rep) > 10
    assert rep["p_value"].between(0, 1).all()


def test_synthetic_screen_nscb_improves_with_tvn():
    gains = []
    for seed in range(3):
        table, cols = simulate_screen(signal=0.8, compounds_per_moa=6, seed=seed)
        emb, meta = table[["key", *cols]], table.drop(columns=cols)
        res = run_protocol("bbbc021-ando", emb, meta)
        trt = table[table["compound"] != "dmso"]
        wells = aggregate(trt, features=cols, by=["plate", "well"],
                          carry=["moa", "batch", "compound", "concentration"])
        raw = aggregate(wells, features=cols, by=["compound", "concentration"], how="median",
                        carry=["moa", "batch"])
        gains.append(res["metrics"]["nscb"].accuracy - nscb(raw, features=cols).accuracy)
    assert min(gains) > 0.3


def test_bad_inputs_name_the_rows(bbbc021):
    meta, emb = bbbc021
    bad = emb.copy()
    bad.loc[5, "emb_03"] = np.nan
    with pytest.raises(EvaluationError, match=meta.loc[5, "key"]):
        run_protocol("bbbc021-ando", bad, meta)
    other = emb.copy()
    other.loc[0, "key"] = "bbbc021__nope"
    with pytest.raises(EvaluationError, match="bbbc021__nope"):
        run_protocol("bbbc021-cytoimagenet", other, meta)
    # one well per treatment: nothing to retrieve as a replicate
    table, cols = simulate_screen(wells_per_treatment=1)
    with pytest.raises(EvaluationError, match="single well"):
        run_protocol("map", table[["key", *cols]], table.drop(columns=cols))
    # no DMSO in a batch: TVN/centering cannot be fitted there
    table, cols = simulate_screen()
    table = table[~((table["batch"] == "B1") & (table["compound"] == "dmso"))]
    with pytest.raises(EvaluationError, match="B1"):
        run_protocol("bbbc021-ando", table[["key", *cols]], table.drop(columns=cols))
    with pytest.raises(EvaluationError, match="valid names"):
        run_protocol("nope", emb, meta)
    with pytest.raises(EvaluationError, match="shape"):
        run_protocol("knn", np.zeros((3, 4)), meta)


def test_numpy_embeddings_and_profile_chain():
    table, cols = simulate_screen()
    arr = table[cols].to_numpy()
    res = run_protocol("bbbc021-cytoimagenet", arr, table.drop(columns=cols))
    assert res["metrics"]["nsc"].total == 12
    prof = chain(table[table["compound"] != "dmso"], features=cols)
    assert len(prof) == 12 and (prof["n_rows"] == 2).all()
    assert set(prof.columns) >= {"compound", "concentration", "moa", "batch"}
    with pytest.raises(EvaluationError, match="rows 0"):
        aggregate(table.assign(plate=[None] + [1] * (len(table) - 1)), features=cols, by="plate")
    assert center_crop_boxes(100, 120, 30) == [(20, 30, 50, 60), (20, 60, 50, 90),
                                               (50, 30, 80, 60), (50, 60, 80, 90)]


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_report(tmp_path, ando, fmt):
    from cytodata.evaluate.report import _pca

    path = write_report(ando, tmp_path, format=fmt)
    text = path.read_text()
    assert "NSCB" in text and "Wilson" in text and "chance" in text
    assert "not-same-compound" in text  # definitions for a reader
    assert "taxol@0.3" in text and "no admissible neighbour" in text  # names and reasons
    assert "umap not installed" not in text.lower() or "UMAP not drawn" in text
    assert "100.0 +/- 0.0" not in text
    for png in ("nsc_confusion.png", "nsc_per_class.png", "profiles_pca_moa.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metrics"]["nsc"]["total"] == 103
    assert metrics["counts"]["nscb_scored"] == 91
    assert 0 < metrics["metrics"]["nsc"]["chance"] < 0.3
    per = pd.read_csv(tmp_path / "nsc_per_class.csv")
    assert len(per) == 12 and per["total"].sum() == 103
    preds = pd.read_csv(tmp_path / "nsc_predictions.csv")
    assert preds["neighbour"].str.contains("@").all()
    _, axes = _pca(np.random.default_rng(0).normal(size=(20, 4)) * [5, 1, 1, 1])
    assert axes[0].startswith("PC1 (") and "% of variance" in axes[1]


def test_cli(tmp_path, capsys):
    from cytodata.cli import main

    table, cols = simulate_screen()
    table[["key", *cols]].to_parquet(tmp_path / "emb.parquet")
    table.drop(columns=cols).to_csv(tmp_path / "meta.csv", index=False)
    rc = main(["evaluate", str(tmp_path / "emb.parquet"), "--protocol", "bbbc021-ando",
               "--metadata", str(tmp_path / "meta.csv"), "-o", str(tmp_path / "rep")])
    assert rc == 0
    assert (tmp_path / "rep" / "report.md").exists()
    out = capsys.readouterr().out
    assert "NSCB" in out and "{" not in out  # a table, not dicts
    # the trainers' layout: one parquet with key, manifest columns and emb_0..emb_{D-1}
    one = table.rename(columns={c: f"emb_{i}" for i, c in enumerate(cols)})
    one["replicate"] = 1  # numeric metadata that must not be taken for a feature
    one.to_parquet(tmp_path / "one.parquet")
    rc = main(["evaluate", str(tmp_path / "one.parquet"), "--protocol", "bbbc021-ws-dino",
               "-o", str(tmp_path / "rep1"), "--write-profiles", str(tmp_path / "prof.csv")])
    assert rc == 0
    assert f"{len(cols)} features" in capsys.readouterr().out
    prof = pd.read_csv(tmp_path / "prof.csv")
    assert {"Metadata_Compound", "Metadata_Moa", "emb_0"} <= set(prof.columns)
    # a pycytominer image table (Metadata_* columns, bare features) through --metadata-prefix
    from cytodata.evaluate.interop import to_metadata_names

    to_metadata_names(table, cols).to_csv(tmp_path / "pyc.csv", index=False)
    rc = main(["evaluate", str(tmp_path / "pyc.csv"), "--protocol", "bbbc021-ws-dino",
               "--metadata-prefix", "Metadata_", "--id-column", "Metadata_Key",
               "-o", str(tmp_path / "rep3")])
    assert rc == 0 and "NSC" in capsys.readouterr().out
    np.save(tmp_path / "emb.npy", table[cols].to_numpy())
    rc = main(["evaluate", str(tmp_path / "emb.npy"), "--protocol", "knn",
               "-o", str(tmp_path / "rep2")])
    assert rc == 2  # .npy without --metadata is a user error
    assert {"bbbc021-ando", "bbbc021-cytoimagenet", "knn", "map"} <= set(PROTOCOLS)


def test_intensity_texture_features():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, size=(3, 40, 50)).astype(np.uint16)
    f = intensity_texture_features(img)
    assert f.shape == (3 * 14,) and f.dtype == np.float32
    assert f[0] == pytest.approx(img[0].mean(), rel=1e-6)
    flat = intensity_texture_features(np.full((1, 16, 16), 7, dtype=np.uint16))
    assert flat[1] == 0 and flat[9] == 0  # no std, no gradient energy
    stripes = np.tile(np.array([0, 1000], dtype=np.uint16), (1, 16, 8))
    assert intensity_texture_features(stripes)[9] > intensity_texture_features(img[:1])[9]
    with pytest.raises(EvaluationError, match="C, H, W"):
        intensity_texture_features(np.zeros((8, 8)))


def test_timm_embeddings_random_resnet():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, size=(3, 40, 40)).astype(np.uint8) for _ in range(3)]
    a = timm_embeddings(imgs, batch_size=2, size=64)
    assert a.shape == (3, 512) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_allclose(a, timm_embeddings(iter(imgs), batch_size=3, size=64), atol=1e-5)
    five = timm_embeddings([rng.random((5, 32, 32))], size=64)
    assert five.shape == (1, 512)
