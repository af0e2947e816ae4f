"""Read per-channel microscopy files into one ``(C, H, W)`` array at the files' native dtype.

Why a reader of our own: screens store one file per channel (CellProfiler LoadData, RxRx1,
BBBC021), in 16-bit TIFF (often LZW) or 8/16-bit PNG. Every file is decoded fully (a truncated
file fails here, not silently as zeros in a shard), and every failure raises
:class:`~cytodata.errors.ImageReadError` with a ``reason`` the shard writer puts in its ledger:

``missing file``, ``unreadable``, ``truncated``, ``too large``, ``shape mismatch``,
``dtype mismatch``, ``wrong channel count``.

A zero-byte file counts as ``truncated`` (an interrupted copy is its usual cause), and so does
a TIFF any of whose directories, tag values or strips lie past the end of the file, wherever
its directories sit (Opera Phenix files keep theirs after the pixels). A header that claims
more than :data:`MAX_PIXELS` pixels per file (a decompression bomb, or a wrong file) is refused
as ``too large`` before anything is decoded; set the limit with the environment variable
``CYTODATA_MAX_PIXELS`` (read when a file is read, so dask workers inherit it) or pass
``max_pixels=`` to :func:`read_image`. Pillow's own bomb check still applies on top to
PNG/JPEG (``PIL.Image.MAX_IMAGE_PIXELS`` x 2). Any other failure of a decoder is reported as
``unreadable`` naming the file: nothing escapes as a bare library exception.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from .._registry import Registry
from ..errors import ImageReadError

GrayMode = Literal["auto", "luminance", "first"] | None
#: ITU-R BT.601 luma weights (what Pillow's ``convert("L")`` uses)
LUMA = np.array([0.299, 0.587, 0.114])

#: decoders by format name: ``(data: bytes, where: str, gray) -> (k, H, W) array`` (k planes)
DECODERS: Registry[Callable[..., np.ndarray]] = Registry("image format")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: default limit on the pixels (all pages and samples) one image file may claim: 2**30, i.e.
#: 2 GiB of uint16 (a 1080 x 1080 Phenix plane is 1.2 M pixels; whole-slide scans are larger,
#: raise it for them). Override: env ``CYTODATA_MAX_PIXELS`` or ``max_pixels=``.
MAX_PIXELS = 1 << 30


def max_pixels(value: int | None = None) -> int:
    """The pixel limit in force: ``value``, else ``$CYTODATA_MAX_PIXELS``, else :data:`MAX_PIXELS`."""
    if value is not None:
        return int(value)
    env = os.environ.get("CYTODATA_MAX_PIXELS")
    if env:
        try:
            return int(env)
        except ValueError:
            raise ValueError(f"CYTODATA_MAX_PIXELS={env!r} is not an integer number of pixels") from None
    return MAX_PIXELS


def _too_large(path: str, pixels: int, limit: int, shape) -> ImageReadError:
    return _fail(path, "too large", f"the header claims {shape} = {pixels:,} pixels, above the limit of "
                 f"{limit:,} (a decompression bomb or a wrong file)",
                 "check the file; if it is genuine, raise the limit with CYTODATA_MAX_PIXELS or max_pixels=")


def _fail(path: str, reason: str, what: str, fix: str) -> ImageReadError:
    return ImageReadError(f"{path}: {what}; {fix}", path=path, reason=reason)


def check_regular_file(path: str) -> str:
    """The local path of ``path`` (``file://`` stripped) when it is a regular file, else the
    ImageReadError naming it: missing, a directory, or a named pipe / device / socket (which
    would block a read forever or never end it, like ``/dev/zero``), decided before any read.
    """
    local = path[len("file://"):] if path.startswith("file://") else path
    try:
        mode = os.stat(local).st_mode
    except FileNotFoundError:
        raise _fail(path, "missing file", "file not found",
                    "check the channel_paths column (absolute paths) or re-download the file") from None
    except OSError as exc:
        raise _fail(path, "unreadable", f"cannot read ({exc})", "check file permissions") from None
    if stat.S_ISDIR(mode):
        raise _fail(path, "unreadable", "is a directory, not an image file",
                    "list one image file per channel in channel_paths")
    if not stat.S_ISREG(mode):
        kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
                stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file")
        raise _fail(path, "unreadable", f"is {kind}, not a regular file (not read)",
                    "list one image file per channel in channel_paths")
    return local


def _read_bytes(path: str) -> bytes:
    """Whole file contents; ``path`` may be an fsspec URL (``s3://...``, ``memory://...``)."""
    if "://" in path and not path.startswith("file://"):
        import fsspec

        try:
            with fsspec.open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            raise _fail(path, "missing file", "file not found",
                        "check the channel_paths column and the storage URL") from None
        except OSError as exc:
            raise _fail(path, "unreadable", f"cannot open ({exc})",
                        "check credentials and network access") from None
    local = check_regular_file(path)
    try:
        return Path(local).read_bytes()
    except FileNotFoundError:
        raise _fail(path, "missing file", "file not found",
                    "check the channel_paths column (absolute paths) or re-download the file") from None
    except IsADirectoryError:
        raise _fail(path, "unreadable", "is a directory, not an image file",
                    "list one image file per channel in channel_paths") from None
    except OSError as exc:
        raise _fail(path, "unreadable", f"cannot read ({exc})", "check file permissions") from None


def _sniff(data: bytes, path: str) -> str:
    """Format name from the magic bytes (the extension may lie), falling back to pillow."""
    if data[:4] in _TIFF_MAGIC:
        return "tiff"
    return "pillow"


#: TIFF field type -> bytes per value (TIFF 6.0 + BigTIFF)
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                   16: 8, 17: 8, 18: 8}


def _tiff_structure_problem(data: bytes) -> str | None:
    """Where a (Big)TIFF's structure runs past the end of ``data``, or None when it all fits.

    Walks every directory of the chain (wherever it lies: before or after the pixels) and
    checks that the directory and every out-of-line tag value end inside the file; strips are
    checked against ``tifffile``'s page offsets by the decoder. Cycles end the walk.
    """
    n = len(data)
    if n < 8:
        return f"the file has only {n} bytes, less than a TIFF header"
    order = "little" if data[:2] == b"II" else "big"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big and n < 16:
        return f"the file has only {n} bytes, less than a BigTIFF header"
    count_size, entry_size, inline = (8, 20, 8) if big else (2, 12, 4)
    offset = int.from_bytes(data[8:16] if big else data[4:8], order)
    seen: set[int] = set()
    while offset and offset not in seen:
        seen.add(offset)
        if offset + count_size > n:
            return f"directory {len(seen)} starts at byte {offset}, past the end ({n} bytes)"
        entries = int.from_bytes(data[offset:offset + count_size], order)
        end = offset + count_size + entries * entry_size + inline
        if end > n:
            return (f"directory {len(seen)} ({entries} tags at byte {offset}) ends at byte {end}, "
                    f"past the end ({n} bytes)")
        for e in range(offset + count_size, offset + count_size + entries * entry_size, entry_size):
            kind = int.from_bytes(data[e + 2:e + 4], order)
            count = int.from_bytes(data[e + 4:e + 4 + inline], order)
            size = _TIFF_TYPE_SIZE.get(kind, 1) * count
            if size > inline:
                value = int.from_bytes(data[e + 4 + inline:e + 4 + 2 * inline], order)
                if value + size > n:
                    tag = int.from_bytes(data[e:e + 2], order)
                    return f"tag {tag} of directory {len(seen)} ends at byte {value + size}, past the end ({n} bytes)"
        offset = int.from_bytes(data[end - inline:end], order)
    return None


def _to_gray(planes: np.ndarray, gray: GrayMode, path: str) -> np.ndarray:
    """Collapse a colour image ``(3|4, H, W)`` to ``(1, H, W)`` according to ``gray``.

    ``auto``: identical colour planes (a grayscale image saved as RGB) give the first plane
    losslessly, otherwise luminance; ``None`` keeps the colour planes as channels.
    """
    rgb = planes[:3]
    if gray is None:
        return rgb
    if gray == "first" or (gray == "auto" and (rgb[0] == rgb[1]).all() and (rgb[0] == rgb[2]).all()):
        return rgb[:1].copy()
    if gray in ("auto", "luminance"):
        lum = np.tensordot(LUMA, rgb.astype(np.float64), axes=1)
        info = np.iinfo(rgb.dtype) if rgb.dtype.kind in "ui" else None
        if info is not None:
            lum = np.clip(np.rint(lum), info.min, info.max)
        return lum.astype(rgb.dtype)[None]
    raise ValueError(f"gray={gray!r} is not one of 'auto', 'luminance', 'first', None")


@DECODERS.register("tiff")
def _decode_tiff(data: bytes, path: str, gray: GrayMode = "auto", limit: int | None = None) -> np.ndarray:
    """All pages/samples of a TIFF as planes; any structure beyond the end of file -> truncated."""
    import tifffile

    problem = _tiff_structure_problem(data)
    if problem is not None:
        raise _fail(path, "truncated", f"{problem}", "the file is truncated: copy or download it again")
    limit = max_pixels(limit)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            pages = list(tif.pages)
            if not pages:
                raise _fail(path, "unreadable", "the TIFF holds no image directory",
                            "re-export or re-download the file")
            pixels = sum(int(np.prod(p.shape)) for p in pages)
            if pixels > limit:
                raise _too_large(path, pixels, limit, [tuple(p.shape) for p in pages[:3]])
            for page in pages:
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
                if ends and max(ends) > len(data):
                    raise _fail(path, "truncated",
                                f"image data ends at byte {max(ends)} but the file has {len(data)} bytes",
                                "the file is truncated: copy or download it again")
            arrays = [p.asarray() for p in pages]
            photometric = [getattr(p.photometric, "name", str(p.photometric)) for p in pages]
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile/imagecodecs raise many types for corrupt data
        raise _fail(path, "unreadable", f"not a readable TIFF ({type(exc).__name__}: {exc})",
                    "re-export or re-download the file") from None
    planes = []
    for arr, photo in zip(arrays, photometric):
        if arr.ndim == 2:
            planes.append(arr[None])
        elif arr.ndim == 3 and photo == "RGB" and arr.shape[-1] in (3, 4):
            planes.append(_to_gray(np.moveaxis(arr, -1, 0), gray, path))
        elif arr.ndim == 3:
            # planar configuration: samples first; contiguous: samples last
            planes.append(arr if arr.shape[0] < arr.shape[-1] else np.moveaxis(arr, -1, 0))
        else:
            raise _fail(path, "unreadable", f"page of shape {arr.shape} is not a 2-D image plane",
                        "export one plane per page")
    return _stack(planes, path)


@DECODERS.register("pillow")
def _decode_pillow(data: bytes, path: str, gray: GrayMode = "auto", limit: int | None = None) -> np.ndarray:
    """PNG/JPEG/BMP via pillow, fully decoded; 16-bit PNG stays uint16."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    limit = max_pixels(limit)
    try:
        with warnings.catch_warnings():
            # our own limit decides (below); pillow's warning band would only add noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            w, h = im.size
            if w * h * max(1, len(im.getbands())) > limit:
                raise _too_large(path, w * h * max(1, len(im.getbands())), limit, (len(im.getbands()), h, w))
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            elif mode == "1":
                im = im.convert("L")
                mode = "L"
            arr = np.asarray(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise _fail(path, "too large", f"pillow refuses it as a decompression bomb ({exc})",
                    "check the file; if genuine, raise PIL.Image.MAX_IMAGE_PIXELS") from None
    except UnidentifiedImageError:
        raise _fail(path, "unreadable", "not an image file pillow recognises",
                    "check that the file is really a PNG/JPEG/BMP/TIFF (not text or HTML)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "unreadable"
        raise _fail(path, reason, f"cannot decode ({exc})",
                    "the file is damaged: copy or download it again") from None
    if mode.startswith("I;16"):
        arr = arr.astype(np.uint16)  # big-endian variants -> native uint16
    elif mode == "I":
        # pillow opens some 16-bit PNGs as 32-bit; they always fit uint16
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise _fail(path, "unreadable", "32-bit integer image outside the uint16 range",
                        "convert it to 16-bit")
        arr = arr.astype(np.uint16)
    if arr.ndim == 2:
        return arr[None]
    return _to_gray(np.moveaxis(arr, -1, 0), gray, path)


def _stack(planes: list[np.ndarray], path: str) -> np.ndarray:
    shapes = {p.shape[1:] for p in planes}
    if len(shapes) > 1:
        raise _fail(path, "shape mismatch", f"pages have different shapes {sorted(shapes)}",
                    "store one plane size per file")
    return np.concatenate(planes, axis=0) if len(planes) > 1 else planes[0]


def read_file(path: str | os.PathLike, *, gray: GrayMode = "auto", max_pixels: int | None = None) -> np.ndarray:
    """One image file -> ``(k, H, W)`` planes at native dtype (k = pages/samples, after ``gray``).

    ``max_pixels``: refuse files whose header claims more pixels (default :func:`max_pixels`).
    """
    where = os.fspath(path)
    data = _read_bytes(where)
    if len(data) == 0:
        raise _fail(where, "truncated", "file is empty (0 bytes)",
                    "the copy was interrupted: copy or download it again")
    fmt = _sniff(data, where)
    try:
        return DECODERS.get(fmt)(data, where, gray, max_pixels)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a decoder bug or odd file must still name the file
        raise _fail(where, "unreadable", f"cannot decode ({type(exc).__name__}: {exc})",
                    "re-export or re-download the file") from None


def read_image(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    gray: GrayMode = "auto",
    expected_channels: int | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Per-channel files -> ``(C, H, W)`` array at native dtype (uint16 stays uint16).

    ``paths`` is one path/URL or a sequence (one file per channel, in channel order); a
    multi-page or multi-sample file contributes all its planes. ``gray`` says what to do with
    colour files: ``"auto"`` (identical planes -> one plane, else luminance), ``"luminance"``,
    ``"first"``, or ``None`` (keep R, G, B as channels). ``max_pixels``: per-file limit on
    the pixels a header may claim (default ``$CYTODATA_MAX_PIXELS`` or :data:`MAX_PIXELS`).
    Raises :class:`ImageReadError` with ``reason`` in {missing file, unreadable, truncated,
    too large, shape mismatch, dtype mismatch, wrong channel count}.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ImageReadError("read_image: no channel files given; list one path per channel",
                             path=None, reason="wrong channel count")
    parts = [read_file(p, gray=gray, max_pixels=max_pixels) for p in paths]
    first_shape, first_dtype = parts[0].shape[1:], parts[0].dtype
    for p, arr in zip(paths[1:], parts[1:]):
        if arr.shape[1:] != first_shape:
            raise _fail(p, "shape mismatch",
                        f"plane shape {arr.shape[1:]} differs from {first_shape} of {paths[0]}",
                        "all channels of an image must have the same height and width")
        if arr.dtype != first_dtype:
            raise _fail(p, "dtype mismatch",
                        f"dtype {arr.dtype} differs from {first_dtype} of {paths[0]}",
                        "all channels of an image must share one bit depth (re-export them)")
    image = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    if expected_channels is not None and image.shape[0] != expected_channels:
        raise _fail(paths[0], "wrong channel count",
                    f"{len(paths)} file(s) gave {image.shape[0]} channels, expected {expected_channels}",
                    "check channel_paths and whether colour files should be converted (gray=...)")
    return np.ascontiguousarray(image)


def image_shape(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[int, int, int]:
    """``(C, H, W)`` from the file headers only (no pixel decode): plans array layouts cheaply.

    Colour files count as one channel (``read_image``'s default ``gray="auto"``). Raises
    :class:`ImageReadError` (missing file, unreadable, shape mismatch) like ``read_image``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    total, hw, first = 0, None, None
    limit = max_pixels()
    for p in map(os.fspath, paths):
        k, h, w = _header_shape(p)
        if k * h * w > limit:
            raise _too_large(p, k * h * w, limit, (k, h, w))
        if hw is not None and (h, w) != hw:
            raise _fail(p, "shape mismatch", f"plane shape {(h, w)} differs from {hw} of {first}",
                        "all channels of an image must have the same height and width")
        hw, first, total = (h, w), first or p, total + k
    if hw is None:
        raise ImageReadError("image_shape: no channel files given", path=None, reason="wrong channel count")
    return total, hw[0], hw[1]


def _header_shape(path: str) -> tuple[int, int, int]:
    if "://" in path and not path.startswith("file://"):
        arr = read_file(path)  # remote: no cheap header access, decode instead
        return arr.shape  # type: ignore[return-value]
    local = check_regular_file(path)
    try:
        with open(local, "rb") as fh:
            magic = fh.read(4)
        if magic in _TIFF_MAGIC:
            import tifffile

            with tifffile.TiffFile(local) as tif:
                page = tif.pages[0]
                n = len(tif.pages)
                rgb = getattr(page.photometric, "name", "") == "RGB"
                k = n if page.ndim == 2 or rgb else n * min(page.shape[0], page.shape[-1])
                return k, page.imagelength, page.imagewidth
        import warnings

        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(local) as im:
                return 1, im.height, im.width
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ != "DecompressionBombError":
            _header_failure(path, local, exc)
        raise _fail(path, "too large", f"pillow refuses it as a decompression bomb ({exc})",
                    "check the file; if genuine, raise PIL.Image.MAX_IMAGE_PIXELS") from None


def _header_failure(path: str, local: str, exc: Exception):
    """Raise the ImageReadError for a header that could not be read (truncated or unreadable)."""
    try:
        with open(local, "rb") as fh:
            head = fh.read()
        cut = not head or (head[:4] in _TIFF_MAGIC and _tiff_structure_problem(head) is not None)
    except OSError:  # vanished or unreadable meanwhile: report the first failure
        cut = False
    reason = "truncated" if cut else "unreadable"
    raise _fail(path, reason, f"cannot read the image header ({type(exc).__name__}: {exc})",
                "re-export or re-download the file") from None
