"""Normalization at full bit depth: percentile scaling, plate stats, illumination, resize."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cytodata.images.normalize import (
    PlateStats,
    apply_plate_norm,
    channel_percentiles,
    clip_max,
    correct_illumination,
    illumination_function,
    merge_gray,
    percentile_scale,
    resize,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_channel_percentiles_match_numpy(dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 200, (3, 31, 17)).astype(dtype)
    q = (0, 0.1, 25, 50, 75, 99.9, 100)
    ref = np.stack([np.percentile(x[c], q) for c in range(3)])
    np.testing.assert_allclose(channel_percentiles(x, q), ref, rtol=0, atol=1e-9)


def test_percentile_scale_known_values():
    x = np.arange(101, dtype=np.uint16).reshape(1, 1, 101) * 10  # 0, 10, ..., 1000
    out = percentile_scale(x, low=10, high=90)
    assert out.dtype == np.float32
    # p10 = 100, p90 = 900 -> 500 maps to 0.5; clipped outside
    assert out[0, 0, 50] == pytest.approx(0.5)
    assert out[0, 0, 30] == pytest.approx(0.25)
    assert out[0, 0, 0] == 0 and out[0, 0, 100] == 1
    assert out[0, 0, 10] == 0 and out[0, 0, 90] == pytest.approx(1.0)


def test_percentile_scale_per_channel():
    x = np.stack([np.linspace(0, 100, 400), np.linspace(1000, 5000, 400)]).reshape(2, 20, 20)
    out = percentile_scale(x, low=0, high=100)
    np.testing.assert_allclose(out[:, 0, 0], [0, 0]); np.testing.assert_allclose(out[:, -1, -1], [1, 1])
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_constant_channel_gives_zeros_without_warnings():
    x = np.stack([np.full((8, 8), 7, np.uint16), np.arange(64, dtype=np.uint16).reshape(8, 8)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = percentile_scale(x)
        out16 = percentile_scale(x, out_dtype=np.uint16)
        gray = merge_gray(x)
    assert not out[0].any() and not out16[0].any()
    assert out[1].max() == 1.0 and np.isfinite(out).all()
    assert gray.shape == (1, 8, 8) and gray.dtype == np.uint16


def test_uint16_keeps_all_4096_levels():
    x = np.arange(4096, dtype=np.uint16).reshape(1, 64, 64)
    out = percentile_scale(x, low=0, high=100, out_dtype=np.uint16)
    assert out.dtype == np.uint16
    assert len(np.unique(out)) == 4096
    assert out.min() == 0 and out.max() == 65535
    gray = merge_gray(np.concatenate([x, x]), low=0, high=100)
    assert len(np.unique(gray)) == 4096


def test_plate_stats_match_numpy_and_merge_is_associative():
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 60000, (3, 16, 12)).astype(np.uint16) for _ in range(6)]
    parts = []
    for chunk in (imgs[:2], imgs[2:3], imgs[3:]):
        s = PlateStats()
        for img in chunk:
            s.update("p1", img)
        parts.append(s)
    a, b, c = parts
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    stack = np.stack(imgs).astype(np.float64)  # (N, C, H, W)
    mean = stack.mean(axis=(0, 2, 3)); std = stack.std(axis=(0, 2, 3))
    for merged in (left, right):
        d = merged.to_dict()
        assert list(d) == ["p1"]
        np.testing.assert_allclose(d["p1"]["mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(d["p1"]["std"], std, rtol=1e-10)
    assert left.count("p1") == 6 * 16 * 12
    # separate groups stay separate
    s = PlateStats(); s.update("a", imgs[0]); s.update("b", imgs[1])
    np.testing.assert_allclose(s.to_dict()["b"]["mean"], imgs[1].mean(axis=(1, 2)))


def test_plate_stats_rejects_channel_change():
    s = PlateStats(); s.update("p", np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="2 channels"):
        s.update("p", np.zeros((3, 4, 4)))


def test_apply_plate_norm_zscores_and_guards_std():
    x = np.stack([np.arange(16.0).reshape(4, 4), np.full((4, 4), 5.0)])
    z = apply_plate_norm(x, mean=[7.5, 5.0], std=[x[0].std(), 0.0])
    assert z.dtype == np.float32
    assert z[0].mean() == pytest.approx(0, abs=1e-6) and z[0].std() == pytest.approx(1, rel=1e-5)
    assert np.isfinite(z).all() and not z[1].any()


def test_illumination_correction_removes_vignette():
    rng = np.random.default_rng(3)
    h = w = 96
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (h / 2) ** 2
    vignette = 1.0 - 0.5 * r2 / r2.max()  # 1 at the center, 0.5 in the corners
    imgs = []
    for _ in range(40):
        base = rng.gamma(4.0, 250.0, (1, h, w))  # cells-like texture, no spatial trend
        imgs.append(np.clip(base * vignette, 0, 65535).astype(np.uint16))
    illum = illumination_function(imgs, sigma=6)
    assert illum.shape == (1, h, w) and illum.dtype == np.float32
    assert illum.min() >= 1.0

    def field_cv2(stack):
        # relative variance across the field of the mean image, on 12x12-pixel block means
        # so that the per-pixel texture (the noise floor) does not mask the vignette
        m = np.mean(stack, axis=0)[0].reshape(8, 12, 8, 12).mean(axis=(1, 3))
        return m.var() / m.mean() ** 2

    before = field_cv2([im.astype(np.float64) for im in imgs])
    after = field_cv2([correct_illumination(im, illum) for im in imgs])
    assert after < before / 10
    corrected = correct_illumination(imgs[0], illum)
    assert corrected.dtype == np.float32 and corrected.max() <= imgs[0].max()


def test_illumination_constant_channel_is_ones():
    imgs = [np.zeros((2, 16, 16), np.uint16) + np.array([0, 9], np.uint16)[:, None, None]] * 3
    illum = illumination_function(imgs)
    np.testing.assert_array_equal(illum, 1.0)


def test_clip_max_and_resize_keep_dtype():
    x = np.arange(4096, dtype=np.uint16).reshape(1, 64, 64) * 16
    c = clip_max(x, 1000)
    assert c.dtype == np.uint16 and c.max() == 1000 and c.min() == 0
    for dtype in (np.uint16, np.uint8, np.float32):
        img = (np.random.default_rng(4).random((3, 40, 50)) * 250).astype(dtype)
        out = resize(img, (20, 30))
        assert out.shape == (3, 20, 30) and out.dtype == dtype
    big = resize(x, (128, 128))
    assert big.dtype == np.uint16 and big.max() > 255 and len(np.unique(big)) > 1000
    sat = resize(np.full((1, 8, 8), 65535, np.uint16), (16, 16))
    assert sat.max() == 65535  # bicubic overshoot is clipped, not wrapped
