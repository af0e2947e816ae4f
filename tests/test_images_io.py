"""read_image on the real Phenix TIFFs / RxRx1 PNGs and on files broken in known ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cytodata.errors import ImageReadError
from cytodata.images import image_shape, read_image

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
PHENIX = sorted((IMAGES / "pe2loaddata_BR00121482").glob("*.tiff"))
RXRX = sorted((IMAGES / "rxrx1_HEPG2-01_Plate1").glob("*.png"))


def test_real_phenix_tiffs_bit_exact():
    img = read_image(PHENIX)
    assert img.shape == (6, 1080, 1080) and img.dtype == np.uint16
    for i, p in enumerate(PHENIX):
        np.testing.assert_array_equal(img[i], tifffile.imread(p))
    assert image_shape(PHENIX) == (6, 1080, 1080)


def test_real_rxrx1_pngs_stay_uint8():
    img = read_image(RXRX)
    assert img.shape == (6, 512, 512) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[2], np.asarray(Image.open(RXRX[2])))
    assert image_shape([str(p) for p in RXRX]) == (6, 512, 512)


def test_png16_multipage_tiff_and_rgb(tmp_path):
    a = (np.arange(40 * 30, dtype=np.uint32).reshape(40, 30) * 50).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "m.tif", np.stack([a, a + 1, a + 2]))
    got = read_image([tmp_path / "a.png", tmp_path / "m.tif"])
    assert got.dtype == np.uint16 and got.shape == (4, 40, 30)
    np.testing.assert_array_equal(got[0], a)
    np.testing.assert_array_equal(got[3], a + 2)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 10
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png", gray="first")[0, 0, 0] == 100
    assert read_image(tmp_path / "c.png")[0, 0, 0] == round(0.299 * 100 + 0.587 * 50 + 0.114 * 10)
    assert read_image(tmp_path / "c.png", gray=None).shape == (3, 8, 8)
    Image.fromarray(np.repeat(a[..., None] % 256, 3, axis=2).astype(np.uint8)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png")[0], (a % 256).astype(np.uint8))


def _broken(tmp_path: Path) -> dict[str, list]:
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.random.default_rng(0).integers(0, 4000, (64, 64), dtype=np.uint16),
                     compression="lzw")
    data = good.read_bytes()
    trunc = tmp_path / "trunc.tif"
    trunc.write_bytes(data[: len(data) // 2])
    text = tmp_path / "text.png"
    text.write_text("<html>404 not found</html>")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    other = tmp_path / "small.tif"
    tifffile.imwrite(other, np.zeros((32, 64), np.uint16))
    eight = tmp_path / "eight.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(eight)
    pngt = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    pngt.write_bytes((tmp_path / "full.png").read_bytes()[:300])
    return {
        "truncated": [good, trunc], "truncated-png": [pngt], "unreadable": [text],
        "empty": [empty], "missing file": [good, tmp_path / "nope.tif"],
        "shape mismatch": [good, other], "dtype mismatch": [good, eight],
    }


@pytest.mark.parametrize("case,reason", [
    ("truncated", "truncated"), ("truncated-png", "truncated"), ("unreadable", "unreadable"),
    ("empty", "truncated"), ("missing file", "missing file"), ("shape mismatch", "shape mismatch"),
    ("dtype mismatch", "dtype mismatch"),
])
def test_broken_files_raise_with_reason(tmp_path, case, reason):
    paths = _broken(tmp_path)[case]
    with pytest.raises(ImageReadError) as err:
        read_image(paths)
    assert err.value.reason == reason
    assert err.value.path == str(paths[-1])
    assert str(paths[-1]) in str(err.value)


def test_expected_channels_and_fsspec_url(tmp_path):
    with pytest.raises(ImageReadError) as err:
        read_image(PHENIX[:2], expected_channels=3)
    assert err.value.reason == "wrong channel count"
    img = read_image([f"file://{PHENIX[0]}"])
    np.testing.assert_array_equal(img[0], tifffile.imread(PHENIX[0]))
