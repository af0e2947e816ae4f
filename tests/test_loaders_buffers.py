"""Recycled decode buffers: memory comes back only when nothing can see it any more."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import torch

from cytodata.loaders._buffers import BufferPool, Scratch


def test_pool_reuses_memory_only_after_every_view_is_gone():
    pool = BufferPool(limit=2)
    a = pool.get((2, 4, 4), np.uint16)
    a[...] = 7
    address = a.ctypes.data
    tensor = torch.from_numpy(a)
    crop = tensor[:, 1:3, 1:3]  # a crop of the tensor keeps the memory in use
    del a, tensor
    gc.collect()
    assert pool.idle() == 0
    b = pool.get((2, 4, 4), np.uint16)
    assert b.ctypes.data != address  # still seen through ``crop``: not handed out again
    assert int(crop.sum()) == 7 * 8
    del crop
    gc.collect()
    assert pool.idle() == 1
    c = pool.get((2, 4, 4), np.uint16)
    assert c.ctypes.data == address and c.flags.c_contiguous and c.dtype == np.uint16
    assert pool.get((3, 4, 4), np.uint16).shape == (3, 4, 4)  # another shape: its own arrays
    del b, c
    gc.collect()
    assert pool.idle() == 3  # two (2, 4, 4) arrays (the limit) + the (3, 4, 4) one
    extra = [pool.get((2, 4, 4), np.uint16) for _ in range(4)]
    del extra
    gc.collect()
    assert pool.idle() == 3  # four came back, two kept: at most ``limit`` idle per shape
    clone = pickle.loads(pickle.dumps(pool))
    assert clone.limit == 2 and clone.idle() == 0


def test_scratch_grows_and_is_per_thread():
    import threading

    s = Scratch()
    v = s.view(10)
    assert len(v) == 10
    assert len(s.view(1000)) == 1000 and len(s.buf) >= 1000
    other = []
    t = threading.Thread(target=lambda: other.append(len(s.buf)))
    t.start()
    t.join()
    assert other == [0]


def test_scratch_array_is_one_reused_buffer_per_thread_that_grows():
    import threading

    s = Scratch()
    a = s.array((2, 4, 4), np.uint16)
    assert a.shape == (2, 4, 4) and a.dtype == np.uint16 and a.flags.c_contiguous
    a[...] = 7
    b = s.array((4, 4), np.uint8)  # smaller: the same memory again
    assert np.shares_memory(a, b)
    c = s.array((3, 8, 8), np.uint16)  # larger: grows
    assert c.shape == (3, 8, 8) and c.nbytes == 384
    other = []
    t = threading.Thread(target=lambda: other.append(s.array((3, 8, 8), np.uint16)))
    t.start()
    t.join()
    assert not np.shares_memory(other[0], c)  # each thread has its own
