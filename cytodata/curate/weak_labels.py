"""Weak labels: CytoImageNet's label-assignment algorithm, exact and vectorized.

CytoImageNet (Hua et al. 2021) turns metadata tokens into image classes: every token seen on at
least ``min_count`` images becomes a candidate label; labels are processed rarest first; each
takes up to ``cap`` of the still-unlabelled images carrying it, sampled to keep sources and cell
types diverse; an image gets at most one label. This module keeps that algorithm but fixes its
matching (exact tokens, never substrings or regexes: ``s1`` does not match ``s10``; ``a+b (1)``
and ``x/y`` are plain text) and its cost: label columns are exploded ONCE into
(row, label) pairs, indexed label -> rows (CSR), and each label touches only its own rows.

A label is a ``(column, token)`` pair: the same token in two columns (e.g. ``"dmso"`` as a
compound and as a phenotype) is two labels with separate counts and two class names (``dmso``
and ``dmso (phenotype)``); ``category`` says which column. Each label's draws depend only on
``(seed, column, token)`` and the rows' ``key`` values (hashed once, vectorized), never on row
positions or on how much randomness other labels used: a shuffled table gives the same labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import RecipeError, SchemaError
from .sampling import base_hashes, column_codes, combine_codes, mix64, salt64, sample_strata

#: label columns in CytoImageNet's order (ties in frequency are broken by this order)
DEFAULT_COLUMNS: tuple[str, ...] = (
    "organism", "cell_type", "cell_visible", "phenotype", "compound", "gene", "sirna",
)
DEFAULT_PRESAMPLE_BY: tuple[str, ...] = ("name", "organism", "cell_type")
#: CytoImageNet's six cap strata plus ``name`` (the source), so small sources survive a cap
DEFAULT_SAMPLE_BY: tuple[str, ...] = (
    "name", "organism", "cell_type", "cell_visible", "sirna", "compound", "phenotype",
)
#: values of the ``label_status`` column
ASSIGNED, NOT_SAMPLED, BELOW_THRESHOLD = "assigned", "not sampled", "below threshold"


def cell_tokens(value) -> list[str]:
    """Distinct tokens of one label cell, in order: NA -> [], ``"a|b"`` -> [a, b], list -> items.

    Empty tokens are dropped; list items are taken whole (not split on ``|``) and non-strings
    become ``str``. Nothing is stripped or lower-cased: harmonize first (cytodata.vocab).
    """
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [str(v) for v in value if not _is_na(v)]
    elif _is_na(value):
        return []
    else:
        items = str(value).split("|")
    return list(dict.fromkeys(t for t in items if t))


def _is_na(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-likes are never NA cells
        return False


def label_rng(seed: int, column: str, token: str) -> np.random.Generator:
    """The generator one label samples with: a SeedSequence of ``seed`` and a hash of the label."""
    digest = hashlib.blake2b(f"{column}\x1f{token}".encode("utf-8", "surrogatepass"),
                             digest_size=8).digest()
    words = [int(seed), int.from_bytes(digest, "little")]
    return np.random.default_rng(np.random.SeedSequence(words))


def explode_tokens(values: pd.Series) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(row positions, token ids, vocabulary) of one label column; one pair per (row, token).

    Only the distinct cell values are split in Python; rows are expanded with ``np.repeat``.
    Object columns holding lists are hashed as tuples first (one pass over the rows).
    """
    if values.dtype == object:
        keys = pd.Series([tuple(v) if isinstance(v, (list, np.ndarray)) else v
                          for v in values.to_numpy()], dtype=object)
    else:
        keys = values
    codes, uniques = pd.factorize(keys, use_na_sentinel=True)
    vocab: dict[str, int] = {}
    counts = np.zeros(len(uniques), dtype=np.int64)
    flat: list[int] = []
    for i, cell in enumerate(uniques):
        toks = cell_tokens(list(cell) if isinstance(cell, tuple) else cell)
        counts[i] = len(toks)
        flat.extend(vocab.setdefault(t, len(vocab)) for t in toks)
    cell_tok = np.asarray(flat, dtype=np.int64)
    cell_start = np.cumsum(counts) - counts  # exclusive prefix sums
    rows = np.flatnonzero(codes >= 0)
    cell = codes[rows]
    per_row = counts[cell]
    pair_rows = np.repeat(rows, per_row)
    row_start = np.cumsum(per_row) - per_row
    offset = np.arange(pair_rows.size, dtype=np.int64) - np.repeat(row_start, per_row)
    pair_tok = cell_tok[np.repeat(cell_start[cell], per_row) + offset]
    return pair_rows.astype(np.int64), pair_tok, list(vocab)


def radix_argsort(values: np.ndarray, n_values: int) -> np.ndarray:
    """Stable argsort of ints in ``[0, n_values)`` in O(N).

    numpy's stable sort is a radix sort for 16-bit ints: sort by the low 16 bits, then stably
    by the high ones (the CSR build was an O(N log N) int64 sort, the non-linear part).
    """
    if n_values <= 1 << 16:
        return np.argsort(values.astype(np.uint16), kind="stable")
    order = np.argsort((values & 0xFFFF).astype(np.uint16), kind="stable")
    high = values[order] >> 16
    if n_values <= 1 << 32:
        high = high.astype(np.uint16)
    return order[np.argsort(high, kind="stable")]


def _check_inputs(table: pd.DataFrame, columns, presample_by, sample_by, min_count, presample,
                  cap, seed) -> None:
    wanted = list(dict.fromkeys([*columns, *presample_by, *sample_by]))
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise SchemaError(
            f"weak labels: column(s) {missing} not in the table; available: "
            f"{list(table.columns)}. Name columns that exist in the recipe's weak_labels "
            "(columns, presample_by, sample_by; or `cytodata manifest build RECIPE --set "
            "weak_labels.columns=[...]`), or, in Python, harmonize the table first "
            "(cytodata.schema.conform adds every label column as NA) or pass "
            "columns=/presample_by=/sample_by= that exist."
        )
    if not columns:
        raise RecipeError("weak labels: columns is empty; name at least one label column")
    for name, value in (("min_count", min_count), ("presample", presample), ("cap", cap)):
        if int(value) < 1:
            raise RecipeError(f"weak labels: {name} must be >= 1, got {value!r}")
    if int(seed) < 0:
        raise RecipeError(f"weak labels: seed must be a non-negative integer, got {seed!r}")


def candidate_order(counts: np.ndarray, label_col: np.ndarray, label_tok: Sequence[str],
                    min_count: int) -> list[int]:
    """Label ids with ``count >= min_count``, rarest first; ties by column order, then token."""
    cand = np.flatnonzero(counts >= min_count)
    return sorted(cand.tolist(), key=lambda i: (counts[i], label_col[i], label_tok[i]))


def label_strata(column: str, presampled: bool, presample_by: Sequence[str],
                 sample_by: Sequence[str]) -> tuple[list[str], list[str]]:
    """CytoImageNet's strata for one label of ``column``: ``(presample columns, cap columns)``.

    * presample: ``presample_by`` minus the label's own column;
    * cap: ``sample_by`` minus the label's own column; after a presample, minus the presample
      columns again except ``name`` (they were balanced already); for a ``sirna`` label minus
      ``compound`` and for a ``compound`` label minus ``sirna`` (one implies the other).
    """
    pre = [c for c in presample_by if c != column]
    cap = [c for c in sample_by if c != column]
    if presampled:
        cap = [c for c in cap if c == "name" or c not in pre]
    exclude = {"sirna": "compound", "compound": "sirna"}.get(column)
    return pre, [c for c in cap if c != exclude]


def label_names(label_col: Sequence[str], label_tok: Sequence[str], assigned_ids: np.ndarray,
                columns: Sequence[str], *, merge_same_token: bool = False) -> list[str]:
    """One class name per label id: the token, or ``"token (column)"`` on a collision.

    A collision is the same token ASSIGNED as a label of several columns: the first column in
    ``columns`` order keeps the bare token. ``merge_same_token=True`` keeps the bare token for
    all: one class on purpose.
    """
    names = list(label_tok)
    if merge_same_token:
        return names
    by_token: dict[str, list[int]] = {}
    for lab in np.unique(assigned_ids[assigned_ids >= 0]).tolist():
        by_token.setdefault(label_tok[lab], []).append(lab)
    rank = {c: i for i, c in enumerate(columns)}
    for labs in by_token.values():
        if len(labs) > 1:
            labs = sorted(labs, key=lambda i: rank[label_col[i]])
            for lab in labs[1:]:
                names[lab] = f"{label_tok[lab]} ({label_col[lab]})"
    return names


def assign_weak_labels(
    table: pd.DataFrame,
    *,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    min_count: int = 287,
    presample: int = 10_000,
    presample_by: Sequence[str] = DEFAULT_PRESAMPLE_BY,
    cap: int = 1_000,
    sample_by: Sequence[str] = DEFAULT_SAMPLE_BY,
    seed: int = 0,
    method: str = "proportional",
    key: str = "key",
    merge_same_token: bool = False,
) -> pd.DataFrame:
    """``table`` (same rows, order and index) with ``label``, ``category`` and ``label_status``.

    Algorithm: candidate labels are (column, exact token) pairs carried by >= ``min_count`` rows
    (a cell is NA, one token, ``"a|b"`` text, or a list/tuple/array of tokens). Rarest first
    (ties: column order, then token), each label takes its rows not yet labelled; skips if fewer
    than ``min_count`` remain; pre-samples ``presample`` rows when more remain; then samples
    ``cap`` rows; assigns them. Strata follow CytoImageNet (:func:`label_strata`): presample on
    ``presample_by`` minus the label's column, cap on ``sample_by`` minus the label's column,
    minus organism/cell type after a presample, sirna/compound excluded for the other; ``name``
    (the source) is a cap stratum so small sources survive. ``method``: "proportional"
    (CytoImageNet's ``groupby().sample(frac=...)``, exact via largest remainder) or "balanced"
    (equal per stratum, water-filling).

    Every draw is keyed by the row's ``key`` column (the index when absent) and the seed: the
    same rows in any order, or from sources in any order, get the same labels.
    ``label`` names one class: a token assigned in two columns becomes ``token`` (first column
    in ``columns`` order) and ``token (column)`` (see :func:`label_names`), unless
    ``merge_same_token=True``. ``category`` is the column name, ``label_status`` "assigned",
    "not sampled" (carries a token of a label that was sampled but this row was not picked) or
    "below threshold" (carries no token of any label that had >= ``min_count`` available rows).
    Raises SchemaError naming a missing column and the available ones.
    """
    columns, presample_by, sample_by = list(columns), list(presample_by), list(sample_by)
    _check_inputs(table, columns, presample_by, sample_by, min_count, presample, cap, seed)
    n_rows = len(table)

    # int32 pairs while they fit: the (row, label) pairs are the bulk of the peak memory
    small = np.int32 if n_rows < 2**31 - 1 else np.int64
    pair_rows, pair_labels, label_col, label_tok = [], [], [], []
    for ci, col in enumerate(columns):
        rows, toks, vocab = explode_tokens(table[col])
        pair_rows.append(rows.astype(small))
        pair_labels.append((toks + len(label_tok)).astype(np.int64 if len(label_tok) + len(vocab)
                                                      >= 2**31 - 1 else np.int32))
        label_col.extend([ci] * len(vocab))
        label_tok.extend(vocab)
    rows_all = np.concatenate(pair_rows) if pair_rows else np.zeros(0, np.int64)
    labels_all = np.concatenate(pair_labels) if pair_labels else np.zeros(0, np.int64)
    n_labels = len(label_tok)
    counts = np.bincount(labels_all, minlength=n_labels)
    order = candidate_order(counts, np.asarray(label_col), label_tok, min_count)

    # CSR index candidate label -> rows (ascending), built with a radix sort: O(pairs)
    compact = np.full(n_labels, -1, dtype=np.int32 if len(order) < 2**31 - 1 else np.int64)
    compact[order] = np.arange(len(order))
    cand = compact[labels_all]
    del labels_all
    keep = cand >= 0
    rows_all, cand = rows_all[keep], cand[keep]
    label_rows = rows_all[radix_argsort(cand, len(order))]
    del rows_all
    ptr = np.concatenate(([0], np.cumsum(np.bincount(cand, minlength=len(order)))))

    strata_cols = list(dict.fromkeys([*presample_by, *sample_by]))
    codes = {c: column_codes(table[c]) for c in strata_cols}
    ids = table[key] if key in table.columns else table.index
    row_hash = base_hashes(ids) if len(order) else np.zeros(0, np.uint64)
    used = np.zeros(n_rows, dtype=bool)
    touched = np.zeros(n_rows, dtype=bool)
    assigned = np.full(n_rows, -1, dtype=np.int64)
    for i, lab in enumerate(order):
        rows = label_rows[ptr[i]:ptr[i + 1]]
        avail = rows[~used[rows]]
        if avail.size < min_count:
            continue
        touched[rows] = True
        column, token = columns[label_col[lab]], label_tok[lab]
        presampled = avail.size > presample
        pre_by, cap_by = label_strata(column, presampled, presample_by, sample_by)
        rng = label_rng(seed, column, token)
        if presampled:
            strata = combine_codes([codes[c][avail] for c in pre_by], avail.size)
            keys = mix64(row_hash[avail] ^ salt64(seed, column, token, "presample"))
            avail = avail[sample_strata(strata, presample, rng=rng, method=method, keys=keys)]
        if avail.size > cap:
            strata = combine_codes([codes[c][avail] for c in cap_by], avail.size)
            keys = mix64(row_hash[avail] ^ salt64(seed, column, token, "cap"))
            avail = avail[sample_strata(strata, cap, rng=rng, method=method, keys=keys)]
        used[avail] = True
        assigned[avail] = lab
    category = [columns[c] for c in label_col]
    names = label_names(category, label_tok, assigned, columns, merge_same_token=merge_same_token)
    return _with_labels(table, assigned, touched, category, names)


def _with_labels(table: pd.DataFrame, assigned: np.ndarray, touched: np.ndarray,
                 label_category: list[str], label_token: list[str]) -> pd.DataFrame:
    """Attach label/category/label_status columns from per-row label ids (-1 = none)."""
    status = np.where(assigned >= 0, 0, np.where(touched, 1, 2))
    statuses = pd.array([ASSIGNED, NOT_SAMPLED, BELOW_THRESHOLD], dtype="string")
    out = table.copy()
    out["label"] = pd.array(label_token, dtype="string").take(assigned, allow_fill=True)
    out["category"] = pd.array(label_category, dtype="string").take(assigned, allow_fill=True)
    out["label_status"] = statuses.take(status)
    out.index = table.index
    return out
