"""Every bad input file becomes an ImageReadError naming it, and a ledger row in every writer and
in QC: decompression-bomb headers, directories, truncated TIFFs (real Opera Phenix files cut at
many points, whatever their directory layout), plus unsafe manifest keys refused at write time."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cytodata.curate.qc import run_qc
from cytodata.errors import ImageReadError, ShardError
from cytodata.images import io as image_io
from cytodata.images import read_image
from cytodata.images.io import image_shape
from cytodata.schema import conform, make_key
from cytodata.shards import write

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
PHENIX = sorted(str(p) for p in (IMAGES / "pe2loaddata_BR00121482").glob("*.tiff"))


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A valid PNG header claiming ``width x height`` 16-bit gray pixels, with one tiny IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def tiff_bomb(path: Path, side: int = 100_000) -> Path:
    """A real 8x8 uint16 TIFF whose ImageWidth/ImageLength tags are patched to ``side``."""
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16))
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for e in range(struct.unpack_from("<H", data, ifd)[0]):
        pos = ifd + 2 + 12 * e
        tag, kind = struct.unpack_from("<HH", data, pos)
        if tag in (256, 257):  # ImageWidth, ImageLength
            if kind == 3:
                struct.pack_into("<HHIHH", data, pos, tag, 4, 1, 0, 0)  # promote SHORT to LONG
            struct.pack_into("<I", data, pos + 8, side)
    path.write_bytes(bytes(data))
    return path


def cut_points(n: int) -> list[int]:
    return sorted({int(n * f) for f in np.linspace(0.001, 0.999, 25)} | {8, 100, n // 3, n - 1})


@pytest.mark.parametrize("src", [PHENIX[0], PHENIX[-1]])
def test_real_phenix_tiff_cut_anywhere_is_truncated_naming_the_file(tmp_path, src):
    data = Path(src).read_bytes()
    with tifffile.TiffFile(src) as tif:
        assert tif.pages[0].offset > len(data) // 2  # Phenix: the directory sits after the pixels
    for n in cut_points(len(data)):
        cut = tmp_path / f"cut{n}.tiff"
        cut.write_bytes(data[:n])
        with pytest.raises(ImageReadError) as err:
            read_image([str(cut)])
        assert err.value.reason == "truncated", (n, str(err.value))
        assert str(cut) in str(err.value)


def test_small_tiff_with_directory_first_cut_anywhere(tmp_path):
    """The other layout: directory right after the header, strips after it."""
    src = tmp_path / "first.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(src, rng.integers(0, 65535, (3, 64, 64), dtype=np.uint16), compression="zlib")
    data = src.read_bytes()
    with tifffile.TiffFile(src) as tif:
        assert tif.pages[0].offset < len(data) // 4
    for n in cut_points(len(data)):
        cut = tmp_path / f"c{n}.tif"
        cut.write_bytes(data[:n])
        with pytest.raises(ImageReadError) as err:
            read_image([str(cut)])
        assert err.value.reason in ("truncated", "unreadable"), (n, str(err.value))


def test_decompression_bomb_headers_are_refused_with_a_configurable_limit(tmp_path, monkeypatch):
    png, tif = png_bomb(tmp_path / "bomb.png"), tiff_bomb(tmp_path / "bomb.tif")
    for path in (png, tif):
        for fn in (read_image, image_shape):
            with pytest.raises(ImageReadError) as err:
                fn([str(path)])
            assert err.value.reason == "too large" and str(path) in str(err.value), fn
    small = tmp_path / "ok.tif"
    tifffile.imwrite(small, np.ones((4, 32, 32), np.uint16))
    assert read_image([str(small)]).shape == (4, 32, 32)
    with pytest.raises(ImageReadError, match="above the limit of 4,095"):
        read_image([str(small)], max_pixels=4095)
    monkeypatch.setenv("CYTODATA_MAX_PIXELS", "4095")
    with pytest.raises(ImageReadError) as err:
        read_image([str(small)])
    assert err.value.reason == "too large"
    assert image_io.MAX_PIXELS >= 1080 * 1080 * 6


def test_directory_as_channel_path(tmp_path):
    folder = tmp_path / "a_folder.tif"
    folder.mkdir()
    for fn in (read_image, image_shape):
        with pytest.raises(ImageReadError, match="is a directory") as err:
            fn([str(folder)])
        assert err.value.reason == "unreadable"


def bad_manifest(tmp_path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Two good 2-channel images + one row per kind of bad file; returns (table, expected reasons)."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(2):
        paths = []
        for c in range(2):
            p = tmp_path / f"good{i}_{c}.tif"
            tifffile.imwrite(p, rng.integers(0, 4000, (32, 32), dtype=np.uint16))
            paths.append(str(p))
        rows.append(dict(image_id=f"good{i}", channel_paths=paths))
    good = rows[0]["channel_paths"][0]
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    phenix = Path(PHENIX[0]).read_bytes()
    (tmp_path / "phenix_third.tiff").write_bytes(phenix[: len(phenix) // 3])
    bad = {"png_bomb": ([good, str(png_bomb(tmp_path / "b.png"))], "too large"),
           "tiff_bomb": ([good, str(tiff_bomb(tmp_path / "b.tif"))], "too large"),
           "directory": ([good, str(folder)], "unreadable"),
           "phenix_third": ([good, str(tmp_path / "phenix_third.tiff")], "truncated")}
    if hasattr(os, "mkfifo"):  # reading either would never end: refused from the file type
        os.mkfifo(tmp_path / "pipe.tif")
        bad["pipe"] = ([good, str(tmp_path / "pipe.tif")], "unreadable")
        bad["device"] = ([good, "/dev/zero"], "unreadable")
    for name, (paths, _) in bad.items():
        rows.append(dict(image_id=name, channel_paths=paths))
    for r in rows:
        r.update(source="t", plate="p1", well=f"A{len(r['image_id']):02d}", site=rows.index(r) + 1,
                 channels=["DNA", "RNA"], label="x")
    table = pd.DataFrame(rows)
    table["key"] = [make_key(s, i) for s, i in zip(table["source"], table["image_id"])]
    return conform(table), {k: v for k, (_, v) in bad.items()}


@pytest.mark.parametrize("fmt", ["webdataset", "zarr", "ome-zarr"])
def test_every_writer_ledgers_every_bad_file(tmp_path, fmt):
    table, expected = bad_manifest(tmp_path)
    out = tmp_path / fmt
    summary = write(table, out, format=fmt, samples_per_shard=2, scheduler="synchronous", progress=False)
    ledger = pd.read_parquet(out / "ledger.parquet")
    got = dict(zip(ledger["input_id"], ledger["reason"]))
    assert {k: got.get(k) for k in expected} == expected
    for name, detail in zip(ledger["input_id"], ledger["detail"]):
        assert name in expected and ("/" in detail), detail  # names the file
    assert summary["rows_written"] == 2


def test_qc_ledgers_every_bad_file(tmp_path):
    table, expected = bad_manifest(tmp_path)
    qc = run_qc(table, tmp_path / "qc", montage_per_reason=0)
    got = dict(zip(qc["image_id"], qc["reason"]))
    assert {k: got[k] for k in expected} == expected
    assert pd.isna(got["good0"]) and pd.isna(got["good1"])


@pytest.mark.parametrize("fmt", ["webdataset", "zarr", "ome-zarr"])
@pytest.mark.parametrize("key", ["..__..__escape", "/abs/path", "a\\b", "-rf", ".hidden", "", "a\nb", "a b",
                                 # Windows path joins and extractors: drive-relative "C:x", NTFS
                                 # streams "a:b", reserved characters and device names
                                 "C:evil", "a:b", "a|b", "a*b", 'a"b', "a<b", "NUL", "con", "COM1", "lpt9"])
def test_unsafe_keys_are_refused_naming_the_row(tmp_path, fmt, key):
    table, _ = bad_manifest(tmp_path)
    table = table[table["image_id"].str.startswith("good")].reset_index(drop=True)
    table.loc[0, "key"] = key
    if key == "":  # the schema already refuses empty keys with its own error
        with pytest.raises(Exception, match="empty"):
            write(table, tmp_path / "o", format=fmt, scheduler="synchronous", progress=False)
        return
    with pytest.raises(ShardError, match=r"unsafe as tar member names.*image_id 'good0'.*make_key"):
        write(table, tmp_path / "o", format=fmt, scheduler="synchronous", progress=False)
    assert not list((tmp_path / "o").glob("*.tar"))
    assert not (tmp_path.parent / "escape").exists()


def _read_with_deadline(read, path: str, seconds: float = 20.0):
    """read(path) on a daemon thread: (finished, exception) within ``seconds``."""
    import threading

    box: dict = {}

    def run():
        try:
            read(path)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            box["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive(), box.get("exc")


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="POSIX only")
def test_fifos_and_devices_are_refused_without_reading_them(tmp_path):
    """A named pipe would block the read forever and /dev/zero would fill memory: both are
    refused from their file type, naming the path, before a byte is read (pixels, headers)."""
    from cytodata.curate.upsample import image_size

    fifo = tmp_path / "channel.tif"
    os.mkfifo(fifo)
    try:
        for read in (read_image, image_shape, image_size):
            for path in (str(fifo), "/dev/zero"):
                finished, exc = _read_with_deadline(read, path)
                assert finished, f"{read.__name__}({path}) still reading"
                assert isinstance(exc, ImageReadError) and exc.reason == "unreadable", exc
                assert path in str(exc) and "not a regular file" in str(exc)
    finally:  # release a reader still blocked on the pipe (should it block)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
