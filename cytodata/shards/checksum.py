"""Per-sample checksums: XXH3-64 of the bytes a reader decodes (FORMAT.md "Checksums").

Why XXH3-64 (the ``xxhash`` package): it is among the fastest non-cryptographic hashes on any
CPU (no dependence on SSE4.2 / ARMv8 CRC instructions, unlike crc32c's fast path), and its 64
bits make an undetected random corruption or a swapped index row a 2**-64 event, where
crc32c's 32 bits give 2**-32 per sample (about one miss in 4 billion, which a corpus of a
billion samples read for years can reach). The hex digest is the canonical big-endian form
that ``xxhsum -H3`` prints, so a payload can be checked with the command-line tool too.
Measured on the 2-core development VM, a 0.5 MB payload already in cache: 7-11 us with xxhash
>= 4.1 (XXH3 dispatched to AVX2/AVX512 at run time), ~15 us with 3.x (SSE2 only). In the
loader (``batches``, two decode threads) one pass over the payload costs ~16 us of ~500 us per
sample, the check ~4% of throughput with 4.1 and ~7.5% with 3.x (``benchmarks/loader.py
--checks``, interleaved estimate).

WebDataset sets hash each sample's payload member (the codec bytes); Zarr sets hash each row's
C-order pixel bytes and, for random crops, each ``(C, tile, tile)`` chunk of the row.
"""

from __future__ import annotations

import numpy as np
import xxhash

#: name of the index.parquet column and of the ``KEY.json`` field
COLUMN = "xxh3_64"
#: Zarr sets: per-row list of chunk checksums (row-major over the chunk grid)
CHUNK_COLUMN = "chunks_xxh3_64"


def checksum(data) -> str:
    """XXH3-64 hex digest (16 lower-case hex digits) of a bytes-like object or C-contiguous array."""
    return xxhash.xxh3_64(_buffer(data)).hexdigest()


def checksum_int(data) -> int:
    """XXH3-64 of ``data`` as an unsigned int (what the loaders compare: no string per sample).

    Through the hasher object: its constructor hashes with the GIL released (xxhash 3.x's
    one-shot ``xxh3_64_intdigest`` holds it), so decode threads and dask workers hash in parallel.
    Called once per sample by the loaders: the hasher is bound once, not imported per call.
    """
    return _XXH3(_buffer(data)).intdigest()


_XXH3 = xxhash.xxh3_64


def to_ints(hexes) -> tuple[np.ndarray, np.ndarray]:
    """Hex digests (NA allowed) -> ``(uint64 values, bool present)`` arrays of the same length."""
    values = np.zeros(len(hexes), dtype=np.uint64)
    present = np.zeros(len(hexes), dtype=bool)
    for i, h in enumerate(hexes):
        if isinstance(h, str) and h:
            values[i] = int(h, 16)
            present[i] = True
    return values, present


def _buffer(data):
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data)).cast("B")
    return data
