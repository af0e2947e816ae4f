"""Small real shard sets for tests and benchmarks: TIFFs on disk -> manifest -> ``shards.write``.

Pixels are ``sample_pixels(i, shape, seed)``: a plane level ``i * 64 + c`` plus a seeded
texture, so a test can recompute exactly what sample ``i`` must decode to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def demo_manifest(folder: str | Path, n: int = 37, shape: tuple[int, int, int] = (3, 16, 16), *,
                  seed: int = 0, n_labels: int = 4, n_plates: int = 3, label_na: int = 0,
                  files: str = "tiff", pixels: str = "texture") -> pd.DataFrame:
    """Write ``n`` images (one 16-bit file per channel) and return their harmonized manifest.

    ``pixels``: ``"texture"`` (exactly recomputable by :func:`sample_pixels`, for tests) or
    ``"cells"`` (realistic cell-like fields from :func:`cytodata.synthetic.make_cells`, for
    benchmarks: noise textures compress and decode unlike real microscopy).

    Labels ``l0..`` with unequal group sizes (label ``k`` gets weight ``k + 1``); the first
    ``label_na`` rows have no label. ``files``: ``"tiff"`` or ``"png"`` (16-bit grayscale).
    """
    from ..schema import conform, make_key

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    c, h, w = shape
    weights = np.arange(1, n_labels + 1, dtype=float)
    labels = rng.choice(n_labels, size=n, p=weights / weights.sum())
    rows = []
    for i in range(n):
        image = sample_pixels(i, shape, seed) if pixels == "texture" else _cell_pixels(i, shape, seed)
        paths = []
        for ch in range(c):
            p = folder / f"img{i:05d}_c{ch}.{'tif' if files == 'tiff' else 'png'}"
            _write_plane(p, image[ch], files)
            paths.append(str(p))
        rows.append(dict(source="demo", image_id=f"im{i:05d}", plate=f"P{i % n_plates}", well=f"A{i:05d}",
                         site=i // 24 + 1, batch=f"b{i % 2}", split="train" if i % 5 else "val",
                         label=None if i < label_na else f"l{labels[i]}", parent_id=f"im{i:05d}",
                         channels=[f"ch{k}" for k in range(c)], channel_paths=paths))
    table = pd.DataFrame(rows)
    table["key"] = [make_key(s, i) for s, i in zip(table["source"], table["image_id"])]
    return conform(table)


def sample_pixels(i: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """The ``(C, H, W)`` uint16 image of demo sample ``i``: planes ``i * 64 + c`` + seeded texture."""
    c, h, w = shape
    rng = np.random.default_rng([seed, i])
    base = (np.arange(c, dtype=np.uint32)[:, None, None] + i * 64) % 60000
    texture = rng.integers(0, 32, size=(c, h, w), dtype=np.uint32) * 2048
    return ((base + texture) % 65536).astype(np.uint16)


def _cell_pixels(i: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    from ..synthetic import DEFAULT_MOAS, make_cells

    moas = list(DEFAULT_MOAS)
    return make_cells(np.random.default_rng([seed, i]), shape, moas[i % len(moas)])


def _write_plane(path: Path, plane: np.ndarray, files: str) -> None:
    if files == "tiff":
        import tifffile

        tifffile.imwrite(path, plane)
    else:
        from PIL import Image

        Image.fromarray(plane).save(path)


def write_demo_shards(out: str | Path, n: int = 37, shape: tuple[int, int, int] = (3, 16, 16), *,
                      samples_per_shard: int = 10, seed: int = 0, codec: str = "blosc-lz4",
                      images: str | Path | None = None, **manifest_options) -> pd.DataFrame:
    """Write a demo shard set to ``out`` with the real writer; return the manifest used."""
    from ..shards import write

    out = Path(out)
    table = demo_manifest(images or out.parent / f"{out.name}-images", n, shape, seed=seed, **manifest_options)
    write(table, out, codec=codec, samples_per_shard=samples_per_shard, scheduler="synchronous", progress=False)
    return table
