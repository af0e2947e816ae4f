"""Global sample order and its split over (rank, worker): pure functions returning index arrays.

Why pure functions: the order of an epoch depends on ``(seed, epoch)`` only, and the share of
one (rank, worker) on ``(order, rank, world_size, worker, num_workers, batch_size, start)``
only, so both are testable without processes and a run can resume on another cluster shape.

Layout of one epoch (``order`` has one entry per *unit*: a sample index, or a row of indices
for pair/tuple samplers)::

    global position p  ->  rank  p % world_size
                           rank-local position j = p // world_size
                           worker (j // batch_size) % num_workers

Workers take whole batches in turn because ``torch.utils.data.DataLoader`` collects batches
from its workers round-robin: so the batches a rank's DataLoader yields are exactly its
rank-local stream in order, and after ``k`` lock-step steps on every rank the consumed samples
are exactly the first ``k * batch_size * world_size`` global positions (what ``start`` resumes).
"""

from __future__ import annotations

import hashlib

import numpy as np

#: samples per shuffle block when no shard sizes are given
DEFAULT_BLOCK = 1024
TAILS = ("pad", "drop")


def rng_for(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded from any parts (ints/strings): stable across processes/platforms."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return np.random.default_rng(int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little"))


def seed_for(*parts: object) -> int:
    """A non-negative 63-bit int derived from ``parts`` (seeds the transforms' ``random.Random``)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def block_bounds(n_samples: int, block_size: int | None = None,
                 shard_sizes: list[int] | np.ndarray | None = None) -> np.ndarray:
    """Start offsets of the shuffle blocks plus the end: shards when sizes are given, else fixed blocks."""
    if shard_sizes is not None:
        sizes = np.asarray(shard_sizes, dtype=np.int64)
        if sizes.sum() != n_samples or (sizes < 0).any():
            raise ValueError(f"shard_sizes sum to {int(sizes.sum())}, expected n_samples={n_samples}")
        return np.concatenate([[0], np.cumsum(sizes)])
    block = int(block_size or DEFAULT_BLOCK)
    if block < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return np.append(np.arange(0, n_samples, block, dtype=np.int64), n_samples)


def epoch_order(n_samples: int, *, seed: int, epoch: int, shuffle: bool = True,
                block_size: int | None = None, shard_sizes=None) -> np.ndarray:
    """The global order of one epoch: shuffled blocks (shards), each shuffled inside.

    Block shuffling keeps reads local (consecutive positions come from one shard, which a
    worker's open file/connection serves) while the in-block shuffle mixes samples. Returns an
    int64 permutation of ``range(n_samples)``; identical for the same ``(seed, epoch)``.
    """
    if not shuffle:
        return np.arange(n_samples, dtype=np.int64)
    bounds = block_bounds(n_samples, block_size, shard_sizes)
    rng = rng_for("epoch_order", seed, epoch)
    parts = []
    for b in rng.permutation(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        parts.append(lo + rng.permutation(hi - lo))
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def window_order(shard_sizes: list[int] | np.ndarray, *, seed: int, epoch: int, window: int) -> np.ndarray:
    """One epoch read through a sliding set of shards: shards in a seeded global order, cut into
    consecutive windows of ``window`` shards, the samples of each window shuffled together.

    The working set of every reader is the current window (``window`` shards, plus the next
    one near a boundary): ranks and workers take consecutive global positions, so they move
    through the windows together. ``window=1`` reads shard by shard; a window of all shards
    is a global per-sample shuffle. Returns an int64 permutation of ``range(sum(shard_sizes))``,
    a pure function of ``(shard_sizes, seed, epoch, window)``.
    """
    window = int(window)
    if window < 1:
        raise ValueError(f"shuffle_window={window}; use 1 or more shards per window (None: no window)")
    bounds = block_bounds(int(np.sum(shard_sizes)), shard_sizes=shard_sizes)
    rng = rng_for("window_order", seed, epoch, window)
    shards = rng.permutation(len(bounds) - 1)
    parts = []
    for lo in range(0, len(shards), window):
        rows = np.concatenate([np.arange(bounds[b], bounds[b + 1]) for b in shards[lo: lo + window]])
        parts.append(rng.permutation(rows))
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def remaining(order: np.ndarray, *, world_size: int, tail: str = "pad", start: int = 0) -> np.ndarray:
    """The global positions still to be yielded, padded or cut so every rank gets the same count.

    ``pad`` repeats units from the start of ``order``; ``drop`` cuts the last few.
    """
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r}; valid: {', '.join(TAILS)}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    n = len(order)
    if not 0 <= start <= n:
        raise ValueError(f"start={start} is outside the epoch of {n} samples")
    rest = order[start:]
    extra = (-len(rest)) % world_size
    if tail == "drop" or not extra:
        return rest[: len(rest) - len(rest) % world_size]
    if n == 0:
        return rest
    reps = -(-extra // n)
    pad = np.concatenate([order] * reps)[:extra]
    return np.concatenate([rest, pad])


def rank_length(n_units: int, *, world_size: int, tail: str = "pad", start: int = 0) -> int:
    """How many units each rank yields (same for all ranks)."""
    left = max(n_units - start, 0)
    return -(-left // world_size) if tail == "pad" else left // world_size


def positions(n_units: int, *, rank: int, world_size: int, worker: int = 0, num_workers: int = 1,
              batch_size: int = 1, tail: str = "pad", start: int = 0) -> np.ndarray:
    """Global positions (into the padded remaining stream, counted from ``start``) of one stream."""
    _check(rank, world_size, worker, num_workers, batch_size)
    per_rank = rank_length(n_units, world_size=world_size, tail=tail, start=start)
    j = np.arange(per_rank, dtype=np.int64)
    mine = j[(j // batch_size) % num_workers == worker]
    return start + mine * world_size + rank


def partition(order: np.ndarray, *, rank: int = 0, world_size: int = 1, worker: int = 0,
              num_workers: int = 1, batch_size: int = 1, tail: str = "pad", start: int = 0) -> np.ndarray:
    """The units of ``order`` one (rank, worker) yields, in its order.

    ``start``: units already consumed globally (resume). The result depends on the world size
    and worker count only through which stream gets which global position, so a run stopped
    at ``start`` continues with the same global sequence on any cluster shape.
    """
    _check(rank, world_size, worker, num_workers, batch_size)
    order = np.asarray(order)
    rest = remaining(order, world_size=world_size, tail=tail, start=start)
    pos = positions(len(order), rank=rank, world_size=world_size, worker=worker,
                    num_workers=num_workers, batch_size=batch_size, tail=tail, start=start)
    return rest[pos - start]


def interleave(streams: dict[tuple[int, int], np.ndarray], *, world_size: int, num_workers: int,
               batch_size: int = 1) -> np.ndarray:
    """Rebuild the global sequence from per-(rank, worker) streams (the inverse of ``partition``)."""
    total = sum(len(s) for s in streams.values())
    first = next(iter(streams.values()), np.empty(0, np.int64))
    out = np.empty((total,) + first.shape[1:], dtype=first.dtype)
    for (rank, worker), stream in streams.items():
        k = np.arange(len(stream))
        # the k-th unit of this worker sits at rank-local j = (k // bs * nw + worker) * bs + k % bs
        j = (k // batch_size * num_workers + worker) * batch_size + k % batch_size
        out[j * world_size + rank] = stream
    return out


def _check(rank: int, world_size: int, worker: int, num_workers: int, batch_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise ValueError(f"worker={worker} must be in [0, num_workers={num_workers})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
