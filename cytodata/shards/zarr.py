"""Zarr v3 training array ``(N, C, H, W)``: chunks ``(1, C, tile, tile)`` inside per-image shards.

Random crops read a few small chunks; one shard object per image keeps the file count low.
Rows are planned from image headers up front so that dask tasks write disjoint row ranges
(no two tasks touch one chunk). Layout: FORMAT.md section 2.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from .._files import load_json_dict, save_json, save_parquet
from ..errors import ImageReadError
from ._run import run_tasks
from ._samples import INDEX_COLUMNS, Dropped, Moments, fit_window, load_samples, window_of
from ._writer import FORMATS, claim_folder, identity, sweep_temps
from .checksum import CHUNK_COLUMN as CHUNK_CHECKSUMS
from .checksum import COLUMN as CHECKSUM
from .checksum import checksum
from .labels import COORD_NAMES, DIMS, write_labels

FORMAT = "cytodata-zarr"
VERSION = 1
ARRAY = "image"  # the array is the variable `image` of the zarr group OUT (labels.py)
PARTS = "parts"  # per-task sidecars: the resume bookkeeping (FORMAT.md section 2)
DEFAULT_CHUNK = 256


def _plan_rows(recs, channel_mode, tile):
    """Header-only pass: per record its output rows, or a ledger entry. Returns (plan, ledger, shape)."""
    from ..images.io import image_shape

    heads, ledger = [], []
    for i, rec in enumerate(recs):
        try:
            c, h, w = image_shape(rec["channel_paths"])
        except ImageReadError as exc:
            ledger.append((i, exc.reason, str(exc)))
            continue
        try:
            window = window_of(rec)   # crop rows hold their window, not the field
            if window is not None:
                _, _, w, h = fit_window(window, h, w, rec["key"])
        except Dropped as drop:
            ledger.append((i, drop.reason, drop.detail))
            continue
        per = {"own": (c, 1), "merged": (1, 1), "split": (1, c)}[channel_mode]
        th, tw = (tile, tile) if tile else (h, w)
        tiles = [(y, x) for y in range(0, h - th + 1, th) for x in range(0, w - tw + 1, tw)] if tile else [(0, 0)]
        heads.append((i, (per[0], th, tw), per[1], tiles, (c, h, w)))
    # the array takes the most common row shape (ties: first in key order)
    counts = Counter(shape for _, shape, _, tiles, _ in heads if tiles)
    ref = max(counts, key=lambda s: (counts[s], -[h[1] for h in heads].index(s))) if counts else None
    plan = []
    for i, shape, n_sub, tiles, full in heads:
        if shape != ref or not tiles:
            ledger.append((i, "shape mismatch", f"{recs[i]['key']}: image {full} gives rows {shape}, "
                           f"the array holds {ref}; pass tile= to cut images to one size"))
            continue
        plan.append((i, n_sub, tiles))
    return plan, ledger, ref


def _write_rows(path: str, start: int, items: list, channel_mode: str, qc, gray,
                done: str | None = None) -> dict:
    """Task: read records and write their rows from ``start`` on; return index/ledger/stats.

    With ``done``, the result is also saved there (atomically) once every row is written: a
    re-run skips the part after checking its rows against the recorded pixel sha256s.
    """
    import zarr

    arr = zarr.open_array(path, mode="r+")
    row, index, ledger, labels, moments, written, pixel_bytes = start, [], [], Counter(), Moments(), 0, 0
    for rec, n_sub, tiles in items:
        n_rows = n_sub * len(tiles)
        try:
            samples = load_samples(rec, channel_mode, qc, gray)
            if samples[0].image.dtype != arr.dtype:
                raise Dropped("dtype mismatch", f"{rec['key']}: {samples[0].image.dtype}, array is {arr.dtype}")
        except Dropped as drop:
            ledger.append({"source": rec["source"], "input_id": rec["image_id"], "stage": "shard",
                           "reason": drop.reason, "detail": drop.detail})
            row += n_rows
            continue
        written += 1
        th, tw = arr.shape[2:]
        for s in samples:
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
                moments.add({"plate": rec.get("plate"), "batch": rec.get("batch"), "all": "all"}, pix, s.channels)
                pixel_bytes += pix.nbytes
                if rec.get("label") is not None:
                    labels[rec["label"]] += 1
                row += 1
    result = {"index": index, "ledger": ledger, "label_counts": dict(labels), "moments": moments.data,
              "rows_written": written, "pixel_bytes": pixel_bytes, "start": start, "end": row}
    if done is not None:
        save_json(Path(done), result)
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


@FORMATS.register("zarr")
def write_zarr(recs: list[dict], out: Path, manifest_info: dict, opts: dict) -> dict:
    """Plan rows, create the array, write row ranges in parallel, then index/ledger/shards.json."""
    import pandas as pd
    import zarr
    from zarr.codecs import ZstdCodec

    from .. import __version__
    from ..curate.ledger import LEDGER_COLUMNS, Ledger

    ident = identity("zarr", manifest_info, opts)
    previous = claim_folder(out, ident, opts["overwrite"],
                            (ARRAY, "index.parquet", "shards.json", "ledger.parquet", PARTS,
                             "zarr.json") + COORD_NAMES)
    tile, mode = opts.get("tile"), opts["channel_mode"]
    plan, early, shape = _plan_rows(recs, mode, tile)
    dtype = np.uint16 if mode == "merged" else None
    for i, _, _ in plan:
        if dtype is not None:
            break
        try:
            dtype = load_samples(recs[i], mode, None, opts["gray"])[0].image.dtype
        except Dropped:
            continue
    n = sum(k * len(t) for _, k, t in plan)
    c, h, w = shape or (1, 1, 1)
    chunk = min(tile or opts.get("chunk", DEFAULT_CHUNK), h, w)
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
        per_task = max(1, len(plan) // (4 * (opts["n_workers"] or 2)) or 1)
        # the plan first: a folder with an array but no plan would look like someone else's
        save_json(out / "plan.json", {"format": FORMAT, "identity": ident, "n_rows": len(recs),
                                      "layout": layout, "per_task": per_task})
        arr = zarr.create_array(store=str(out / ARRAY), shape=(n, c, h, w), dtype=dtype or np.uint16,
                                chunks=(1, c, chunk, chunk), shards=shard_shape,
                                compressors=ZstdCodec(level=3), fill_value=0, overwrite=True,
                                dimension_names=DIMS)
    parts_dir.mkdir(exist_ok=True)
    sweep_temps(out)
    results: dict[int, dict] = {}
    tasks, start = [], 0
    for k, g in enumerate(range(0, len(plan), per_task)):
        items = [(recs[i], m, t) for i, m, t in plan[g:g + per_task]]
        done = parts_dir / f"part-{k:06d}.done.json"
        finished = load_json_dict(done)
        if (finished is not None and "index" in finished and finished.get("start") == start
                and _part_intact(arr, finished)):
            results[k] = finished
        else:
            tasks.append((k, (str(out / ARRAY), start, items, mode, opts["qc"], opts["gray"], str(done))))
        start += sum(m * len(t) for _, m, t in items)
    resumed = len(results)
    fresh = run_tasks(_write_rows, [args for _, args in tasks], scheduler=opts["scheduler"],
                      n_workers=opts["n_workers"], progress=opts["progress"], desc="zarr")
    sweep_temps(out)  # orphans of killed workers (their tasks were re-run elsewhere)
    results.update({k: r for (k, _), r in zip(tasks, fresh)})
    results = [results[k] for k in sorted(results)]
    ledger = Ledger()
    ledger.extend(pd.DataFrame([{"source": recs[i]["source"], "input_id": recs[i]["image_id"], "stage": "shard",
                                 "reason": r, "detail": d} for i, r, d in early], columns=list(LEDGER_COLUMNS)))
    ledger.extend(pd.DataFrame([x for r in results for x in r["ledger"]], columns=list(LEDGER_COLUMNS)))
    written = sum(r["rows_written"] for r in results)
    ledger.check(len(recs), written, where=f"zarr {out}")
    moments, labels = Moments(), Counter()
    for r in results:
        moments.merge(Moments(r["moments"]))
        labels.update(r["label_counts"])
    index = pd.DataFrame([x for r in results for x in r["index"]])
    for col in ("sha256", CHECKSUM):
        if col in index:
            index[col] = index[col].astype("string")
    for col in ("row", "n_channels", "height", "width", "x_min", "x_max", "y_min", "y_max"):
        index[col] = pd.to_numeric(index[col]).astype("int64") if len(index) else pd.Series(dtype="int64")
    for col in INDEX_COLUMNS + ("key",):
        if col not in index:
            index[col] = pd.NA
        index[col] = index[col].astype("Int64" if col == "site" else "string")
    save_parquet(out / "index.parquet", index)
    ledger.write(out / "ledger.parquet")
    by_reason = {str(k): int(v) for k, v in ledger.to_frame()["reason"].value_counts().items()}
    names = next((r["index"][0] for r in results if r["index"]), None)
    channels = None if names is None else _channels(recs, names, mode)
    write_labels(out, ARRAY, index, channels,
                 {"format": FORMAT, "version": VERSION, "dims": list(DIMS), "channel_mode": mode})
    save_json(out / "shards.json", {
        "format": FORMAT, "version": VERSION, "array": ARRAY, "dims": list(DIMS), "codec": "zstd",
        "dtype": str(arr.dtype), "channels": channels,
        "channel_mode": mode, "shape": [c, h, w], "chunks": [1, c, chunk, chunk], "shard_shape": list(shard_shape),
        "n_samples": int(len(index)), "n_rows": int(n), "label_counts": dict(sorted(labels.items())),
        "normalization": moments.summary(), "manifest": dict(manifest_info, identity=ident),
        "ledger": {"rows": len(ledger), "by_reason": by_reason}, "cytodata_version": __version__})
    return {"format": FORMAT, "out": str(out), "rows_in": len(recs), "rows_written": written,
            "samples": int(len(index)), "dropped": by_reason, "shards": 1, "parts": len(results),
            "shards_resumed": resumed,
            "bytes": sum(p.stat().st_size for p in (out / ARRAY).rglob("*") if p.is_file()),
            "pixel_bytes": sum(r["pixel_bytes"] for r in fresh)}


def _channels(recs, first_row: dict, mode: str):
    if mode == "merged":
        return ["merged"]
    if mode == "split":
        return None
    sets = {tuple(r["channels"]) for r in recs}
    return list(next(iter(sets))) if len(sets) == 1 else None
