"""Group-aware, label-stratified train/val/test splits.

Whole groups go to one split so nothing leaks: crops follow their source image (``parent_id``),
or whole plates, batches or compounds when the group column says so. Stratification: each group
gets its dominant label (most rows; ties -> first label in sorted order, NA its own class), and
each label's groups are dealt out greedily:

1. classes are processed largest first (rows), groups within a class largest first, ties in a
   seeded random order;
2. a class with at least as many groups as there are (non-empty) splits first gives its
   smallest groups one each to every split but the largest-fraction one, so every label with
   >= 3 groups appears in train, val and test;
3. every other group goes to the split furthest below its target ``fraction * class rows``
   (ties: the split furthest below its global target);
4. a class with fewer groups than splits cannot be in all of them; its groups go to the splits
   furthest below their global targets, which keeps the overall fractions on course.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..errors import RecipeError, SchemaError, preview
from ..schema import SPLITS
from .sampling import column_codes, row_hashes

DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")


def _check_fractions(fractions: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    names = list(fractions)
    bad = [n for n in names if n not in SPLITS]
    if bad or not names:
        raise RecipeError(f"splits: unknown split name(s) {bad}; valid: {sorted(SPLITS)}")
    values = np.array([float(fractions[n]) for n in names])
    if not np.isfinite(values).all() or (values < 0).any():
        raise RecipeError(f"splits: fractions must be finite and >= 0, got {dict(fractions)}")
    if not math.isclose(values.sum(), 1.0, abs_tol=1e-6):
        raise RecipeError(
            f"splits: fractions {dict(fractions)} sum to {values.sum():.6g}, not 1; "
            "rescale them (e.g. train 0.8, val 0.1, test 0.1)"
        )
    return names, values


def _dominant(groups: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, the label code with most rows (ties: smallest code), shape (n_groups,)."""
    n_labels = int(labels.max(initial=0)) + 1
    pairs, counts = np.unique(groups * n_labels + labels, return_counts=True)
    pair_group, pair_label = pairs // n_labels, pairs % n_labels
    order = np.lexsort((pair_label, -counts, pair_group))
    first = np.ones(order.size, dtype=bool)
    first[1:] = pair_group[order][1:] != pair_group[order][:-1]
    dominant = np.zeros(n_groups, dtype=np.int64)
    dominant[pair_group[order][first]] = pair_label[order][first]
    return dominant


def _deal(sizes: np.ndarray, fractions: np.ndarray, tiebreak: np.ndarray,
          classes: np.ndarray) -> np.ndarray:
    """Split index per group (see the module docstring for the rule)."""
    n_splits = fractions.size
    positive = np.flatnonzero(fractions > 0)
    largest = positive[np.argmax(fractions[positive])]
    seeded = [s for s in positive[np.argsort(fractions[positive], kind="stable")] if s != largest]
    out = np.full(sizes.size, -1, dtype=np.int64)
    global_rows = np.zeros(n_splits)
    global_total = 0.0
    class_ids, class_of = np.unique(classes, return_inverse=True)
    class_rows = np.bincount(class_of, weights=sizes)
    by_class = np.argsort(class_of, kind="stable")  # groups of class c: by_class[ptr[c]:ptr[c+1]]
    ptr = np.concatenate(([0], np.cumsum(np.bincount(class_of))))
    for c in np.lexsort((class_ids, -class_rows)):
        members = by_class[ptr[c]:ptr[c + 1]]
        # largest first; equal sizes in the order of a seeded hash of the group VALUE, so the
        # deal does not depend on which row came first
        members = members[np.lexsort((tiebreak[members], -sizes[members]))]
        target = fractions * sizes[members].sum()
        rows = np.zeros(n_splits)
        global_total += sizes[members].sum()
        few = members.size < positive.size
        if not few:
            for s, g in zip(seeded, members[::-1]):  # smallest groups seed the small splits
                out[g] = s
                rows[s] += sizes[g]
            members = members[: members.size - len(seeded)]
            global_rows += rows
        for g in members:
            global_gap = fractions * global_total - global_rows
            if few:
                key = np.argsort(-global_gap[positive], kind="stable")
            else:
                key = np.lexsort((-global_gap[positive], -(target - rows)[positive]))
            s = positive[key[0]]
            out[g] = s
            rows[s] += sizes[g]
            global_rows[s] += sizes[g]
    return out


def _warn_few_groups(n_groups: int, n_splits: int, group: str) -> None:
    """Warn when there are fewer groups than non-empty splits: some splits stay empty."""
    if 0 < n_groups < n_splits:
        warnings.warn(
            f"splits: only {n_groups} distinct {group!r} value(s) for {n_splits} splits, so "
            f"{n_splits - n_groups} split(s) stay EMPTY (everything is in "
            f"{'train' if n_groups == 1 else 'the largest splits'}); group by a finer column "
            "(e.g. --set split.group=parent_id) or accept it", UserWarning, stacklevel=3)


def assign_splits(
    table: pd.DataFrame,
    *,
    group: str = "parent_id",
    fractions: Mapping[str, float] | None = None,
    stratify: str | None = "label",
    seed: int = 0,
) -> pd.Series:
    """A ``split`` Series (``string``: train/val/test, same index) with whole groups per split.

    ``group``: column whose equal values must share a split (parent_id, plate, batch, compound).
    ``fractions``: target share of ROWS per split (default train 0.8, val 0.1, test 0.1; must
    sum to 1). ``stratify``: label column balanced across splits (None: no stratification).
    Deterministic for a seed and independent of row order (groups are sorted by value and ties
    broken by a seeded hash of the group value). Warns when there are fewer groups than
    splits (a one-group table lands entirely in train). Raises SchemaError for an unknown
    column or NA group values (naming the rows) and RecipeError for bad fractions.
    """
    names, fracs = _check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    wanted = [group] + ([stratify] if stratify is not None else [])
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise SchemaError(
            f"splits: column(s) {missing} not in the table; available: {list(table.columns)}. "
            "Pass group= (e.g. parent_id, plate, batch) and stratify= columns that exist."
        )
    na = table[group].isna().to_numpy()
    if na.any():
        raise SchemaError(
            f"splits: group column {group!r} is NA in rows {preview(table.index[na])}; every "
            "row needs a group (set parent_id to the image id for uncropped images)"
        )
    groups, uniques = pd.factorize(table[group], sort=True)  # sorted: row order cannot matter
    sizes = np.bincount(groups, minlength=len(uniques)).astype(float)
    if stratify is None:
        classes = np.zeros(len(uniques), dtype=np.int64)
    else:
        classes = _dominant(groups.astype(np.int64), column_codes(table[stratify]), len(uniques))
    tiebreak = row_hashes(uniques, seed, "split", group)
    split_of_group = _deal(sizes, fracs, tiebreak, classes)
    _warn_few_groups(len(uniques), int((fracs > 0).sum()), group)
    values = np.asarray(names, dtype=object)[split_of_group[groups]] if len(groups) else []
    return pd.Series(pd.array(values, dtype="string"), index=table.index, name="split")


def split_report(
    table: pd.DataFrame, *, label: str = "label", split: str = "split"
) -> pd.DataFrame:
    """Rows per label (index, NA shown as ``<NA>``) x split (train/val/test, total) as ints."""
    missing = [c for c in (label, split) if c not in table.columns]
    if missing:
        raise SchemaError(f"split report: column(s) {missing} not in the table; "
                          f"available: {list(table.columns)}")
    labels = table[label].astype("string").fillna("<NA>")
    report = pd.crosstab(labels.rename(label), table[split].astype("string").rename(split))
    cols = [s for s in SPLIT_ORDER if s in report.columns] + [
        s for s in report.columns if s not in SPLIT_ORDER]
    report = report.reindex(columns=cols, fill_value=0).astype("int64")
    report["total"] = report.sum(axis=1)
    report.columns.name = split
    return report
