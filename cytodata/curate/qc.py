"""Image QC: pixel rules, duplicate detection, and a report with montages per failure reason.

Rules live in :data:`QC_RULES` (``@QC_RULES.register("reason")``); each is a pure function
``(image (C, H, W), QCConfig) -> bool`` that is ``True`` when the image FAILS, and its
registered name is the ledger reason. Statistics are computed at full bit depth and exactly
(histogram percentiles for 8/16-bit images), never on a pixel subsample.

``run_qc`` reads every manifest row (in parallel with dask for large inputs) and writes
``OUT/qc.parquet``, ``OUT/ledger.parquet``, ``OUT/report.md`` and ``OUT/montage_<reason>.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .._files import save_parquet
from .._registry import Registry
from ..errors import EmptyResultError, ImageReadError, RecipeError
from ..images.normalize import channel_percentiles

__all__ = [
    "QC_RULES", "QCConfig", "DEFAULT_RULES", "DUPLICATE_REASON", "check", "pixel_hash",
    "find_duplicates", "run_qc", "register",
]

QCRule = Callable[[np.ndarray, "QCConfig"], bool]
#: the rule registry; a rule's name is the reason written to the ledger
QC_RULES: Registry[QCRule] = Registry("qc rule")
DUPLICATE_REASON = "duplicate pixels"
#: default rule order: cheap structural checks first, then pixel statistics
DEFAULT_RULES: tuple[str, ...] = (
    "wrong shape", "wrong dtype", "nan or inf", "uniform", "binary mask", "dim", "saturated",
)


@dataclass
class QCConfig:
    """Thresholds and toggles of image QC (YAML ``qc:`` block or ``--config qc.yaml``).

    ``rules`` run in order and the first failure is the reason. ``low``/``high`` are the
    percentiles (in %) that must differ for an image not to be "uniform". An image is
    "saturated" when more than ``saturation_fraction`` of a channel's pixels equal
    ``saturation_value`` (default: the integer dtype's maximum; float images are skipped
    unless a value is given). ``expected_*`` are ``None`` (not checked) or the shape
    (``(H, W)`` or ``(C, H, W)``), dtype name and channel count every image must have.
    """

    rules: tuple[str, ...] = DEFAULT_RULES
    low: float = 0.1
    high: float = 99.9
    saturation_fraction: float = 0.05
    saturation_value: float | None = None
    expected_shape: tuple[int, ...] | None = None
    expected_dtype: str | None = None
    expected_channels: int | None = None

    def __post_init__(self) -> None:
        self.rules = tuple(self.rules)
        for name in self.rules:
            if name not in QC_RULES:
                raise RecipeError(f"qc config: unknown rule {name!r} in 'rules'; valid rules: "
                                  f"{', '.join(QC_RULES.names())}")
        if not 0 <= self.low < self.high <= 100:
            raise RecipeError(f"qc config: need 0 <= low < high <= 100, got low={self.low} high={self.high}")
        if not 0 <= self.saturation_fraction <= 1:
            raise RecipeError(f"qc config: 'saturation_fraction' must be in [0, 1], got {self.saturation_fraction}")
        if self.expected_shape is not None:
            self.expected_shape = tuple(int(v) for v in self.expected_shape)
            if len(self.expected_shape) not in (2, 3):
                raise RecipeError(f"qc config: 'expected_shape' must be [H, W] or [C, H, W], "
                                  f"got {list(self.expected_shape)}")
        if self.expected_dtype is not None:
            try:
                self.expected_dtype = np.dtype(self.expected_dtype).name
            except TypeError:
                raise RecipeError(f"qc config: 'expected_dtype' {self.expected_dtype!r} is not a numpy "
                                  "dtype name (e.g. uint16, uint8, float32)") from None

    @classmethod
    def from_dict(cls, data: Mapping | None, *, where: str = "qc config") -> "QCConfig":
        """Build from a plain mapping (parsed YAML); unknown keys or wrong types raise RecipeError."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise RecipeError(f"{where}: expected a mapping of QC settings, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise RecipeError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = _typed(key, value, where)
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "QCConfig":
        """Read a YAML file holding the settings (optionally under a top-level ``qc:`` key)."""
        import yaml

        p = Path(path)
        if not p.exists():
            raise RecipeError(f"qc config file {p} not found")
        with p.open() as fh:
            data = yaml.safe_load(fh)
        if isinstance(data, Mapping) and set(data) == {"qc"}:
            data = data["qc"]
        return cls.from_dict(data, where=str(p))

    def to_dict(self) -> dict:
        """Plain-data view (saved next to QC outputs)."""
        d = dataclasses.asdict(self)
        d["rules"] = list(self.rules)
        if self.expected_shape is not None:
            d["expected_shape"] = list(self.expected_shape)
        return d


_NUMBER = (int, float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "low": _NUMBER, "high": _NUMBER, "saturation_fraction": _NUMBER,
    "saturation_value": _NUMBER, "expected_channels": (int,), "expected_dtype": (str,),
}


def _typed(key: str, value, where: str):
    if value is None and key not in ("rules", "low", "high", "saturation_fraction"):
        return None
    if key in ("rules", "expected_shape"):
        inner = str if key == "rules" else int
        if isinstance(value, str) and key == "rules":
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, inner) and not isinstance(v, bool) for v in value):
            raise RecipeError(f"{where}: {key!r} must be a list of {inner.__name__}, got {value!r}")
        return tuple(value)
    types = _FIELD_TYPES[key]
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise RecipeError(f"{where}: {key!r} must be {names}, got {value!r} ({type(value).__name__})")
    return value


def _as_config(config: "QCConfig | Mapping | None") -> QCConfig:
    return config if isinstance(config, QCConfig) else QCConfig.from_dict(config)


# --- rules (True = the image fails) -------------------------------------------------------

@QC_RULES.register("wrong shape")
def _wrong_shape(img: np.ndarray, cfg: QCConfig) -> bool:
    if img.ndim != 3 or 0 in img.shape:
        return True
    if cfg.expected_channels is not None and img.shape[0] != cfg.expected_channels:
        return True
    if cfg.expected_shape is not None:
        return tuple(img.shape[-len(cfg.expected_shape):]) != cfg.expected_shape
    return False


@QC_RULES.register("wrong dtype")
def _wrong_dtype(img: np.ndarray, cfg: QCConfig) -> bool:
    return cfg.expected_dtype is not None and img.dtype.name != cfg.expected_dtype


@QC_RULES.register("nan or inf")
def _nan_or_inf(img: np.ndarray, cfg: QCConfig) -> bool:
    return img.dtype.kind in "fc" and not bool(np.isfinite(img).all())


@QC_RULES.register("uniform")
def _uniform(img: np.ndarray, cfg: QCConfig) -> bool:
    """Any channel whose ``low``-th and ``high``-th percentiles are equal (exact)."""
    flat = img.reshape(img.shape[0], -1)
    mins, maxs = flat.min(axis=1), flat.max(axis=1)
    if (mins == maxs).any():  # shortcut: a constant channel is uniform at any percentile
        return True
    pct = channel_percentiles(img, (cfg.low, cfg.high))
    return bool((pct[:, 0] == pct[:, 1]).any())


@QC_RULES.register("binary mask")
def _binary_mask(img: np.ndarray, cfg: QCConfig) -> bool:
    """Any channel with exactly two distinct values (a segmentation mask, not an image)."""
    for plane in img.reshape(img.shape[0], -1):
        lo, hi = plane.min(), plane.max()
        if lo != hi and np.count_nonzero((plane == lo) | (plane == hi)) == plane.size:
            return True
    return False


@QC_RULES.register("dim")
def _dim(img: np.ndarray, cfg: QCConfig) -> bool:
    """The 75th percentile of all pixels (all channels together) is 0: mostly empty."""
    if img.dtype.kind == "u":
        # exact shortcut for non-negative data: the interpolated p75 is 0 iff both order
        # statistics around rank 0.75 * (n - 1) are 0, i.e. enough pixels are exactly 0
        n_zero = img.size - np.count_nonzero(img)
        return n_zero >= math.ceil(0.75 * (img.size - 1)) + 1
    return bool(np.percentile(img, 75) == 0)


@QC_RULES.register("saturated")
def _saturated(img: np.ndarray, cfg: QCConfig) -> bool:
    """Any channel with more than ``saturation_fraction`` of pixels at the saturation value."""
    value = cfg.saturation_value
    if value is None:
        if img.dtype.kind not in "ui":
            return False
        value = np.iinfo(img.dtype).max
    flat = img.reshape(img.shape[0], -1)
    frac = np.count_nonzero(flat >= value, axis=1) / flat.shape[1]
    return bool((frac > cfg.saturation_fraction).any())


def check(image: np.ndarray, config: "QCConfig | Mapping | None" = None) -> str | None:
    """The first failing rule's reason for a ``(C, H, W)`` image, or ``None`` if it passes."""
    cfg = _as_config(config)
    img = np.asarray(image)
    if img.ndim != 3 or img.size == 0:
        return "wrong shape"  # every rule assumes a non-empty (C, H, W) array
    for name in cfg.rules:
        if QC_RULES.get(name)(img, cfg):
            return name
    return None


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
    from tqdm.auto import tqdm

    chunks = [tasks[i:i + batch] for i in range(0, len(tasks), batch)]
    small = scheduler is None and (n_workers == 1 or (n_workers is None and len(tasks) < 256))
    bar = tqdm(total=len(tasks), desc="qc", unit="img", disable=not progress)
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
            from ..shards._run import connect  # timeout + ClusterError naming the address

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
    from ..schema import conform, read_manifest
    from .ledger import Ledger

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

def register(subparsers) -> None:
    """Add ``cytodata qc MANIFEST_DIR -o REPORT_DIR``."""
    p = subparsers.add_parser(
        "qc", help="image QC of a manifest: rules, duplicates, report and montages",
        description="Read every image of a manifest, flag uniform/dim/saturated/binary/NaN/"
                    "duplicate images, and write qc.parquet, ledger.parquet, report.md and montages.")
    p.add_argument("manifest", help="manifest folder (with manifest.parquet) or file")
    p.add_argument("-o", "--out", required=True, help="report folder to write")
    p.add_argument("--config", help="YAML file of QC settings (keys of QCConfig, optionally under 'qc:')")
    p.add_argument("--workers", type=int, default=None,
                   help="dask worker processes (default: all cores for >= 256 images; 1 = no dask)")
    p.add_argument("--scheduler", default=None, help="address of a running dask scheduler (tcp://host:8786)")
    p.add_argument("--montage", type=int, default=16, help="thumbnails per reason in montages (0: none)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    if args.config:
        cfg = QCConfig.from_yaml(args.config)
    else:  # the rules of the recipe the manifest was built from, else the defaults
        from ..shards import _recipe_of

        recipe = _recipe_of(args.manifest)
        cfg = recipe.image_qc if recipe is not None and recipe.image_qc is not None else QCConfig()
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

