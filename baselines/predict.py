"""``cytodata predict``: a trained run + a shard set -> class predictions per image or well.

Per image: the class probabilities averaged over the embed views (four centre crops of the
training crop size, one when the field is small), from the method's ``predict_proba`` (mean
teacher: the predicting ensemble's softmax averaged over its members) or the softmax of a
classifier's logits. ``--tta N`` (default: the run's ``predict_tta``, DeepNoise 8) adds
test-time views of each crop: the flips x 90-degree rotations, their logits averaged, then the
softmax (DeepNoise ``main.py:749-818``). A run trained with ``select`` predicts with its
``best.pt``. The prior acts on wells whenever the index has plate and well (a well's
sites, RxRx1: two, averaged; each site inherits its well's class): ``--prior plate`` enforces
"each class at most once per plate", ``--prior group`` also restricts each plate to its group of
classes learned from the training plates (:mod:`baselines.plate_groups`), ``--prior experiment``
"each class at most once per experiment" (:mod:`baselines.prior`: exact linear assignment,
DeepNoise's balancing, or an auction); plates with more wells than classes keep the argmax,
with a warning. ``--per`` chooses the output rows (default: wells when a well has several
images). Inputs are normalised with the predicted set's own ``shards.json``
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
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cytodata.errors import TrainingError

from . import checkpoint, runtime
from .data import collate, device_prep, make_stats
from .embedding import STORAGE_COLUMNS, center_views, load_method
from .plate_groups import PlateGroups, group_columns, groups_from_shards, match_groups
from .prior import ASSIGNERS, PriorResult, apply_prior
from .resolve import load_config

PRIORS = ("plate", "group", "experiment", "none")
PER = ("key", "well")
#: DeepNoise's 8 test-time views in the authors' order (main.py:749-758): [horizontal flip,
#: vertical flip, rot90] applied in that order (process/augmentation.py:195-201)
TTA_VIEWS = [(h, v, r) for h in (0, 1) for v in (0, 1) for r in (0, 1)]
TTA_CHOICES = (1, 2, 4, 8)


def dihedral_views(x: torch.Tensor, n: int = 8) -> list[torch.Tensor]:
    """The first ``n`` (1, 2, 4 or 8) of :data:`TTA_VIEWS` of ``x`` ``(..., H, W)``; the 8 are
    the square's dihedral group (flips x 90-degree rotations).
    """
    if n not in TTA_CHOICES:
        raise TrainingError(f"--tta {n}: valid view counts are {', '.join(map(str, TTA_CHOICES))} "
                            "(8: all flips x 90-degree rotations, as DeepNoise predicts)")
    out = []
    for h, v, r in TTA_VIEWS[:n]:
        y = x.flip(-1) if h else x
        y = y.flip(-2) if v else y
        out.append(torch.rot90(y, 1, dims=(-2, -1)) if r else y)
    return out


def tta_probabilities(logits_fn, x: torch.Tensor, n: int) -> torch.Tensor:
    """``softmax(mean over the n dihedral views of logits_fn(view))``: the logits averaged as
    DeepNoise averages its test-time views (main.py:805-818), ``(B, K)`` float32.
    """
    views = dihedral_views(x, n)
    return torch.softmax(torch.stack([logits_fn(v).float() for v in views]).mean(0), dim=1)


def probability_fn(method):
    """``(B, C, h, w)`` normalised crops -> ``(B, K)`` probabilities for a loaded method."""
    if hasattr(method, "predict_proba"):
        return method.predict_proba
    logits = logits_fn(method)
    return lambda x: torch.softmax(logits(x), dim=1)


def logits_fn(method):
    """``(B, C, h, w)`` normalised crops -> ``(B, K)`` logits for a loaded method."""
    if hasattr(method, "predict_logits"):
        return method.predict_logits
    model = method.modules().get("model")
    if model is None or not method.info.classes:
        raise TrainingError(f"a {method.cfg.method} run has no classifier to predict with; "
                            "use `cytodata embed` for its features")
    model.eval()

    def logits(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), runtime.autocast(x.device, method.cfg.precision):
            return model(x).float()

    return logits


def image_probabilities(run: "str | Path", shards: "str | Path", *, device: str = "auto",
                        batch_size: int = 64, threads: int = 2, progress: bool = True,
                        storage_options: dict | None = None, tta: int | None = None
                        ) -> tuple[pd.DataFrame, np.ndarray, list[str], dict]:
    """Per-image probabilities: (index rows, ``(N, K)`` float32 in index order, classes, config).

    ``tta``: test-time views per crop (:func:`tta_probabilities`; None: the run's
    ``predict_tta``, else 1, no views).
    """
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
    tta = int(tta if tta is not None else getattr(cfg, "predict_tta", 1) or 1)
    dihedral_views(torch.zeros(1, 1), tta)            # checks the count before any work
    if tta > 1:
        fn = logits_fn(method)

        def proba(v: torch.Tensor) -> torch.Tensor:
            return tta_probabilities(fn, v, tta)
    else:
        proba = probability_fn(method)
    prep = device_prep(cfg, stats, dev)
    crop = method.embed_crop()
    index = ds.index
    probs = np.full((len(index), len(classes)), np.nan, dtype=np.float32)
    row_of = {k: i for i, k in enumerate(index["key"].tolist())}
    from cytodata._progress import bar as progress_bar
    from cytodata._progress import shown

    bar = None
    if shown(progress):
        bar = progress_bar(total=len(index), desc="predict", unit="img", dynamic_ncols=True)
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
    return index, probs, classes, {"config": cfg, "label": cfg.data.label, "tta": tta,
                                   "checkpoint": str(checkpoint.resolve(run)),
                                   "checkpoint_step": int(state.get("step", -1))}


def well_codes(index: pd.DataFrame) -> tuple[np.ndarray, pd.Index] | None:
    """Each row's well (``plate/well``) code and the well names; None without plate and well."""
    if not {"plate", "well"} <= set(index.columns) or index[["plate", "well"]].isna().any().any():
        return None
    keys = index["plate"].astype(str) + "/" + index["well"].astype(str)
    codes, uniques = pd.factorize(keys, sort=True)
    return codes, uniques


def per_well(index: pd.DataFrame, probs: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Average the sites of each (plate, well): one row per well, ``n_sites``, ``keys``."""
    for col in ("plate", "well"):
        if col not in index.columns or index[col].isna().any():
            bad = ("missing" if col not in index.columns
                   else f"NA in {int(index[col].isna().sum())} rows")
            raise TrainingError(f"--per well needs a {col!r} for every row ({bad}); predict "
                                "with --per key, or re-shard with plate and well columns")
    codes, uniques = well_codes(index)
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


def resolve_per(meta: pd.DataFrame, per: str | None) -> str:
    """``per`` as given, or ``well`` when some (plate, well) has several rows, else ``key``."""
    if per not in (None, "auto", *PER):
        raise TrainingError(f"per={per!r}; valid: auto, {', '.join(PER)}")
    if per in (None, "auto"):
        wells = well_codes(meta)
        return "well" if wells is not None and len(wells[1]) < len(meta) else "key"
    return per


def _column(meta: pd.DataFrame, col: str, prior: str, fix: str) -> np.ndarray:
    if col not in meta.columns or meta[col].isna().any():
        bad = "missing" if col not in meta.columns else f"NA in {int(meta[col].isna().sum())} rows"
        raise TrainingError(f"--prior {prior} needs a {col!r} for every row ({bad}); {fix}")
    return meta[col].astype(str).to_numpy()


def apply_named_prior(meta: pd.DataFrame, probs: np.ndarray, classes: list[str], prior: str,
                      method: str, groups: PlateGroups | None = None,
                      min_group_evidence: float = math.log(100.0)) -> tuple[PriorResult, dict]:
    """Run ``--prior plate|group|experiment`` on rows ``meta`` (one per well); extra summary."""
    extra: dict = {}
    if prior == "plate":
        plates = _column(meta, "plate", prior, "predict with --prior none, or re-shard with "
                                               "the plate column")
        return apply_prior(probs, plates, method), extra
    if prior == "experiment":
        exps = _column(meta, "batch", prior, "the experiment is the index's batch column; "
                                             "predict with --prior plate, or re-shard with it")
        allowed = None
        if groups is not None and groups.shared and "plate" in meta.columns:
            # shared classes (controls, on every plate) may occur once per plate of the experiment
            lookup = {c: i for i, c in enumerate(classes)}
            shared = np.array([lookup[c] for c in groups.shared if c in lookup], dtype=np.int64)
            n_plates = meta.groupby("batch")["plate"].nunique()
            allowed = {str(e): np.concatenate([np.arange(len(classes))]
                                              + [shared] * max(0, int(n) - 1))
                       for e, n in n_plates.items()}
            extra["shared_classes"] = len(shared)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = apply_prior(probs, exps, method, allowed=allowed, what="experiment")
        if res.fallback_plates:
            warnings.warn(f"experiment prior: experiment(s) {res.fallback_plates[:5]} have more "
                          f"wells than the {len(classes)} classes; their wells keep the argmax "
                          "(check the batch column, or predict with --prior plate)", stacklevel=2)
        return res, extra
    # group
    if groups is None or not groups.groups:
        raise TrainingError("--prior group needs plate groups learned from training plates, and "
                            "none were found; pass --train-plates SHARDS (a shard set with plate "
                            "and label columns), or predict with --prior plate")
    plates = _column(meta, "plate", prior, "predict with --prior none, or re-shard with the "
                                           "plate column")
    match = match_groups(probs, plates, classes, groups, min_evidence=min_group_evidence)
    cols = group_columns(groups, classes)
    allowed = {p: cols[g] for p, g in match.group.items() if g >= 0}
    if match.unmatched:
        lines = "; ".join(f"{p}: {why}" for p, why in list(match.unmatched.items())[:5])
        warnings.warn(f"group prior: {len(match.unmatched)} plate(s) fit no learned group ({lines}"
                      f"{' ...' if len(match.unmatched) > 5 else ''}); the plate prior is used "
                      "for them", stacklevel=2)
    extra.update(plate_groups={p: int(g) for p, g in match.group.items()},
                 group_evidence={p: round(m, 3) for p, m in match.evidence.items()},
                 group_mass={p: round(m, 4) for p, m in match.mass.items()},
                 plates_without_group=sorted(match.unmatched),
                 group_sizes=groups.sizes())
    return apply_prior(probs, plates, method, allowed=allowed), extra


def predictions(meta: pd.DataFrame, probs: np.ndarray, classes: list[str], *,
                label: str | None = "label", prior: str = "plate", per: str | None = None,
                prior_method: str = "exact", groups: PlateGroups | None = None,
                min_group_evidence: float = math.log(100.0)) -> tuple[pd.DataFrame, dict]:
    """Per-image probabilities ``(N, K)`` + index rows -> the prediction table and its summary.

    The prior acts on wells whenever the rows carry plate and well (a well's sites averaged,
    the sites inheriting the well's class); ``per`` only chooses the output rows (default: wells
    when some well has several rows, else keys).
    """
    if prior not in PRIORS:
        raise TrainingError(f"prior={prior!r}; valid: {', '.join(PRIORS)}")
    ASSIGNERS.get(prior_method)
    per = resolve_per(meta, per)
    probs = np.asarray(probs, dtype=np.float32)
    wells = well_codes(meta)
    if per == "well":
        meta, probs = per_well(meta, probs)
        site_of_well = None
    elif wells is not None and len(wells[1]) < len(meta) and prior != "none":
        site_of_well = wells[0]           # the prior acts on wells; sites inherit
    else:
        site_of_well = None
    argmax = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    final, fallback, changed, extra = argmax, [], 0, {}
    if prior != "none":
        if site_of_well is not None:
            wmeta, wprobs = per_well(meta, probs)
            res, extra = apply_named_prior(wmeta, wprobs, classes, prior, prior_method, groups,
                                           min_group_evidence)
            final = res.classes[site_of_well]
            fallback = res.fallback_plates
        else:
            res, extra = apply_named_prior(meta, probs, classes, prior, prior_method, groups,
                                           min_group_evidence)
            final, fallback = res.classes, res.fallback_plates
        changed = int((final != argmax).sum())
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
    summary = {"rows": int(len(table)), "per": per, "prior": prior,
               "prior_method": prior_method if prior != "none" else None,
               "classes": classes, "changed_by_prior": int(changed),
               "fallback_plates": fallback, **extra}
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
    return table, summary


def training_groups(run_config, train_plates: "str | Path | None" = None,
                    storage_options: dict | None = None) -> PlateGroups:
    """Learn the plate groups from ``train_plates`` (a shard set) or the run's ``data.train``."""
    source = train_plates if train_plates is not None else run_config.data.train
    how = ("pass --train-plates SHARDS (a shard set with plate and label columns), or predict "
           "with --prior plate")
    if not source:
        raise TrainingError(f"--prior group learns plate groups from the run's training plates, "
                            f"but the run names no data.train; {how}")
    try:
        groups = groups_from_shards(source, run_config.data.label, storage_options)
    except ValueError as exc:
        raise TrainingError(f"--prior group: {exc}; {how}") from None
    if not groups.groups:
        raise TrainingError(f"--prior group: the training plates {source} show no plate groups "
                            "(no labelled rows, or every class occurs on several plates of one "
                            "experiment); predict with --prior plate, or pass --train-plates "
                            "SHARDS with the screen's plate layout")
    return groups


def predict(run: "str | Path", shards: "str | Path", out: "str | Path", *, prior: str = "plate",
            per: str | None = None, prior_method: str = "exact", device: str = "auto",
            batch_size: int = 64, threads: int = 2, progress: bool = True,
            storage_options: dict | None = None, train_plates: "str | Path | None" = None,
            min_group_evidence: float = math.log(100.0), tta: int | None = None) -> dict:
    """Write ``out`` (parquet, see the module docstring); return the summary (also in JSON)."""
    if prior not in PRIORS:
        raise TrainingError(f"prior={prior!r}; valid: {', '.join(PRIORS)}")
    if per not in (None, "auto", *PER):
        raise TrainingError(f"per={per!r}; valid: auto, {', '.join(PER)}")
    ASSIGNERS.get(prior_method)
    out = Path(out)
    groups = None
    if prior == "group":
        state = checkpoint.load(run)
        groups = training_groups(load_config(state["config"]), train_plates, storage_options)
    elif prior == "experiment":   # the training plates name the shared classes (controls)
        try:
            groups = training_groups(load_config(checkpoint.load(run)["config"]), train_plates,
                                     storage_options)
        except TrainingError:
            groups = None
    index, probs, classes, extra = image_probabilities(
        run, shards, device=device, batch_size=batch_size, threads=threads, progress=progress,
        storage_options=storage_options, tta=tta)
    meta = index.drop(columns=[c for c in STORAGE_COLUMNS if c in index.columns])
    table, summary = predictions(meta, probs, classes, label=extra["label"], prior=prior, per=per,
                                 prior_method=prior_method, groups=groups,
                                 min_group_evidence=min_group_evidence)
    summary = {"run": str(run), "shards": str(shards), "checkpoint": extra["checkpoint"],
               "checkpoint_step": extra["checkpoint_step"], "tta": extra["tta"], **summary}
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
    views = f", {summary['tta']} test-time views" if summary.get("tta", 1) > 1 else ""
    lines = [f"predictions: {summary['out']} ({summary['rows']} rows per {summary['per']}, "
             f"prior {summary['prior']}{views})"]
    if summary.get("checkpoint"):
        lines.append(f"checkpoint: {summary['checkpoint']} (step {summary['checkpoint_step']})")
    if summary.get("prior") not in (None, "none"):
        lines.append(f"prior changed {summary['changed_by_prior']} rows"
                     + (f"; plates kept at argmax (more rows than classes): "
                        f"{summary['fallback_plates']}" if summary["fallback_plates"] else ""))
    if summary.get("plates_without_group"):
        lines.append(f"plates that fit no learned group (plate prior used): "
                     f"{summary['plates_without_group']}")
    if "accuracy" in summary:
        lines.append(f"accuracy on {summary['rows_scored']} labelled rows: "
                     f"{summary['accuracy_argmax']:.4f} argmax -> {summary['accuracy']:.4f} "
                     "with the prior" if summary["prior"] != "none" else
                     f"accuracy on {summary['rows_scored']} labelled rows: "
                     f"{summary['accuracy_argmax']:.4f}")
    return "\n".join(lines)
