"""The last step of every shard format: merge the task results and publish the set's index files.

Every writer (``_writer.write_webdataset``, ``zarr.write_zarr``, ``omezarr.write_omezarr``) ends
in :func:`finalize`: temp files of killed tasks are swept, the per-task results (plain dicts,
also the resume sidecars) are merged into one ledger (checked: every manifest row is written or
has a ledger row), normalization moments, label counts, channel sets and dtypes, then
``index.parquet``, ``ledger.parquet`` and ``shards.json`` are written, each atomically (temp
file, then rename) and ``shards.json`` last, so its presence means a finished set (FORMAT.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from .._files import save_json, save_parquet
from ..errors import ShardError
from ..ledger import LEDGER_COLUMNS, Ledger
from ._samples import INDEX_COLUMNS, Moments

#: temp files a writer may leave when something dies: per-task ``NAME.tmp-<uuid>`` (tars and
#: sidecars) and ``save_json``/``save_parquet``'s ``NAME.tmp``
TEMP_PATTERNS = ("shard-*.tmp-*", "*.json.tmp", "*.parquet.tmp", "parts/*.tmp", "parts/*.tmp-*")


def sweep_temps(out: Path) -> list[Path]:
    """Delete the temp files of earlier or killed tasks under ``out``; return what was removed.

    Called before tasks start and again (by :func:`finalize`) after they all returned: a
    finished shard set holds no temp file whatever died during the run (a killed dask worker,
    a killed job).
    """
    removed = []
    for pattern in TEMP_PATTERNS:
        for p in out.glob(pattern):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def index_frame(rows: Sequence[Mapping], *, ints: Iterable[str] = (), floats: Iterable[str] = (),
                strings: Iterable[str] = (), columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``index.parquet`` rows -> a typed frame, the same dtypes in every format.

    ``ints`` become int64 and ``floats`` float64 (both always present, empty when there are no
    rows); ``strings`` become pandas ``string`` where present; the manifest columns
    (``INDEX_COLUMNS``) and ``key`` are always present: ``string``, ``site`` ``Int64`` (NA
    allowed). ``columns`` names the columns of a frame without rows.
    """
    frame = pd.DataFrame(list(rows), columns=None if rows else columns)
    for col in ints:
        frame[col] = pd.to_numeric(frame[col]).astype("int64") if len(frame) else pd.Series(dtype="int64")
    for col in floats:
        frame[col] = pd.to_numeric(frame[col]).astype("float64") if len(frame) else pd.Series(dtype="float64")
    for col in strings:
        if col in frame:
            frame[col] = frame[col].astype("string")
    for col in INDEX_COLUMNS + ("key",):
        if col not in frame:
            frame[col] = pd.NA
        frame[col] = frame[col].astype("Int64" if col == "site" else "string")
    return frame


def _one(values: list) -> Any:
    """The value when all agree (one distinct value), else None."""
    return values[0] if len(values) == 1 else None


def finalize(out: Path, results: Sequence[Mapping], index: pd.DataFrame, *, fmt: str, version: int,
             manifest_info: Mapping, identity: str, channel_mode: str,
             early: Sequence[Mapping] = (), meta: Mapping | None = None,
             summary: Mapping | None = None,
             before_meta: Callable[[], None] | None = None) -> dict:
    """Publish a shard set's index files from its task results; return the run summary.

    ``results``: one dict per task (fresh or kept from an earlier run) with ``ledger`` (ledger
    rows), ``rows_written``, ``moments`` (``Moments.data``), ``label_counts`` and, where the
    task reports them, ``channel_sets``, ``dtypes`` and ``pixel_bytes``. ``index``: the typed
    ``index.parquet`` frame (:func:`index_frame`). ``early``: ledger rows found before any task
    ran (planning). ``meta``: the format's own ``shards.json`` fields (they extend and override
    the common ones: format, version, dtype(s), channels, channel_mode, n_samples, label_counts,
    normalization, manifest, ledger, cytodata_version). ``summary``: the format's summary fields
    (shards, shards_resumed, bytes, pixel_bytes, ...). ``before_meta``: writes the format's own
    files (Zarr coordinates) after the index and ledger, before ``shards.json``.

    Raises LedgerError when rows went missing and ShardError for duplicate sample keys, before
    anything is published.
    """
    from .. import __version__

    sweep_temps(out)  # a killed worker's temp file: dask re-ran its task, so it is an orphan
    ledger = Ledger()
    ledger.extend(pd.DataFrame([*early, *(row for r in results for row in r["ledger"])],
                               columns=list(LEDGER_COLUMNS)))
    rows_written = sum(int(r["rows_written"]) for r in results)
    short = fmt.removeprefix("cytodata-")
    ledger.check(int(manifest_info["n_rows"]), rows_written, where=f"{short} {out}")
    dup = index["key"].duplicated() if len(index) else pd.Series([], dtype=bool)
    if dup.any():
        raise ShardError(f"{out}: duplicate sample keys {list(index.loc[dup, 'key'][:5])}; "
                         "make manifest keys unique (schema.validate) and rewrite")
    moments, labels = Moments(), Counter()
    channel_sets: list[list[str]] = []
    for r in results:
        moments.merge(Moments(r["moments"]))
        labels.update(r["label_counts"])
        channel_sets += [list(c) for c in r.get("channel_sets", ()) if list(c) not in channel_sets]
    dtypes = sorted({d for r in results for d in r.get("dtypes", ())})
    by_reason = {str(k): int(v) for k, v in ledger.to_frame()["reason"].value_counts().items()}
    doc = {"format": fmt, "version": version, "dtype": _one(dtypes), "dtypes": dtypes,
           "channels": _one(channel_sets), "channel_mode": channel_mode,
           "n_samples": int(len(index)), "label_counts": dict(sorted(labels.items())),
           "normalization": moments.summary(),
           "manifest": dict(manifest_info, identity=identity),
           "ledger": {"rows": len(ledger), "by_reason": by_reason},
           "cytodata_version": __version__}
    doc.update(meta or {})
    save_parquet(out / "index.parquet", index)
    ledger.write(out / "ledger.parquet")
    if before_meta is not None:
        before_meta()
    save_json(out / "shards.json", doc)
    done = {"format": fmt, "out": str(out), "rows_in": int(manifest_info["n_rows"]),
            "rows_written": rows_written, "samples": int(len(index)), "dropped": by_reason,
            "shards": len(results), "shards_resumed": 0, "bytes": 0,
            "pixel_bytes": sum(int(r.get("pixel_bytes", 0)) for r in results)}
    done.update(summary or {})
    return done
