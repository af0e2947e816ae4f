"""Curation is a function of its rows and seed: shuffled rows and re-ordered sources give the
same corpus, compared per key (weak labels, stratified samples, splits, crops, whole builds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytodata import manifest, schema
from cytodata.curate import assign_splits, stratified_sample
from cytodata.curate.ledger import Ledger
from cytodata.curate.upsample import upsample_classes
from cytodata.curate.weak_labels import assign_weak_labels, label_strata
from cytodata.errors import EmptyResultError, RecipeError
from cytodata.synthetic import write_demo_sources


@pytest.fixture(scope="module")
def table(benchmark_module):
    t = benchmark_module("weak_labels").make_table(20_000, seed=3)
    t["key"] = pd.array([f"src__img{i:06d}" for i in range(len(t))], dtype="string")
    return t


def _shuffled(t, seed):
    return t.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _by_key(frame, cols):
    return frame.set_index("key")[cols].sort_index()


@pytest.mark.parametrize("method", ["proportional", "balanced"])
def test_weak_labels_do_not_depend_on_row_order(table, method):
    kw = dict(min_count=40, presample=300, cap=60, seed=5, method=method)
    a = assign_weak_labels(table, **kw)
    assert a["label"].notna().sum() > 2000 and (a["label_status"] == "not sampled").sum() > 1000
    for seed in (1, 2):
        b = assign_weak_labels(_shuffled(table, seed), **kw)
        pd.testing.assert_frame_equal(_by_key(a, ["label", "category", "label_status"]),
                                      _by_key(b, ["label", "category", "label_status"]))
    # a different seed does change the picks (the test can fail)
    c = assign_weak_labels(table, **{**kw, "seed": 6})
    assert not _by_key(a, ["label"]).equals(_by_key(c, ["label"]))


def test_stratified_sample_does_not_depend_on_row_order(table):
    picked = set(table["key"].iloc[stratified_sample(table, 700, by=["name", "organism"], seed=2)])
    for seed in (1, 2):
        t = _shuffled(table, seed)
        again = set(t["key"].iloc[stratified_sample(t, 700, by=["name", "organism"], seed=2)])
        assert again == picked
    other = set(table["key"].iloc[stratified_sample(table, 700, by=["name", "organism"], seed=3)])
    assert other != picked


def test_splits_do_not_depend_on_row_order(table):
    t = table.assign(label=table["organism"], group=table["key"].str[-4:-1])  # 1000 groups
    a = t.assign(split=assign_splits(t, group="group", stratify="label", seed=4))
    b = _shuffled(t, 7)
    b = b.assign(split=assign_splits(b, group="group", stratify="label", seed=4))
    pd.testing.assert_frame_equal(_by_key(a, ["split"]), _by_key(b, ["split"]))
    assert set(a["split"]) == {"train", "val", "test"}


def test_one_group_split_warns(table):
    t = table.assign(group="all")
    with pytest.warns(UserWarning, match="only 1 distinct 'group' value"):
        split = assign_splits(t, group="group", stratify=None)
    assert set(split) == {"train"}


def test_upsample_does_not_depend_on_row_order():
    sizes_by_label = (("a", 520), ("b", 300), ("c", 90))
    rows = [dict(source="s", image_id=f"{lab}{i}", label=lab, channel_paths=["/x"],
                 channels=["c"]) for lab, n in sizes_by_label for i in range(n)]
    t = schema.conform(pd.DataFrame(rows))
    t["key"] = [schema.make_key(s, i) for s, i in zip(t["source"], t["image_id"], strict=True)]
    sizes = {k: (512, 384) for k in t["key"]}
    sizes[t["key"].iloc[0]] = (100, 100)  # too small to crop: kept whole
    la, lb = Ledger(), Ledger()
    a = upsample_classes(t, seed=1, sizes=sizes, ledger=la)
    b = upsample_classes(_shuffled(t, 4), seed=1, sizes=sizes, ledger=lb)
    pd.testing.assert_frame_equal(a, b)
    # CytoImageNet's counts: 520 images x 3 crops -> cut to 1000; 300 x 4 -> 1000; 90 x 4 = 360
    assert a["label"].value_counts().to_dict() == {"a": 1000, "b": 1000}
    led = la.to_frame()
    assert (led["reason"] == "below floor").sum() == 90 and led["stage"].eq("upsample").all()
    assert a.loc[a["key"] == "s__a0", "crop"].isna().all()  # the small image, whole
    crops = a[a["crop"].fillna(False)]
    assert crops["parent_id"].str.len().gt(0).all() and (crops["x_max"] > crops["x_min"]).all()
    # every a-image keeps at least one crop when the class is cut back (one per image first)
    assert crops.loc[crops["label"] == "a", "parent_id"].nunique() == 520 - 1


def test_label_strata_follow_cytoimagenet():
    pre, sample = ("name", "organism", "cell_type"), (
        "name", "organism", "cell_type", "cell_visible", "sirna", "compound", "phenotype")
    assert label_strata("phenotype", False, pre, sample) == (
        ["name", "organism", "cell_type"],
        ["name", "organism", "cell_type", "cell_visible", "sirna", "compound"])
    # after a presample organism/cell type leave the cap strata (name stays)
    assert label_strata("phenotype", True, pre, sample)[1] == [
        "name", "cell_visible", "sirna", "compound"]
    # the label's own column leaves both; sirna and compound exclude each other
    assert label_strata("cell_type", True, pre, sample) == (
        ["name", "organism"], ["name", "cell_visible", "sirna", "compound", "phenotype"])
    assert label_strata("sirna", False, pre, sample)[1] == [
        "name", "organism", "cell_type", "cell_visible", "phenotype"]
    assert label_strata("compound", False, pre, sample)[1] == [
        "name", "organism", "cell_type", "cell_visible", "phenotype"]


def test_name_is_a_cap_stratum():
    # 20 sources, one big: with `name` in the cap strata every small source keeps rows
    names = ["big"] * 5000 + [f"s{i}" for i in range(19) for _ in range(60)]
    t = pd.DataFrame({"name": names, "compound": "x", "key": [f"k{i}" for i in range(len(names))]})
    for c in ("organism", "cell_type", "cell_visible", "phenotype", "gene", "sirna"):
        t[c] = pd.array([None] * len(t), dtype="string")
    out = assign_weak_labels(t, min_count=10, cap=1000, presample=100_000, method="balanced")
    kept = out.loc[out["label"].notna(), "name"].value_counts()
    assert kept.sum() == 1000 and len(kept) == 20


# --- whole builds ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-sources")
    write_demo_sources(root, seed=0)
    return root


def _recipe(root, order, **extra):
    srcs = {
        "b": {"adapter": "bbbc021", "source": "synth-bbbc021",
              "params": {"root": f"{root}/bbbc021"}},
        "r": {"adapter": "rxrx1", "source": "synth-rxrx1",
              "params": {"root": f"{root}/rxrx1", "image_root": f"{root}/rxrx1/images"}},
        "f": {"adapter": "folder", "source": "synth-folder",
              "params": {"root": f"{root}/folder", "label_column": "phenotype"}},
    }
    return {"name": "order", "seed": 3, "sources": [srcs[k] for k in order],
            "weak_labels": {"min_count": 8, "presample": 400, "cap": 60},
            "sample": {"n": 150, "by": ["label"]},
            "split": {"group": "parent_id", "stratify": "label"}, **extra}


def test_sources_in_any_order_give_the_same_manifest(demo_root):
    a = manifest.build(_recipe(demo_root, "brf"), progress=False)
    b = manifest.build(_recipe(demo_root, "frb"), progress=False)
    cols = ["key", "label", "category", "split"]
    assert len(a.manifest) == 150
    pd.testing.assert_frame_equal(a.manifest[cols], b.manifest[cols])
    assert a.manifest["key"].is_monotonic_increasing  # rows sorted by key


def test_duplicate_keys_across_sources_name_both(demo_root):
    recipe = _recipe(demo_root, "bf")
    recipe["sources"].append(dict(recipe["sources"][0]))
    with pytest.raises(RecipeError, match=r"in sources\[0\] \(bbbc021, source 'synth-bbbc021'\) "
                                          r"and sources\[2\] \(bbbc021"):
        manifest.build(recipe, progress=False)


def test_dotted_set_reaches_any_recipe_key(demo_root, tmp_path):
    recipe = _recipe(demo_root, "f")
    res = manifest.build(recipe, progress=False, params={
        "sample.n": 20, "weak_labels.merge_same_token": True, "seed": 9})
    assert len(res.manifest) == 20 and res.provenance["recipe"]["seed"] == 9
    with pytest.raises(RecipeError, match="'colour' is not a recipe key"):
        manifest.build(recipe, progress=False, params={"colour.x": 1})
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['nope'\]"):
        manifest.build(recipe, progress=False, params={"metadata_qc.nope": 1})


def test_provenance_records_libraries_and_synonyms(demo_root):
    prov = manifest.build(_recipe(demo_root, "f"), progress=False).provenance
    assert {"numpy", "pandas", "pyarrow"} <= set(prov["libraries"])
    assert len(prov["synonyms"]["file_sha256"]) == 64
    extra = manifest.build({**_recipe(demo_root, "f"), "synonyms": {"foo": "bar"}},
                           progress=False).provenance
    assert extra["synonyms"]["resolved_sha256"] != prov["synonyms"]["resolved_sha256"]
    assert extra["synonyms"]["file_sha256"] == prov["synonyms"]["file_sha256"]


def test_every_label_names_one_class_in_a_build(demo_root):
    res = manifest.build(_recipe(demo_root, "bf", sample=None), progress=False)
    labels = res.manifest.groupby("label")["category"].nunique()
    assert (labels == 1).all()  # every label string names one (column, token) class


def test_image_size_reads_headers(tmp_path):
    import tifffile
    from PIL import Image

    from cytodata.curate.upsample import image_size
    from cytodata.errors import ImageReadError

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((3, 50, 70), np.uint16), photometric="minisblack")
    Image.fromarray(np.zeros((40, 90), np.uint8)).save(tmp_path / "b.png")
    assert image_size(str(tmp_path / "a.tif")) == (50, 70)
    assert image_size(str(tmp_path / "b.png")) == (40, 90)
    (tmp_path / "c.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError) as err:
        image_size(str(tmp_path / "c.png"))
    assert err.value.reason == "unreadable"
    with pytest.raises(ImageReadError) as err:
        image_size(str(tmp_path / "nope.tif"))
    assert err.value.reason == "missing file"


def test_build_with_upsampling_crops_ledgers_and_keeps_crops_with_parents(demo_root, tmp_path):
    recipe = _recipe(demo_root, "f", sample=None,
                     weak_labels={"min_count": 8, "presample": 400, "cap": 60,
                                  "columns": ["phenotype"]},
                     upsample={"target": 30, "floor": 20, "min_image": 32, "min_size": 8})
    # 12 images per class: 4 crops each (12 < 0.4 * 30), cut back to 30
    res = manifest.build(recipe, tmp_path / "m", progress=False)
    m = res.manifest
    assert m["label"].value_counts().to_dict() == {"apoptotic": 30, "interphase": 30,
                                                   "mitotic": 30}
    assert m["crop"].fillna(False).all() and (m["x_max"] - m["x_min"] >= 8).all()
    assert (m.groupby("parent_id")["split"].nunique() == 1).all()  # crops follow their image
    assert res.counts["inputs"] == 36 and len(res.ledger) == 0  # every image keeps >= 1 crop
    # a floor above the class sizes drops every class, each input row in the ledger
    recipe["upsample"]["floor"] = 31
    with pytest.raises(EmptyResultError, match="'below floor' at upsample \\(36 rows"):
        manifest.build(recipe, progress=False)


def test_upsampling_without_images_ends_in_a_clear_error_and_a_ledger(demo_root, tmp_path):
    """Upsampling reads image sizes: with no image on disk (metadata check off) every labelled
    row is ledgered and the build names the CLI way out, instead of a numpy cast error."""
    recipe = _recipe(demo_root, "b", sample=None,
                     upsample={"target": 30, "floor": 20, "min_image": 32, "min_size": 8},
                     metadata_qc={"check_files": False})
    recipe["sources"][0]["params"]["image_root"] = str(tmp_path / "no-images")
    with pytest.raises(EmptyResultError, match=r"'missing file' at upsample .*--set upsample=null"):
        manifest.build(recipe, tmp_path / "m", progress=False)
    ledger = pd.read_parquet(tmp_path / "m" / "ledger.parquet")
    at_upsample = ledger[ledger["stage"] == "upsample"]
    assert len(at_upsample) > 0 and set(at_upsample["reason"]) == {"missing file"}
