"""Manifest build end to end: synthetic sources and the real BBBC021 tables."""

import json
from pathlib import Path

import pandas as pd
import pytest

from cytodata import cli, manifest
from cytodata.errors import EmptyResultError, RecipeError
from cytodata.synthetic import write_demo_sources

RECIPES = Path(__file__).resolve().parents[1] / "manifests"


@pytest.fixture(scope="module")
def demo_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return root, write_demo_sources(root, seed=0)


@pytest.fixture(scope="module")
def demo_build(demo_sources, tmp_path_factory):
    root, _ = demo_sources
    out = tmp_path_factory.mktemp("manifest")
    return manifest.build(RECIPES / "demo.yaml", out, params={"data": str(root)}, progress=False)


def test_outputs_and_ledger_invariant(demo_build):
    res = demo_build
    out = res.out
    m = pd.read_parquet(out / "manifest.parquet")
    led = pd.read_parquet(out / "ledger.parquet")
    prov = json.loads((out / "provenance.json").read_text())
    assert len(m) == res.counts["kept"] > 0
    assert prov["counts"]["inputs"] == len(m) + len(led)
    assert set(m["source"]) == {"synth-bbbc021", "synth-rxrx1", "synth-folder"}
    # the synthetic sources hide one deleted TIFF: it must be ledgered, not lost
    assert (led["reason"] == "missing file").sum() >= 1
    assert set(led.columns) >= {"source", "input_id", "stage", "reason", "detail"}
    assert len(prov["recipe_sha256"]) == 64
    files = {Path(f).name for d in prov["source_files"].values() for f in d}
    assert {"BBBC021_v1_image.csv", "BBBC021_v1_moa.csv", "metadata.csv"} <= files


def test_labels_and_leak_free_splits(demo_build):
    m = demo_build.manifest
    assert m["label"].notna().all() and m["category"].notna().all()
    assert set(m["split"]) <= {"train", "val", "test"}
    per_group = m.groupby("parent_id")["split"].nunique()
    assert (per_group == 1).all()
    for paths in m["channel_paths"].head(20):
        assert all(Path(p).is_absolute() and Path(p).exists() for p in paths)


def test_deterministic(demo_sources, demo_build, tmp_path):
    root, _ = demo_sources
    again = manifest.build(RECIPES / "demo.yaml", tmp_path, params={"data": str(root)},
                           progress=False)
    cols = ["key", "label", "category", "split"]
    pd.testing.assert_frame_equal(again.manifest[cols], demo_build.manifest[cols])


def test_cli_build_and_describe(demo_sources, tmp_path, capsys):
    root, _ = demo_sources
    rc = cli.main(["manifest", "build", str(RECIPES / "demo.yaml"), "-o", str(tmp_path),
                   "--set", f"data={root}", "-q", "--jump-names"])
    out = capsys.readouterr().out
    assert rc == 0 and "rows in:" in out and "missing file" in out
    assert "Metadata_Plate" in pd.read_parquet(tmp_path / "manifest_jump.parquet").columns
    assert cli.main(["manifest", "describe", str(tmp_path)]) == 0
    assert "ledger:" in capsys.readouterr().out


def test_cli_reports_recipe_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources:\n  - adapter: bbbc021\n    colour: red\n")
    assert cli.main(["manifest", "build", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "unknown key(s) ['colour']" in capsys.readouterr().err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: x\nsources:\n  - adapter: nope\n")
    with pytest.raises(RecipeError, match="unknown adapter 'nope'"):
        manifest.build(unknown, tmp_path / "o2", progress=False)


def test_real_bbbc021_every_row_accounted(shared_data, tmp_path):
    """13,200 real rows; the images are not here, so every row is ledgered as a missing file,
    and a build that keeps nothing is an error naming the largest drop reason."""
    params = {"data": str(shared_data / "bbbc021"), "images": str(tmp_path / "no-images")}
    with pytest.warns(UserWarning, match="no rows left after metadata QC"), \
            pytest.raises(EmptyResultError, match=r"kept 0 of 13200 rows; largest drop reason: "
                                                  r"'missing file' at metadata \(13200 rows"):
        manifest.build(RECIPES / "bbbc021.yaml", tmp_path, progress=False, params=params)
    assert len(pd.read_parquet(tmp_path / "ledger.parquet")) == 13_200  # written for inspection
    with pytest.warns(UserWarning):
        res = manifest.build(RECIPES / "bbbc021.yaml", tmp_path, progress=False, params=params,
                             allow_empty=True)
    assert res.counts["inputs"] == 13_200
    assert len(res.manifest) == 0
    assert (res.ledger["reason"] == "missing file").sum() == 13_200


def test_real_bbbc021_metadata_only(shared_data, tmp_path):
    recipe = {"name": "bbbc021-meta", "sources": [
        {"adapter": "bbbc021", "params": {"root": str(shared_data / "bbbc021")}}],
        "metadata_qc": {"check_files": False}, "split": {"group": "batch", "stratify": None}}
    res = manifest.build(recipe, tmp_path, progress=False)
    m = res.manifest
    assert len(m) == 13_200 and m["plate"].nunique() == 55 and m["batch"].nunique() == 10
    assert (m.groupby("batch")["split"].nunique() == 1).all()


def test_stratified_sampling_ledgers_not_sampled(demo_sources, tmp_path):
    root, _ = demo_sources
    recipe = {"name": "s", "seed": 1, "sources": [
        {"adapter": "folder", "params": {"root": str(root / "folder"), "label_column": "phenotype"}}],
        "sample": {"n": 10, "by": ["phenotype"]}, "split": None}
    res = manifest.build(recipe, tmp_path, progress=False)
    assert len(res.manifest) == 10
    assert res.manifest["phenotype"].nunique() == 3          # every stratum kept
    assert (res.ledger["reason"] == "not sampled").sum() == res.counts["inputs"] - 10


def test_cli_dotted_set_turns_the_file_check_off(shared_data, tmp_path, capsys):
    """The real BBBC021 metadata without images: --set metadata_qc.check_files=false keeps all."""
    rc = cli.main(["manifest", "build", str(RECIPES / "bbbc021.yaml"), "-o", str(tmp_path), "-q",
                   "--set", f"data={shared_data / 'bbbc021'}",
                   "--set", "metadata_qc.check_files=false"])
    assert rc == 0 and "kept: 13200" in capsys.readouterr().out
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["recipe"]["metadata_qc"]["check_files"] is False
