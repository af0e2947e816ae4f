"""Build a manifest from a recipe: sources -> vocabulary -> metadata QC -> weak labels ->
stratified sampling -> splits, with every dropped input row in the ledger.

Output folder: ``manifest.parquet``, ``ledger.parquet``, ``provenance.json``. Outputs are
written to temporary names and renamed, so an interrupted build leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from . import __version__, schema
from ._files import file_sha256, save_json
from .errors import EmptyResultError, RecipeError, SchemaError
from .ledger import Ledger
from .recipe import Recipe, load_recipe, parse_overrides


@dataclass
class BuildResult:
    """What ``build`` produced: the manifest, the ledger and per-stage counts."""

    manifest: pd.DataFrame
    ledger: pd.DataFrame
    counts: dict[str, int]
    out: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable summary: rows in, kept, dropped by reason, labels by category."""
        lines = [f"rows in: {self.counts['inputs']}  kept: {len(self.manifest)}  "
                 f"dropped: {len(self.ledger)}"]
        if len(self.ledger):
            by = self.ledger.groupby(["stage", "reason"]).size()
            lines += [f"  dropped at {stage:>10}: {reason:<20} {n}" for (stage, reason), n in by.items()]
        if self.manifest["label"].notna().any():
            cats = self.manifest.groupby("category")["label"].agg(["nunique", "size"])
            lines.append("labels by category:")
            lines += [f"  {c:<14} {r['nunique']:>5} labels {r['size']:>8} images" for c, r in cats.iterrows()]
        if self.manifest["split"].notna().any():
            lines.append("split: " + ", ".join(
                f"{k}={v}" for k, v in self.manifest["split"].value_counts().sort_index().items()))
        if self.out is not None:
            lines.append(f"written to {self.out}")
        return "\n".join(lines)


def _source_files(params: Mapping[str, Any]) -> dict[str, str]:
    """sha256 of metadata files a source reads: file params, and tables directly inside dir params."""
    out: dict[str, str] = {}
    suffixes = (".csv", ".csv.gz", ".tsv", ".parquet", ".json", ".xml")
    for value in params.values():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if not isinstance(v, (str, os.PathLike)) or "://" in str(v):
                continue
            p = Path(v)
            if p.is_file():
                out[str(p)] = file_sha256(p)
            elif p.is_dir():
                for f in sorted(p.iterdir()):
                    if f.is_file() and f.name.endswith(suffixes):
                        out[str(f)] = file_sha256(f)
    return out


def _drop(table: pd.DataFrame, mask: pd.Series | np.ndarray, ledger: Ledger, *, stage: str,
          reason: str, detail=None) -> pd.DataFrame:
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        det = None if detail is None else (detail[mask] if not isinstance(detail, str) else detail)
        ledger.drop(table[mask], stage=stage, reason=reason, detail=det)
    return table[~mask]


def read_sources(recipe: Recipe, ledger: Ledger, *, progress: bool = True) -> tuple[pd.DataFrame, int]:
    """Read every source of the recipe; returns the harmonized table and the number of inputs."""
    from . import sources
    from .vocab import load_synonyms

    synonyms = load_synonyms(recipe.synonyms or None)
    from ._progress import bar

    frames, n_inputs, names = [], 0, []
    for i, spec in enumerate(bar(recipe.sources, progress=progress, desc="sources", unit="source")):
        if spec.adapter not in sources.available():
            raise RecipeError(
                f"sources[{i}]: unknown adapter {spec.adapter!r}; available: {sources.available()}")
        params = dict(spec.params)
        if spec.source:
            params["source"] = spec.source
        before = len(ledger)
        table = sources.read(spec.adapter, ledger=ledger, synonyms=synonyms, **params)
        n_inputs += len(table) + (len(ledger) - before)
        frames.append(table)
        names.append(f"sources[{i}] ({spec.adapter}"
                     + (f", source {spec.source!r}" if spec.source else "") + ")")
    _check_keys_across_sources(frames, names)
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    return table, n_inputs


def _check_keys_across_sources(frames: list[pd.DataFrame], names: list[str]) -> None:
    """RecipeError naming both sources when two recipe sources yield the same row key.

    Keeping "the first" would make the corpus depend on the order of the sources.
    """
    if len(frames) < 2:
        return
    keys = pd.concat([f["key"].astype("string") for f in frames], ignore_index=True)
    which = np.repeat(np.arange(len(frames)), [len(f) for f in frames])
    dup = keys.duplicated(keep=False).to_numpy()
    if not dup.any():
        return
    frame = pd.DataFrame({"key": keys[dup].to_numpy(), "src": which[dup]}).drop_duplicates()
    shared = frame.groupby("key")["src"].nunique()
    shared = shared[shared > 1]
    if len(shared):
        key = shared.index[0]
        pair = sorted(frame.loc[frame["key"] == key, "src"].unique())[:2]
        raise RecipeError(
            f"{len(shared)} row key(s) occur in two sources, e.g. {key!r} in {names[pair[0]]} and "
            f"{names[pair[1]]}; give each source its own id (`source:` in the recipe) or remove "
            "the duplicated source, so the corpus does not depend on the order of the sources")


def metadata_qc(table: pd.DataFrame, cfg, ledger: Ledger) -> pd.DataFrame:
    """Drop rows with duplicate keys across sources, empty required columns, missing files."""
    dup = table["key"].duplicated(keep="first")
    table = _drop(table, dup, ledger, stage="metadata", reason="duplicate id",
                  detail="key already used by an earlier row")
    for col in cfg.require:
        if col not in table.columns:
            raise RecipeError(f"metadata_qc.require: unknown column {col!r}; "
                              f"valid: {list(schema.COLUMNS)}")
        bad = table[col].isna()
        if table[col].dtype == "string":
            bad |= table[col].fillna("").str.strip() == ""
        table = _drop(table, bad, ledger, stage="metadata", reason="bad metadata",
                      detail=f"column {col!r} is empty")
    no_channels = table["channel_paths"].map(len) == 0
    table = _drop(table, no_channels, ledger, stage="metadata", reason="bad metadata",
                  detail="no channel files")
    if cfg.check_files and len(table):
        paths = table["channel_paths"]
        unique = pd.unique(np.concatenate([np.asarray(p, dtype=object) for p in paths]))
        local = [p for p in unique if "://" not in p]
        exists = {p: os.path.exists(p) for p in local}
        missing_first = paths.map(
            lambda ps: next((p for p in ps if "://" not in p and not exists[p]), None))
        table = _drop(table, missing_first.notna(), ledger, stage="metadata",
                      reason="missing file", detail=missing_first.astype("string"))
    return table


def label_rows(table: pd.DataFrame, cfg, seed: int, ledger: Ledger) -> pd.DataFrame:
    """Assign weak labels; unlabeled rows go to the ledger with the algorithm's reason."""
    from .curate import assign_weak_labels

    labelled = assign_weak_labels(
        table, columns=tuple(cfg.columns), min_count=cfg.min_count, presample=cfg.presample,
        presample_by=tuple(cfg.presample_by), cap=cfg.cap, sample_by=tuple(cfg.sample_by),
        seed=seed, method=cfg.method, merge_same_token=cfg.merge_same_token)
    table = table.copy()
    table["label"] = labelled["label"].astype("string")
    table["category"] = labelled["category"].astype("string")
    if not cfg.drop_unlabeled:
        return table
    unlabeled = table["label"].isna()
    for reason, rows in table[unlabeled].groupby(labelled.loc[unlabeled, "label_status"]):
        ledger.drop(rows, stage="weak_labels", reason=str(reason))
    return table[~unlabeled]


def sample_rows(table: pd.DataFrame, cfg, seed: int, ledger: Ledger) -> pd.DataFrame:
    """Stratified downsampling; rows not drawn go to the ledger as 'not sampled'."""
    from .curate import stratified_sample

    for col in cfg.by:
        if col not in table.columns:
            raise RecipeError(f"sample.by: unknown column {col!r}; valid: {list(table.columns)}")
    picked = stratified_sample(table, cfg.n, by=list(cfg.by), seed=seed, method=cfg.method)
    keep = np.zeros(len(table), dtype=bool)
    keep[picked] = True  # stratified_sample returns positional indices
    return _drop(table, ~keep, ledger, stage="sample", reason="not sampled",
                 detail=f"stratified to n={cfg.n} by {list(cfg.by)}")


def build(recipe: "str | Path | Mapping[str, Any] | Recipe", out: "str | Path | None" = None, *,
          params: Mapping[str, Any] | None = None, progress: bool = True,
          allow_empty: bool = False) -> BuildResult:
    """Build a manifest from ``recipe`` and write it to ``out`` (when given).

    Returns a :class:`BuildResult`; the manifest's rows are sorted by key and every random
    choice is keyed by row key and seed, so the same rows in any order (or sources in any
    order) give the same manifest. Raises :class:`LedgerError` if any input row would be lost,
    :class:`EmptyResultError` (after writing the ledger) when no row is kept, naming the largest
    drop reason (``allow_empty=True`` returns the empty result), RecipeError when two sources
    share a key, and StageFolderError when ``out`` holds another stage's files.
    """
    recipe = load_recipe(recipe, overrides=params)
    if out is not None:
        from ._stages import claim_stage_folder

        claim_stage_folder(out, "manifest")
    t0 = time.time()
    ledger = Ledger()
    counts: dict[str, int] = {}
    table, n_inputs = read_sources(recipe, ledger, progress=progress)
    counts["inputs"] = n_inputs
    counts["read"] = len(table)
    table = metadata_qc(table, recipe.metadata_qc, ledger)
    counts["metadata_qc"] = len(table)
    _warn_empty_sources(recipe, table, ledger, "metadata QC")
    if recipe.weak_labels is not None:
        table = label_rows(table, recipe.weak_labels, recipe.seed, ledger)
        counts["weak_labels"] = len(table)
    if recipe.sample is not None:
        table = sample_rows(table, recipe.sample, recipe.seed, ledger)
        counts["sample"] = len(table)
    kept_inputs = len(table)  # input rows still represented (crops expand rows below)
    if recipe.upsample is not None and len(table):
        from .curate.upsample import upsample_classes

        u = recipe.upsample
        before = len(ledger)
        table = upsample_classes(table, seed=recipe.seed, target=u.target, floor=u.floor,
                                 scales=tuple(u.scales), min_size=u.min_size,
                                 min_image=u.min_image, ledger=ledger)
        kept_inputs -= len(ledger) - before
        counts["upsample"] = len(table)
    if recipe.split is not None and len(table):
        from .curate import assign_splits

        s = recipe.split
        stratify = s.stratify if (s.stratify and table[s.stratify].notna().any()) else None
        table = table.copy()
        table["split"] = assign_splits(table, group=s.group, fractions=dict(s.fractions),
                                       stratify=stratify, seed=recipe.seed).astype("string")
    # rows sorted by key: the manifest is a function of its rows, not of the input order
    table = table.sort_values("key", kind="stable") if len(table) else table
    table = schema.validate(schema.conform(table.reset_index(drop=True)), where="manifest")
    ledger.check(n_inputs, kept_inputs, where=f"manifest build ({recipe.name})")
    counts["kept"] = len(table)
    counts["dropped"] = len(ledger)
    result = BuildResult(manifest=table, ledger=ledger.to_frame(), counts=counts)
    result.provenance = {
        "recipe_name": recipe.name,
        "recipe": recipe.raw,
        "recipe_sha256": recipe.sha256(),
        "cytodata_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "pandas": pd.__version__,
        "libraries": library_versions(),
        "synonyms": synonyms_provenance(recipe.synonyms or None),
        "source_files": {str(i): _source_files(s.params) for i, s in enumerate(recipe.sources)},
        "counts": counts,
        "ledger_by_reason": {f"{k[0]}/{k[1]}": int(v) for k, v in
                             result.ledger.groupby(["stage", "reason"]).size().items()},
        "seconds": round(time.time() - t0, 3),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        schema.write_manifest(table, out / "manifest.parquet")
        ledger.write(out / "ledger.parquet")
        save_json(out / "provenance.json", result.provenance, indent=2)
        result.out = out
    if not len(table) and not allow_empty:
        raise EmptyResultError(
            f"manifest build ({recipe.name}): kept 0 of {n_inputs} rows; "
            f"{_largest_reason(result.ledger)}"
            + (f"; the ledger is in {out}/ledger.parquet" if out is not None else ""))
    return result


def _largest_reason(ledger: pd.DataFrame) -> str:
    """``largest drop reason: 'missing file' at metadata (13200 rows, e.g. ...)``; when the last
    stage that dropped rows (the one that emptied the result) is another, that stage's reason too.
    """
    if not len(ledger):
        return "no rows were read"
    by = ledger.groupby(["stage", "reason"], sort=False).size()
    (stage, reason), n = by.sort_values(ascending=False, kind="stable").index[0], int(by.max())
    text = f"largest drop reason: {_reason(ledger, stage, reason, n)}"
    last_stage = ledger["stage"].iloc[-1]
    if last_stage != stage:
        at_last = by[last_stage].sort_values(ascending=False, kind="stable")
        last = _reason(ledger, last_stage, at_last.index[0], int(at_last.iloc[0]))
        text += f"; the last rows went at {last_stage}: {last}"
    return text


def _reason(ledger: pd.DataFrame, stage: str, reason: str, n: int) -> str:
    first = ledger[(ledger["stage"] == stage) & (ledger["reason"] == reason)].iloc[0]
    hint = {"missing file": "point the recipe at the images (e.g. --set images=DIR) or turn the "
                            "check off with --set metadata_qc.check_files=false"}.get(reason, "")
    if stage == "upsample" and reason in ("missing file", "unreadable"):
        hint = ("upsampling reads each image's size from its file: point the recipe at the images "
                "(e.g. --set images=DIR) or build from the metadata alone with --set upsample=null")
    return (f"{reason!r} at {stage} ({n} rows, e.g. {first['input_id']}: {first['detail']})"
            + (f"; {hint}" if hint else ""))


def _warn_empty_sources(recipe: Recipe, table: pd.DataFrame, ledger: Ledger, stage: str) -> None:
    """Warn for each recipe source with no row left after ``stage`` (naming the top reason)."""
    import warnings

    kept = set(table["source"].astype(str)) if len(table) else set()
    frame = ledger.to_frame()
    for i, spec in enumerate(recipe.sources):
        sid = spec.source or spec.adapter
        if sid in kept:
            continue
        mine = frame[frame["source"] == sid]
        why = _largest_reason(mine) if len(mine) else "it yielded no rows"
        warnings.warn(f"sources[{i}] ({sid!r}) has no rows left after {stage}: {why}",
                      UserWarning, stacklevel=3)


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes a manifest or shards."""
    from importlib import metadata

    out = {}
    for name in ("numpy", "pandas", "pyarrow", "pyyaml", "tifffile", "pillow", "dask",
                 "distributed", "zarr", "numcodecs", "blosc2", "webdataset", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def synonyms_provenance(extra=None) -> dict[str, Any]:
    """Checksums of the synonym table: the shipped file and the resolved table.

    The resolved table includes the recipe's additions, so a changed vocabulary shows.
    """
    from .vocab import SYNONYMS_CSV, load_synonyms

    resolved = load_synonyms(extra)
    blob = json.dumps(resolved, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"file": SYNONYMS_CSV.name, "file_sha256": file_sha256(SYNONYMS_CSV),
            "resolved_sha256": hashlib.sha256(blob).hexdigest(),
            "entries": sum(len(v) for v in resolved.values())}


def describe(out: "str | Path") -> str:
    """A readable description of a manifest folder (counts, labels, splits, ledger, recipe)."""
    out = Path(out)
    if (out / "shards.json").exists() and not (out / "manifest.parquet").exists():
        raise SchemaError(f"{out} is a shard set, not a manifest folder; describe it with "
                                 f"`cytodata shards describe {out}`")
    table = schema.read_manifest(out)
    lines = [f"manifest {out}: {len(table)} rows, {table['source'].nunique()} sources"]
    for col in ("source", "split", "category", "batch", "control_type"):
        if table[col].notna().any():
            vc = table[col].value_counts(dropna=False).head(12)
            lines.append(f"{col}: " + ", ".join(f"{k}={v}" for k, v in vc.items()))
    if table["label"].notna().any():
        lines.append(f"labels: {table['label'].nunique()} (top: " + ", ".join(
            f"{k}={v}" for k, v in table["label"].value_counts().head(8).items()) + ")")
    if table["plate"].notna().any():
        lines.append(f"plates: {table['plate'].nunique()}")
    nch = table["channels"].map(len)
    lines.append("channels per image: " + ", ".join(f"{k}={v}" for k, v in nch.value_counts().items()))
    led = out / "ledger.parquet"
    if led.exists():
        ledger = pd.read_parquet(led)
        lines.append(f"ledger: {len(ledger)} dropped rows")
        for (stage, reason), n in ledger.groupby(["stage", "reason"]).size().items():
            lines.append(f"  {stage}/{reason}: {n}")
    prov = out / "provenance.json"
    if prov.exists():
        p = json.loads(prov.read_text())
        lines.append(f"recipe {p.get('recipe_name')} sha256 {p.get('recipe_sha256', '')[:12]}, "
                     f"cytodata {p.get('cytodata_version')}")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI
def _cmd_build(args) -> int:
    result = build(args.recipe, args.out, params=parse_overrides(args.set),
                   progress=not args.quiet)
    print(result.summary())
    if args.jump_names:
        from ._files import save_parquet

        save_parquet(Path(args.out) / "manifest_jump.parquet",
                     schema.to_jump_names(result.manifest))
    return 0


def _cmd_describe(args) -> int:
    text = describe(args.folder)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text.splitlines()[0] if args.quiet else text)
    return 0
