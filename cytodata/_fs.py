"""fsspec plumbing shared by the stages that read folders or object-store URLs."""

from __future__ import annotations

import os


def open_fs(source: str | os.PathLike, storage_options: dict | None = None):
    """``(filesystem, root path)`` for a folder or URL (``s3://bucket/set``, ``file://...``)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(source), **(storage_options or {}))
    return fs, root.rstrip("/")


def is_local(fs) -> bool:
    """Whether ``fs`` is the local file system (local shards are memory-mapped)."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)
