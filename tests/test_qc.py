"""Image QC: rules on crafted arrays, duplicates, and run_qc/CLI on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cytodata.curate.qc import (
    DEFAULT_RULES,
    DUPLICATE_REASON,
    QC_RULES,
    QCConfig,
    check,
    find_duplicates,
    pixel_hash,
    run_qc,
)
from cytodata.errors import RecipeError
from cytodata.schema import conform, make_key, write_manifest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RXRX = DATA / "images" / "rxrx1_HEPG2-01_Plate1"


def _texture(shape=(2, 64, 64), dtype=np.uint16, seed=0, hi=4000):
    return np.random.default_rng(seed).integers(50, hi, shape).astype(dtype)


def _rule(name, img, **cfg):
    return QC_RULES.get(name)(np.asarray(img), QCConfig(**cfg))


def test_registry_holds_all_rules():
    assert set(DEFAULT_RULES) == set(QC_RULES.names())


def test_uniform_rule_exact_at_percentiles():
    img = _texture()
    assert not _rule("uniform", img)
    flat = img.copy(); flat[1] = 7
    assert _rule("uniform", flat)  # any channel
    # 0.05% outliers on a constant field: min != max but p0.1 == p99.9 -> uniform
    mostly = np.full((1, 100, 100), 500, np.uint16); mostly[0, 0, :5] = 9000
    assert _rule("uniform", mostly)
    assert not _rule("uniform", mostly, low=0.0, high=100.0)


def test_binary_dim_saturated_nan_rules():
    mask = np.zeros((1, 32, 32), np.uint8); mask[0, 8:20, 8:20] = 255
    assert _rule("binary mask", mask) and not _rule("binary mask", _texture())
    three = mask.copy(); three[0, 0, 0] = 3
    assert not _rule("binary mask", three)
    dim = np.zeros((2, 40, 40), np.uint16); dim[:, :5] = 100  # 12.5% non-zero
    assert _rule("dim", dim) and not _rule("dim", _texture())
    sat = _texture(); sat[1].flat[: int(0.06 * 64 * 64)] = 65535
    assert _rule("saturated", sat)
    assert not _rule("saturated", sat, saturation_fraction=0.1)
    assert _rule("saturated", _texture(hi=4000), saturation_value=3000.0)
    assert not _rule("saturated", _texture().astype(np.float32))  # float: no dtype max
    bad = _texture().astype(np.float32); bad[0, 3, 3] = np.inf
    assert _rule("nan or inf", bad) and not _rule("nan or inf", _texture())
    bad[0, 3, 3] = np.nan
    assert _rule("nan or inf", bad)


@pytest.mark.parametrize("n", [4, 5, 7, 100, 101, 4096])
def test_dim_shortcut_matches_percentile(n):
    for n_zero in range(max(0, int(0.75 * n) - 3), min(n, int(0.75 * n) + 4) + 1):
        x = np.arange(1, n + 1, dtype=np.uint16)
        x[:n_zero] = 0
        img = np.random.default_rng(n_zero).permutation(x).reshape(1, 1, n)
        assert _rule("dim", img) == (np.percentile(img, 75) == 0), (n, n_zero)
        assert _rule("dim", img.astype(np.float32)) == (np.percentile(img, 75) == 0)


def test_shape_and_dtype_rules():
    img = _texture((3, 20, 30))
    assert not _rule("wrong shape", img)
    assert _rule("wrong shape", img, expected_shape=(30, 20))
    assert not _rule("wrong shape", img, expected_shape=(3, 20, 30))
    assert _rule("wrong shape", img, expected_channels=2)
    assert _rule("wrong dtype", img, expected_dtype="uint8")
    assert not _rule("wrong dtype", img, expected_dtype="uint16")


def test_check_order_and_real_image_passes():
    from cytodata.images.io import read_image

    real = read_image(sorted(RXRX.glob("B02_s1_w*.png")))
    assert real.shape == (6, 512, 512) and check(real) is None
    assert check(np.zeros((2, 8, 8), np.uint16)) == "uniform"  # uniform before dim
    nan_flat = np.full((1, 8, 8), np.nan, np.float32)
    assert check(nan_flat) == "nan or inf"  # nan before uniform
    assert check(np.zeros((8, 8))) == "wrong shape"
    assert check(_texture(), {"expected_dtype": "uint8"}) == "wrong dtype"
    sat_dim = np.zeros((1, 20, 20), np.uint16); sat_dim[0, :2] = 65535; sat_dim[0, 2:4] = 9
    assert check(sat_dim) == "dim"
    assert check(sat_dim, {"rules": ["saturated", "dim"]}) == "saturated"


def test_config_from_dict_errors():
    cfg = QCConfig.from_dict({"saturation_fraction": 0.1, "expected_shape": [512, 512], "rules": ["dim"]})
    assert cfg.expected_shape == (512, 512) and cfg.rules == ("dim",)
    with pytest.raises(RecipeError, match="unknown key.*saturaton.*valid keys:.*saturation_fraction"):
        QCConfig.from_dict({"saturaton": 0.1})
    with pytest.raises(RecipeError, match="'low' must be"):
        QCConfig.from_dict({"low": "0.1"})
    with pytest.raises(RecipeError, match="unknown rule 'blurry'.*valid rules"):
        QCConfig.from_dict({"rules": ["blurry"]})
    with pytest.raises(RecipeError, match="expected_dtype"):
        QCConfig.from_dict({"expected_dtype": "uint17"})


def test_pixel_hash_and_duplicates_with_conflicting_labels():
    a = _texture(seed=1)
    assert pixel_hash(a) == pixel_hash(a.copy())
    assert pixel_hash(a) != pixel_hash(a.astype(np.int32))  # dtype is part of the hash
    assert pixel_hash(a) != pixel_hash(a.reshape(2, 32, 128))  # and the shape
    b = _texture(seed=2)
    hashes = pd.Series([pixel_hash(a), pixel_hash(b), pixel_hash(a), None, pixel_hash(b), pixel_hash(a)],
                       index=["k0", "k1", "k2", "k3", "k4", "k5"])
    labels = pd.Series(["x", "y", "x", "z", "w", pd.NA], index=hashes.index)
    dups = find_duplicates(hashes, labels)
    assert list(dups["id"]) == ["k0", "k2", "k5", "k1", "k4"]
    assert list(dups["first"]) == [True, False, False, True, False]
    assert list(dups["size"]) == [3, 3, 3, 2, 2]
    conflict = dups.groupby("group")["conflicting_labels"].first()
    assert not conflict.iloc[0] and conflict.iloc[1]  # x/x/NA agree; y/w conflict
    assert find_duplicates(pd.Series(["h1", "h2"])).empty


def _write_manifest_files(root: Path) -> pd.DataFrame:
    """A tiny manifest of real TIFF/PNG files covering every reason."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []

    def add(name, planes, label, ext="tif"):
        paths = []
        for c, plane in enumerate(planes):
            p = root / f"{name}_c{c}.{ext}"
            if ext == "tif":
                tifffile.imwrite(p, plane)
            else:
                Image.fromarray(plane).save(p)
            paths.append(str(p))
        rows.append(dict(source="t", image_id=name, label=label,
                         channels=[f"ch{c}" for c in range(len(paths))], channel_paths=paths))

    good = _texture(seed=5)
    add("good", good, "a")
    add("good2", _texture(seed=6), "b")
    add("dup", good, "b")  # same pixels, other label -> conflict
    add("flat", np.full((2, 64, 64), 1000, np.uint16), "a")
    dim = np.zeros((2, 64, 64), np.uint16); dim[:, :4] = _texture((2, 4, 64), seed=9)
    add("dim", dim, "a")
    sat = _texture(seed=7); sat[0, :10] = 65535
    add("sat", sat, "a")
    mask = np.zeros((1, 64, 64), np.uint8); mask[0, 10:30, 10:40] = 255
    add("mask", mask, "c", ext="png")
    nan = _texture(seed=8).astype(np.float32); nan[1, 5, 5] = np.nan
    add("nan", nan, "c")
    rows.append(dict(source="t", image_id="real", label="negcon", channels=[f"w{i}" for i in range(1, 7)],
                     channel_paths=[str(RXRX / f"B02_s1_w{i}.png") for i in range(1, 7)]))
    rows.append(dict(source="t", image_id="missing", label="a", channels=["x"],
                     channel_paths=[str(root / "nope.tif")]))
    trunc = root / "trunc.tif"
    trunc.write_bytes((root / "good_c0.tif").read_bytes()[:300])
    rows.append(dict(source="t", image_id="trunc", label="a", channels=["x"], channel_paths=[str(trunc)]))
    table = pd.DataFrame(rows)
    table["key"] = [make_key("t", i) for i in table["image_id"]]
    table["parent_id"] = table["image_id"]
    return conform(table)


EXPECTED = {"good": None, "good2": None, "dup": DUPLICATE_REASON, "flat": "uniform", "dim": "dim",
            "sat": "saturated", "mask": "binary mask", "nan": "nan or inf", "real": None}


def test_run_qc_end_to_end(tmp_path):
    table = _write_manifest_files(tmp_path / "img")
    out = tmp_path / "qc"
    qc = run_qc(table, out, montage_per_reason=4)
    got = dict(zip(qc["image_id"], qc["reason"].astype(object).where(qc["reason"].notna(), None)))
    for image_id, reason in EXPECTED.items():
        assert got[image_id] == reason, image_id
    assert got["missing"] and got["trunc"] and got["missing"] != got["trunc"]
    assert qc.loc[qc["image_id"] == "dup", "detail"].iloc[0] == "same pixels as t__good"
    assert qc.loc[qc["image_id"] == "good", "hash"].iloc[0] == qc.loc[qc["image_id"] == "dup", "hash"].iloc[0]
    assert qc.loc[qc["image_id"] == "missing", "hash"].isna().all()

    on_disk = pd.read_parquet(out / "qc.parquet")
    assert list(on_disk.columns[:3]) == ["key", "image_id", "reason"] and len(on_disk) == len(table)
    ledger = pd.read_parquet(out / "ledger.parquet")
    assert len(ledger) == qc["reason"].notna().sum() == len(table) - 3
    assert set(ledger["stage"]) == {"qc"}
    assert ledger.groupby("reason").size().to_dict() == qc["reason"].value_counts().to_dict()
    assert set(ledger["input_id"]) == set(qc.loc[qc["reason"].notna(), "image_id"])

    report = (out / "report.md").read_text()
    assert "| uniform | 1 |" in report and "| duplicate pixels | 1 |" in report
    assert "groups with conflicting labels: 1" in report and "t__good, t__dup" in report
    for reason in ("uniform", "dim", "saturated", "binary-mask", "nan-or-inf", "duplicate-pixels"):
        png = out / f"montage_{reason}.png"
        assert png.exists(), reason
        arr = np.asarray(Image.open(png))
        assert arr.dtype == np.uint8 and arr.shape[0] >= 128
    assert not (out / "montage_missing-file.png").exists()


def test_run_qc_crop_rows_are_cut_to_window(tmp_path):
    table = _write_manifest_files(tmp_path / "img")
    good = table[table["image_id"] == "sat"].copy()
    # crop a window away from the saturated top rows: passes
    good = good.assign(crop=True, x_min=0, x_max=32, y_min=20, y_max=52, scaling=0.5)
    bad = good.assign(image_id="sat-out", key="t__sat-out", x_max=100)
    qc = run_qc(conform(pd.concat([good, bad], ignore_index=True)), tmp_path / "qc", montage_per_reason=0)
    assert qc["reason"].isna().iloc[0]
    assert qc["reason"].iloc[1] == "wrong shape"
    assert not list((tmp_path / "qc").glob("montage_*.png"))


def test_cli_qc_with_config(tmp_path, capsys):
    from cytodata.cli import main

    table = _write_manifest_files(tmp_path / "img")
    mdir = tmp_path / "manifest"; mdir.mkdir()
    write_manifest(table, mdir / "manifest.parquet")
    cfg = tmp_path / "qc.yaml"
    cfg.write_text("qc:\n  rules: [uniform, binary mask]\n")
    assert main(["qc", str(mdir), "-o", str(tmp_path / "rep"), "--config", str(cfg), "--workers", "1",
                 "--montage", "2"]) == 0
    printed = capsys.readouterr().out
    assert "11 images" in printed and "uniform" in printed and "dim" not in printed
    qc = pd.read_parquet(tmp_path / "rep" / "qc.parquet")
    assert qc.loc[qc["image_id"] == "dim", "reason"].isna().all()  # rule switched off
    bad = tmp_path / "bad.yaml"; bad.write_text("treshold: 3\n")
    assert main(["qc", str(mdir), "-o", str(tmp_path / "rep2"), "--config", str(bad)]) == 2
    assert "unknown key(s) ['treshold']" in capsys.readouterr().err


def test_run_qc_on_dask_cluster(tmp_path):
    pytest.importorskip("distributed")
    table = _write_manifest_files(tmp_path / "img")
    serial = run_qc(table, tmp_path / "a", n_workers=1, montage_per_reason=0)
    parallel = run_qc(table, tmp_path / "b", n_workers=2, montage_per_reason=0)
    pd.testing.assert_frame_equal(serial, parallel)
