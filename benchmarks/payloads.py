"""Published payloads: bytes and decode speed of each codec against blosc-lz4, measured in one run.

Images: the real Phenix field in ``../shared/data/images/pe2loaddata_BR00121482`` (6 x 1080 x
1080 uint16, JUMP cpg0016) and the loader benchmark's images (``benchmarks/loader.py``: 5 x 256
x 256 uint16 cell-like samples, ``cytodata.loaders.demo`` ``pixels="cells"``). For every codec:
bytes per image, encode and decode speed in MB/s of pixels on one thread (``Codec.decode``,
the loaders' path), and for the portable payloads also the decode a user without cytodata
runs (webdataset's own ``.npy`` / ``.gz`` decoders, which the Hugging Face ``datasets``
webdataset builder copies). Each speed is the median of ``--repeat`` timed passes; the last
columns are ratios against blosc-lz4 measured in the same run (size: its bytes / blosc-lz4's;
decode: its speed / blosc-lz4's).

Run: ``python benchmarks/payloads.py [--repeat 7] [--samples 16] [--codecs npy npy-gz ...]``.
"""

from __future__ import annotations

import argparse
import glob
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from cytodata.shards.codecs import CODECS

PHENIX = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "pe2loaddata_BR00121482"
BASELINE = "blosc-lz4"
DEFAULT_CODECS = ("blosc-lz4", "blosc-zstd", "npy", "npy-gz", "tiff", "png16", "zstd")


def phenix_field() -> np.ndarray:
    """The real 6-channel Phenix field, ``(6, 1080, 1080)`` uint16."""
    import tifffile

    paths = sorted(glob.glob(str(PHENIX / "*.tiff")))
    if not paths:
        raise SystemExit(f"no Phenix TIFFs in {PHENIX}; the real data folder is ../shared/data")
    return np.stack([tifffile.imread(p) for p in paths])


def loader_images(n: int) -> list[np.ndarray]:
    """``n`` of the loader benchmark's ``(5, 256, 256)`` uint16 cell-like samples."""
    from cytodata.loaders.demo import _cell_pixels

    return [_cell_pixels(i, (5, 256, 256), 0) for i in range(n)]


def _client_decoder(codec: str):
    """What ``WebDataset(urls).decode()`` runs on a payload member (None: no stock decoder)."""
    from webdataset.autodecode import Decoder, default_post_handlers, default_pre_handlers

    if codec not in ("npy", "npy-gz"):
        return None
    ext, decoder = CODECS.get(codec).ext, Decoder(default_pre_handlers + default_post_handlers)
    return lambda data: decoder({"__key__": "k", ext: data})[ext]


def _median_seconds(fn, items, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(images: list[np.ndarray], codecs: list[str], repeat: int) -> dict[str, dict]:
    """Per codec: bytes per image, encode / decode / client-decode MB/s (pixels, one thread)."""
    pixels = sum(img.nbytes for img in images) / 1e6
    rows = {}
    for name in codecs:
        codec = CODECS.get(name)
        payloads = [codec.encode(img) for img in images]
        for img, data in zip(images, payloads, strict=True):  # lossless, or the row is meaningless
            if not np.array_equal(codec.decode(data, img.shape, img.dtype, threads=1), img):
                raise SystemExit(f"{name} did not round-trip an image bit-exactly")
        enc = _median_seconds(codec.encode, images, max(1, repeat // 2))
        dec = _median_seconds(lambda d, c=codec, like=images[0]: c.decode(d, like.shape, like.dtype, threads=1),
                              payloads, repeat)
        client = _client_decoder(name)
        cli = _median_seconds(client, payloads, repeat) if client else None
        rows[name] = {"bytes": sum(len(p) for p in payloads) / len(payloads), "raw": images[0].nbytes,
                      "encode": pixels / enc, "decode": pixels / dec, "client": pixels / cli if cli else None}
    return rows


def table(title: str, rows: dict[str, dict]) -> str:
    """Markdown table with ratios against blosc-lz4 of the same run."""
    base = rows[BASELINE]
    out = [f"### {title}", "",
           "| payload | bytes/image | x raw | encode MB/s | decode MB/s (cytodata) | decode MB/s "
           "(webdataset/datasets, no cytodata) | size vs blosc-lz4 | decode vs blosc-lz4 |",
           "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        client = f"{r['client']:.0f}" if r["client"] else "needs cytodata or numcodecs"
        out.append(f"| {name} | {r['bytes']:.0f} | {r['raw'] / r['bytes']:.2f} | {r['encode']:.0f} | "
                   f"{r['decode']:.0f} | {client} | {r['bytes'] / base['bytes']:.2f}x | "
                   f"{r['decode'] / base['decode']:.2f}x |")
    return "\n".join(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="timed passes per codec (median)")
    ap.add_argument("--samples", type=int, default=16, help="loader-benchmark images")
    ap.add_argument("--codecs", nargs="+", default=list(DEFAULT_CODECS), choices=CODECS.names())
    args = ap.parse_args(argv)
    codecs = [BASELINE] + [c for c in args.codecs if c != BASELINE]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}, "
          f"numpy {np.__version__}; one thread per decode; medians of {args.repeat} passes")
    results = {"phenix": measure([phenix_field()], codecs, args.repeat),
               "loader": measure(loader_images(args.samples), codecs, args.repeat)}
    print(table("Real Phenix field (6 x 1080 x 1080 uint16, 1 image)", results["phenix"]))
    print()
    print(table(f"Loader benchmark images (5 x 256 x 256 uint16, {args.samples} images)", results["loader"]))
    return results


if __name__ == "__main__":
    main()
