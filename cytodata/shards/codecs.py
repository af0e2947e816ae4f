"""Lossless image codecs for shard payloads, by name (registry ``CODECS``).

Every codec turns a C-contiguous ``(C, H, W)`` uint8/uint16 array into bytes and back
bit-exactly. Raw codecs (blosc, zstd) need ``shape``/``dtype`` to decode (the ``KEY.json``
member carries them); container formats (npy, png, tiff) carry their own and are checked
against them. ``decode(..., out=buf)`` writes into a preallocated array where the library
can (blosc, zstd, tiff), which saves one copy per sample in the loaders. ``threads=1`` decodes
a blosc payload on one thread *for that call* (loader threads and worker processes already fill
the cores); nothing here changes process-global blosc settings.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .._registry import Registry
from ..errors import ShardError


@dataclass(frozen=True)
class Codec:
    """A named lossless codec; ``ext`` is the tar member extension (no dot)."""

    name: str
    ext: str
    encode: Callable[[np.ndarray], bytes]
    _decode: Callable[[bytes, tuple[int, ...], np.dtype, "np.ndarray | None"], np.ndarray]
    #: decoder taking a per-call thread count (blosc codecs); None: ``threads`` is ignored
    _decode_threads: Callable[[bytes, tuple[int, ...], np.dtype, "np.ndarray | None", int], np.ndarray] | None = None
    #: dtypes the payload holds (None: any fixed-size numeric dtype)
    dtypes: tuple[str, ...] | None = None

    def check_dtype(self, dtype, where: str = "") -> None:
        """Raise ShardError naming ``dtype`` when this codec's payload cannot hold it."""
        dtype = np.dtype(dtype)
        if dtype.hasobject or (self.dtypes is not None and dtype.name not in self.dtypes):
            held = ", ".join(self.dtypes) if self.dtypes else "fixed-size numeric dtypes"
            raise ShardError(f"{where + ': ' if where else ''}codec {self.name!r} cannot hold dtype "
                             f"{dtype.name!r} (it holds {held}); pick another payload, e.g. "
                             "--payload fast (blosc-lz4)")

    def __reduce__(self):
        # codecs hold plain functions; pickle (for dask/spawned workers) by registry name
        return (_codec_by_name, (self.name,))

    def decode(self, data: bytes, shape, dtype, out: np.ndarray | None = None,
               threads: int | None = None) -> np.ndarray:
        """Bytes -> array of ``shape``/``dtype`` (into ``out`` when given and possible).

        ``threads``: decoder threads for this call (blosc; e.g. 1 inside loader threads or
        workers); None keeps the library's default. No global setting is changed.
        """
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        if out is not None and (out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous):
            raise ValueError(f"out buffer {out.shape} {out.dtype} does not match {shape} {dtype}")
        if threads is not None and self._decode_threads is not None:
            arr = self._decode_threads(data, shape, dtype, out, int(threads))
        else:
            arr = self._decode(data, shape, dtype, out)  # any buffer: bytes, bytearray, memoryview
        if arr.shape != shape or arr.dtype != dtype:
            raise ShardError(
                f"{self.name} payload decoded to {arr.shape} {arr.dtype}, metadata says {shape} {dtype}; "
                "the shard is corrupt or was written by another tool: rewrite it with `cytodata shard`"
            )
        if out is not None and arr is not out:
            out[...] = arr
            return out
        return arr


CODECS: Registry[Codec] = Registry("codec")


def _codec_by_name(name: str) -> Codec:
    return CODECS.get(name)


def _register(codec: Codec) -> Codec:
    return CODECS.register(codec.name)(codec)


def _contig(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr)


# --- blosc-zstd: fastest decode, bitshuffle suits 16-bit sensors with few significant bits ---
def _blosc():
    from numcodecs import Blosc

    # level 3, measured on the real Phenix 16-bit field with one thread: decodes at ~1.6 GB/s
    # (level 1: ~0.85 GB/s, blosc picks smaller blocks) and still encodes at ~300 MB/s
    return Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)


def single_threaded() -> None:
    """Scripts only: switch numcodecs' blosc to one thread for the whole process.

    It flips the process-global ``numcodecs.blosc.use_threads``, so cytodata itself never calls
    it: the loaders pass ``threads=1`` to :meth:`Codec.decode` per call instead.
    """
    from numcodecs import blosc

    blosc.use_threads = False


def _blosc_decode_threads(data, shape, dtype, out, threads: int) -> np.ndarray:
    """Blosc frame -> array with ``threads`` decoder threads for this call only.

    imagecodecs runs ``blosc_decompress_ctx`` with the thread count as an argument (no global
    state, GIL released); measured as fast as numcodecs with ``use_threads=False`` (~200-280 us
    for a 5x256x256 uint16 sample on this machine, benchmarks/codecs.py). Falls back to a
    numcodecs decode when imagecodecs was built without blosc.
    """
    import imagecodecs

    target = out if out is not None else np.empty(shape, dtype)
    if not getattr(imagecodecs, "BLOSC", None) or not imagecodecs.BLOSC.available:
        from numcodecs import Blosc

        Blosc().decode(data, out=target)
        return target
    flat = target.reshape(-1).view(np.uint8)  # imagecodecs wants a 1-D byte buffer
    got = imagecodecs.blosc_decode(data, numthreads=max(1, threads), out=flat)
    if got.nbytes != target.nbytes:
        raise ShardError(f"blosc payload decoded to {got.nbytes} bytes, metadata says {target.nbytes} "
                         f"({shape} {dtype}); the shard is corrupt: rewrite it with `cytodata shard`")
    return target


def _raw_decode(make) -> Callable:
    def dec(data, shape, dtype, out):
        target = out if out is not None else np.empty(shape, dtype)
        make().decode(data, out=target)
        return target
    return dec


_register(Codec("blosc-zstd", "blosc", lambda a: bytes(_blosc().encode(_contig(a))), _raw_decode(_blosc),
               _blosc_decode_threads))


# --- blosc-lz4: the default; ~4x faster to write and ~1.5x faster to read than blosc-zstd ---
def _blosc_lz4(itemsize: int = 2):
    from numcodecs import Blosc

    # level 9, blocks of 256 KiB: level 9's automatic block size spans a whole 256x256x5 sample
    # (640 KiB, past L2); 256 KiB blocks decoded it ~3x faster for the same bytes. Shuffle by
    # sample depth (benchmarks/codecs.py --blosc-sweep, 1 thread): for 16-bit, byte shuffle
    # decodes 2x faster than bitshuffle on cell-like 256x256x5 samples (114 vs 226 us) and
    # 1.4-2.7x on the real Phenix field, for 7-8% more bytes (still 1.6-1.8x smaller than raw):
    # decoding is what a loader spends its CPU on. For 8-bit, byte shuffle is a no-op and
    # leaves the real RxRx1 site at 1.02x, so 8-bit keeps bitshuffle (1.20x).
    # Frames are self-describing: sets written with other settings read unchanged.
    shuffle = Blosc.BITSHUFFLE if itemsize == 1 else Blosc.SHUFFLE
    return Blosc(cname="lz4", clevel=9, shuffle=shuffle, blocksize=1 << 18)


def _encode_lz4(arr: np.ndarray) -> bytes:
    arr = _contig(arr)
    return bytes(_blosc_lz4(arr.dtype.itemsize).encode(arr))


_register(Codec("blosc-lz4", "blosc", _encode_lz4, _raw_decode(_blosc_lz4), _blosc_decode_threads))


# --- zstd level 1: no shuffle, cheap to write ---
def _zstd():
    from numcodecs import Zstd

    return Zstd(level=1)


_register(Codec("zstd", "zst", lambda a: bytes(_zstd().encode(_contig(a))), _raw_decode(_zstd)))


# --- npy: uncompressed, readable by anything with numpy ---
def _npy_encode(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, _contig(arr), allow_pickle=False)
    return buf.getvalue()


def _npy_decode(data, shape, dtype, out):
    """One copy: parse the header, view the array bytes in place, copy them into ``out``.

    (``np.load`` through ``BytesIO`` copies the payload twice before the loader's own copy.)
    Object dtypes are refused like ``allow_pickle=False`` does.
    """
    from numpy.lib import format as npf

    view = memoryview(data).cast("B")
    if bytes(view[:6]) != b"\x93NUMPY" or len(view) < 10:
        raise ShardError("npy payload has no NUMPY magic: the shard is corrupt; rewrite it with `cytodata shard`")
    major = view[6]
    start = 10 if major == 1 else 12
    hlen = int.from_bytes(bytes(view[8:start]), "little")
    head = io.BytesIO(bytes(view[:start + hlen]))
    version = npf.read_magic(head)
    read = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
    got_shape, fortran, got_dtype = read(head)
    if got_dtype.hasobject:
        raise ShardError("npy payload holds Python objects; refusing to unpickle it")
    count = int(np.prod(got_shape))
    arr = np.frombuffer(view, dtype=got_dtype, count=count, offset=start + hlen)
    arr = arr.reshape(got_shape[::-1]).T if fortran else arr.reshape(got_shape)
    if out is not None and arr.shape == out.shape and arr.dtype == out.dtype:
        np.copyto(out, arr)
        return out
    return arr.copy()


#: dtypes every client of a published set names the same way (numpy, Arrow in Hugging Face
#: ``datasets``, Croissant's ``cr:`` element types): the portable payloads hold only these
PORTABLE_DTYPES = ("uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64")

_register(Codec("npy", "npy", _npy_encode, _npy_decode, dtypes=PORTABLE_DTYPES))


# --- npy-gz: the npy file gzipped; webdataset's default decoders and the datasets webdataset
# builder both un-gzip ``.gz`` members and then decode the ``.npy`` inside ---
def _npy_gz_encode(arr: np.ndarray) -> bytes:
    import gzip

    return gzip.compress(_npy_encode(arr), compresslevel=6, mtime=0)  # mtime 0: byte-identical re-runs


def _npy_gz_decode(data, shape, dtype, out):
    import zlib

    return _npy_decode(zlib.decompress(data, wbits=31), shape, dtype, out)


_register(Codec("npy-gz", "npy.gz", _npy_gz_encode, _npy_gz_decode, dtypes=PORTABLE_DTYPES))


# --- png16: channels stacked vertically into one (C*H, W) grayscale PNG ---
def _png_encode(arr: np.ndarray) -> bytes:
    import imagecodecs

    c, h, w = arr.shape
    return bytes(imagecodecs.png_encode(_contig(arr).reshape(c * h, w), level=6))


def _png_decode(data, shape, dtype, out):
    import imagecodecs

    flat = imagecodecs.png_decode(data)
    return flat.reshape(shape) if flat.size == int(np.prod(shape)) else flat


_register(Codec("png16", "png", _png_encode, _png_decode, dtypes=("uint8", "uint16")))


# --- tiff: one page per channel, deflate ---
def _tiff_encode(arr: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, _contig(arr), compression="zlib", photometric="minisblack", metadata=None)
    return buf.getvalue()


def _tiff_decode(data, shape, dtype, out):
    import tifffile

    arr = tifffile.imread(io.BytesIO(data), out=out)
    if arr.ndim == 2 and len(shape) == 3 and shape[0] == 1:
        arr = arr[None]
    return arr


_register(Codec("tiff", "tiff", _tiff_encode, _tiff_decode))

#: ``--payload`` names: ``portable`` decodes with every client's stock decoders (webdataset
#: ``.decode()``, Hugging Face ``datasets``, ``numpy.load``); ``fast`` is the shard writer's default
PAYLOADS = {"portable": "npy", "fast": "blosc-lz4"}


def payload_codec(name: str) -> Codec:
    """The codec of a ``--payload`` name (``portable``, ``fast``) or of a codec name."""
    codec = PAYLOADS.get(name, name)
    if codec not in CODECS:
        raise ShardError(f"unknown payload {name!r}; use one of {sorted(PAYLOADS)} or a codec name "
                         f"{CODECS.names()}")
    return CODECS.get(codec)


def codec_for_ext(ext: str) -> Codec:
    """The codec whose member extension is ``ext`` (raises ShardError listing them)."""
    for name in CODECS:
        if CODECS.get(name).ext == ext:
            return CODECS.get(name)
    valid = sorted(CODECS.get(n).ext for n in CODECS)
    raise ShardError(f"no codec writes members with extension {ext!r}; known: {valid}")
