r"""Folder-per-class source: ``root/<class>/<files>``, the class name as a label.

Params:
    root: folder with one sub-folder per class (files may sit deeper inside a class folder).
    label_column: schema column that receives the class folder name (default ``phenotype``).
    extensions: file suffixes to read, case-insensitive (default common image formats).
    channel_pattern: a regex with a named group ``channel`` (and optionally ``id``) matched
        against file names, to group per-channel files of one field into one row, e.g.
        ``(?P<id>.+)_w(?P<channel>\d)\.tif``. Without it every file is one image with a single
        ``gray`` channel. Image files that do not match, and fields whose channel set differs
        from the others', raise :class:`SourceError` (fix the pattern or the extensions).

Output: ``image_id`` ``<class>/<path inside the class folder>`` (without the channel part when
grouped), ``dir_name`` the root folder name, channels in natural order (``2`` before ``10``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .. import schema
from ..errors import SourceError, preview
from ._io import PathLike
from ._registry import SOURCES

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def _natural(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _files(root: Path, extensions: Sequence[str]) -> list[tuple[str, Path]]:
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    out = []
    for cls in sorted(d for d in root.iterdir() if d.is_dir()):
        for f in sorted(cls.rglob("*")):
            if f.is_file() and f.name.lower().endswith(exts):
                out.append((cls.name, f))
    return out


@SOURCES.register("folder")
def read_folder(root: PathLike, label_column: str = "phenotype",
                extensions: Sequence[str] = IMAGE_EXTENSIONS,
                channel_pattern: str | None = None) -> pd.DataFrame:
    """Images in class folders -> one row per image (or per field with ``channel_pattern``)."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise SourceError(f"folder source: {root} is not a folder")
    if label_column not in schema.COLUMNS:
        raise SourceError(f"folder source: label_column {label_column!r} is not a schema column; "
                          f"use one of {list(schema.LABEL_COLUMNS)}")
    files = _files(root, extensions)
    if not files:
        raise SourceError(f"folder source: no {list(extensions)} files in class folders of {root}")
    rows: dict[tuple[str, str], dict[str, str]] = {}
    if channel_pattern is None:
        for cls, f in files:
            rows[(cls, str(f.relative_to(root / cls)))] = {"gray": str(f)}
    else:
        try:
            pattern = re.compile(channel_pattern)
        except re.error as exc:
            raise SourceError(
                f"folder source: bad channel_pattern {channel_pattern!r}: {exc}") from None
        if "channel" not in pattern.groupindex:
            raise SourceError(f"folder source: channel_pattern {channel_pattern!r} needs a named "
                              "group (?P<channel>...)")
        unmatched = []
        for cls, f in files:
            m = pattern.fullmatch(f.name)
            if m is None:
                unmatched.append(str(f))
                continue
            if "id" in pattern.groupindex:
                field = m.group("id")
            else:
                a, b = m.span("channel")
                field = f.name[:a] + f.name[b:]
            rel = f.parent.relative_to(root / cls) / field
            slot = rows.setdefault((cls, str(rel)), {})
            if m.group("channel") in slot:
                raise SourceError(f"folder source: {f} and {slot[m.group('channel')]} are both "
                                  f"channel {m.group('channel')!r} of field {rel}")
            slot[m.group("channel")] = str(f)
        if unmatched:
            raise SourceError(
                f"folder source: {len(unmatched)} file(s) do not match channel_pattern "
                f"{channel_pattern!r}: {preview(unmatched)}; fix the pattern or narrow "
                "'extensions'")
    sets = pd.Series({k: tuple(sorted(v, key=_natural)) for k, v in rows.items()})
    common = sets.value_counts().index[0]
    odd = sets[sets != common]
    if len(odd):
        raise SourceError(
            f"folder source {root}: inconsistent channels: most fields have {list(common)}, but "
            f"{preview([f'{c}/{i}: {list(s)}' for (c, i), s in odd.items()])}")
    keys = list(rows)
    out = pd.DataFrame({
        "image_id": [f"{c}/{i}" for c, i in keys],
        label_column: [c for c, _ in keys],
        "dir_name": root.name,
    })
    out["channels"] = [list(common) for _ in keys]
    out["channel_paths"] = [[rows[k][c] for c in common] for k in keys]
    out.attrs["source_file"] = str(root)
    return out
