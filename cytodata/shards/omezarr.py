"""OME-Zarr HCS plate export: ``OUT/<plate>.ome.zarr/<row>/<column>/<field>`` (c, y, x) images.

For viewers (napari, OMERO) and NGFF tools rather than training. Written with the
``ome_zarr`` package's writer in NGFF 0.5 (zarr v3), which ``ome_zarr`` 0.18's Reader reads.
Wells come from the manifest ``well`` column (``B02`` -> row ``B``, column ``02``), fields
from ``site`` (ordered per well). Rows without plate/well go to the ledger ("no plate/well").
Each field carries omero channel labels (the manifest's channel names) and, where known
(``pixel_size=`` or the source TIFF's OME/ImageJ metadata), pixel sizes in micrometers;
``OUT/index.parquet`` maps every manifest key to its plate, well and field. Treatment
annotations (compound, concentration, MOA, label, control type) are in the well, field and
plate groups' ``attrs["cytodata"]`` (FORMAT.md section 3).
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from .._cluster import run_tasks
from .._files import save_json
from ..errors import ShardError
from ._finalize import finalize, index_frame
from ._options import SampleOptions, WriteOptions
from ._samples import INDEX_COLUMNS, Dropped, Moments, moment_groups
from ._writer import FORMATS, begin

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


#: treatment columns a well carries in its ``attrs["cytodata"]`` (and the plate's ``wells`` table)
WELL_ANNOTATIONS: tuple[str, ...] = ("compound", "concentration", "moa", "label", "category",
                                     "control_type")


def well_annotations(fields: list[dict]) -> dict:
    """One well's annotations from its fields' records: a value all fields share, else the
    sorted list of their distinct values (each field's own value is in its group's attrs).
    """
    out = {}
    for key in WELL_ANNOTATIONS:
        values = {json.dumps(f.get(key), sort_keys=True) for f in fields}
        decoded = sorted((json.loads(v) for v in values), key=lambda v: (v is None, str(v)))
        out[key] = decoded[0] if len(decoded) == 1 else decoded
    return out


def _split_well(well: str) -> tuple[str, str] | None:
    m = _WELL.match(well or "")
    return (m.group(1).upper(), f"{int(m.group(2)):02d}") if m else None


@dataclass(frozen=True)
class PlateField:
    """One manifest record placed in its plate: well row letter(s) and zero-padded column."""

    rec: dict
    row: str
    column: str


@dataclass(frozen=True)
class PlateTask:
    """One dask task: write the plate group at ``path`` (``OUT/<plate>.ome.zarr``).

    ``fields`` in well then site order; ``pyramid_levels`` extra levels (each halving y, x);
    ``pixel_size``: micrometers (or ``(y, x)``), None to read it from each field's first file.
    """

    path: str
    plate: str
    fields: list[PlateField]
    samples: SampleOptions
    pyramid_levels: int = 0
    pixel_size: float | tuple[float, float] | None = None


def _write_plate(task: PlateTask) -> dict:
    """Task: one plate group with all its wells and fields; returns ledger, key map, stats.

    A plate none of whose fields can be read is not written (its folder is removed): its
    rows are all in the ledger.
    """
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    fmt, path, plate = FormatV05(), task.path, task.plate
    root = zarr.open_group(path, mode="w", zarr_format=3)
    ledger, wells, moments, index, labels = [], defaultdict(list), Moments(), [], Counter()
    annotations: dict[tuple[str, str], list[dict]] = defaultdict(list)
    channel_sets, dtypes, pixel_bytes = [], set(), 0
    for f in task.fields:
        rec, row, col = f.rec, f.row, f.column
        try:
            sample = task.samples.load(rec)[0]  # one sample per field: write_omezarr refuses split
            image = sample.image
        except Dropped as drop:
            ledger.append({"source": rec["source"], "input_id": rec["image_id"], "stage": "shard",
                           "reason": drop.reason, "detail": drop.detail})
            continue
        field = str(len(wells[(row, col)]))
        group = root.require_group(row).require_group(col).require_group(field)
        size = _field_pixel_size(rec, task.pixel_size)
        physical = ({"scale": {"c": 1.0, "y": size[0], "x": size[1]},
                     "axes_units": {"y": "micrometer", "x": "micrometer"}} if size else {})
        names = list(sample.channels) if len(sample.channels) == len(image) else [
            f"c{i}" for i in range(len(image))]
        write_image(image, group, scale_factors=[2 ** (k + 1) for k in range(task.pyramid_levels)],
                    axes="cyx", fmt=fmt, omero=_omero(names, image), **physical)
        group.attrs["cytodata"] = {"key": rec["key"], "source": rec["source"],
                                   "image_id": rec["image_id"], "site": rec.get("site"),
                                   **{k: rec.get(k) for k in WELL_ANNOTATIONS}}
        wells[(row, col)].append(field)
        annotations[(row, col)].append({k: rec.get(k) for k in WELL_ANNOTATIONS})
        moments.add(moment_groups(rec, plate), image, names)
        if names not in channel_sets:
            channel_sets.append(names)
        dtypes.add(str(image.dtype))
        pixel_bytes += image.nbytes
        if rec.get("label") is not None:
            labels[rec["label"]] += 1
        index.append({"key": rec["key"], "plate": plate, "well": rec.get("well"), "row": row,
                      "column": col, "field": int(field),
                      "path": f"{Path(path).name}/{row}/{col}/{field}",
                      "n_channels": int(image.shape[0]), "height": int(image.shape[1]),
                      "width": int(image.shape[2]),
                      "pixel_size_y_um": size[0] if size else None,
                      "pixel_size_x_um": size[1] if size else None,
                      **{c: rec.get(c) for c in INDEX_COLUMNS if c not in ("plate", "well")}})
    if wells:
        rows = sorted({r for r, _ in wells})
        cols = sorted({c for _, c in wells})
        write_plate_metadata(root, rows, cols, [f"{r}/{c}" for r, c in sorted(wells)], fmt=fmt,
                             name=plate, field_count=max(len(v) for v in wells.values()))
        table = {}
        for (r, c), fs in sorted(wells.items()):
            write_well_metadata(root[r][c], fs, fmt=fmt)
            table[f"{r}/{c}"] = well_annotations(annotations[(r, c)])
            # beside "ome": NGFF lets groups carry other keys; viewers ignore them
            root[r][c].attrs["cytodata"] = {"well": f"{r}{c}", **table[f"{r}/{c}"]}
        root.attrs["cytodata"] = {"plate": plate, "annotations": list(WELL_ANNOTATIONS), "wells": table}
    else:  # an HCS plate needs a well (ome-zarr refuses an empty one): no folder at all
        shutil.rmtree(path, ignore_errors=True)
    return {"ledger": ledger, "rows_written": sum(len(v) for v in wells.values()),
            "moments": moments.data, "index": index, "channel_sets": channel_sets,
            "dtypes": sorted(dtypes), "label_counts": dict(labels), "pixel_bytes": pixel_bytes}


def _field_pixel_size(rec: dict, pixel_size) -> tuple[float, float] | None:
    """``pixel_size`` (um, or (y, x) um) when given, else what the first channel file says."""
    if pixel_size is not None:
        y, x = (pixel_size, pixel_size) if isinstance(pixel_size, (int, float)) else pixel_size
        return float(y), float(x)
    paths = rec.get("channel_paths") or []
    return pixel_size_um(paths[0]) if paths else None


_OME_PATTERNS = ("*.ome.zarr", "shards.json", "ledger.parquet", "index.parquet")


@FORMATS.register("ome-zarr")
def write_omezarr(recs: list[dict], out: Path, manifest_info: dict, opts: WriteOptions) -> dict:
    """One OME-Zarr HCS plate per manifest plate; one dask task per plate."""
    if opts.channel_mode == "split":
        raise ShardError("format 'ome-zarr' writes one (c, y, x) image per field, so "
                         "channel_mode='split' (one sample per channel) has no place in it; use "
                         "`cytodata shard ... --channel-mode own` (or merged), or `--format zarr` "
                         "(or webdataset) for split (Python: channel_mode=, format=)")
    ident, _ = begin(out, "ome-zarr", manifest_info, opts, _OME_PATTERNS)
    save_json(out / "plan.json", {"format": FORMAT, "identity": ident, "n_rows": len(recs)})
    plates, early = defaultdict(list), []
    for rec in recs:
        rc = _split_well(rec.get("well") or "")
        if rec.get("plate") is None or rc is None:
            early.append({"source": rec["source"], "input_id": rec["image_id"], "stage": "shard",
                          "reason": "no plate/well", "detail": f"{rec['key']}: plate={rec.get('plate')!r} "
                          f"well={rec.get('well')!r}; OME-Zarr HCS needs both (use format='zarr')"})
            continue
        plates[rec["plate"]].append(PlateField(rec, *rc))
    safe = {p: re.sub(r"[^A-Za-z0-9_\-]+", "-", p) for p in plates}
    tasks = [PlateTask(path=str(out / f"{safe[p]}.ome.zarr"), plate=p,
                       fields=sorted(f, key=lambda t: (t.row, t.column, t.rec.get("site") or 0, t.rec["key"])),
                       samples=opts.samples, pyramid_levels=int(opts.pyramid_levels or 0),
                       pixel_size=opts.pixel_size)
             for p, f in sorted(plates.items())]
    results = run_tasks(_write_plate, [(task,) for task in tasks], scheduler=opts.scheduler,
                        n_workers=opts.n_workers, progress=opts.progress, desc="plates")
    written = {task.plate: Path(task.path).name for task, r in zip(tasks, results) if r["rows_written"]}
    index = _key_map([x for r in results for x in r["index"]])
    summary = finalize(out, results, index, fmt=FORMAT, version=1, manifest_info=manifest_info,
                       identity=ident, channel_mode=opts.channel_mode, early=early,
                       meta={"ngff": "0.5", "plates": written},
                       summary={"shards": len(written)})
    summary["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return summary


#: index.parquet's columns (FORMAT.md section 3)
_KEY_MAP = ("key", "plate", "well", "row", "column", "field", "path", "n_channels", "height", "width",
            "pixel_size_y_um", "pixel_size_x_um", *[c for c in INDEX_COLUMNS if c not in ("plate", "well")])


def _key_map(rows: list[dict]):
    """index.parquet: manifest key -> plate, well, field and the field's path (FORMAT.md 3)."""
    frame = index_frame(rows, ints=("field", "n_channels", "height", "width"),
                        floats=("pixel_size_y_um", "pixel_size_x_um"),
                        strings=("row", "column", "path"), columns=_KEY_MAP)
    return frame.sort_values("key", kind="stable").reset_index(drop=True)
