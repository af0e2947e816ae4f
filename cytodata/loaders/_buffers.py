"""Reusable memory for the decode path: recycled image buffers and per-thread read scratch.

Fresh image-sized allocations cost page faults on every sample (glibc maps them anew), a few
percent of a loader's CPU time. :class:`BufferPool` hands out numpy *views* of pooled arrays;
when the last reference to a view dies (the tensor built on it, any crop of it), a weakref
finalizer puts the backing array back. Nothing is reused while anything can still see it.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque

import numpy as np


class BufferPool:
    """Recycled ``(shape, dtype)`` arrays; at most ``limit`` idle arrays are kept per shape."""

    def __init__(self, limit: int = 64):
        self.limit = limit
        self._free: dict[tuple, deque] = {}
        self._lock = threading.Lock()

    def get(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialized C-contiguous array (a view that returns its memory when dropped)."""
        key = (tuple(int(s) for s in shape), np.dtype(dtype).str)
        with self._lock:
            free = self._free.setdefault(key, deque())
            backing = free.pop() if free else None
        if backing is None:
            backing = np.empty(key[0], dtype=key[1])
        view = backing.view()
        weakref.finalize(view, self._put, key, backing)
        return view

    def _put(self, key: tuple, backing: np.ndarray) -> None:
        with self._lock:
            free = self._free.setdefault(key, deque())
            if len(free) < self.limit:
                free.append(backing)

    def idle(self) -> int:
        """Arrays waiting for reuse (tests, diagnostics)."""
        with self._lock:
            return sum(len(q) for q in self._free.values())

    def __getstate__(self):  # spawn-safe: a worker starts with an empty pool
        return {"limit": self.limit}

    def __setstate__(self, state):
        self.__init__(state["limit"])


class Scratch(threading.local):
    """Per-thread reusable memory: a bytearray that grows to the largest read (payload bytes
    before decoding) and one decode target for pixels that never leave the thread (a batch
    writer copies them into their batch slot before it decodes the next sample).
    """

    def __init__(self):
        self.buf = bytearray(0)
        self.pixels = np.empty(0, np.uint8)

    def view(self, n: int) -> memoryview:
        if len(self.buf) < n:
            self.buf = bytearray(max(n, 2 * len(self.buf)))
        return memoryview(self.buf)[:n]

    def array(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialized C-contiguous array, valid until this thread's next call."""
        dtype = np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        if self.pixels.nbytes < n:
            self.pixels = np.empty(n, np.uint8)
        return self.pixels[:n].view(dtype).reshape(shape)
