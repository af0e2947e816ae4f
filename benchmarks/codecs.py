"""Decode speed (MB/s of pixels per core) and bytes per image for every shard codec.

Data: realistic 16-bit cell-like images: smooth background + bright Gaussian blobs (nuclei,
cells) + Poisson shot noise + camera offset, 5 channels. Run: ``python benchmarks/codecs.py
[--size 1080] [--repeat 5]``; prints one line per codec and its size/speed ratio vs png16.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cytodata.shards.codecs import CODECS


def cell_like(channels: int = 5, size: int = 1080, seed: int = 0) -> np.ndarray:
    """``(C, size, size)`` uint16 with background gradient, blobs and Poisson noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((channels, size, size), np.uint16)
    for c in range(channels):
        lam = 80 + 40 * (xx + yy) + 30 * np.sin(3 * xx + c)
        for _ in range(int(size * size / 4000)):
            cy, cx = rng.uniform(0, 1, 2)
            r = rng.uniform(6, 20) / size
            amp = rng.uniform(300, 3000)
            y0, y1 = max(0, int((cy - 3 * r) * size)), min(size, int((cy + 3 * r) * size) + 1)
            x0, x1 = max(0, int((cx - 3 * r) * size)), min(size, int((cx + 3 * r) * size) + 1)
            sub = ((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2) / (2 * r * r)
            lam[y0:y1, x0:x1] += amp * np.exp(-sub)
        out[c] = np.clip(rng.poisson(lam) + 100, 0, 65535)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--channels", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from numcodecs import blosc

    blosc.set_nthreads(1)  # "per core": blosc would otherwise use every core
    blosc.use_threads = False
    img = cell_like(args.channels, args.size)
    mb = img.nbytes / 1e6
    rows = {}
    for name in CODECS.names():
        codec = CODECS.get(name)
        data = codec.encode(img)
        out = np.empty_like(img)
        assert np.array_equal(codec.decode(data, img.shape, img.dtype), img)  # benchmark sanity
        t = time.perf_counter()
        for _ in range(args.repeat):
            codec.decode(data, img.shape, img.dtype, out=out)
        dec = (time.perf_counter() - t) / args.repeat
        t = time.perf_counter()
        codec.encode(img)
        enc = time.perf_counter() - t
        rows[name] = (len(data), mb / dec, mb / enc)
    base_bytes, base_speed, _ = rows["png16"]
    print(f"image {img.shape} uint16 = {mb:.1f} MB raw; single process, 1 thread per codec call")
    print(f"{'codec':11s} {'bytes/img':>11s} {'ratio':>6s} {'vs png16':>9s} {'decode MB/s':>12s} "
          f"{'x png16':>8s} {'encode MB/s':>12s}")
    for name, (nbytes, dspeed, espeed) in rows.items():
        print(f"{name:11s} {nbytes:11d} {img.nbytes / nbytes:6.2f} {nbytes / base_bytes:9.2f} "
              f"{dspeed:12.0f} {dspeed / base_speed:8.1f} {espeed:12.0f}")


if __name__ == "__main__":
    main()
