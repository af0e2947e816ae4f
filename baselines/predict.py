"""``cytodata predict``: a trained run + a shard set -> class predictions per image or well.

Per image: the class probabilities averaged over the embed views (four centre crops of the
training crop size, one when the field is small), from the method's ``predict_proba`` (mean
teacher: the teachers' softmax averaged over the ensemble members) or the softmax of a
classifier's logits. ``--per well`` averages a well's sites (RxRx1: two). ``--prior plate``
then enforces "each class at most once per plate" (:mod:`baselines.prior`: exact linear
assignment, or DeepNoise's iterative balancing); plates with more rows than classes keep the
argmax, with a warning. Inputs are normalised with the predicted set's own ``shards.json``
statistics at the run's level (plate-wise: the test plates' own statistics).

Output parquet, one row per key (or well): ``key``, ``plate``, ``well``, ``prediction`` (class
name), ``probability`` (of that class), ``top5`` (class names, most probable first),
``prediction_argmax`` / ``probability_argmax`` (before the prior), ``probabilities`` (all
classes, in ``classes`` order, kept in ``OUT.summary.json``) and the index's other metadata.
When the set carries labels, the accuracy before and after the prior is reported.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cytodata.errors import TrainingError

from . import checkpoint, runtime
from .config import load_config
from .data import collate, device_prep, make_stats
from .embed import STORAGE_COLUMNS, center_views, load_method
from .prior import ASSIGNERS, apply_prior

PRIORS = ("plate", "none")
PER = ("key", "well")


def probability_fn(method):
    """``(B, C, h, w)`` normalised crops -> ``(B, K)`` probabilities for a loaded method."""
    if hasattr(method, "predict_proba"):
        return method.predict_proba
    model = method.modules().get("model")
    if model is None or not method.info.classes:
        raise TrainingError(f"a {method.cfg.method} run has no classifier to predict with; "
                            "use `cytodata embed` for its features")
    model.eval()

    def proba(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), runtime.autocast(x.device, method.cfg.precision):
            return torch.softmax(model(x).float(), dim=1)

    return proba


def image_probabilities(run: "str | Path", shards: "str | Path", *, device: str = "auto",
                        batch_size: int = 64, threads: int = 2, progress: bool = True,
                        storage_options: dict | None = None
                        ) -> tuple[pd.DataFrame, np.ndarray, list[str], dict]:
    """Per-image probabilities: (index rows, ``(N, K)`` float32 in index order, classes, config)."""
    from cytodata.loaders import StreamingDataset

    dev = runtime.resolve_device(device)
    state = checkpoint.load(run)
    classes = list(state.get("classes") or [])
    if not classes:
        raise TrainingError(f"{run}: the run has no classes (not a supervised run); use "
                            "`cytodata embed` for its features")
    ds = StreamingDataset(shards, shuffle=False, threads=threads, storage_options=storage_options,
                          columns=("plate", "batch"), rank=0, world_size=1)
    channels = ds.shards.meta.get("channels")
    if channels != list(state["channels"]):
        raise TrainingError(f"{shards}: channels {channels} differ from the run's "
                            f"{list(state['channels'])}; predict on a shard set with the training "
                            "channels in the training order")
    cfg = load_config(state["config"])
    level = cfg.data.normalize
    try:
        stats = make_stats(ds.shards.meta, level, len(channels))
    except TrainingError as exc:
        raise TrainingError(f"{shards}: {exc}") from None
    method, cfg, _ = load_method(state, dev, stats)
    proba = probability_fn(method)
    prep = device_prep(cfg, stats, dev)
    crop = method.embed_crop()
    index = ds.index
    probs = np.full((len(index), len(classes)), np.nan, dtype=np.float32)
    row_of = {k: i for i, k in enumerate(index["key"].tolist())}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(index), desc="predict", unit="img", dynamic_ncols=True)
    ds.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0,
                                         collate_fn=functools.partial(collate, resize=cfg.data.resize))
    with torch.no_grad():
        for batch in loader:
            x = prep(batch["image"], batch["meta"])
            p = torch.stack([proba(v).float() for v in center_views(x, crop)]).mean(0)
            probs[[row_of[k] for k in batch["key"]]] = p.cpu().numpy()
            if bar is not None:
                bar.update(len(batch["key"]))
    if bar is not None:
        bar.close()
    missing = np.flatnonzero(np.isnan(probs).any(1))
    if len(missing):
        raise TrainingError(f"{shards}: {len(missing)} images got no prediction (e.g. "
                            f"{index['key'].iloc[missing[0]]!r}); the loader skipped them")
    return index, probs, classes, {"config": cfg, "label": cfg.data.label}


def per_well(index: pd.DataFrame, probs: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Average the sites of each (plate, well): one row per well, ``n_sites``, ``keys``."""
    for col in ("plate", "well"):
        if col not in index.columns or index[col].isna().any():
            bad = ("missing" if col not in index.columns
                   else f"NA in {int(index[col].isna().sum())} rows")
            raise TrainingError(f"--per well needs a {col!r} for every row ({bad}); predict "
                                "--per key, or re-shard with plate and well columns")
    keys = index["plate"].astype(str) + "/" + index["well"].astype(str)
    codes, uniques = pd.factorize(keys, sort=True)
    sums = np.zeros((len(uniques), probs.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, probs)
    counts = np.bincount(codes, minlength=len(uniques))
    table = index.assign(_well=codes).groupby("_well", sort=True)
    first = table.first().reset_index(drop=True)
    members: list[list[str]] = [[] for _ in range(len(uniques))]
    for code, key in zip(codes, index["key"].astype(str).tolist(), strict=True):
        members[code].append(key)
    first["keys"] = pd.Series(members, dtype=object)
    first["n_sites"] = counts
    first["key"] = list(uniques)
    return first, (sums / counts[:, None]).astype(np.float32)


def accuracy(predicted: np.ndarray, labels: pd.Series, classes: list[str]) -> tuple[float, int]:
    """Top-1 accuracy on rows whose label is a known class; returns (accuracy, rows counted)."""
    lookup = {c: i for i, c in enumerate(classes)}
    truth = np.array([lookup.get(str(v), -1) if pd.notna(v) else -1 for v in labels.tolist()],
                     dtype=np.int64)
    known = truth >= 0
    if not known.any():
        return float("nan"), 0
    return float((predicted[known] == truth[known]).mean()), int(known.sum())


def predict(run: "str | Path", shards: "str | Path", out: "str | Path", *, prior: str = "plate",
            per: str = "key", prior_method: str = "exact", device: str = "auto",
            batch_size: int = 64, threads: int = 2, progress: bool = True,
            storage_options: dict | None = None) -> dict:
    """Write ``out`` (parquet, see the module docstring); return the summary (also in JSON)."""
    if prior not in PRIORS:
        raise TrainingError(f"prior={prior!r}; valid: {', '.join(PRIORS)}")
    if per not in PER:
        raise TrainingError(f"per={per!r}; valid: {', '.join(PER)}")
    ASSIGNERS.get(prior_method)
    out = Path(out)
    index, probs, classes, extra = image_probabilities(
        run, shards, device=device, batch_size=batch_size, threads=threads, progress=progress,
        storage_options=storage_options)
    meta = index.drop(columns=[c for c in STORAGE_COLUMNS if c in index.columns])
    if per == "well":
        meta, probs = per_well(meta, probs)
    elif prior == "plate" and {"plate", "well"} <= set(meta.columns) \
            and meta.groupby(["plate", "well"], dropna=True).size().max() > 1:
        warnings.warn("--prior plate with --per key: sites of one well count as separate rows, "
                      "but they share a class; predict --per well to apply the prior to wells",
                      stacklevel=2)
    argmax = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    final, fallback, changed = argmax, [], 0
    if prior == "plate":
        if "plate" not in meta.columns or meta["plate"].isna().any():
            raise TrainingError(f"{shards}: --prior plate needs a plate for every row; predict "
                                "with --prior none, or re-shard with the plate column")
        res = apply_prior(probs, meta["plate"].astype(str).to_numpy(), prior_method)
        final, fallback, changed = res.classes, res.fallback_plates, res.changed
    names = np.array(classes, dtype=object)
    top = np.argsort(-probs, axis=1)[:, :min(5, len(classes))]
    rows = np.arange(len(probs))
    table = meta.copy()
    table.insert(0, "key", table.pop("key"))
    for col in ("plate", "well"):
        if col not in table.columns:
            table[col] = pd.NA
    table["prediction"] = names[final] if len(final) else []
    table["probability"] = probs[rows, final]
    table["top5"] = [list(names[t]) for t in top]
    table["prediction_argmax"] = names[argmax] if len(argmax) else []
    table["probability_argmax"] = probs[rows, argmax]
    table["probabilities"] = list(probs)
    summary = {"run": str(run), "shards": str(shards), "rows": int(len(table)), "per": per,
               "prior": prior, "prior_method": prior_method if prior == "plate" else None,
               "classes": classes, "changed_by_prior": int(changed),
               "fallback_plates": fallback}
    label = extra["label"]
    if label in meta.columns and meta[label].notna().any():
        labels = meta[label]
        unseen = sorted(set(labels.dropna().astype(str)) - set(classes))
        if unseen:
            n_unseen = int(labels.astype("string").isin(unseen).sum())
            warnings.warn(f"{n_unseen} rows have labels the run never trained on ({unseen[:5]}"
                          f"{' ...' if len(unseen) > 5 else ''}); they cannot be predicted "
                          "correctly and are left out of the accuracy", stacklevel=2)
            summary["unseen_classes"] = unseen
            summary["rows_unseen_class"] = n_unseen
        acc_before, n = accuracy(argmax, labels, classes)
        acc_after, _ = accuracy(final, labels, classes)
        summary.update(accuracy_argmax=acc_before, accuracy=acc_after, rows_scored=n)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    summary_path = out.with_name(out.stem + ".summary.json")
    summary_path.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    summary["out"] = str(out)
    return summary


def format_summary(summary: dict) -> str:
    """Return a short human-readable report of a :func:`predict` summary."""
    lines = [f"predictions: {summary['out']} ({summary['rows']} rows per {summary['per']}, "
             f"prior {summary['prior']})"]
    if summary.get("prior") == "plate":
        lines.append(f"prior changed {summary['changed_by_prior']} rows"
                     + (f"; plates kept at argmax (more rows than classes): "
                        f"{summary['fallback_plates']}" if summary["fallback_plates"] else ""))
    if "accuracy" in summary:
        lines.append(f"accuracy on {summary['rows_scored']} labelled rows: "
                     f"{summary['accuracy_argmax']:.4f} argmax -> {summary['accuracy']:.4f} "
                     "with the prior" if summary["prior"] == "plate" else
                     f"accuracy on {summary['rows_scored']} labelled rows: "
                     f"{summary['accuracy_argmax']:.4f}")
    return "\n".join(lines)
