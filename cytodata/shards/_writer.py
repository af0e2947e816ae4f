"""``write(manifest, out, format=...)``: plan, resume check, parallel shard tasks, index files.

Side effects live here (folders, clusters); the per-shard work is in ``webdataset.py`` /
``zarr.py`` and the planning in ``_plan.py``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .._cluster import run_tasks
from .._files import file_sha256, load_json_dict, save_json
from .._registry import Registry
from ..errors import ShardError
from . import _plan
from ._finalize import finalize, index_frame, sweep_temps
from ._options import SampleOptions, WriteOptions
from ._samples import CHANNEL_MODES, INDEX_COLUMNS, Dropped, digest, records
from .checksum import COLUMN as CHECKSUM
from .codecs import CODECS

#: output formats: ``fn(recs, out, manifest_info, opts: WriteOptions) -> summary``
FORMATS: Registry[Callable[[list[dict], Path, dict, WriteOptions], dict]] = Registry("shard format")

PLAN_FILE = "plan.json"
#: what the identity digest was made of, so that a refusal can say what differs
IDENTITY_FILE = "identity.json"


class Identity(str):
    """The identity digest (a str, stored as such) that also carries the ``parts`` it hashes."""

    parts: dict


def _load_manifest(manifest) -> tuple[pd.DataFrame, dict]:
    """The validated table and its file's ``{"sha256", "path"}`` (empty for a DataFrame)."""
    from ..schema import conform, read_manifest, validate

    if isinstance(manifest, pd.DataFrame):
        return validate(conform(manifest), where="manifest DataFrame"), {}
    p = Path(manifest)
    table = read_manifest(p)
    f = p / "manifest.parquet" if p.is_dir() else p
    return table, {"sha256": file_sha256(f), "path": str(f.resolve())}


def write(manifest, out, *, format: str = "webdataset", codec: str = "blosc-lz4",  # noqa: A002
          shard_size: str | int = "256MB", samples_per_shard: int | None = None,
          channel_mode: str = "own", qc=None, scheduler: str | None = None,
          n_workers: int | None = None, progress: bool = True, overwrite: bool = False,
          gray: str | None = "auto", qc_results=None, min_class_size: int | None = None,
          **options: Any) -> dict:
    """Write the images of a manifest as shards; return a summary dict (see FORMAT.md).

    ``manifest``: a manifest folder/``manifest.parquet`` or a harmonized DataFrame.
    ``format``: ``webdataset`` (tar shards), ``zarr`` (one (N, C, H, W) array) or ``ome-zarr``.
    ``shard_size``: target tar size (e.g. ``"256MB"``; 100MB-1GB streams well from object
    stores); ``samples_per_shard`` overrides it. ``channel_mode``: ``own`` (each image's
    channels), ``merged`` (one gray channel after per-channel percentile scaling) or
    ``split`` (one sample per channel). ``qc``: rules passed to ``cytodata.curate.qc.check``.
    ``scheduler``: None (dask LocalCluster of ``n_workers``), ``"synchronous"`` or a dask
    scheduler address. Unreadable images go to ``OUT/ledger.parquet``; they never crash the run.
    ``qc_results``: the output folder of ``cytodata qc`` (or its ``qc.parquet``, or a frame with
    ``key, reason, detail``): rows it failed are not written and go to the ledger with the QC
    reason, so every manifest row ends as a sample or a ledger row; ``min_class_size`` then drops
    classes left under it (``below floor``). ``OUT`` must not be the
    manifest's folder nor hold another stage's or unrelated files.
    ``options``: the format options of :class:`~cytodata.shards._options.WriteOptions`
    (``tile``, ``chunk`` for zarr; ``pixel_size``, ``pyramid_levels`` for ome-zarr); another
    name is a TypeError.
    """
    from .._stages import claim_stage_folder

    CODECS.get(codec)
    CHANNEL_MODES.get(channel_mode)
    writer = FORMATS.get(format)
    opts = WriteOptions.from_write(
        codec=codec, shard_size=_plan.parse_size(shard_size), samples_per_shard=samples_per_shard,
        channel_mode=channel_mode, qc=qc, scheduler=scheduler, n_workers=n_workers,
        progress=progress, overwrite=overwrite, gray=gray, **options)
    out = claim_stage_folder(out, "shards", empty_or_own=True, inputs=(
        manifest if not isinstance(manifest, pd.DataFrame) else None,
        qc_results if isinstance(qc_results, (str, Path)) else None))
    table, source = _load_manifest(manifest)
    recs = records(table)
    check_keys(recs)
    if qc_results is not None:
        gate_with_qc(recs, qc_results, min_class_size)
    out.mkdir(parents=True, exist_ok=True)
    manifest_info = {"sha256": source.get("sha256"), "content_sha256": digest(recs), "n_rows": len(recs)}
    if source:
        manifest_info["path"] = source["path"]  # cytodata.shards.source finds it (checked by sha256)
    started = time.perf_counter()
    summary = writer(recs, out, manifest_info, opts)
    seconds = time.perf_counter() - started
    summary["seconds"] = round(seconds, 3)
    summary["mb_per_s"] = round(summary.get("pixel_bytes", 0) / 1e6 / max(seconds, 1e-9), 2)
    return summary


def gate_with_qc(recs: list[dict], qc_results, min_class_size: int | None = None) -> int:
    """Mark records that image QC failed (``rec["qc_reject"] = [reason, detail]``).

    Returns how many. With ``min_class_size`` (the recipe's ``upsample.floor``), the rows of a
    label left under it after QC are marked ``below floor`` too. Warns for a source with no
    row left. Raises ShardError when the QC results do not cover every record.
    """
    if isinstance(qc_results, pd.DataFrame):
        qc, where = qc_results, "qc_results"
    else:
        p = Path(qc_results)
        f = p / "qc.parquet" if p.is_dir() else p
        if not f.exists():
            raise ShardError(f"QC results {f} not found; run `cytodata qc MANIFEST -o {p}` first "
                             "or drop --qc to shard without QC gating")
        qc, where = pd.read_parquet(f), str(f)
    missing_cols = {"key", "reason"} - set(qc.columns)
    if missing_cols:
        raise ShardError(f"{where}: column(s) {sorted(missing_cols)} missing; expected the "
                         "qc.parquet written by `cytodata qc`")
    keys = qc["key"].astype(str)
    reason = dict(zip(keys, qc["reason"], strict=True))
    detail = dict(zip(keys, qc["detail"], strict=True)) if "detail" in qc.columns else {}
    uncovered = [r["key"] for r in recs if r["key"] not in reason]
    if uncovered:
        raise ShardError(
            f"{where} has no QC result for {len(uncovered)} of {len(recs)} manifest rows (e.g. "
            f"{uncovered[:3]}); it was run on another manifest. Re-run `cytodata qc` on this one")
    n = 0
    for rec in recs:
        why = reason[rec["key"]]
        if why is not None and not pd.isna(why):
            d = detail.get(rec["key"])
            d = "" if d is None or pd.isna(d) else f": {d}"
            rec["qc_reject"] = [str(why), f"{rec['key']}: rejected by image QC ({where}){d}"]
            n += 1
    passed = [r for r in recs if not r.get("qc_reject")]
    if min_class_size:
        left = Counter(r["label"] for r in passed if r["label"] is not None)
        for rec in passed:
            if rec["label"] is not None and left[rec["label"]] < min_class_size:
                rec["qc_reject"] = ["below floor", f"{rec['key']}: class {rec['label']!r} has "
                                    f"{left[rec['label']]} rows after image QC; floor "
                                    f"{min_class_size}"]
                n += 1
    _warn_empty_sources(recs)
    return n


def _warn_empty_sources(recs: list[dict]) -> None:
    import warnings

    by_source: dict[str, Counter] = {}
    for rec in recs:
        c = by_source.setdefault(str(rec["source"]), Counter())
        c[rec["qc_reject"][0] if rec.get("qc_reject") else None] += 1
    for source, c in by_source.items():
        if c[None] == 0:
            reason, count = c.most_common(1)[0]
            warnings.warn(f"source {source!r} has no row left after image QC ({count} rows "
                          f"'{reason}'); its images will be missing from the shards",
                          UserWarning, stacklevel=3)


# --- keys ---------------------------------------------------------------------------------
_WINDOWS_RESERVED = ':<>"|?*'
_WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"{d}{i}" for d in ("COM", "LPT") for i in range(1, 10))})


def key_problem(key) -> str | None:
    r"""Why ``key`` cannot name tar members / files safely, or None when it can.

    Refused: empty keys, ``/`` and ``\`` (path separators), ``.`` anywhere (covers ``..`` and
    a leading dot; webdataset also splits ``KEY.ext`` at the first dot), a leading ``-`` (read as
    an option by ``tar`` and shell tools), whitespace and control/format characters, and what
    Windows misuses: ``:`` (``C:x`` joins drive-relative, ``a:b`` names an NTFS stream), the
    other reserved characters ``<>"|?*``, and device names (``CON``, ``NUL``, ``COM1``...,
    reserved whatever the extension).
    """
    import unicodedata

    if not isinstance(key, str) or not key:
        return "empty key"
    if "/" in key or "\\" in key:
        return "path separator"
    if "." in key:
        return "dot (member names are KEY.ext; '..' climbs out of a folder)"
    if key.startswith("-"):
        return "leading '-' (read as a command-line option)"
    if reserved := sorted(set(key) & set(_WINDOWS_RESERVED)):
        return f"character {reserved[0]!r} (reserved on Windows: '{_WINDOWS_RESERVED}')"
    if key.upper() in _WINDOWS_DEVICES:
        return f"Windows device name {key!r}"
    bad = [c for c in key if c.isspace() or unicodedata.category(c).startswith("C")]
    if bad:
        return f"whitespace or control character {bad[0]!r}"
    return None


def check_keys(recs: list[dict]) -> None:
    """Refuse a manifest whose keys a tar extractor or a path join could misuse (ShardError).

    Keys are refused rather than rewritten: a rewritten key would no longer match the manifest,
    the ledger or embeddings keyed by it. ``schema.make_key`` always yields safe keys.
    """
    bad = [(r["key"], r.get("image_id"), why) for r in recs if (why := key_problem(r["key"])) is not None]
    if bad:
        shown = "; ".join(f"key {k!r} of image_id {i!r}: {why}" for k, i, why in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ShardError(f"{len(bad)} manifest key(s) are unsafe as tar member names: {shown}{more}. "
                         "Keys may hold letters, digits, '_' and '-' (not leading); rebuild them with "
                         "cytodata.schema.make_key(source, image_id)")


# --- identity / resume ---------------------------------------------------------------------
#: the options that change a set's bytes: part of its identity (``chunk`` is checked by the
#: Zarr writer's layout, ``pixel_size`` only changes metadata of a set that is rewritten anyway)
IDENTITY_OPTIONS = ("codec", "channel_mode", "shard_size", "samples_per_shard", "qc", "gray", "tile",
                    "pyramid_levels")


def identity(fmt: str, manifest_info: dict, opts: WriteOptions) -> str:
    """What makes two shard sets "the same": manifest content + every option that changes bytes."""
    parts = {"format": fmt, "manifest": manifest_info["content_sha256"],
             "options": {k: repr(getattr(opts, k)) for k in IDENTITY_OPTIONS}}
    ident = Identity(digest(parts))
    ident.parts = parts
    return ident


def _flat(parts: dict) -> dict[str, str]:
    flat = {"format": str(parts.get("format")),
            "manifest rows (content sha256)": str(parts.get("manifest"))}
    flat.update({k: str(v) for k, v in (parts.get("options") or {}).items()})
    return flat


def what_differs(out: Path, ident: str) -> str:
    """Say what differs: ``"codec: 'blosc-lz4' here, 'zstd' requested; ..."`` (or a hint)."""
    new = getattr(ident, "parts", None)
    old = load_json_dict(out / IDENTITY_FILE)
    if new is None or old is None:
        # sets written before identity.json: compare what shards.json recorded
        meta = load_json_dict(out / "shards.json") or {}
        if new is None or not meta:
            return "other manifest, format, codec or options"
        fmt = str(meta.get("format", "")).replace("cytodata-", "")
        old = {"format": fmt, "manifest": (meta.get("manifest") or {}).get("content_sha256"),
               "options": {k: repr(meta[k]) for k in ("codec", "channel_mode") if k in meta}}
        new = dict(new, options={k: v for k, v in new["options"].items() if k in old["options"]})
    a, b = _flat(old), _flat(new)
    diffs = [f"{k}: {a.get(k, '?')} here, {b.get(k, '?')} requested" for k in b if a.get(k) != b[k]]
    return "; ".join(diffs) or ("same options, but the folder's plan does not match "
                                "(an interrupted rewrite?)")


def claim_folder(out: Path, ident: str, overwrite: bool, patterns: tuple[str, ...]) -> dict | None:
    """Check ``out`` against a previous plan; return that plan when resuming the same set.

    A folder holding another shard set raises :class:`ShardError` (or is cleared with
    ``overwrite=True``); files we did not write are left alone.
    """
    plan_path = out / PLAN_FILE
    ours = [p for pat in patterns for p in out.glob(pat)]
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
        if plan.get("identity") == ident:
            _save_identity(out, ident)
            return plan
    elif not ours:
        _save_identity(out, ident)
        return None
    if not overwrite:
        raise ShardError(
            f"{out} already holds a different shard set ({what_differs(out, ident)}"
            f"{'' if plan_path.exists() else '; no plan.json'}); choose another output folder "
            "or pass overwrite=True (CLI: --overwrite) to replace it"
        )
    for p in ours + [plan_path, out / IDENTITY_FILE]:
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    _save_identity(out, ident)
    return None


def _save_identity(out: Path, ident: str) -> None:
    parts = getattr(ident, "parts", None)
    if parts is not None:
        save_json(out / IDENTITY_FILE, parts)


def begin(out: Path, fmt: str, manifest_info: dict, opts: WriteOptions,
          patterns: tuple[str, ...]) -> tuple[str, dict | None]:
    """The first step of every format: identity, folder claim (see :func:`claim_folder`) and a
    sweep of earlier temp files; returns ``(identity, previous plan or None)``.
    """
    ident = identity(fmt, manifest_info, opts)
    plan = claim_folder(out, ident, opts.overwrite, patterns)
    sweep_temps(out)
    return ident, plan


def probe_row_bytes(recs: list[dict], codec: str, samples: SampleOptions, limit: int = 16) -> int:
    """Encoded bytes of the first readable row (key order): sizes the shards up front."""
    enc = CODECS.get(codec)
    unchecked = SampleOptions(samples.channel_mode, None, samples.gray)  # QC would only skip rows
    for rec in recs[:limit]:
        try:
            loaded = unchecked.load(rec)
        except Dropped:
            continue
        return sum(len(enc.encode(s.image)) + 1536 for s in loaded)  # + tar headers, json
    return 1


# --- webdataset -----------------------------------------------------------------------------
_WDS_PATTERNS = ("shard-*.tar", "shard-*.tar.done.json", "shard-*.tmp-*", "index.parquet",
                 "shards.json", "ledger.parquet")


@FORMATS.register("webdataset")
def write_webdataset(recs: list[dict], out: Path, manifest_info: dict, opts: WriteOptions) -> dict:
    """Plan shards, skip verified ones, write the rest in parallel, then the index files."""
    from .webdataset import FORMAT, ShardTask, write_shard

    ident, plan = begin(out, "webdataset", manifest_info, opts, _WDS_PATTERNS)
    if plan is None:
        per = opts.samples_per_shard or _plan.samples_per_shard(
            opts.shard_size, probe_row_bytes(recs, opts.codec, opts.samples))
        plan = {"format": FORMAT, "identity": ident, "samples_per_shard": int(per),
                "n_rows": len(recs), "manifest": manifest_info}
        save_json(out / PLAN_FILE, plan)
    groups = _plan.assign(len(recs), plan["samples_per_shard"])
    done: dict[int, dict] = {}  # shard number (from the plan) -> its stats
    todo: list[ShardTask] = []
    for i, rows in enumerate(groups):
        name = _plan.shard_name(i)
        side = out / f"{name}.done.json"
        if (out / name).exists() and side.exists():
            stats = load_json_dict(side) or {}  # unreadable sidecar: redo the shard
            if stats.get("sha256") == file_sha256(out / name):
                done[i] = stats
                continue
        for p in (out / name, side):
            if p.exists():
                p.unlink()
        todo.append(ShardTask(out=str(out), index=i, recs=[recs[r] for r in rows], codec=opts.codec,
                              samples=opts.samples))
    results = run_tasks(write_shard, [(task,) for task in todo], scheduler=opts.scheduler,
                        n_workers=opts.n_workers, progress=opts.progress, desc="shards")
    done.update({task.index: stats for task, stats in zip(todo, results)})
    summary = finalize_webdataset(out, done, plan, manifest_info, opts, resumed=len(groups) - len(todo))
    summary["pixel_bytes"] = sum(r["pixel_bytes"] for r in results)  # this run's work, for MB/s
    return summary


#: index.parquet's leading columns (then the manifest's INDEX_COLUMNS), FORMAT.md section 1
_WDS_INDEX = ("shard", "shard_index", "key", "offset", "size", "meta_offset", "meta_size",
              "n_channels", "height", "width", CHECKSUM)
_WDS_INTS = ("shard_index", "offset", "size", "meta_offset", "meta_size", "n_channels", "height", "width")


def finalize_webdataset(out: Path, done: dict[int, dict], plan: dict, manifest_info: dict,
                        opts: WriteOptions, resumed: int = 0) -> dict:
    """index.parquet, ledger.parquet and shards.json of a WebDataset set (through :func:`finalize`).

    ``done``: shard number -> its stats (a task's result or its ``.done.json`` sidecar).
    """
    from .webdataset import FORMAT, VERSION

    shards = [done[i] for i in sorted(done)]
    rows = [dict(r, shard_index=i) for i in sorted(done) for r in done[i]["index"]]
    index = index_frame(rows, ints=_WDS_INTS, strings=("shard", CHECKSUM))
    if len(index):
        # shards kept from a run of an older version have no checksum: NA (the loader warns)
        if CHECKSUM not in index:
            index[CHECKSUM] = pd.Series(pd.NA, index=index.index, dtype="string")
        index = index[list(_WDS_INDEX) + [c for c in INDEX_COLUMNS]]
    shapes = {(int(c), int(h), int(w)) for c, h, w in
              index[["n_channels", "height", "width"]].itertuples(index=False)} if len(index) else set()
    meta = {"codec": opts.codec, "ext": CODECS.get(opts.codec).ext,
            "shape": list(next(iter(shapes))) if len(shapes) == 1 else None,
            "samples_per_shard": plan["samples_per_shard"],
            "shards": [{k: s[k] for k in ("name", "sha256", "samples", "bytes")} for s in shards]}
    return finalize(out, shards, index, fmt=FORMAT, version=VERSION, manifest_info=manifest_info,
                    identity=plan["identity"], channel_mode=opts.channel_mode, meta=meta,
                    summary={"shards_resumed": resumed, "bytes": sum(s["bytes"] for s in shards)})
