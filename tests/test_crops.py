"""CytoImageNet-style crops and fixed-size tiling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytodata.curate.ledger import Ledger
from cytodata.images.crops import (
    SMALLER_THAN_CROP,
    CropWindow,
    allowed_scales,
    apply_crop,
    crop_rows,
    cytoimagenet_crops,
    n_crops_for_class,
    tile,
)
from cytodata.schema import conform, make_key, validate


def _quadrant_of(win: CropWindow, h: int, w: int) -> int:
    row = 0 if win.y_max <= h // 2 else 1
    col = 0 if win.x_max <= w // 2 else 1
    assert (win.y_min >= h // 2) == bool(row) and (win.x_min >= w // 2) == bool(col)
    return 2 * row + col


@pytest.mark.parametrize("h,w", [(1080, 1080), (512, 640), (301, 157)])
def test_windows_in_bounds_distinct_quadrants_min_size(h, w):
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 5))
        wins = cytoimagenet_crops(h, w, n, rng=rng, min_size=70)
        assert len(wins) == n
        quads = [_quadrant_of(win, h, w) for win in wins]
        assert sorted(quads) == sorted(set(quads)) and quads == [win.quadrant for win in wins]
        for win in wins:
            assert 0 <= win.y_min < win.y_max <= h and 0 <= win.x_min < win.x_max <= w
            assert win.y_max - win.y_min == int(win.scaling * h) >= 70
            assert win.x_max - win.x_min == int(win.scaling * w) >= 70
            assert win.scaling in allowed_scales(h, w)


def test_allowed_scales_by_size():
    assert allowed_scales(1080, 1080) == [1 / 2, 1 / 4, 1 / 8]  # 1080/16 = 67 < 70
    assert allowed_scales(2000, 2000) == [1 / 2, 1 / 4, 1 / 8, 1 / 16]
    assert allowed_scales(139, 1000) == []  # half of 139 is 69 < 70
    assert allowed_scales(140, 1000) == [1 / 2]


def test_seeded_determinism():
    a = cytoimagenet_crops(512, 512, 4, rng=np.random.default_rng(7))
    b = cytoimagenet_crops(512, 512, 4, rng=np.random.default_rng(7))
    c = cytoimagenet_crops(512, 512, 4, rng=np.random.default_rng(8))
    assert a == b and a != c


# CytoImageNet's rule (prepare_dataset.Upsampler): 1/2/3/4 crops at >= 1000/550/400/fewer
@pytest.mark.parametrize("size,expected", [(1, 4), (250, 4), (399, 4), (400, 3), (520, 3),
                                           (549, 3), (550, 2), (999, 2), (1000, 1), (50000, 1),
                                           (0, 4)])
def test_n_crops_for_class(size, expected):
    assert n_crops_for_class(size, target=1000) == expected


def _table(n_a=3, n_b=600):
    rows = [dict(source="s", image_id=f"a{i}", label="alpha", height=512, width=512,
                 channels=["dna"], channel_paths=[f"/x/a{i}.tif"]) for i in range(n_a)]
    rows += [dict(source="s", image_id=f"b{i}", label="beta", height=300, width=400,
                  channels=["dna"], channel_paths=[f"/x/b{i}.tif"]) for i in range(n_b)]
    rows.append(dict(source="s", image_id="tiny", label="alpha", height=100, width=900,
                     channels=["dna"], channel_paths=["/x/tiny.tif"]))
    t = pd.DataFrame(rows)
    t["key"] = [make_key("s", i) for i in t["image_id"]]
    return conform(t)


def test_crop_rows_expands_and_rejects():
    table = _table()
    crops, rejected = crop_rows(table, seed=3, target=1000)
    validate(crops)
    assert list(rejected["image_id"]) == ["tiny"]
    # alpha has 4 images -> 4 crops each (3 croppable); beta has 600 -> 2 crops each
    per_parent = crops.groupby("parent_id").size()
    assert (per_parent[[f"a{i}" for i in range(3)]] == 4).all()
    assert (per_parent[[f"b{i}" for i in range(600)]] == 2).all()
    assert len(crops) == 3 * 4 + 600 * 2
    row = crops[crops["image_id"] == "a1-c2"].iloc[0]
    assert row["key"] == "s__a1-c2" and row["parent_id"] == "a1" and bool(row["crop"])
    assert row["label"] == "alpha" and list(row["channel_paths"]) == ["/x/a1.tif"]
    assert row["x_max"] - row["x_min"] == int(row["scaling"] * 512)
    assert crops["x_min"].dtype == "Int64" and crops["scaling"].dtype == "float64"
    assert crops["crop"].dtype == "boolean" and crops["key"].dtype == "string"
    ledger = Ledger()
    ledger.drop(rejected, stage="crop", reason=SMALLER_THAN_CROP)
    ledger.check(len(table), crops["parent_id"].nunique(), where="crop")


def test_crop_rows_deterministic_and_order_free():
    table = _table(n_a=5, n_b=5)
    a, _ = crop_rows(table, seed=1)
    b, _ = crop_rows(table.iloc[::-1], seed=1)
    c, _ = crop_rows(table, seed=2)
    cols = ["key", "x_min", "x_max", "y_min", "y_max", "scaling"]
    pd.testing.assert_frame_equal(a[cols].sort_values("key").reset_index(drop=True),
                                  b[cols].sort_values("key").reset_index(drop=True))
    assert not a[cols].equals(c[cols])


def test_crop_rows_with_size_mapping_and_unknown_size():
    table = _table(n_a=2, n_b=0).drop(columns=["height", "width"])
    crops, rejected = crop_rows(table, sizes={"a0": (256, 256), "s__a1": (1000, 1000)})
    assert set(crops["parent_id"]) == {"a0", "a1"}
    assert list(rejected["image_id"]) == ["tiny"]  # not in the mapping
    assert crops.loc[crops["parent_id"] == "a0", "scaling"].eq(0.5).all()  # 256/4 = 64 < 70


def test_apply_crop_values():
    img = np.arange(2 * 10 * 12).reshape(2, 10, 12)
    win = CropWindow(x_min=3, x_max=7, y_min=2, y_max=5, scaling=0.25, quadrant=0)
    out = apply_crop(img, win)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, img[:, 2:5, 3:7])
    with pytest.raises(ValueError, match="does not fit"):
        apply_crop(img, CropWindow(0, 20, 0, 5, 1.0, 0))


def test_tile_counts_offsets_values():
    img = np.arange(3 * 10 * 13, dtype=np.uint16).reshape(3, 10, 13)
    tiles, offs = tile(img, 4)
    assert tiles.shape == (2 * 3, 3, 4, 4) and tiles.dtype == np.uint16
    assert offs.tolist() == [[0, 0], [0, 4], [0, 8], [4, 0], [4, 4], [4, 8]]
    for t, (y, x) in zip(tiles, offs):
        np.testing.assert_array_equal(t, img[:, y:y + 4, x:x + 4])
    tiles, offs = tile(img, 4, stride=3)
    assert len(offs) == 3 * 4 and offs[-1].tolist() == [6, 9]
    tiles, offs = tile(img, 4, drop_partial=False)
    assert len(offs) == 3 * 4 and offs[-1].tolist() == [8, 12]
    np.testing.assert_array_equal(tiles[-1, :, :2, :1], img[:, 8:10, 12:13])
    assert not tiles[-1, :, 2:, :].any() and not tiles[-1, :, :, 1:].any()
    empty, offs = tile(img, 11)
    assert empty.shape == (0, 3, 11, 11) and offs.shape == (0, 2)
