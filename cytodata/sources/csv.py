"""Generic CSV source: any table with one row per image and one file-path column per channel.

Params:
    path: the CSV file (``.gz`` ok).
    channels: ``{channel name: csv column holding that channel's file path}``, or a list of
        columns (each column name is then the channel name). Required.
    columns: ``{schema column: csv column}`` (e.g. ``{"plate": "Plate", "compound": "Drug"}``);
        unknown schema columns are kept as extra columns under the given name.
    root: prefix for relative file paths (default: the CSV's folder).
    id_column: csv column with a unique image id (default: the first channel's path as written
        in the file).
    values: constants ``{column: value}`` (e.g. ``{"organism": "human"}``); mapped columns win.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..errors import SourceError
from ._io import PathLike, channel_lists, check_unique_channels, join_paths, read_table
from ._registry import SOURCES


@SOURCES.register("csv")
def read_csv_source(path: PathLike, channels: Mapping[str, str] | Sequence[str] | None = None,
                    columns: Mapping[str, str] | None = None, root: PathLike | None = None,
                    id_column: str | None = None,
                    values: Mapping[str, object] | None = None) -> pd.DataFrame:
    """A CSV with one row per image -> harmonized columns (see module docstring)."""
    p = Path(path)
    if not channels:
        raise SourceError(f"csv source {p}: give 'channels' ({{name: path column}}); "
                          "e.g. channels: {DNA: FileName_DNA}")
    chan = dict(channels) if isinstance(channels, Mapping) else {c: c for c in channels}
    check_unique_channels(list(chan), str(p))
    columns = dict(columns or {})
    required = list(dict.fromkeys([*chan.values(), *columns.values(),
                                   *([id_column] if id_column else [])]))
    table = read_table(p, required=required, what="CSV source table")
    out = pd.DataFrame(index=table.index)
    for col, value in (values or {}).items():
        out[col] = value
    for dst, src in columns.items():
        out[dst] = table[src]
    first = next(iter(chan.values()))
    out["image_id"] = table[id_column] if id_column else table[first]
    base = root if root is not None else p.parent.absolute()
    paths = [join_paths(base, [table[c]]) for c in chan.values()]
    out["channels"], out["channel_paths"] = channel_lists(list(chan), paths)
    out.attrs["source_file"] = str(p)
    return out
