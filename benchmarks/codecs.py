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
    ap.add_argument("--blosc-sweep", action="store_true",
                    help="also sweep blosc settings (compressor, level, shuffle, block size) and the "
                         "per-sample checksum cost")
    ap.add_argument("--per-call", action="store_true",
                    help="only compare the loader's per-call single-threaded blosc decode (threads=1) "
                         "with the old process-global switch (numcodecs use_threads=False)")
    args = ap.parse_args()
    if args.per_call:
        per_call_threads(args.channels, args.repeat)
        return
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
    if args.blosc_sweep:
        blosc_sweep(img, args.repeat)


def per_call_threads(channels: int, repeat: int) -> None:
    """Decode time of ``Codec.decode(threads=1)`` (per call) vs numcodecs with the process-global
    ``use_threads=False`` (a process-wide switch), interleaved, same payloads."""
    from numcodecs import blosc

    before = blosc.use_threads
    for size in (256, 1080):
        img = cell_like(channels, size)
        for name in ("blosc-lz4", "blosc-zstd"):
            codec = CODECS.get(name)
            data, out = codec.encode(img), np.empty_like(img)
            times: dict[str, list[float]] = {"per-call": [], "global": []}
            for rep in range(max(5, repeat) * 4):
                for side in (("per-call", "global") if rep % 2 == 0 else ("global", "per-call")):
                    blosc.use_threads = False if side == "global" else before
                    threads = 1 if side == "per-call" else None
                    t = time.perf_counter()
                    codec.decode(data, img.shape, img.dtype, out=out, threads=threads)
                    times[side].append(time.perf_counter() - t)
            blosc.use_threads = before
            ratio = np.array(times["global"]) / np.array(times["per-call"])
            print(f"{name:10s} {img.shape}: per-call threads=1 {np.median(times['per-call']) * 1e6:7.0f} us, "
                  f"global use_threads=False {np.median(times['global']) * 1e6:7.0f} us; speed per-call/global "
                  f"median {np.median(ratio):.2f} (IQR {np.percentile(ratio, 25):.2f}-{np.percentile(ratio, 75):.2f},"
                  f" n={len(ratio)})")


def blosc_sweep(img: np.ndarray, repeat: int) -> None:
    """Decode MB/s and bytes for blosc settings, against the default (blosc-lz4: lz4, 9, bit).

    Also the XXH3-64 of each payload (what the loader checks per sample), in microseconds.
    """
    from numcodecs import Blosc

    from cytodata.shards.checksum import checksum_int

    settings = [(c, lvl, sh, bs) for c, lvl in (("lz4", 9), ("lz4", 5), ("zstd", 1), ("zstd", 3))
                for sh in (Blosc.BITSHUFFLE, Blosc.SHUFFLE) for bs in (0, 1 << 16, 1 << 18, 1 << 20)]
    out = np.empty_like(img)
    rows = []
    for cname, level, shuffle, block in settings:
        codec = Blosc(cname=cname, clevel=level, shuffle=shuffle, blocksize=block)
        data = bytes(codec.encode(np.ascontiguousarray(img)))
        t = time.perf_counter()
        for _ in range(repeat):
            codec.decode(data, out=out)
        dec = (time.perf_counter() - t) / repeat
        t = time.perf_counter()
        for _ in range(repeat):
            checksum_int(data)
        hsh = (time.perf_counter() - t) / repeat
        rows.append((cname, level, "bit" if shuffle == Blosc.BITSHUFFLE else "byte", block, len(data),
                     img.nbytes / 1e6 / dec, dec * 1e6, hsh * 1e6))
    base = next(r for r in rows if r[:4] == ("lz4", 9, "bit", 0))
    print(f"\nblosc settings (1 thread), default = lz4 9 bit auto-block: {base[5]:.0f} MB/s, {base[4]} bytes")
    print(f"{'cname':5s} {'lvl':>3s} {'shuf':>4s} {'block':>8s} {'bytes':>9s} {'x default':>9s} "
          f"{'MB/s':>7s} {'x default':>9s} {'dec us':>7s} {'xxh3 us':>8s}")
    for cname, level, sh, block, nbytes, speed, dec_us, hash_us in sorted(rows, key=lambda r: -r[5]):
        print(f"{cname:5s} {level:3d} {sh:>4s} {block or 'auto':>8} {nbytes:9d} {nbytes / base[4]:9.2f} "
              f"{speed:7.0f} {speed / base[5]:9.2f} {dec_us:7.0f} {hash_us:8.0f}")


if __name__ == "__main__":
    main()
