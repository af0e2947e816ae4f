"""Zarr v3 training array ``(N, C, H, W)``: chunks ``(1, C, tile, tile)`` inside per-image shards.

Random crops read a few small chunks; one shard object per image keeps the file count low.
Rows are planned from image headers up front so that dask tasks write disjoint row ranges
(no two tasks touch one chunk). Layout: FORMAT.md section 2.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._cluster import run_tasks
from .._files import load_json_dict, save_json
from ..errors import ImageReadError
from ._finalize import finalize, index_frame
from ._options import SampleOptions, WriteOptions
from ._samples import INDEX_COLUMNS, Dropped, Moments, fit_window, moment_groups, window_of
from ._writer import FORMATS, begin
from .checksum import CHUNK_COLUMN as CHUNK_CHECKSUMS
from .checksum import COLUMN as CHECKSUM
from .checksum import checksum
from .labels import COORD_NAMES, DIMS, write_labels

FORMAT = "cytodata-zarr"
VERSION = 1
ARRAY = "image"  # the array is the variable `image` of the zarr group OUT (labels.py)
PARTS = "parts"  # per-task sidecars: the resume bookkeeping (FORMAT.md section 2)
DEFAULT_CHUNK = 256


@dataclass(frozen=True)
class PlannedImage:
    """One manifest record's rows in the array: ``n_sub`` samples (``split`` mode: one per
    channel) times ``tiles`` (``(y, x)`` origins in pixels; ``((0, 0),)`` without tiling).
    """

    rec: dict
    n_sub: int
    tiles: tuple[tuple[int, int], ...]

    @property
    def n_rows(self) -> int:
        """Rows of the array this record fills (written or, if it fails to read, left zero)."""
        return self.n_sub * len(self.tiles)


@dataclass(frozen=True)
class RowsTask:
    """One dask task: write ``images`` into the array at ``path`` from row ``start`` on.

    ``done``: where the task saves its result once every row is written (the resume sidecar
    ``parts/part-XXXXXX.done.json``), or None.
    """

    path: str
    start: int
    images: list[PlannedImage]
    samples: SampleOptions
    done: str | None = None


def _plan_rows(recs: list[dict], channel_mode: str, tile: int | None
               ) -> tuple[list[PlannedImage], list[dict], tuple[int, int, int] | None]:
    """Header-only pass: the records' rows, ledger rows for the rest, and the row shape (C, H, W)."""
    from ..images.io import image_shape

    heads, ledger = [], []

    def drop(rec: dict, reason: str, detail: str) -> None:
        ledger.append({"source": rec["source"], "input_id": rec["image_id"], "stage": "shard",
                       "reason": reason, "detail": detail})

    for rec in recs:
        try:
            c, h, w = image_shape(rec["channel_paths"])
        except ImageReadError as exc:
            drop(rec, exc.reason, str(exc))
            continue
        try:
            window = window_of(rec)   # crop rows hold their window, not the field
            if window is not None:
                _, _, w, h = fit_window(window, h, w, rec["key"])
        except Dropped as exc:
            drop(rec, exc.reason, exc.detail)
            continue
        per = {"own": (c, 1), "merged": (1, 1), "split": (1, c)}[channel_mode]
        th, tw = (tile, tile) if tile else (h, w)
        tiles = tuple((y, x) for y in range(0, h - th + 1, th)
                      for x in range(0, w - tw + 1, tw)) if tile else ((0, 0),)
        heads.append((PlannedImage(rec, per[1], tiles), (per[0], th, tw), (c, h, w)))
    # the array takes the most common row shape (ties: first in key order)
    shapes = [shape for _, shape, _ in heads]
    counts = Counter(shape for image, shape, _ in heads if image.tiles)
    ref = max(counts, key=lambda s: (counts[s], -shapes.index(s))) if counts else None
    plan = []
    for image, shape, full in heads:
        if shape != ref or not image.tiles:
            drop(image.rec, "shape mismatch", f"{image.rec['key']}: image {full} gives rows {shape}, "
                 f"the array holds {ref}; pass tile= to cut images to one size")
            continue
        plan.append(image)
    return plan, ledger, ref


def _write_rows(task: RowsTask) -> dict:
    """Task: read records and write their rows from ``task.start`` on; return index/ledger/stats.

    With ``task.done``, the result is also saved there (atomically) once every row is written:
    a re-run skips the part after checking its rows against the recorded pixel sha256s.
    """
    import zarr

    arr = zarr.open_array(task.path, mode="r+")
    row, index, ledger, labels, moments, written, pixel_bytes = task.start, [], [], Counter(), Moments(), 0, 0
    channel_sets: list[list[str]] = []
    for image in task.images:
        rec, tiles = image.rec, image.tiles
        try:
            samples = task.samples.load(rec)
            if samples[0].image.dtype != arr.dtype:
                raise Dropped("dtype mismatch", f"{rec['key']}: {samples[0].image.dtype}, array is {arr.dtype}")
        except Dropped as drop:
            ledger.append({"source": rec["source"], "input_id": rec["image_id"], "stage": "shard",
                           "reason": drop.reason, "detail": drop.detail})
            row += image.n_rows
            continue
        written += 1
        th, tw = arr.shape[2:]
        for s in samples:
            if s.channels not in channel_sets:
                channel_sets.append(s.channels)
            for y, x in tiles:
                pix = s.image[:, y:y + th, x:x + tw]
                arr[row] = pix
                entry = {"row": row, "key": s.key if len(tiles) == 1 and not y and not x and th == s.image.shape[1]
                         else f"{s.key}-t{y}-{x}", "n_channels": pix.shape[0], "height": th, "width": tw,
                         "x_min": x, "x_max": x + tw, "y_min": y, "y_max": y + th}
                pix = np.ascontiguousarray(pix)
                entry["sha256"] = hashlib.sha256(pix).hexdigest()
                entry[CHECKSUM] = checksum(pix)
                entry[CHUNK_CHECKSUMS] = chunk_checksums(pix, arr.chunks[2], arr.chunks[3])
                entry.update({c: rec.get(c) for c in INDEX_COLUMNS})
                index.append(entry)
                moments.add(moment_groups(rec), pix, s.channels)
                pixel_bytes += pix.nbytes
                if rec.get("label") is not None:
                    labels[rec["label"]] += 1
                row += 1
    result = {"index": index, "ledger": ledger, "label_counts": dict(labels), "moments": moments.data,
              "rows_written": written, "pixel_bytes": pixel_bytes, "start": task.start, "end": row,
              "channel_sets": channel_sets, "dtypes": [str(arr.dtype)] if written else []}
    if task.done is not None:
        save_json(Path(task.done), result)
    return result


def chunk_checksums(pix: np.ndarray, th: int, tw: int) -> list[str]:
    """XXH3-64 of each ``(C, th, tw)`` chunk of a ``(C, H, W)`` row (row-major over the chunk grid;
    edge chunks clipped to the image), the unit a random crop reads.
    """
    _, h, w = pix.shape
    return [checksum(pix[:, y:y + th, x:x + tw]) for y in range(0, h, th) for x in range(0, w, tw)]


def _part_intact(arr, result: dict) -> bool:
    """Every row a finished part recorded still holds the pixels it hashed.

    A row whose chunks no longer decode (zstd "Data corruption detected", a damaged shard
    index, a missing object) counts as damaged: the part is rewritten, the run goes on.
    """
    try:
        return all(hashlib.sha256(np.ascontiguousarray(arr[e["row"]])).hexdigest() == e["sha256"]
                   for e in result["index"])
    except Exception:  # noqa: BLE001 - any read failure of a finished part means "redo it"
        return False


_ZARR_PATTERNS = (ARRAY, "index.parquet", "shards.json", "ledger.parquet", PARTS, "zarr.json") + COORD_NAMES
_ZARR_INTS = ("row", "n_channels", "height", "width", "x_min", "x_max", "y_min", "y_max")


@FORMATS.register("zarr")
def write_zarr(recs: list[dict], out: Path, manifest_info: dict, opts: WriteOptions) -> dict:
    """Plan rows, create the array, write row ranges in parallel, then index/ledger/shards.json."""
    import zarr
    from zarr.codecs import ZstdCodec

    ident, previous = begin(out, "zarr", manifest_info, opts, _ZARR_PATTERNS)
    tile, mode = opts.tile, opts.channel_mode
    plan, early, shape = _plan_rows(recs, mode, tile)
    dtype = np.uint16 if mode == "merged" else None
    unchecked = SampleOptions(mode, None, opts.gray)  # the dtype of the first readable image
    for image in plan:
        if dtype is not None:
            break
        try:
            dtype = unchecked.load(image.rec)[0].image.dtype
        except Dropped:
            continue
    n = sum(image.n_rows for image in plan)
    c, h, w = shape or (1, 1, 1)
    chunk = min(tile or opts.chunk or DEFAULT_CHUNK, h, w)
    # zarr needs shards divisible by chunks; the array edge may cut the last shard short
    shard_shape = (1, c, -(-h // chunk) * chunk, -(-w // chunk) * chunk)
    layout = {"shape": [int(n), int(c), int(h), int(w)], "dtype": np.dtype(dtype or np.uint16).str,
              "chunk": int(chunk)}
    parts_dir = out / PARTS
    arr = None
    if previous is not None and previous.get("layout") == layout and (out / ARRAY).exists():
        try:  # same set, same layout: keep the array and the parts already finished
            arr = zarr.open_array(str(out / ARRAY), mode="r+")
            per_task = int(previous["per_task"])
        except Exception:  # noqa: BLE001 - an unreadable array is simply rewritten
            arr = None
    if arr is None:
        if parts_dir.exists():
            shutil.rmtree(parts_dir)
        if (out / "zarr.json").exists():  # its consolidated metadata describes the old array
            (out / "zarr.json").unlink()
        per_task = max(1, len(plan) // (4 * (opts.n_workers or 2)) or 1)
        # the plan first: a folder with an array but no plan would look like someone else's
        save_json(out / "plan.json", {"format": FORMAT, "identity": ident, "n_rows": len(recs),
                                      "layout": layout, "per_task": per_task})
        arr = zarr.create_array(store=str(out / ARRAY), shape=(n, c, h, w), dtype=dtype or np.uint16,
                                chunks=(1, c, chunk, chunk), shards=shard_shape,
                                compressors=ZstdCodec(level=3), fill_value=0, overwrite=True,
                                dimension_names=DIMS)
    parts_dir.mkdir(exist_ok=True)
    results: dict[int, dict] = {}  # part number -> its result
    tasks: dict[int, RowsTask] = {}
    start = 0
    for k, g in enumerate(range(0, len(plan), per_task)):
        images = plan[g:g + per_task]
        done = parts_dir / f"part-{k:06d}.done.json"
        finished = load_json_dict(done)
        if (finished is not None and "index" in finished and finished.get("start") == start
                and _part_intact(arr, finished)):
            results[k] = finished
        else:
            tasks[k] = RowsTask(path=str(out / ARRAY), start=start, images=images,
                                samples=opts.samples, done=str(done))
        start += sum(image.n_rows for image in images)
    resumed = len(results)
    fresh = run_tasks(_write_rows, [(task,) for task in tasks.values()], scheduler=opts.scheduler,
                      n_workers=opts.n_workers, progress=opts.progress, desc="zarr")
    results.update(zip(tasks, fresh))
    parts = [results[k] for k in sorted(results)]
    index = index_frame([x for r in parts for x in r["index"]], ints=_ZARR_INTS,
                        strings=("sha256", CHECKSUM))
    if len(index) < n:  # rows whose images failed to read: a finished set holds none
        n = compact_rows(arr, index, out / "plan.json")
    names = next((r["index"][0] for r in parts if r["index"]), None)
    channels = None if names is None else _channels(recs, names, mode)
    summary = finalize(
        out, parts, index, fmt=FORMAT, version=VERSION, manifest_info=manifest_info, identity=ident,
        channel_mode=mode, early=early,
        meta={"array": ARRAY, "dims": list(DIMS), "codec": "zstd", "dtype": str(arr.dtype),
              "channels": channels, "shape": [c, h, w], "chunks": [1, c, chunk, chunk],
              "shard_shape": list(shard_shape), "n_rows": int(n)},
        before_meta=lambda: write_labels(out, ARRAY, index, channels, {
            "format": FORMAT, "version": VERSION, "dims": list(DIMS), "channel_mode": mode}),
        summary={"shards": 1, "parts": len(parts), "shards_resumed": resumed,
                 "pixel_bytes": sum(r["pixel_bytes"] for r in fresh)})
    # after finalize: write_labels adds the coordinates attribute to the array's metadata
    summary["bytes"] = sum(p.stat().st_size for p in (out / ARRAY).rglob("*") if p.is_file())
    return summary


def compact_rows(arr, index, plan_path: Path) -> int:
    """Move the written rows up over the unwritten ones and cut the array to them; return its length.

    A plain ``xarray.open_zarr`` user would otherwise average all-zero rows in. ``index["row"]``
    is renumbered in place. plan.json is marked first, so a run interrupted here (or any later
    re-run of the set) rewrites the array instead of trusting row numbers that moved.
    """
    plan = load_json_dict(plan_path) or {}
    plan["layout"] = dict(plan.get("layout") or {}, compacted=True)
    save_json(plan_path, plan)
    order = np.argsort(index["row"].to_numpy(dtype=np.int64), kind="stable")
    old_rows = index["row"].to_numpy(dtype=np.int64)[order]
    for new, old in enumerate(old_rows.tolist()):
        if new != old:  # new < old: rows only move up, so no row is overwritten before it moves
            arr[new] = arr[old]
    arr.resize((len(old_rows),) + tuple(arr.shape[1:]))
    rows = index["row"].to_numpy(dtype=np.int64).copy()
    rows[order] = np.arange(len(old_rows), dtype=np.int64)
    index["row"] = rows
    return len(old_rows)


def _channels(recs, first_row: dict, mode: str):
    if mode == "merged":
        return ["merged"]
    if mode == "split":
        return None
    sets = {tuple(r["channels"]) for r in recs}
    return list(next(iter(sets))) if len(sets) == 1 else None
