"""Named evaluation protocols: embeddings + harmonized metadata -> metrics.

``run_protocol(name, embeddings, metadata, **opts)`` returns a dict with ``protocol``,
``options`` (resolved), ``metrics`` (name -> MatchResult/MapResult/...), ``profiles`` (the
profiles the metrics were computed on, indexed by a readable name such as ``taxol@0.3``),
``features``, ``counts`` (what was scored of what was given), ``excluded`` (profiles left
out of a metric, with the reason), ``definitions`` and ``notes``.

The BBBC021 protocols, side by side (every one scores the 103 MOA-annotated, non-DMSO
(compound, concentration) treatments for NSC):

================  ===================  ======================  ====================  ======
protocol          normalization        aggregation             NSCB multi-batch      NSCB n
================  ===================  ======================  ====================  ======
bbbc021-ws-dino   TVN, one fit on all  image -> (treatment,    median batch          92
                  DMSO images          plate) mean ->          (taxol 0.3 scored)
                                       treatment median
bbbc021-ando      TVN on all DMSO,     image -> well mean ->   any batch (taxol 0.3  91
                  then CORAL per batch treatment median        dropped: no neighbour)
bbbc021-ljosa     z-score per plate    image -> treatment      (supplementary, as    91
                  vs DMSO              mean                    ando)
bbbc021-cytoima-  z-score over all     image -> treatment      (supplementary, as    91
genet             images               mean                    ando)
================  ===================  ======================  ====================  ======

- ``bbbc021-ws-dino`` (Cross-Zamirski et al. 2022, WS-DINO): crops -> image median; TVN
  (PCA whitening) fitted once on every DMSO image embedding; mean per (treatment, plate),
  median per treatment; cosine 1-NN NSC and NSCB; a treatment imaged in several batches
  (taxol 0.3, the positive control, in all ten weeks) counts as its median batch, so NSCB
  scores 92 treatments (103 minus the 11 of the two MOAs imaged in one week only).
- ``bbbc021-ando`` (Ando et al. 2017): crops -> image median; optional per-``center_by``
  z-score on DMSO (default off); TVN fitted on all DMSO images; CORAL per ``coral_by`` batch
  (each batch's DMSO covariance recoloured to that of all DMSO, ridge ``coral_lam``); well
  mean, treatment median; NSC and NSCB where a treatment in several batches excludes
  neighbours from all of them, so taxol 0.3 has no admissible neighbour (91 scored).
- ``bbbc021-ljosa`` (Ljosa et al. 2013, "means" profiles): features z-scored per plate against
  its DMSO images, treatment mean over images, cosine 1-NN NSC (NSCB added, not in the paper).
- ``bbbc021-cytoimagenet`` (Hua et al. 2021): z-score each feature over all images, treatment
  mean, NSC (NSCB added, not in the paper).
- ``knn``: k-NN (k=11) accuracy of ``label`` over rows (COOS-7/CyCLOPS); ``query_split="test"``
  queries the test split against the rest.
- ``map``: replicate retrieval (wells of a treatment vs DMSO wells, after robust MAD per plate on
  DMSO and, as pycytominer's pipeline, feature selection on the normalized well profiles:
  ``post_select`` = NaN share, variance, correlation) and same-MOA retrieval (treatment profiles,
  positives = same MOA, other compound), with percent replicating / matching, grit,
  precision@k, hit@k and enrichment.
- ``cellpainting-cnn`` (Moshkov et al. 2024, DeepProfilerExperiments' notebooks): cell -> site
  median -> well mean -> ZCA whitening on the control wells (lambda 1e-2) -> treatment mean ->
  cosine; enrichment at the top 1%, precision at the top 1%, recall at the top 10% and the
  interpolated-PR mAP over treatments sharing an MOA (:mod:`cytodata.evaluate.deepprofiler`).

None of the BBBC021 papers above applied feature selection to learned embeddings, so those
protocols do not; ``map`` follows pycytominer's pipeline and selects after normalizing. Every
protocol accepts ``feature_select=[...]`` (operations of :mod:`cytodata.evaluate.selection`)
to select before it starts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .._registry import Registry
from ..errors import EvaluationError, preview
from ._checks import constant_columns, name_columns, warn
from .interop import from_metadata_names, infer_features
from .matching import knn_accuracy, nsc, nscb
from .normalize import normalize
from .profiles import aggregate, resolve_features
from .retrieval import mean_average_precision
from .selection import select_features

PROTOCOLS: Registry[Callable[..., dict]] = Registry("evaluation protocol")

ID_COLUMNS: tuple[str, ...] = ("key", "image_id", "id")
CARRY: tuple[str, ...] = ("moa", "batch", "plate", "well", "compound", "concentration",
                          "control_type", "label", "split")


def _check_feature_columns(table: pd.DataFrame, cols: list[str], where: str) -> None:
    """All-NaN, partly-NaN and non-numeric feature columns are errors naming the columns."""
    block = table[cols]
    non_numeric = [c for c in cols if not pd.api.types.is_numeric_dtype(block[c])]
    if non_numeric:
        raise EvaluationError(f"{where}: feature column(s) {name_columns(non_numeric)} are not "
                              "numeric; name the feature columns to leave them out: `cytodata evaluate "
                              "... --features PREFIX` (Python: features=PREFIX or a list)")
    x = block.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(x)
    all_bad = [c for c, ok in zip(cols, finite.any(axis=0), strict=False) if not ok]
    if all_bad:
        raise EvaluationError(
            f"{where}: feature column(s) {name_columns(all_bad)} are NaN/inf in every row; "
            "drop them with `cytodata evaluate ... --feature-select drop_na_columns` (Python: "
            "feature_select=['drop_na_columns']) or re-embed")
    some_bad = ~finite.all(axis=0)
    if some_bad.any():
        rows = ~finite.all(axis=1)
        bad_cols = [c for c, b in zip(cols, some_bad, strict=False) if b]
        raise EvaluationError(
            f"{where}: {int(rows.sum())} row(s) have NaN/inf features (rows "
            f"{preview(table.index[rows])}; column(s) {name_columns(bad_cols)}). Drop or "
            "re-embed those images, or drop the columns before evaluating.")
    flat = constant_columns(x, cols)
    if flat:
        warn(f"{where}: feature column(s) {name_columns(flat)} are constant over all "
             f"{len(x)} rows and carry no information; drop them with `cytodata evaluate ... "
             "--feature-select variance_threshold` (Python: feature_select=['variance_threshold'])")


def _id_index(values: pd.Series, what: str) -> pd.Index:
    ids = values.astype(str)
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise EvaluationError(
            f"{what}: id(s) {preview(ids[dup].unique())} appear more than once "
            f"({int(dup.sum())} rows); each image must appear once or it is counted twice. "
            "Keep one row per image (`cytodata embed` writes one per sample; in Python: "
            "table.drop_duplicates(subset=[id column])).")
    return pd.Index(ids, name="id")


def align(embeddings: pd.DataFrame | np.ndarray, metadata: pd.DataFrame, *,
          id_column: str | None = None, features=None) -> tuple[pd.DataFrame, list[str]]:
    """Join embeddings to metadata rows; returns (table indexed by id, feature columns).

    ``embeddings``: a DataFrame with an id column (``key``, ``image_id`` or ``id``, or
    ``id_column``) and feature columns; the metadata table itself (one table holding both,
    features found by ``features`` or :func:`~cytodata.evaluate.interop.infer_features`);
    or an (n, d) array aligned row by row with ``metadata`` (columns ``emb_0000``...).
    Unknown ids, duplicate ids (in either table), all-NaN/NaN features are errors naming the
    ids/columns; metadata rows without an embedding are left out with a warning, and
    ``table.attrs["coverage"]`` records ``{"scored", "expected", "missing"}``.
    """
    meta = metadata.reset_index(drop=True)
    if embeddings is metadata:  # one table: metadata and features side by side
        cols = (infer_features(meta) if features is None
                else infer_features(meta, prefix=features) if isinstance(features, str)
                else resolve_features(meta, features))
        idc = id_column or next((c for c in ID_COLUMNS if c in meta.columns), None)
        if idc is not None:
            if idc not in meta.columns:
                raise EvaluationError(f"id column {idc!r} not in the table; columns are "
                                      f"{preview(meta.columns, 10)}")
            meta.index = _id_index(meta[idc], "table")
        else:
            try:
                dup = meta.duplicated(keep=False).to_numpy()
            except TypeError:  # unhashable cells (lists): compare their text
                dup = meta.astype(str).duplicated(keep=False).to_numpy()
            if dup.any():
                raise EvaluationError(
                    f"rows {preview(np.flatnonzero(dup).tolist())} are exact duplicates (same "
                    "metadata and features); each image must appear once or it is counted "
                    "twice. Drop them (table.drop_duplicates()) or pass --id-column to name "
                    "the images.")
            meta.index = pd.Index([f"row {i}" for i in range(len(meta))], name="id")
        _check_feature_columns(meta, cols, "embeddings")
        meta.attrs["coverage"] = {"scored": len(meta), "expected": len(meta), "missing": []}
        return meta, cols
    if isinstance(embeddings, np.ndarray):
        if embeddings.ndim != 2 or len(embeddings) != len(meta):
            raise EvaluationError(
                f"embedding array has shape {embeddings.shape}; expected ({len(meta)}, d), one "
                "row per metadata row in the same order"
            )
        cols = [f"emb_{i:04d}" for i in range(embeddings.shape[1])]
        table = pd.concat([meta, pd.DataFrame(embeddings, columns=cols)], axis=1)
        idc = id_column or next((c for c in ID_COLUMNS if c in meta.columns), None)
        if idc is not None:
            table.index = _id_index(meta[idc], "metadata")
        _check_feature_columns(table, cols, "embeddings")
        table.attrs["coverage"] = {"scored": len(table), "expected": len(table), "missing": []}
        return table, cols
    idc = id_column or next((c for c in ID_COLUMNS if c in embeddings.columns), None)
    if idc is None or idc not in embeddings.columns:
        raise EvaluationError(
            f"embeddings need an id column ({' or '.join(ID_COLUMNS)}, or name one: `cytodata "
            f"evaluate ... --id-column NAME`, Python: id_column=NAME); "
            f"columns are {preview(embeddings.columns, 10)}"
        )
    meta_id = idc if idc in meta.columns else next((c for c in ID_COLUMNS if c in meta.columns),
                                                   None)
    if meta_id is None:
        raise EvaluationError(f"metadata has no id column to match {idc!r}; columns are "
                              f"{preview(meta.columns, 10)}")
    emb = embeddings.copy()
    emb.index = _id_index(emb[idc], "embeddings")
    emb = emb.drop(columns=[idc])
    if features is None:
        shared = [c for c in emb.columns if c in meta.columns]
        cols = infer_features(emb.drop(columns=shared))
    else:
        cols = resolve_features(emb, features)
    meta.index = _id_index(meta[meta_id], "metadata")
    unknown = emb.index.difference(meta.index)
    if len(unknown):
        raise EvaluationError(
            f"{len(unknown)} embedding id(s) not in the metadata column {meta_id!r}: "
            f"{preview(unknown)}. Embed the same manifest you evaluate against."
        )
    table = meta.loc[emb.index, [c for c in meta.columns if c not in cols]].join(emb[cols])
    _check_feature_columns(table, cols, "embeddings")
    missing = meta.index.difference(emb.index)
    if len(missing):
        warn(f"embeddings cover {len(emb)} of {len(meta)} metadata rows; {len(missing)} "
             f"without an embedding are not scored (e.g. {preview(missing, 3)})")
    table.attrs["coverage"] = {"scored": len(table), "expected": len(meta),
                               "missing": [str(m) for m in missing[:20]]}
    return table, cols


def _casefold_eq(values: pd.Series, token: str) -> np.ndarray:
    return values.astype("string").str.casefold().eq(token.casefold()).fillna(False).to_numpy(bool)


def _to_images(table: pd.DataFrame, cols: list[str], how: str) -> pd.DataFrame:
    """Crop rows -> one row per image (median by default); images pass through."""
    for key in ("parent_id", "image_id"):
        if key in table.columns and table[key].notna().all() and table[key].duplicated().any():
            out = aggregate(table, features=cols, by=key, how=how, carry=CARRY)
            out.index = pd.Index(out[key].astype(str), name="id")
            return out
    return table


def _treatments(table: pd.DataFrame, o: dict) -> pd.DataFrame:
    """Rows with an MOA that are not the negative control compound."""
    keep = table[o["moa"]].notna().to_numpy() & ~_casefold_eq(table[o["compound"]], o["control"])
    keep &= ~_casefold_eq(table[o["moa"]], o["control"])
    return table[keep]


def _fmt_conc(value) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _name_treatments(treat: pd.DataFrame, o: dict) -> pd.DataFrame:
    """Index treatment profiles by ``compound@concentration`` (what a reader recognises)."""
    names = (treat[o["compound"]].astype(str) + "@"
             + treat[o["concentration"]].map(_fmt_conc))
    treat = treat.copy()
    treat.index = pd.Index(names, name="treatment")
    return treat


def _check_columns(table: pd.DataFrame, cols: list[str], protocol: str) -> None:
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise EvaluationError(f"protocol {protocol!r} needs metadata column(s) {missing}; "
                              f"columns are {preview(table.columns, 10)}. Join the manifest the "
                              "shards were written from: `cytodata evaluate EMBEDDINGS --metadata "
                              "MANIFEST_DIR` (Python: metadata=); a pycytominer table: "
                              "--metadata-prefix Metadata_ (Python: metadata_prefix='Metadata_').")


DEFAULTS = {"compound": "compound", "concentration": "concentration", "moa": "moa",
            "batch": "batch", "plate": "plate", "well": "well", "control": "dmso",
            "features": None, "id_column": None, "metadata_prefix": None,
            "feature_select": None}


def _opts(opts: dict, **extra) -> dict:
    out = {**DEFAULTS, **extra}
    unknown = sorted(set(opts) - set(out))
    if unknown:
        raise EvaluationError(f"unknown protocol option(s) {unknown}; valid: {sorted(out)}")
    out.update(opts)
    return out


def _prepare(embeddings, metadata, o: dict, protocol: str, needs: list[str]
             ) -> tuple[pd.DataFrame, list[str], dict, list[str]]:
    """Align, check columns, select features; returns (image table, features, counts, notes)."""
    same = embeddings is metadata
    if o["metadata_prefix"]:
        metadata = from_metadata_names(metadata, o["metadata_prefix"])
        renamed = metadata.attrs.get("renamed", {})
        if same:
            embeddings = metadata
        elif isinstance(embeddings, pd.DataFrame):
            embeddings = embeddings.rename(columns=renamed)
        if o["id_column"] in renamed:
            o = {**o, "id_column": renamed[o["id_column"]]}
    table, cols = align(embeddings, metadata, id_column=o["id_column"], features=o["features"])
    cov = table.attrs.get("coverage", {})
    _check_columns(table, [o[k] for k in needs], protocol)
    notes: list[str] = []
    counts = {"rows_expected": cov.get("expected", len(table)),
              "rows_scored": cov.get("scored", len(table)), "features": len(cols)}
    if counts["rows_scored"] < counts["rows_expected"]:
        notes.append(f"embeddings cover {counts['rows_scored']} of {counts['rows_expected']} "
                     "metadata rows; the rest are not scored")
    if o["feature_select"]:
        spec = o["feature_select"]
        kwargs = dict(spec) if isinstance(spec, dict) else {"operations": spec}
        selected = select_features(table, features=cols, **kwargs)
        dropped = selected.attrs.get("dropped_features", {})
        gone = [c for v in dropped.values() for c in v]
        cols = [c for c in cols if c not in set(gone)]
        table = selected
        counts["features_selected"] = len(cols)
        notes.append("feature selection dropped " + (", ".join(
            f"{len(v)} by {op}" for op, v in dropped.items()) or "nothing")
            + f": {len(cols)} features kept")
    return table, cols, counts, notes


def _treatment_counts(images: pd.DataFrame, treat: pd.DataFrame, o: dict) -> dict:
    """How many treatments the metadata holds, how many have an MOA, how many were scored."""
    is_ctrl = _casefold_eq(images[o["compound"]], o["control"])
    trt = images.loc[~is_ctrl, [o["compound"], o["concentration"], o["moa"]]]
    all_t = trt.drop_duplicates([o["compound"], o["concentration"]])
    return {"treatments_in_metadata": len(all_t),
            "treatments_without_moa": int(all_t[o["moa"]].isna().sum()),
            "treatments_profiled": len(treat),
            "control_images": int(is_ctrl.sum())}


def _score_bbbc021(treat: pd.DataFrame, cols: list[str], o: dict, multi_batch: str,
                   nscb_note: str | None = None) -> tuple[dict, list[str], pd.DataFrame]:
    metrics = {"nsc": nsc(treat, features=cols, moa=o["moa"], compound=o["compound"])}
    notes: list[str] = []
    excluded = []
    try:
        metrics["nscb"] = nscb(treat, features=cols, moa=o["moa"], compound=o["compound"],
                               batch=o["batch"], multi_batch=multi_batch)
        ex = metrics["nscb"].excluded.assign(metric="NSCB")
        excluded.append(ex)
        if nscb_note:
            notes.append(nscb_note)
    except EvaluationError as exc:
        notes.append(f"NSCB not computed: {exc}")
    excluded = (pd.concat(excluded, ignore_index=True) if excluded
                else pd.DataFrame(columns=["profile", o["moa"], "reason", "metric"]))
    return metrics, notes, excluded


def _bbbc021_result(name: str, o: dict, metrics: dict, treat: pd.DataFrame, cols: list[str],
                    counts: dict, notes: list[str], excluded: pd.DataFrame) -> dict:
    counts = {**counts, **{f"{k}_scored": m.total for k, m in metrics.items()}}
    lines = [f"{counts['treatments_profiled']} treatment profiles (MOA-annotated, not "
             f"{o['control']!r}) of {counts['treatments_in_metadata']} treatments in the "
             f"metadata; {counts['treatments_without_moa']} have no MOA and are not scored"]
    for _k, m in metrics.items():
        lines.append(f"{m.name} scored {m.total} of {counts['treatments_profiled']} treatments"
                     + (f"; dropped MOAs (one batch only): {', '.join(m.dropped)}"
                        if m.dropped else "")
                     + (f"; left out for lack of an admissible neighbour: "
                        f"{', '.join(map(str, m.unmatched))}" if m.unmatched else ""))
    return {"protocol": name, "options": o, "metrics": metrics, "profiles": treat,
            "features": cols, "counts": counts, "excluded": excluded,
            "definitions": {m.name: m.definition for m in metrics.values()},
            "notes": lines + notes}


BBBC021_NEEDS = ["compound", "concentration", "moa", "batch", "plate", "well"]


@PROTOCOLS.register("bbbc021-ws-dino")
def bbbc021_ws_dino(embeddings, metadata, **opts) -> dict:
    """Global TVN on DMSO -> (treatment, plate) mean -> treatment median -> NSC, NSCB (median)."""
    o = _opts(opts, crop_how="median", epsilon=1e-6)
    table, cols, counts, notes = _prepare(embeddings, metadata, o, "bbbc021-ws-dino",
                                          BBBC021_NEEDS)
    images = _to_images(table, cols, o["crop_how"])
    images = normalize(images, features=cols, method="tvn", controls={o["compound"]: o["control"]},
                       epsilon=o["epsilon"])
    trt = _treatments(images, o)
    per_plate = aggregate(trt, features=cols, by=[o["compound"], o["concentration"], o["plate"]],
                          how="mean", carry=CARRY, count="n_images")
    treat = _name_treatments(aggregate(per_plate, features=cols,
                                       by=[o["compound"], o["concentration"]], how="median",
                                       carry=CARRY, count="n_plates"), o)
    metrics, more, excluded = _score_bbbc021(
        treat, cols, o, "median",
        "NSCB: a treatment imaged in several batches counts as its median batch (WS-DINO)")
    counts.update(_treatment_counts(images, treat, o))
    notes = notes + [f"TVN fitted once on all {counts['control_images']} {o['control']!r} "
                     "images"] + more
    return _bbbc021_result("bbbc021-ws-dino", o, metrics, treat, cols, counts, notes, excluded)


@PROTOCOLS.register("bbbc021-ando")
def bbbc021_ando(embeddings, metadata, **opts) -> dict:
    """TVN on DMSO -> CORAL per batch -> well mean -> treatment median -> NSC + NSCB (any)."""
    o = _opts(opts, center_by=None, tvn_by=None, coral_by="batch", coral_lam=1.0,
              coral_center=True, crop_how="median", well_how="mean", treatment_how="median",
              epsilon=1e-6)
    table, cols, counts, notes = _prepare(embeddings, metadata, o, "bbbc021-ando", BBBC021_NEEDS)
    images = _to_images(table, cols, o["crop_how"])
    controls = {o["compound"]: o["control"]}
    steps = []
    if o["center_by"]:
        images = normalize(images, features=cols, method="standardize", controls=controls,
                           by=o["center_by"])
        steps.append(f"z-scored on {o['control']!r} images per {o['center_by']!r}")
    images = normalize(images, features=cols, method="tvn", controls=controls, by=o["tvn_by"],
                       epsilon=o["epsilon"])
    steps.append(f"TVN fitted on {o['control']!r} images "
                 + (f"per {o['tvn_by']!r}" if o["tvn_by"] else "globally"))
    if o["coral_by"]:
        images = normalize(images, features=cols, method="coral", controls=controls,
                           by=o["coral_by"], lam=o["coral_lam"], center=o["coral_center"])
        steps.append(f"CORAL per {o['coral_by']!r} onto all {o['control']!r} images "
                     f"(lam={o['coral_lam']}, center={o['coral_center']})")
    wells = aggregate(images, features=cols, by=[o["plate"], o["well"]], how=o["well_how"],
                      carry=CARRY)
    treat = _name_treatments(aggregate(_treatments(wells, o), features=cols,
                                       by=[o["compound"], o["concentration"]],
                                       how=o["treatment_how"], carry=CARRY, count="n_wells"), o)
    metrics, more, excluded = _score_bbbc021(
        treat, cols, o, "any",
        "NSCB: a treatment in several batches excludes neighbours from all of them (Ando)")
    counts.update(_treatment_counts(images, treat, o))
    return _bbbc021_result("bbbc021-ando", o, metrics, treat, cols, counts,
                           notes + ["; ".join(steps)] + more, excluded)


@PROTOCOLS.register("bbbc021-ljosa")
def bbbc021_ljosa(embeddings, metadata, **opts) -> dict:
    """z-score per plate on DMSO -> treatment mean -> NSC (NSCB supplementary)."""
    o = _opts(opts, normalize_by="plate", crop_how="median")
    table, cols, counts, notes = _prepare(embeddings, metadata, o, "bbbc021-ljosa",
                                          BBBC021_NEEDS)
    images = _to_images(table, cols, o["crop_how"])
    if o["normalize_by"]:
        images = normalize(images, features=cols, method="standardize",
                           controls={o["compound"]: o["control"]}, by=o["normalize_by"])
    treat = _name_treatments(aggregate(_treatments(images, o), features=cols,
                                       by=[o["compound"], o["concentration"]], how="mean",
                                       carry=CARRY, count="n_images"), o)
    metrics, more, excluded = _score_bbbc021(
        treat, cols, o, "any", "NSCB is not in Ljosa et al. 2013 (added for comparison)")
    counts.update(_treatment_counts(images, treat, o))
    notes = notes + [f"z-scored against {o['control']!r} images per {o['normalize_by']!r}"
                     if o["normalize_by"] else "no normalization"] + more
    return _bbbc021_result("bbbc021-ljosa", o, metrics, treat, cols, counts, notes, excluded)


@PROTOCOLS.register("bbbc021-cytoimagenet")
def bbbc021_cytoimagenet(embeddings, metadata, **opts) -> dict:
    """z-score over all images -> treatment mean -> NSC (NSCB supplementary)."""
    o = _opts(opts, crop_how="median")
    table, cols, counts, notes = _prepare(embeddings, metadata, o, "bbbc021-cytoimagenet",
                                          ["compound", "concentration", "moa"])
    images = _to_images(table, cols, o["crop_how"])
    images = normalize(images, features=cols, method="standardize", controls=None)
    treat = _name_treatments(aggregate(_treatments(images, o), features=cols,
                                       by=[o["compound"], o["concentration"]], how="mean",
                                       carry=CARRY, count="n_images"), o)
    metrics = {"nsc": nsc(treat, features=cols, moa=o["moa"], compound=o["compound"])}
    more, excluded = [], pd.DataFrame(columns=["profile", o["moa"], "reason", "metric"])
    if o["batch"] in treat.columns:
        metrics, more, excluded = _score_bbbc021(
            treat, cols, o, "any", "NSCB is not in Hua et al. 2021 (added for comparison)")
    counts.update(_treatment_counts(images, treat, o))
    return _bbbc021_result("bbbc021-cytoimagenet", o, metrics, treat, cols, counts,
                           notes + ["z-score fitted on all images"] + more, excluded)


@PROTOCOLS.register("knn")
def knn(embeddings, metadata, **opts) -> dict:
    """k-NN accuracy of ``label`` (leave-one-out, or ``query_split`` vs the other rows)."""
    o = _opts(opts, label="label", k=11, metric="euclidean", query_split=None,
              split_column="split", fallback="nearest", exclude_same=None)
    table, cols, counts, notes = _prepare(embeddings, metadata, o, "knn", ["label"])
    unlabeled = table[o["label"]].isna()
    if unlabeled.any():
        notes.append(f"{int(unlabeled.sum())} rows without {o['label']!r} left out")
        table = table[~unlabeled]
    mask = None
    if o["query_split"] is not None:
        _check_columns(table, [o["split_column"]], "knn")
        mask = table[o["split_column"]].astype("string").eq(o["query_split"]).fillna(False)
        if not mask.any() or mask.all():
            raise EvaluationError(f"knn: query_split={o['query_split']!r} selects {int(mask.sum())}"
                                  f" of {len(mask)} rows; need queries and references: choose "
                                  "another split (`--option query_split=test`) or none "
                                  "(`--option query_split=null`)")
        mask = mask.to_numpy(bool)
    if o["exclude_same"] is not None:
        _check_columns(table, [o["exclude_same"]], "knn")
    res = knn_accuracy(table, features=cols, label=o["label"], k=o["k"], metric=o["metric"],
                       fallback=o["fallback"], query_mask=mask, exclude_same=o["exclude_same"])
    counts["knn_scored"] = res.total
    return {"protocol": "knn", "options": o, "metrics": {"knn": res}, "profiles": table,
            "features": cols, "counts": counts, "excluded": pd.DataFrame(),
            "definitions": {res.name: res.definition}, "notes": notes}


@PROTOCOLS.register("map")
def map_protocol(embeddings, metadata, **opts) -> dict:
    """Replicate and same-MOA retrieval: mAP, percent replicating/matching, grit, @k, enrichment."""
    from .replicates import (
        enrichment,
        grit,
        hit_at_k,
        percent_matching,
        percent_replicating,
        precision_at_k,
    )

    o = _opts(opts, normalize="mad", normalize_by="plate", null_size=10_000, seed=0, fdr=0.05,
              distance="cosine", k=5, replicate_null_size=1000,
              post_select=("drop_na_columns", "variance_threshold", "correlation_threshold"))
    table, cols, counts, notes = _prepare(embeddings, metadata, o, "map",
                                          ["compound", "concentration", "moa", "plate", "well"])
    table = _to_images(table, cols, "median")
    if o["normalize"]:
        table = normalize(table, features=cols, method=o["normalize"],
                          controls={o["compound"]: o["control"]}, by=o["normalize_by"])
        notes.append(f"{o['normalize']} normalization on {o['control']!r} per "
                     f"{o['normalize_by']}")
    wells = aggregate(table, features=cols, by=[o["plate"], o["well"]], how="mean", carry=CARRY)
    if o["post_select"]:
        # pycytominer's profiling pipeline: aggregate -> normalize -> feature_select
        selected = select_features(wells, features=cols, operations=list(o["post_select"]))
        dropped = selected.attrs.get("dropped_features", {})
        gone = {c for v in dropped.values() for c in v}
        if gone:
            notes.append(f"feature selection after normalization dropped {len(gone)} of "
                         f"{len(cols)} columns (" + ", ".join(
                             f"{op}: {preview(v, 3)}" for op, v in dropped.items() if v) + ")")
        cols = [c for c in cols if c not in gone]
        wells = selected
        counts["features_selected"] = len(cols)
    wells = wells.copy()  # one block per dtype before adding columns (wide profiles)
    is_ctrl = _casefold_eq(wells[o["compound"]], o["control"])
    wells["treatment"] = np.where(
        is_ctrl, o["control"],
        wells[o["compound"]].astype(str) + "@" + wells[o["concentration"]].map(_fmt_conc))
    wells["is_control"] = is_ctrl
    wells.index = pd.Index(wells["treatment"] + " " + wells[o["plate"]].astype(str) + "/"
                           + wells[o["well"]].astype(str), name="well")
    counts_t = wells.loc[~is_ctrl, "treatment"].value_counts()
    single = counts_t[counts_t < 2]
    if len(single) == len(counts_t):
        raise EvaluationError(
            f"all {len(single)} treatment(s) have a single well, so no replicate to retrieve: "
            f"{preview(single.index)}. Use a protocol without replicate retrieval.")
    if len(single):
        notes.append(f"{len(single)} treatment(s) with a single well are not scored for "
                     f"replicate retrieval: {preview(single.index)}")
        warn(f"map: {len(single)} treatment(s) have a single well and are not scored: "
             f"{preview(single.index)}")
    common = {"features": cols, "null_size": o["null_size"], "seed": o["seed"], "fdr": o["fdr"],
              "distance": o["distance"]}
    rep = mean_average_precision(wells, pos_sameby=["treatment"], neg_diffby=["is_control"],
                                 name="replicate mAP", **common)
    rep.map = rep.map[rep.map["treatment"] != o["control"]].reset_index(drop=True)
    metrics: dict = {"replicate_map": rep}
    multi = wells[~wells["treatment"].isin(single.index)]
    trt_wells = multi[~multi["is_control"]]
    try:
        metrics["percent_replicating"] = percent_replicating(
            trt_wells, features=cols, group_by="treatment", null_size=o["replicate_null_size"],
            seed=o["seed"])
        metrics["grit"] = grit(multi, features=cols, group_by="treatment",
                               controls=multi["is_control"].to_numpy())
    except EvaluationError as exc:
        notes.append(f"percent replicating / grit not computed: {exc}")
    treat = _name_treatments(aggregate(_treatments(wells, o), features=cols,
                                       by=[o["compound"], o["concentration"]], how="median",
                                       carry=CARRY, count="n_wells"), o)
    moa_kw = {"features": cols, "group_by": o["moa"], "diff_by": o["compound"]}
    for key, fn in (("moa_map", None), ("percent_matching", percent_matching),
                    (f"precision_at_{o['k']}", precision_at_k), (f"hit_at_{o['k']}", hit_at_k)):
        try:
            if fn is None:
                metrics[key] = mean_average_precision(
                    treat, pos_sameby=[o["moa"]], pos_diffby=[o["compound"]],
                    neg_diffby=[o["moa"]], name="MOA mAP", **common)
            elif fn is percent_matching:
                metrics[key] = fn(treat, null_size=o["replicate_null_size"], seed=o["seed"],
                                  **moa_kw)
            else:
                metrics[key] = fn(treat, k=o["k"], similarity=o["distance"], **moa_kw)
        except EvaluationError as exc:  # e.g. no MOA with two compounds in a subset
            notes.append(f"{key} not computed: {exc}")
    enrich = None
    try:
        enrich = enrichment(treat, **moa_kw)
    except EvaluationError as exc:
        notes.append(f"enrichment not computed: {exc}")
    counts.update({"wells": len(wells), "treatment_wells": int((~is_ctrl).sum()),
                   "treatments": len(counts_t), "treatments_single_well": len(single),
                   "moa_profiles": len(treat)})
    return {"protocol": "map", "options": o, "metrics": metrics, "profiles": treat,
            "features": cols, "counts": counts, "enrichment": enrich,
            "excluded": pd.DataFrame({"profile": list(single.index),
                                      "reason": "single well: no replicate"}),
            "definitions": {getattr(m, "name", k): getattr(m, "definition", "")
                            for k, m in metrics.items()},
            "notes": notes}


@PROTOCOLS.register("cellpainting-cnn")
def cellpainting_cnn(embeddings, metadata, **opts) -> dict:
    """The Cell Painting CNN's evaluation (Moshkov et al. 2024; :mod:`.deepprofiler`).

    cell -> site median -> well mean -> whitening on the control wells (lambda 1e-2) ->
    treatment mean -> cosine; enrichment at the top 1%, precision at the top 1%, recall at the
    top 10%, interpolated-PR mAP over treatments that share an MOA with another. Any table at
    cell, site or well level with ``treatment`` (default: ``compound@concentration``),
    ``plate``, ``well``, ``moa`` and a control column (``control_column`` equal to
    ``control_value``; default ``control_type == "negcon"``, else ``compound == control``).
    """
    from . import deepprofiler as dp

    o = _opts(opts, treatment="treatment", site="site", control_column=None, control_value=None,
              reg_param=dp.REG_PARAM)
    table, cols, counts, notes = _prepare(embeddings, metadata, o, "cellpainting-cnn",
                                          ["plate", "well", "moa"])
    table = table.copy()
    if o["treatment"] not in table.columns:
        if o["compound"] in table.columns and o["concentration"] in table.columns:
            table[o["treatment"]] = (table[o["compound"]].astype(str) + "@"
                                     + table[o["concentration"]].map(_fmt_conc))
            notes.append(f"treatment = {o['compound']}@{o['concentration']}")
        else:
            raise EvaluationError(f"protocol 'cellpainting-cnn' needs a treatment column "
                                  f"{o['treatment']!r} (or {o['compound']!r} and "
                                  f"{o['concentration']!r}); columns are {preview(table.columns, 10)}")
    column, value = o["control_column"], o["control_value"]
    if column is None:
        column, value = (("control_type", "negcon") if "control_type" in table.columns
                         else (o["compound"], o["control"]))
    _check_columns(table, [column], "cellpainting-cnn")
    values = table[column]
    if value is None and values.dtype == bool:
        is_ctrl = values.to_numpy(bool)
    else:
        is_ctrl = _casefold_eq(values, str(value if value is not None else "true"))
    if not is_ctrl.any():
        raise EvaluationError(f"no control rows ({column} == {value!r}); whitening is fitted on "
                              "the control wells: name them with `cytodata evaluate ... --option "
                              "control_column=COLUMN --option control_value=VALUE` (Python: "
                              "control_column=, control_value=)")
    site = o["site"] if o["site"] in table.columns else None
    wells, treat, c = dp.profiles(table, cols, treatment=o["treatment"], plate=o["plate"],
                                  well=o["well"], site=site, is_control=is_ctrl, lam=o["reg_param"])
    counts.update(c)
    moas = (table.loc[~is_ctrl].groupby(o["treatment"])[o["moa"]].first())
    metrics = dp.score(treat, moas)
    counts.update(treatments_scored=metrics["treatments"], queries=metrics["queries"])
    definitions = {
        "chain": "cell -> site median -> well mean -> ZCA whitening on control wells "
                 f"(1/sqrt(eig + {o['reg_param']:g})) -> treatment mean -> cosine",
        "enrichment_top1": "mean odds ratio (one-sided Fisher) of same-MOA among each query's "
                           "similarities above its 99th percentile",
        "precision_top1": f"share of same-MOA among the k={metrics['k_precision']} most similar",
        "recall_top10": f"same-MOA among the {metrics['k_recall'] - 1} most similar / (same-MOA + 1)",
        "map": "mean of the interpolated precision-recall curve (queries with >= 2 same-MOA)"}
    return {"protocol": "cellpainting-cnn", "options": o, "metrics": metrics,
            "profiles": treat, "wells": wells, "features": cols, "counts": counts,
            "excluded": pd.DataFrame(columns=["profile", "reason"]), "definitions": definitions,
            "notes": notes}


def run_protocol(name: str, embeddings, metadata: pd.DataFrame, **opts) -> dict:
    """Run the protocol called ``name`` (see ``PROTOCOLS.names()``)."""
    try:
        fn = PROTOCOLS.get(name)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    return fn(embeddings, metadata, **opts)
