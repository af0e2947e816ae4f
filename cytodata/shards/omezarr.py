"""OME-Zarr HCS plate export: ``OUT/<plate>.ome.zarr/<row>/<column>/<field>`` (c, y, x) images.

For viewers (napari, OMERO) and NGFF tools rather than training. Written with the
``ome_zarr`` package's writer in NGFF 0.5 (zarr v3), which ``ome_zarr`` 0.18's Reader reads.
Wells come from the manifest ``well`` column (``B02`` -> row ``B``, column ``02``), fields
from ``site`` (ordered per well). Rows without plate/well go to the ledger ("no plate/well").
Each field carries omero channel labels (the manifest's channel names) and, where known
(``pixel_size=`` or the source TIFF's OME/ImageJ metadata), pixel sizes in micrometers;
``OUT/index.parquet`` maps every manifest key to its plate, well and field.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

from .._files import save_json, save_parquet
from ._samples import INDEX_COLUMNS, Dropped, Moments, load_samples
from ._writer import FORMATS, claim_folder, identity

FORMAT = "cytodata-ome-zarr"
_WELL = re.compile(r"^([A-Za-z]+)0*([0-9]+)$")
#: omero display colours, by channel position (blue, green, red, then the rest)
_COLORS = ("0000FF", "00FF00", "FF0000", "FFFF00", "FF00FF", "00FFFF", "FFFFFF")
#: OME / ImageJ length units -> NGFF unit name and factor to micrometers
_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "\\u00B5m": 1.0,
          "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3}


def pixel_size_um(path: str) -> tuple[float, float] | None:
    """(y, x) pixel size in micrometers from a TIFF's OME-XML or ImageJ metadata, else None.

    Plain TIFF resolution tags are not used: tools write 72 dpi or 1 px/unit by default,
    which says nothing about the microscope.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                m = re.search(r"<Pixels\b[^>]*>", tif.ome_metadata)
                attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(0))) if m else {}
                sizes = []
                for axis in ("Y", "X"):
                    value = attrs.get(f"PhysicalSize{axis}")
                    unit = attrs.get(f"PhysicalSize{axis}Unit", "µm")  # OME's default unit
                    if value is None or unit not in _UNITS:
                        return None
                    sizes.append(float(value) * _UNITS[unit])
                return sizes[0], sizes[1]
            if tif.is_imagej and (tif.imagej_metadata or {}).get("unit") in _UNITS:
                factor = _UNITS[tif.imagej_metadata["unit"]]
                tags = tif.pages[0].tags
                xres, yres = tags["XResolution"].value, tags["YResolution"].value  # px per unit
                return yres[1] / yres[0] * factor, xres[1] / xres[0] * factor
    except Exception:  # noqa: BLE001 - not a TIFF, or no usable metadata: the size is unknown
        return None
    return None


def _omero(channels: list[str], image) -> dict:
    """Build omero rendering metadata: channel labels, colours, windows over the stored range."""
    import numpy as np

    top = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else float(image.max())
    return {"channels": [
        {"label": str(name), "color": _COLORS[i % len(_COLORS)], "active": True,
         "window": {"min": 0.0, "max": top, "start": float(plane.min()), "end": float(plane.max())}}
        for i, (name, plane) in enumerate(zip(channels, image, strict=True))]}


def _split_well(well: str) -> tuple[str, str] | None:
    m = _WELL.match(well or "")
    return (m.group(1).upper(), f"{int(m.group(2)):02d}") if m else None


def _write_plate(path: str, plate: str, fields: list, channel_mode: str, qc, gray, levels: int,
                 pixel_size=None) -> dict:
    """Task: one plate group with all its wells and fields; returns ledger, key map, stats."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    fmt = FormatV05()
    root = zarr.open_group(path, mode="w", zarr_format=3)
    ledger, wells, moments, index = [], defaultdict(list), Moments(), []
    channel_sets, dtypes = [], set()
    for rec, row, col in fields:
        try:
            sample = load_samples(rec, channel_mode, qc, gray)[0]
            image = sample.image
        except Dropped as drop:
            ledger.append({"source": rec["source"], "input_id": rec["image_id"], "stage": "shard",
                           "reason": drop.reason, "detail": drop.detail})
            continue
        field = str(len(wells[(row, col)]))
        group = root.require_group(row).require_group(col).require_group(field)
        size = _field_pixel_size(rec, pixel_size)
        physical = ({"scale": {"c": 1.0, "y": size[0], "x": size[1]},
                     "axes_units": {"y": "micrometer", "x": "micrometer"}} if size else {})
        names = list(sample.channels) if len(sample.channels) == len(image) else [
            f"c{i}" for i in range(len(image))]
        write_image(image, group, scale_factors=[2 ** (k + 1) for k in range(levels)], axes="cyx",
                    fmt=fmt, omero=_omero(names, image), **physical)
        group.attrs["cytodata"] = {"key": rec["key"], "source": rec["source"],
                                   "image_id": rec["image_id"], "site": rec.get("site")}
        wells[(row, col)].append(field)
        moments.add({"plate": plate, "all": "all"}, image, names)
        if names not in channel_sets:
            channel_sets.append(names)
        dtypes.add(str(image.dtype))
        index.append({"key": rec["key"], "plate": plate, "well": rec.get("well"), "row": row,
                      "column": col, "field": int(field),
                      "path": f"{Path(path).name}/{row}/{col}/{field}",
                      "n_channels": int(image.shape[0]), "height": int(image.shape[1]),
                      "width": int(image.shape[2]),
                      "pixel_size_y_um": size[0] if size else None,
                      "pixel_size_x_um": size[1] if size else None,
                      **{c: rec.get(c) for c in INDEX_COLUMNS if c not in ("plate", "well")}})
    rows = sorted({r for r, _ in wells})
    cols = sorted({c for _, c in wells})
    write_plate_metadata(root, rows, cols, [f"{r}/{c}" for r, c in sorted(wells)], fmt=fmt, name=plate,
                         field_count=max((len(v) for v in wells.values()), default=0))
    for (r, c), fs in sorted(wells.items()):
        write_well_metadata(root[r][c], fs, fmt=fmt)
    return {"ledger": ledger, "rows_written": sum(len(v) for v in wells.values()),
            "moments": moments.data, "index": index, "channel_sets": channel_sets,
            "dtypes": sorted(dtypes)}


def _field_pixel_size(rec: dict, pixel_size) -> tuple[float, float] | None:
    """``pixel_size`` (um, or (y, x) um) when given, else what the first channel file says."""
    if pixel_size is not None:
        y, x = (pixel_size, pixel_size) if isinstance(pixel_size, (int, float)) else pixel_size
        return float(y), float(x)
    paths = rec.get("channel_paths") or []
    return pixel_size_um(paths[0]) if paths else None


@FORMATS.register("ome-zarr")
def write_omezarr(recs: list[dict], out: Path, manifest_info: dict, opts: dict) -> dict:
    """One OME-Zarr HCS plate per manifest plate; one dask task per plate."""
    import pandas as pd

    from ..curate.ledger import LEDGER_COLUMNS, Ledger

    ident = identity("ome-zarr", manifest_info, opts)
    claim_folder(out, ident, opts["overwrite"],
                 ("*.ome.zarr", "shards.json", "ledger.parquet", "index.parquet"))
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
              opts["channel_mode"], opts["qc"], opts["gray"], int(opts.get("pyramid_levels") or 0),
              opts.get("pixel_size"))
             for p, f in sorted(plates.items())]
    results = run_tasks_for(tasks, opts)
    ledger = Ledger()
    ledger.extend(pd.DataFrame(early + [x for r in results for x in r["ledger"]], columns=list(LEDGER_COLUMNS)))
    written = sum(r["rows_written"] for r in results)
    ledger.check(len(recs), written, where=f"ome-zarr {out}")
    ledger.write(out / "ledger.parquet")
    save_parquet(out / "index.parquet", _key_map([x for r in results for x in r["index"]]))
    moments = Moments()
    for r in results:
        moments.merge(Moments(r["moments"]))
    by_reason = {str(k): int(v) for k, v in Counter(ledger.to_frame()["reason"]).items()}
    channel_sets = []
    for r in results:
        channel_sets += [c for c in r["channel_sets"] if c not in channel_sets]
    dtypes = sorted({d for r in results for d in r["dtypes"]})
    from .. import __version__

    save_json(out / "shards.json", {"format": FORMAT, "version": 1, "ngff": "0.5",
                                    "channels": channel_sets[0] if len(channel_sets) == 1 else None,
                                    "channel_mode": opts["channel_mode"],
                                    "dtype": dtypes[0] if len(dtypes) == 1 else None,
                                    "cytodata_version": __version__,
                                    "plates": {p: f"{safe[p]}.ome.zarr" for p in sorted(plates)},
                                    "n_samples": written, "normalization": moments.summary(),
                                    "manifest": dict(manifest_info, identity=ident),
                                    "ledger": {"rows": len(ledger), "by_reason": by_reason}})
    return {"format": FORMAT, "out": str(out), "rows_in": len(recs), "rows_written": written,
            "samples": written, "dropped": by_reason, "shards": len(tasks), "shards_resumed": 0,
            "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()), "pixel_bytes": 0}


def _key_map(rows: list[dict]):
    """index.parquet: manifest key -> plate, well, field and the field's path (FORMAT.md 3)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else [
        "key", "plate", "well", "row", "column", "field", "path", "n_channels", "height", "width",
        "pixel_size_y_um", "pixel_size_x_um",
        *[c for c in INDEX_COLUMNS if c not in ("plate", "well")]])
    for col in ("field", "n_channels", "height", "width"):
        frame[col] = frame[col].astype("int64")
    for col in ("pixel_size_y_um", "pixel_size_x_um"):
        frame[col] = frame[col].astype("float64")
    for col in frame.columns:
        if col in ("site",):
            frame[col] = frame[col].astype("Int64")
        elif frame[col].dtype == object:
            frame[col] = frame[col].astype("string")
    return frame.sort_values("key", kind="stable").reset_index(drop=True)


def run_tasks_for(tasks, opts):
    """Run the OME-Zarr write tasks on the shard writer's task runner (dask or synchronous)."""
    from ._run import run_tasks

    return run_tasks(_write_plate, tasks, scheduler=opts["scheduler"], n_workers=opts["n_workers"],
                     progress=opts["progress"], desc="plates")
