"""Epoch orders beyond a plain shuffle: class balance, source mixing, weak-label pairs, grouped batches.

A sampler is an object with ``order(index, *, seed, epoch, world_size=1) -> np.ndarray`` over
the rows of a shard set's ``index.parquet`` (row numbers, not keys). The result is the global
order of one epoch: 1-D (one sample per unit) or 2-D ``(n, k)`` (tuples such as
(anchor, partner) pairs, fetched together). ``StreamingDataset(sampler=...)`` then partitions
it over ranks and workers exactly like the default shuffle, so resume and "same order for any
cluster shape" hold for every sampler (except :class:`GroupedBatches`, whose batches are
per-rank by definition; see there). Every order is a pure function of ``(index, seed, epoch)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .partition import epoch_order, rng_for, window_order


def shard_sizes(index: pd.DataFrame) -> list[int] | None:
    """Samples per shard in index order (rows are grouped by shard), or None without a shard column."""
    if "shard" not in index.columns or not len(index):
        return None
    shard = index["shard"].astype(str).to_numpy()
    cuts = np.flatnonzero(shard[1:] != shard[:-1]) + 1
    return np.diff(np.concatenate([[0], cuts, [len(shard)]])).tolist()


def base_order(index: pd.DataFrame, *, seed: int, epoch: int, shuffle: bool = True,
               block_size: int | None = None) -> np.ndarray:
    """The default epoch order: shard blocks shuffled, then samples inside each shard."""
    sizes = shard_sizes(index) if block_size is None else None
    return epoch_order(len(index), seed=seed, epoch=epoch, shuffle=shuffle, block_size=block_size,
                       shard_sizes=sizes)


def local_first(indices: np.ndarray, index: pd.DataFrame, *, seed: int, epoch: int) -> np.ndarray:
    """Re-order chosen rows (repeats allowed) by their place in the shard-block shuffle (read locality)."""
    base = base_order(index, seed=seed, epoch=epoch)
    rank = np.empty(len(base), dtype=np.int64)
    rank[base] = np.arange(len(base))
    key = rank[indices] if indices.ndim == 1 else rank[indices[:, 0]]
    return indices[np.argsort(key, kind="stable")]


def _groups(index: pd.DataFrame, column: str) -> tuple[dict[str, np.ndarray], int]:
    """Row numbers per non-NA value of ``column`` (sorted values) and the count of NA rows."""
    if column not in index.columns:
        raise KeyError(f"index has no column {column!r}; columns: {', '.join(map(str, index.columns))}")
    values = index[column]
    na = values.isna().to_numpy()
    labels = values.astype("string").fillna("").to_numpy(dtype=object)
    groups: dict[str, list[int]] = {}
    for row in np.flatnonzero(~na):
        groups.setdefault(labels[row], []).append(int(row))
    return {k: np.asarray(groups[k], dtype=np.int64) for k in sorted(groups)}, int(na.sum())


@dataclass
class ShardShuffle:
    """The default order: shuffled shard blocks + in-shard shuffle (or fixed blocks of ``block_size``)."""

    shuffle: bool = True
    block_size: int | None = None

    def order(self, index: pd.DataFrame, *, seed: int, epoch: int, world_size: int = 1) -> np.ndarray:
        return base_order(index, seed=seed, epoch=epoch, shuffle=self.shuffle, block_size=self.block_size)


@dataclass
class WindowShuffle:
    """Shard-window shuffling: shards in a seeded order, samples shuffled within ``window`` shards.

    Every reader's working set is one window of shards (what a local shard cache must hold,
    plus what it prefetches), at the price of a less mixed order than a global per-sample
    shuffle: a batch draws from ``window`` shards only (docs/streaming.md measures it).
    ``shuffle=False``: the index order.
    """

    window: int = 4
    shuffle: bool = True

    def __post_init__(self):
        if int(self.window) < 1:
            raise ValueError(f"shuffle_window={self.window}; use 1 or more shards per window")

    def order(self, index: pd.DataFrame, *, seed: int, epoch: int, world_size: int = 1) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(index), dtype=np.int64)
        sizes = shard_sizes(index)
        if sizes is None:  # no shard column: fixed blocks stand in for shards
            return epoch_order(len(index), seed=seed, epoch=epoch)
        return window_order(sizes, seed=seed, epoch=epoch, window=self.window)


@dataclass
class ClassBalanced:
    """Balance label groups of ``column`` each epoch (fresh draw per epoch).

    ``mode="median"``: groups larger than the median group size are downsampled to it without
    replacement; smaller groups keep all their rows.
    ``mode="resample_median"`` (DeepProfiler's ``balanced_sample``, sampled_crop_generator.py:61-73):
    every group is drawn to ``int(median)`` rows, larger ones without replacement, smaller ones
    with replacement (``DataFrame.sample(replace=True)``).
    ``mode="equal"``: every group gets ``per_class`` rows (default: the largest group size),
    small groups drawn with replacement after taking all their rows once.
    Rows with NA in ``column`` are left out (counted in ``self.excluded``).
    """

    column: str = "label"
    mode: str = "median"
    per_class: int | None = None
    excluded: int = field(default=0, init=False)

    def counts(self, index: pd.DataFrame) -> dict[str, int]:
        """Rows drawn per group in one epoch."""
        groups, _ = _groups(index, self.column)
        sizes = {k: len(v) for k, v in groups.items()}
        if not sizes:
            return {}
        if self.mode in ("median", "resample_median"):
            med = int(np.median(list(sizes.values())))
            if self.mode == "resample_median":
                return {k: med for k in sizes}
            return {k: min(n, med) for k, n in sizes.items()}
        if self.mode == "equal":
            target = int(self.per_class or max(sizes.values()))
            return {k: target for k in sizes}
        raise ValueError(f"ClassBalanced mode={self.mode!r}; valid: median, resample_median, equal")

    def order(self, index: pd.DataFrame, *, seed: int, epoch: int, world_size: int = 1) -> np.ndarray:
        groups, self.excluded = _groups(index, self.column)
        rng = rng_for("balanced", seed, epoch)
        chosen = []
        for name, want in self.counts(index).items():
            rows = groups[name]
            if self.mode == "resample_median":
                chosen.append(rng.choice(rows, size=want, replace=want > len(rows)).astype(np.int64))
            else:
                chosen.append(_draw(rows, want, rng))
        picked = np.concatenate(chosen) if chosen else np.empty(0, np.int64)
        return local_first(picked, index, seed=seed, epoch=epoch)


def _draw(rows: np.ndarray, want: int, rng: np.random.Generator) -> np.ndarray:
    """``want`` rows: without replacement up to ``len(rows)``, then whole passes + a random rest."""
    full, rest = divmod(want, len(rows))
    parts = [rows] * full + [rng.choice(rows, size=rest, replace=False)]
    return np.concatenate(parts).astype(np.int64)


@dataclass
class SourceMix:
    """Mix the values of ``column`` (e.g. source datasets) in fixed proportions per epoch.

    ``weights``: value -> relative weight (values not listed get 0). ``num_samples``: epoch
    length (default: the index length). Counts are rounded by largest remainder so they sum to
    ``num_samples``; a value asked for more rows than it has repeats rows (whole passes first).
    """

    weights: dict[str, float]
    column: str = "source"
    num_samples: int | None = None

    def counts(self, index: pd.DataFrame) -> dict[str, int]:
        groups, _ = _groups(index, self.column)
        missing = sorted(set(self.weights) - set(groups))
        if missing:
            raise KeyError(f"SourceMix weights name {missing} but {self.column!r} holds {sorted(groups)}")
        total = int(self.num_samples or len(index))
        names = sorted(self.weights)
        w = np.array([float(self.weights[k]) for k in names])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"SourceMix weights must be >= 0 with a positive sum, got {self.weights}")
        exact = w / w.sum() * total
        base = np.floor(exact).astype(int)
        base[np.argsort(-(exact - base), kind="stable")[: total - base.sum()]] += 1
        return dict(zip(names, base.tolist()))

    def order(self, index: pd.DataFrame, *, seed: int, epoch: int, world_size: int = 1) -> np.ndarray:
        groups, _ = _groups(index, self.column)
        rng = rng_for("mix", seed, epoch)
        parts = [_draw(groups[k], n, rng) for k, n in self.counts(index).items() if n]
        picked = np.concatenate(parts) if parts else np.empty(0, np.int64)
        return local_first(picked, index, seed=seed, epoch=epoch)


@dataclass
class WeakLabelPairs:
    """(anchor, partner) row pairs sharing a weak label, partner a different image (WS-DINO).

    Every row with a non-NA ``column`` is an anchor once per epoch; its partner is drawn
    uniformly from the other rows of its label whose ``image_column`` differs (use
    ``"parent_id"`` so crops of one image never pair). A label with a single image pairs
    with itself only when ``allow_self=True``; otherwise its anchors are skipped and counted
    in ``self.skipped`` (with a warning). The order is 2-D ``(n, 2)``.
    """

    column: str = "label"
    image_column: str = "key"
    allow_self: bool = False
    skipped: int = field(default=0, init=False)

    def order(self, index: pd.DataFrame, *, seed: int, epoch: int, world_size: int = 1) -> np.ndarray:
        groups, _ = _groups(index, self.column)
        images = index[self.image_column].astype("string").fillna("").to_numpy(dtype=object)
        rng = rng_for("pairs", seed, epoch)
        pairs, skipped = [], 0
        for rows in groups.values():
            anchors, partners = _different_image_partners(np.asarray(rows), images[rows], rng)
            lone = partners < 0
            if lone.any():
                if self.allow_self:
                    partners[lone] = anchors[lone]
                else:
                    skipped += int(lone.sum())
                    anchors, partners = anchors[~lone], partners[~lone]
            pairs.append(np.stack([anchors, partners], axis=1))
        self.skipped = skipped
        if skipped:
            warnings.warn(f"WeakLabelPairs: {skipped} anchors skipped: their {self.column!r} value has a "
                          f"single {self.image_column!r}; pass allow_self=True to pair them with themselves",
                          stacklevel=2)
        out = np.concatenate(pairs).astype(np.int64) if pairs else np.empty((0, 2), np.int64)
        return local_first(out, index, seed=seed, epoch=epoch)


def _different_image_partners(rows: np.ndarray, images: np.ndarray,
                              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For each row, a partner drawn uniformly from the rows with another image (-1: none).

    Vectorized and exact: rows are sorted by image, so the rows sharing an anchor's image form
    one block ``[start, start + size)``; a uniform draw over the ``n - size`` other positions
    skips that block. O(n log n) per label instead of O(n^2).
    """
    n = len(rows)
    order = np.argsort(images, kind="stable")
    _, start, size = np.unique(images[order], return_index=True, return_counts=True)
    block = np.repeat(np.arange(len(start)), size)
    first, width = start[block], size[block]
    others = n - width
    draw = np.floor(rng.random(n) * np.maximum(others, 1)).astype(np.int64)
    pos = np.where(draw < first, draw, draw + width)
    partners = np.where(others > 0, rows[order][np.minimum(pos, n - 1)], -1)
    return rows[order], partners


def grouped_batches(index: pd.DataFrame, column: str, batch_size: int, seed: int, epoch: int,
                    drop_last: bool = False) -> list[np.ndarray]:
    """Batches of row numbers where every batch holds one value of ``column`` (plate, source, ...).

    Each group is shuffled and cut into batches (the last one short unless ``drop_last``);
    the batch list is then shuffled. NA rows are left out.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups, _ = _groups(index, column)
    rng = rng_for("grouped", column, seed, epoch)
    batches = []
    for rows in groups.values():
        rows = rng.permutation(rows)
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo: lo + batch_size]
            if len(chunk) == batch_size or not drop_last:
                batches.append(chunk.astype(np.int64))
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass
class GroupedBatches:
    """Sampler form of :func:`grouped_batches` for ``StreamingDataset`` (full batches only).

    Batches belong to ranks, so the global order is laid out for a given ``world_size``: rank
    ``r``'s ``k``-th batch sits at global positions ``(k * world_size + r) + i * world_size``. The
    batch count is padded (repeating the first batches) to a multiple of ``world_size``. Use a
    DataLoader ``batch_size`` equal to ``batch_size`` (the dataset takes it as its batch hint).
    """

    column: str
    batch_size: int

    def order(self, index: pd.DataFrame, *, seed: int, epoch: int, world_size: int = 1) -> np.ndarray:
        batches = grouped_batches(index, self.column, self.batch_size, seed, epoch, drop_last=True)
        if not batches:
            return np.empty(0, np.int64)
        extra = (-len(batches)) % world_size
        batches = batches + [batches[i % len(batches)] for i in range(extra)]
        stacked = np.stack(batches)  # (n_batches, batch_size)
        n_steps = len(batches) // world_size
        # (step, rank, i) -> global position (step * bs + i) * world_size + rank
        return stacked.reshape(n_steps, world_size, self.batch_size).transpose(0, 2, 1).reshape(-1)
