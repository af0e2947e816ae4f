"""The image QC stage: every manifest image checked, duplicates found, a report with montages.

The rules, their thresholds and ``check`` live in :mod:`cytodata.images.qc` (re-exported
here); this module runs them over a manifest. ``run_qc`` reads every manifest row (in parallel
with dask for large inputs) and writes ``OUT/qc.parquet``, ``OUT/ledger.parquet``,
``OUT/report.md`` and ``OUT/montage_<reason>.png``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .._files import save_parquet
from ..errors import EmptyResultError, ImageReadError
from ..images.qc import DEFAULT_RULES, QC_RULES, QCConfig, _as_config, check, manifest_image_qc

__all__ = [
    "QC_RULES", "QCConfig", "DEFAULT_RULES", "DUPLICATE_REASON", "check", "pixel_hash",
    "find_duplicates", "run_qc", "manifest_image_qc",
]

DUPLICATE_REASON = "duplicate pixels"


# --- duplicates ---------------------------------------------------------------------------

def pixel_hash(image: np.ndarray) -> str:
    """128-bit BLAKE2b hex digest of dtype, shape and pixel bytes (equal hash = equal pixels)."""
    img = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.dtype.str}|{img.shape}|".encode())
    h.update(memoryview(img).cast("B"))
    return h.hexdigest()


def find_duplicates(hashes: pd.Series, labels: pd.Series | None = None) -> pd.DataFrame:
    """Groups of rows with identical pixel hashes (NA hashes ignored).

    ``hashes`` is indexed by row id (e.g. key); ``labels`` (same index, optional) flags
    groups whose members disagree. Returns one row per member of a duplicated group:
    ``id, hash, group, first`` (the first member in input order is kept, the others are
    dropped as "duplicate pixels"), ``size`` and ``conflicting_labels``.
    """
    cols = ["id", "hash", "group", "first", "size", "conflicting_labels"]
    h = hashes.dropna().astype(str)
    dup = h[h.duplicated(keep=False)]
    if dup.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            cols, ["object", "string", "int64", "bool", "int64", "bool"])})
    frame = pd.DataFrame({"id": dup.index, "hash": dup.to_numpy()})
    frame["group"] = pd.factorize(frame["hash"])[0]
    frame["first"] = ~frame["hash"].duplicated(keep="first")
    frame["size"] = frame.groupby("group")["id"].transform("size")
    if labels is not None:
        lab = labels.reindex(dup.index).astype("string").to_numpy()
        frame["label"] = lab
        n_labels = frame.groupby("group")["label"].transform(lambda s: s.dropna().nunique())
        frame["conflicting_labels"] = (n_labels > 1).to_numpy()
        frame = frame.drop(columns="label")
    else:
        frame["conflicting_labels"] = False
    frame = frame.sort_values("group", kind="stable").reset_index(drop=True)
    return frame.astype({"hash": "string"})[cols]


# --- running over a manifest --------------------------------------------------------------

def _window(row: Mapping):
    from ..images.rows import window_of

    return window_of(row)


def _load(paths, window):
    # the one image-loading path shared with the shard writers (cytodata.images.rows)
    from ..images.rows import read_window

    return read_window(list(paths), window, expected_channels=len(paths) or None)


def _qc_one(paths, window, cfg: QCConfig) -> tuple[str | None, str | None, str | None]:
    """``(reason, hash, detail)`` for one manifest row; read errors become their reason."""
    try:
        img = _load(paths, window)
    except ImageReadError as exc:
        return exc.reason, None, str(exc)
    except ValueError as exc:  # e.g. a crop window outside the image
        return "wrong shape", None, str(exc)
    return check(img, cfg), pixel_hash(img), None


def _qc_batch(rows: list, cfg: QCConfig) -> list:
    return [_qc_one(paths, window, cfg) for paths, window in rows]


def _run_parallel(tasks: list, cfg: QCConfig, *, n_workers: int | None, scheduler: str | None,
                  progress: bool, batch: int = 32) -> list:
    from .._progress import bar as progress_bar

    chunks = [tasks[i:i + batch] for i in range(0, len(tasks), batch)]
    small = scheduler is None and (n_workers == 1 or (n_workers is None and len(tasks) < 256))
    bar = progress_bar(total=len(tasks), desc="qc", unit="img", progress=progress)
    results: list = [None] * len(chunks)
    if small:
        for i, chunk in enumerate(chunks):
            results[i] = _qc_batch(chunk, cfg)
            bar.update(len(chunk))
    else:
        from distributed import Client, LocalCluster, as_completed

        cluster = None
        if scheduler is None:
            cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                                   processes=True, dashboard_address=None)
        if scheduler:
            from .._cluster import connect  # timeout + ClusterError naming the address

            client = connect(scheduler)
        else:
            client = Client(cluster)
        try:
            futures = client.map(_qc_batch, chunks, cfg=cfg, pure=False)
            where = {f.key: i for i, f in enumerate(futures)}
            for fut in as_completed(futures):
                results[where[fut.key]] = fut.result()
                bar.update(len(chunks[where[fut.key]]))
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    bar.close()
    return [r for chunk in results for r in chunk]


def _slug(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")


def _thumbnail(img: np.ndarray, size: int) -> np.ndarray:
    from ..images.normalize import merge_gray, resize

    gray = merge_gray(img) if img.dtype.kind != "f" or np.isfinite(img).all() else \
        merge_gray(np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0))
    return (resize(gray, (size, size))[0] >> 8).astype(np.uint8)


def _montage(images: list[np.ndarray], path: Path, *, thumb: int = 128, cols: int = 4) -> None:
    from PIL import Image

    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    canvas = np.zeros((rows * (thumb + 2), cols * (thumb + 2)), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (thumb + 2):r * (thumb + 2) + thumb, c * (thumb + 2):c * (thumb + 2) + thumb] = \
            _thumbnail(img, thumb)
    Image.fromarray(canvas).save(path)


def _write_report(path: Path, n: int, qc: pd.DataFrame, dups: pd.DataFrame, cfg: QCConfig,
                  montages: dict[str, str]) -> None:
    counts = qc["reason"].value_counts()
    lines = ["# Image QC report", "", f"- images checked: {n}",
             f"- passed: {int(qc['reason'].isna().sum())}", f"- failed: {int(qc['reason'].notna().sum())}",
             "", "## Failures by reason", "", "| reason | images | montage |", "|---|---:|---|"]
    for reason, count in counts.items():
        lines.append(f"| {reason} | {int(count)} | {montages.get(reason, '')} |")
    conflicts = dups[dups["conflicting_labels"]]
    lines += ["", "## Duplicate pixels", "",
              f"- duplicate groups: {dups['group'].nunique() if len(dups) else 0}",
              f"- groups with conflicting labels: {conflicts['group'].nunique() if len(conflicts) else 0}"]
    for _, grp in conflicts.groupby("group"):
        lines.append(f"  - {', '.join(map(str, grp['id']))}")
    lines += ["", "## Settings", "", "```", *(f"{k}: {v}" for k, v in cfg.to_dict().items()), "```", ""]
    path.write_text("\n".join(lines))


def run_qc(
    manifest: pd.DataFrame | str | Path, out: str | Path, *, config: "QCConfig | Mapping | None" = None,
    n_workers: int | None = None, scheduler: str | None = None, montage_per_reason: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """QC every manifest row's image; write qc.parquet, ledger.parquet, report.md, montages.

    ``manifest`` is a harmonized table or a manifest folder/file. Images are read with
    ``cytodata.images.io.read_image(channel_paths)`` (crop rows are cut to their window).
    Small inputs (< 256 rows, or ``n_workers=1``) run in this process; otherwise on a dask
    ``LocalCluster(n_workers)`` or the ``scheduler`` address. Identical pixels beyond a
    group's first row are dropped as "duplicate pixels". Returns the qc table
    (``key, image_id, reason, hash, detail``; ``reason`` NA = passed).
    """
    from .._stages import claim_stage_folder
    from ..ledger import Ledger
    from ..schema import conform, read_manifest

    cfg = _as_config(config)
    out = claim_stage_folder(out, "qc", inputs=(
        manifest if isinstance(manifest, (str, Path)) else None,))
    table = read_manifest(manifest) if isinstance(manifest, (str, Path)) else conform(manifest)
    table = table.reset_index(drop=True)
    out.mkdir(parents=True, exist_ok=True)
    records = table.to_dict("records")
    tasks = [(list(r["channel_paths"]), _window(r)) for r in records]
    results = _run_parallel(tasks, cfg, n_workers=n_workers, scheduler=scheduler, progress=progress)
    qc = pd.DataFrame({
        "key": table["key"].astype("string"),
        "image_id": table["image_id"].astype("string"),
        "reason": pd.array([r[0] for r in results], dtype="string"),
        "hash": pd.array([r[1] for r in results], dtype="string"),
        "detail": pd.array([r[2] for r in results], dtype="string"),
    })
    labels = table["label"] if "label" in table.columns else None
    dups = find_duplicates(qc.set_index("key")["hash"],
                           None if labels is None else labels.set_axis(qc["key"]))
    later = dups.loc[~dups["first"]]
    if len(later):
        first_of = dups[dups["first"]].set_index("group")["id"]
        pos = qc.index[qc["key"].isin(later["id"]) & qc["reason"].isna()]
        detail = later.set_index("id")["group"].map(first_of)
        qc.loc[pos, "reason"] = DUPLICATE_REASON
        qc.loc[pos, "detail"] = "same pixels as " + qc.loc[pos, "key"].map(detail).astype("string")

    ledger = Ledger()
    failed = qc["reason"].notna()
    for reason, idx in qc.index[failed].groupby(qc.loc[failed, "reason"]).items():
        ledger.drop(table.loc[idx], stage="qc", reason=str(reason), detail=qc.loc[idx, "detail"])
    ledger.check(len(table), int((~failed).sum()), where="qc")

    montages: dict[str, str] = {}
    if montage_per_reason > 0:
        for reason, idx in qc.index[failed].groupby(qc.loc[failed, "reason"]).items():
            imgs = []
            for i in idx:
                if len(imgs) >= montage_per_reason:
                    break
                try:
                    img = _load(*tasks[i])
                except (ImageReadError, ValueError):
                    continue
                if img.ndim == 3 and img.size:
                    imgs.append(img)
            if imgs:
                name = f"montage_{_slug(str(reason))}.png"
                _montage(imgs, out / name)
                montages[str(reason)] = name

    save_parquet(out / "qc.parquet", qc)
    ledger.write(out / "ledger.parquet")
    _write_report(out / "report.md", len(table), qc, dups, cfg, montages)
    return qc


# --- CLI ----------------------------------------------------------------------------------

def _cli(args) -> int:
    if args.config:
        cfg = QCConfig.from_yaml(args.config)
    else:  # the rules of the recipe the manifest was built from, else the defaults
        cfg, _ = manifest_image_qc(args.manifest)
    qc = run_qc(args.manifest, args.out, config=cfg, n_workers=args.workers, scheduler=args.scheduler,
                montage_per_reason=args.montage, progress=not args.quiet)
    counts = qc["reason"].fillna("passed").value_counts()
    print(f"qc: {len(qc)} images -> {args.out}")
    for reason, count in counts.items():
        print(f"  {reason:<20} {int(count)}")
    print(f"next: cytodata shard {args.manifest} --qc {args.out} -o SHARD_DIR")
    if int(qc["reason"].isna().sum()) == 0:
        failed = qc["reason"].value_counts()
        top = (f"; largest reason: {failed.index[0]!r} ({int(failed.iloc[0])} images)"
               if len(failed) else "")
        raise EmptyResultError(f"qc: no image of {args.manifest} passed ({len(qc)} checked){top}; "
                          f"see {args.out}/report.md")
    return 0
