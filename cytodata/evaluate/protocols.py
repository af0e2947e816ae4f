"""Named evaluation protocols: embeddings + harmonized metadata -> metrics.

``run_protocol(name, embeddings, metadata, **opts)`` returns a dict with ``protocol``,
``options`` (resolved), ``metrics`` (name -> MatchResult/MapResult), ``profiles`` (the
profiles the metrics were computed on), ``features`` and ``notes``.

Protocols (``PROTOCOLS.names()``):

- ``bbbc021-ando`` (Ando et al. 2017, WS-DINO): crops -> image median; each ``center_by``
  group (default ``"batch"``; ``None`` skips) is z-scored on its own DMSO images, removing
  per-batch offsets/scales; then TVN is fitted on the DMSO images per ``tvn_by`` group (default
  ``None``: ONE fit on all DMSO images, so every batch shares the same principal axes; a
  per-batch PCA basis would rotate batches differently and defeat NSCB); well mean, treatment
  median over wells, then NSC and NSCB over the MOA-annotated non-DMSO treatments (103 in
  BBBC021; NSCB drops MOAs seen in one batch only).
- ``bbbc021-cytoimagenet`` (Hua et al. 2021): z-score each feature over all images, treatment
  mean, NSC.
- ``knn``: k-NN (k=11) accuracy of ``label`` over rows (COOS-7/CyCLOPS); ``query_split="test"``
  queries the test split against the rest.
- ``map``: replicate retrieval (wells of a treatment vs DMSO wells, after robust MAD per plate on
  DMSO) and same-MOA retrieval (treatment profiles, positives = same MOA, other compound).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .._registry import Registry
from ..errors import EvaluationError, preview
from .matching import knn_accuracy, nsc, nscb
from .normalize import normalize
from .profiles import aggregate, feature_matrix, resolve_features
from .retrieval import mean_average_precision

PROTOCOLS: Registry[Callable[..., dict]] = Registry("evaluation protocol")

ID_COLUMNS: tuple[str, ...] = ("key", "image_id", "id")
CARRY: tuple[str, ...] = ("moa", "batch", "plate", "well", "compound", "concentration",
                          "control_type", "label", "split")


def align(embeddings: pd.DataFrame | np.ndarray, metadata: pd.DataFrame, *,
          id_column: str | None = None, features=None) -> tuple[pd.DataFrame, list[str]]:
    """Join embeddings to metadata rows; returns (table indexed by id, feature columns).

    ``embeddings``: a DataFrame with an id column (``key``, ``image_id`` or ``id``, or
    ``id_column``) and feature columns, or an (n, d) array aligned row by row with
    ``metadata`` (columns ``emb_0000``...). Ids missing from the metadata, duplicate ids and
    NaN features are errors naming the ids; metadata rows without an embedding are left out.
    """
    meta = metadata.reset_index(drop=True)
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
            table.index = pd.Index(meta[idc].astype(str), name="id")
        feature_matrix(table, cols)
        return table, cols
    idc = id_column or next((c for c in ID_COLUMNS if c in embeddings.columns), None)
    if idc is None or idc not in embeddings.columns:
        raise EvaluationError(
            f"embeddings need an id column ({' or '.join(ID_COLUMNS)}, or id_column=...); "
            f"columns are {preview(embeddings.columns, 10)}"
        )
    meta_id = idc if idc in meta.columns else next((c for c in ID_COLUMNS if c in meta.columns), None)
    if meta_id is None:
        raise EvaluationError(f"metadata has no id column to match {idc!r}; columns are "
                              f"{preview(meta.columns, 10)}")
    emb = embeddings.copy()
    emb.index = pd.Index(emb[idc].astype(str), name="id")
    emb = emb.drop(columns=[idc])
    cols = resolve_features(emb, features)
    dup = emb.index.duplicated(keep=False)
    if dup.any():
        raise EvaluationError(f"duplicate embedding ids {preview(emb.index[dup].unique())}")
    meta.index = pd.Index(meta[meta_id].astype(str), name="id")
    unknown = emb.index.difference(meta.index)
    if len(unknown):
        raise EvaluationError(
            f"{len(unknown)} embedding id(s) not in the metadata column {meta_id!r}: "
            f"{preview(unknown)}. Embed the same manifest you evaluate against."
        )
    table = meta.loc[emb.index, [c for c in meta.columns if c not in cols]].join(emb[cols])
    feature_matrix(table, cols)
    return table, cols


def _casefold_eq(values: pd.Series, token: str) -> np.ndarray:
    return values.astype("string").str.casefold().eq(token.casefold()).fillna(False).to_numpy(bool)


def _to_images(table: pd.DataFrame, cols: list[str], how: str) -> pd.DataFrame:
    """Crop rows -> one row per image (median by default); images pass through."""
    for key in ("parent_id", "image_id"):
        if key in table.columns and table[key].notna().all() and table[key].duplicated().any():
            return aggregate(table, features=cols, by=key, how=how, carry=CARRY)
    return table


def _treatments(table: pd.DataFrame, o: dict) -> pd.DataFrame:
    """Rows with an MOA that are not the negative control compound."""
    keep = table[o["moa"]].notna().to_numpy() & ~_casefold_eq(table[o["compound"]], o["control"])
    keep &= ~_casefold_eq(table[o["moa"]], o["control"])
    return table[keep]


def _check_columns(table: pd.DataFrame, cols: list[str], protocol: str) -> None:
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise EvaluationError(f"protocol {protocol!r} needs metadata column(s) {missing}; "
                              f"columns are {preview(table.columns, 10)}")


DEFAULTS = {"compound": "compound", "concentration": "concentration", "moa": "moa",
            "batch": "batch", "plate": "plate", "well": "well", "control": "dmso"}


def _opts(opts: dict, **extra) -> dict:
    out = {**DEFAULTS, **extra}
    unknown = sorted(set(opts) - set(out))
    if unknown:
        raise EvaluationError(f"unknown protocol option(s) {unknown}; valid: {sorted(out)}")
    out.update(opts)
    return out


@PROTOCOLS.register("bbbc021-ando")
def bbbc021_ando(embeddings, metadata, **opts) -> dict:
    """TVN (DMSO, per batch) -> well mean -> treatment median -> NSC + NSCB."""
    o = _opts(opts, center_by="batch", tvn_by=None, crop_how="median", well_how="mean",
              treatment_how="median", epsilon=1e-6, features=None)
    table, cols = align(embeddings, metadata, features=o["features"])
    _check_columns(table, [o[k] for k in ("compound", "concentration", "moa", "batch", "plate",
                                          "well")], "bbbc021-ando")
    table = _to_images(table, cols, o["crop_how"])
    controls = {o["compound"]: o["control"]}
    if o["center_by"]:
        table = normalize(table, features=cols, method="standardize", controls=controls,
                          by=o["center_by"])
    table = normalize(table, features=cols, method="tvn", controls=controls, by=o["tvn_by"],
                      epsilon=o["epsilon"])
    wells = aggregate(table, features=cols, by=[o["plate"], o["well"]], how=o["well_how"],
                      carry=CARRY)
    treat = aggregate(_treatments(wells, o), features=cols,
                      by=[o["compound"], o["concentration"]], how=o["treatment_how"],
                      carry=CARRY, count="n_wells")
    metrics, notes = {"nsc": nsc(treat, features=cols, moa=o["moa"], compound=o["compound"])}, []
    try:
        metrics["nscb"] = nscb(treat, features=cols, moa=o["moa"], compound=o["compound"],
                               batch=o["batch"])
    except EvaluationError as exc:
        notes.append(f"NSCB not computed: {exc}")
    notes.append((f"z-scored on {o['control']!r} rows per {o['center_by']!r}; " if o["center_by"]
                  else "") + f"TVN fitted on {o['control']!r} rows "
                 + (f"per {o['tvn_by']!r}" if o["tvn_by"] else "globally"))
    return {"protocol": "bbbc021-ando", "options": o, "metrics": metrics, "profiles": treat,
            "features": cols, "notes": notes}


@PROTOCOLS.register("bbbc021-cytoimagenet")
def bbbc021_cytoimagenet(embeddings, metadata, **opts) -> dict:
    """z-score over all images -> treatment mean -> NSC."""
    o = _opts(opts, features=None)
    table, cols = align(embeddings, metadata, features=o["features"])
    _check_columns(table, [o["compound"], o["concentration"], o["moa"]], "bbbc021-cytoimagenet")
    table = normalize(table, features=cols, method="standardize", controls=None)
    treat = aggregate(_treatments(table, o), features=cols,
                      by=[o["compound"], o["concentration"]], how="mean", carry=CARRY,
                      count="n_images")
    return {"protocol": "bbbc021-cytoimagenet", "options": o, "profiles": treat,
            "metrics": {"nsc": nsc(treat, features=cols, moa=o["moa"], compound=o["compound"])},
            "features": cols, "notes": ["z-score fitted on all images"]}


@PROTOCOLS.register("knn")
def knn(embeddings, metadata, **opts) -> dict:
    """k-NN accuracy of ``label`` (leave-one-out, or ``query_split`` vs the other rows)."""
    o = _opts(opts, label="label", k=11, metric="euclidean", query_split=None,
              split_column="split", fallback="nearest", features=None)
    table, cols = align(embeddings, metadata, features=o["features"])
    _check_columns(table, [o["label"]], "knn")
    notes = []
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
                                  f" of {len(mask)} rows; need queries and references")
        mask = mask.to_numpy(bool)
    res = knn_accuracy(table, features=cols, label=o["label"], k=o["k"], metric=o["metric"],
                       fallback=o["fallback"], query_mask=mask)
    return {"protocol": "knn", "options": o, "metrics": {"knn": res}, "profiles": table,
            "features": cols, "notes": notes}


@PROTOCOLS.register("map")
def map_protocol(embeddings, metadata, **opts) -> dict:
    """Replicate retrieval (treatment wells vs DMSO wells) and same-MOA retrieval (treatments)."""
    o = _opts(opts, normalize="mad", normalize_by="plate", null_size=10_000, seed=0, fdr=0.05,
              distance="cosine", features=None)
    table, cols = align(embeddings, metadata, features=o["features"])
    _check_columns(table, [o[k] for k in ("compound", "concentration", "moa", "plate", "well")],
                   "map")
    table = _to_images(table, cols, "median")
    if o["normalize"]:
        table = normalize(table, features=cols, method=o["normalize"],
                          controls={o["compound"]: o["control"]}, by=o["normalize_by"])
    wells = aggregate(table, features=cols, by=[o["plate"], o["well"]], how="mean", carry=CARRY)
    is_ctrl = _casefold_eq(wells[o["compound"]], o["control"])
    wells["treatment"] = np.where(
        is_ctrl, o["control"],
        wells[o["compound"]].astype(str) + "@" + wells[o["concentration"]].astype(str))
    wells["is_control"] = is_ctrl
    counts = wells.loc[~is_ctrl, "treatment"].value_counts()
    single = counts[counts < 2]
    if len(single):
        raise EvaluationError(
            f"{len(single)} treatment(s) have a single well, so no replicate to retrieve: "
            f"{preview(single.index)}. Drop them or use a protocol without replicate retrieval."
        )
    common = {"features": cols, "null_size": o["null_size"], "seed": o["seed"], "fdr": o["fdr"],
              "distance": o["distance"]}
    rep = mean_average_precision(wells, pos_sameby=["treatment"], neg_diffby=["is_control"],
                                 name="replicate mAP", **common)
    rep.map = rep.map[rep.map["treatment"] != o["control"]].reset_index(drop=True)
    treat = aggregate(_treatments(wells, o), features=cols,
                      by=[o["compound"], o["concentration"]], how="median", carry=CARRY)
    metrics = {"replicate_map": rep}
    notes = [f"{o['normalize']} normalization on {o['control']!r} per {o['normalize_by']}"]
    try:
        metrics["moa_map"] = mean_average_precision(
            treat, pos_sameby=[o["moa"]], pos_diffby=[o["compound"]], neg_diffby=[o["moa"]],
            name="MOA mAP", **common)
    except EvaluationError as exc:  # e.g. no MOA with two compounds in a subset
        notes.append(f"MOA mAP not computed: {exc}")
    return {"protocol": "map", "options": o, "metrics": metrics, "profiles": treat,
            "features": cols, "notes": notes}


def run_protocol(name: str, embeddings, metadata: pd.DataFrame, **opts) -> dict:
    """Run the protocol called ``name`` (see ``PROTOCOLS.names()``)."""
    try:
        fn = PROTOCOLS.get(name)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    return fn(embeddings, metadata, **opts)
