"""OME-Zarr HCS plate export: ``OUT/<plate>.ome.zarr/<row>/<column>/<field>`` (c, y, x) images.

For viewers (napari, OMERO) and NGFF tools rather than training. Written with the
``ome_zarr`` package's writer in NGFF 0.5 (zarr v3), which ``ome_zarr`` 0.18's Reader reads.
Wells come from the manifest ``well`` column (``B02`` -> row ``B``, column ``02``), fields
from ``site`` (ordered per well). Rows without plate/well go to the ledger ("no plate/well").
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

from ._samples import Dropped, Moments, load_samples
from .._files import save_json
from ._writer import FORMATS, claim_folder, identity

FORMAT = "cytodata-ome-zarr"
_WELL = re.compile(r"^([A-Za-z]+)0*([0-9]+)$")


def _split_well(well: str) -> tuple[str, str] | None:
    m = _WELL.match(well or "")
    return (m.group(1).upper(), f"{int(m.group(2)):02d}") if m else None


def _write_plate(path: str, plate: str, fields: list, channel_mode: str, qc, gray, levels: int) -> dict:
    """Task: one plate group with all its wells and fields."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    fmt = FormatV05()
    root = zarr.open_group(path, mode="w", zarr_format=3)
    ledger, wells, moments = [], defaultdict(list), Moments()
    for rec, row, col in fields:
        try:
            image = load_samples(rec, channel_mode, qc, gray)[0].image
        except Dropped as drop:
            ledger.append({"source": rec["source"], "input_id": rec["image_id"], "stage": "shard",
                           "reason": drop.reason, "detail": drop.detail})
            continue
        field = str(len(wells[(row, col)]))
        group = root.require_group(row).require_group(col).require_group(field)
        write_image(image, group, scale_factors=[2 ** (k + 1) for k in range(levels)], axes="cyx", fmt=fmt)
        wells[(row, col)].append(field)
        moments.add({"plate": plate, "all": "all"}, image, [f"c{i}" for i in range(len(image))])
    rows = sorted({r for r, _ in wells})
    cols = sorted({c for _, c in wells})
    write_plate_metadata(root, rows, cols, [f"{r}/{c}" for r, c in sorted(wells)], fmt=fmt, name=plate,
                         field_count=max((len(v) for v in wells.values()), default=0))
    for (r, c), fs in sorted(wells.items()):
        write_well_metadata(root[r][c], fs, fmt=fmt)
    return {"ledger": ledger, "rows_written": sum(len(v) for v in wells.values()), "moments": moments.data}


@FORMATS.register("ome-zarr")
def write_omezarr(recs: list[dict], out: Path, manifest_info: dict, opts: dict) -> dict:
    """One OME-Zarr HCS plate per manifest plate; one dask task per plate."""
    import pandas as pd

    from ..curate.ledger import LEDGER_COLUMNS, Ledger

    ident = identity("ome-zarr", manifest_info, opts)
    claim_folder(out, ident, opts["overwrite"], ("*.ome.zarr", "shards.json", "ledger.parquet"))
    save_json(out / "plan.json", {"format": FORMAT, "identity": ident, "n_rows": len(recs)})
    plates, early = defaultdict(list), []
    for rec in recs:
        rc = _split_well(rec.get("well") or "")
        if rec.get("plate") is None or rc is None:
            early.append({"source": rec["source"], "input_id": rec["image_id"], "stage": "shard",
                          "reason": "no plate/well", "detail": f"{rec['key']}: plate={rec.get('plate')!r} "
                          f"well={rec.get('well')!r}; OME-Zarr HCS needs both (use format='zarr')"})
            continue
        plates[rec["plate"]].append((rec, *rc))
    safe = {p: re.sub(r"[^A-Za-z0-9_\-]+", "-", p) for p in plates}
    tasks = [(str(out / f"{safe[p]}.ome.zarr"), p,
              sorted(f, key=lambda t: (t[1], t[2], t[0].get("site") or 0, t[0]["key"])),
              opts["channel_mode"], opts["qc"], opts["gray"], int(opts.get("pyramid_levels") or 0))
             for p, f in sorted(plates.items())]
    results = run_tasks_for(tasks, opts)
    ledger = Ledger()
    ledger.extend(pd.DataFrame(early + [x for r in results for x in r["ledger"]], columns=list(LEDGER_COLUMNS)))
    written = sum(r["rows_written"] for r in results)
    ledger.check(len(recs), written, where=f"ome-zarr {out}")
    ledger.write(out / "ledger.parquet")
    moments = Moments()
    for r in results:
        moments.merge(Moments(r["moments"]))
    by_reason = {str(k): int(v) for k, v in Counter(ledger.to_frame()["reason"]).items()}
    save_json(out / "shards.json", {"format": FORMAT, "version": 1, "ngff": "0.5",
                                    "plates": {p: f"{safe[p]}.ome.zarr" for p in sorted(plates)},
                                    "n_samples": written, "normalization": moments.summary(),
                                    "manifest": dict(manifest_info, identity=ident),
                                    "ledger": {"rows": len(ledger), "by_reason": by_reason}})
    return {"format": FORMAT, "out": str(out), "rows_in": len(recs), "rows_written": written,
            "samples": written, "dropped": by_reason, "shards": len(tasks), "shards_resumed": 0,
            "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()), "pixel_bytes": 0}


def run_tasks_for(tasks, opts):
    from ._run import run_tasks

    return run_tasks(_write_plate, tasks, scheduler=opts["scheduler"], n_workers=opts["n_workers"],
                     progress=opts["progress"], desc="plates")
