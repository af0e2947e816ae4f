"""File plumbing shared by every stage: checksums and atomic writes (temp file, then rename)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def save_parquet(path: str | os.PathLike, frame) -> None:
    """Write a DataFrame to Parquet atomically (no index column)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def save_json(path: str | os.PathLike, obj: Any, *, indent: int = 1) -> None:
    """Write JSON atomically: an interrupted job never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str))
    os.replace(tmp, path)


def load_json_dict(path: str | os.PathLike) -> dict | None:
    """A JSON object from ``path``, or None when it is missing, unreadable or not an object
    (a sidecar a crash left half-flushed means "redo that piece", never an error).
    """
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None
