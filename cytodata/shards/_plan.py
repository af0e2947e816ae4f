"""Pure planning: shard sizes and the assignment of manifest rows to shards.

The assignment depends only on the (key-sorted) manifest and ``samples_per_shard``, so a
re-run or a resumed run writes the same rows into the same shard names.
"""

from __future__ import annotations

import re

import numpy as np

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_size(size: str | int | float) -> int:
    """``"256MB"`` -> 256_000_000 bytes (KB/MB/GB decimal, KiB/MiB/GiB binary, plain ints)."""
    if isinstance(size, (int, float)):
        if size <= 0:
            raise ValueError(f"shard size must be positive, got {size!r}")
        return int(size)
    m = _SIZE.match(str(size))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(
            f"shard size {size!r} not understood; write e.g. '256MB', '1GiB' or a byte count"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def samples_per_shard(shard_bytes: int, bytes_per_row: int) -> int:
    """Rows per shard so that a shard is about ``shard_bytes`` (at least one row)."""
    return max(1, int(shard_bytes // max(int(bytes_per_row), 1)))


def assign(n_rows: int, per_shard: int) -> list[np.ndarray]:
    """Consecutive row positions ``[0..n_rows)`` cut into shards of ``per_shard`` rows.

    Rows are key-sorted beforehand, so shard ``i`` holds rows ``i*per_shard ...``; the last
    shard may be smaller. Pure: the same inputs always give the same split.
    """
    if per_shard < 1:
        raise ValueError(f"samples per shard must be >= 1, got {per_shard}")
    return [np.arange(s, min(s + per_shard, n_rows)) for s in range(0, n_rows, per_shard)]


def shard_name(index: int) -> str:
    """``shard-000042.tar``."""
    return f"shard-{index:06d}.tar"
