"""Stratified sampling: how many rows to take per stratum, and which ones.

Two layers, both vectorized (no Python loop over rows):

* :func:`allocate` turns stratum sizes and a budget ``n`` into per-stratum counts.
* :func:`sample_strata` picks that many rows uniformly inside each stratum from an integer
  stratum code per row, with one random key per row and one ``lexsort``.

:func:`stratified_sample` is the table-level entry point; :func:`column_codes` and
:func:`combine_codes` let callers (weak labels) factorize a big table once and then stratify
many subsets of it cheaply. Stratum ids are *ordered* codes (values sorted, NA last), so a subset
stratified from whole-table codes gets exactly the same strata, in the same order, as the
subset stratified from its own values: both paths consume randomness identically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from .._registry import Registry
from ..errors import RecipeError, SchemaError

RngLike = int | np.random.Generator | np.random.SeedSequence | None

#: allocation methods: ``fn(sizes, n, rng) -> counts``; see :func:`allocate`
ALLOCATORS: Registry[Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = Registry(
    "allocation method"
)


def _rng(rng: RngLike) -> np.random.Generator:
    """A Generator from a seed, SeedSequence or Generator (None -> seed 0, reproducible)."""
    return np.random.default_rng(0 if rng is None else rng)


@ALLOCATORS.register("balanced")
def _balanced(sizes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Water-filling: each stratum gets ``min(size, level)``; leftovers go one each at random.

    ``level`` is the largest integer with ``sum(min(sizes, level)) <= n``; the remaining
    ``r`` rows (fewer than the strata still holding rows above ``level``, by maximality) go one
    each to ``r`` distinct such strata drawn by ``rng``. So a 1-row stratum is never rounded away
    while ``n >= number of strata``; when ``n`` is smaller, ``n`` distinct random strata get one.
    """
    lo, hi = 0, int(sizes.max(initial=0))
    while lo < hi:  # largest level whose fill fits in n (binary search, O(K log max))
        mid = (lo + hi + 1) // 2
        if int(np.minimum(sizes, mid).sum()) <= n:
            lo = mid
        else:
            hi = mid - 1
    alloc = np.minimum(sizes, lo)
    rest = n - int(alloc.sum())
    if rest > 0:
        eligible = np.flatnonzero(sizes > lo)
        alloc[rng.choice(eligible, size=rest, replace=False)] += 1
    return alloc


@ALLOCATORS.register("proportional")
def _proportional(sizes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Largest remainder (Hamilton): floor of ``n * size / total``, then +1 by largest remainder.

    Exact integer arithmetic; strata with equal remainders are ordered by a random key from
    ``rng``. Small strata may get 0 (that is the point of proportional allocation).
    """
    total = int(sizes.sum())
    scaled = sizes.astype(np.int64) * np.int64(n)
    alloc, remainder = np.divmod(scaled, total)
    rest = n - int(alloc.sum())
    if rest > 0:
        order = np.lexsort((rng.random(sizes.size), -remainder))
        alloc[order[:rest]] += 1
    return alloc


@ALLOCATORS.register("cytoimagenet")
def _cytoimagenet(sizes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """CytoImageNet's own draw, literally: ``groupby(strata).sample(frac)``, then ``sample(n)``.

    Each stratum gets ``round(frac * size)`` (round half to even, as pandas); ``frac`` starts at
    ``n / total`` and grows by 0.03 (0.02 once half of ``n`` is reached) until the draft holds
    ``n`` rows; the draft is then cut to ``n`` uniformly at random (a multivariate
    hypergeometric draw). Strata of 1-2 rows are rounded away unless ``frac`` nears 0.5, so
    sources with many small metadata combinations get less than their share.
    """
    total = int(sizes.sum())
    frac = n / total
    draft = np.minimum(np.rint(frac * sizes).astype(np.int64), sizes)
    while draft.sum() < n:
        frac += 0.03 if draft.sum() < n / 2 else 0.02
        draft = np.minimum(np.rint(frac * sizes).astype(np.int64), sizes)
    if draft.sum() > n:
        draft = rng.multivariate_hypergeometric(draft, n)
    return draft.astype(np.int64)


def allocate(
    sizes: np.ndarray, n: int, *, method: str = "balanced", rng: RngLike = None
) -> np.ndarray:
    """How many rows to take from each stratum, shape ``(K,)`` int64.

    ``sizes`` (K,) non-negative ints are stratum sizes; ``n`` the total wanted. Always
    ``alloc.sum() == min(n, sizes.sum())`` and ``0 <= alloc <= sizes``.

    ``method="balanced"`` (default): equal share per stratum with redistribution (water-filling),
    leftovers one each to randomly chosen strata, so small strata are never rounded away.
    ``method="proportional"``: largest-remainder proportional allocation, ties broken at random.
    ``method="cytoimagenet"``: CytoImageNet's per-stratum rounding of ``sample(frac)``.
    ``rng`` is a seed, SeedSequence or Generator (None means seed 0); the draw is deterministic.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 0).any():
        raise SchemaError(f"stratum sizes must be a 1-D array of counts >= 0, got {sizes!r}")
    if n < 0:
        raise RecipeError(f"sample size n must be >= 0, got {n}")
    allocator = ALLOCATORS.get(method)
    total = int(sizes.sum())
    if n >= total:
        return sizes.copy()
    if n == 0:
        return np.zeros_like(sizes)
    return allocator(sizes, int(n), _rng(rng))


def _cell_key(value) -> object:
    """A sortable stratum value for one object cell: lists joined by ``|``, others as text."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return "|".join(str(v) for v in value)
    return str(value)


def column_codes(values: pd.Series) -> np.ndarray:
    """Ordered integer codes (int64) of one column: sorted distinct values, NA the last code.

    List cells count as their ``|``-joined text and other objects as ``str``, so a column
    mixing lists, strings and numbers still stratifies. Codes preserve value order, so codes
    of a subset order strata the same way as codes of the whole column.
    """
    if values.dtype == object:
        na = values.isna().to_numpy()
        keys = np.array([None if m else _cell_key(v) for v, m in zip(values.to_numpy(), na)],
                        dtype=object)
        values = pd.Series(keys, dtype="string")
    codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=True)
    codes = codes.astype(np.int64)
    codes[codes < 0] = len(uniques)
    return codes


def combine_codes(columns: Sequence[np.ndarray], n_rows: int | None = None) -> np.ndarray:
    """Dense stratum ids (0..S-1, int64) of the row tuples, in lexicographic order of the codes.

    Mixed radix with re-densifying whenever the product could overflow int64. No columns means
    one stratum (``n_rows`` zeros).
    """
    if not columns:
        return np.zeros(int(n_rows or 0), dtype=np.int64)
    acc = np.asarray(columns[0], dtype=np.int64)
    for col in columns[1:]:
        col = np.asarray(col, dtype=np.int64)
        radix = int(col.max(initial=0)) + 1
        if int(acc.max(initial=0)) + 1 > (2**62) // radix:
            acc = np.unique(acc, return_inverse=True)[1].astype(np.int64)
        acc = acc * radix + col
    return _dense(acc)


def _dense(codes: np.ndarray) -> np.ndarray:
    """Order-preserving map of non-negative ints onto 0..S-1 (bincount when the range is small)."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    top = int(codes.max(initial=-1)) + 1
    if codes.size and codes.min() >= 0 and top <= max(4 * codes.size, 1 << 16):
        present = np.bincount(codes, minlength=top) > 0
        return (np.cumsum(present) - 1)[codes].astype(np.int64)
    return np.unique(codes, return_inverse=True)[1].astype(np.int64).reshape(-1)


def sample_strata(
    strata: np.ndarray, n: int, *, rng: RngLike = None, method: str = "balanced",
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """Positions (sorted int64) of ``n`` rows drawn uniformly within strata.

    ``strata`` (N,) ints are stratum ids per row (any integers; only their order matters).
    Per-stratum counts come from :func:`allocate`; rows are chosen by sorting on
    (stratum, random key) once and keeping each stratum's first ``alloc`` rows. Randomness:
    ``allocate`` draws first (over strata, which are ordered by value), then each row's sort
    key: ``keys`` (N,) uint64 when given (e.g. :func:`row_hashes` of the rows' ``key`` and the
    seed, so the SAME ROWS IN ANY ORDER give the same picks), else one uniform draw per row
    position (order-dependent).
    """
    strata = np.asarray(strata)
    if n >= strata.size:
        return np.arange(strata.size, dtype=np.int64)
    gen = _rng(rng)
    dense = _dense(strata) if strata.size and strata.min() >= 0 else np.unique(
        strata, return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(dense)
    alloc = allocate(sizes, n, method=method, rng=gen)
    if keys is None:
        keys = gen.random(strata.size)
    elif len(keys) != strata.size:
        raise SchemaError(f"sample_strata: {len(keys)} keys for {strata.size} rows; "
                          "pass one per row")
    cand = _likely_picks(keys, dense, sizes, alloc) if strata.size > 8 * n else None
    if cand is not None:  # sort only the rows that can be picked: linear in rows, not N log N
        sizes = np.bincount(dense[cand], minlength=sizes.size)
        order = cand[np.lexsort((keys[cand], dense[cand]))]
    else:
        order = np.lexsort((keys, dense))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    sorted_strata = dense[order]
    rank = np.arange(order.size) - starts[sorted_strata]
    return np.sort(order[rank < alloc[sorted_strata]]).astype(np.int64)


def _likely_picks(keys: np.ndarray, dense: np.ndarray, sizes: np.ndarray,
                  alloc: np.ndarray) -> np.ndarray | None:
    """Positions holding, for every stratum, at least its ``alloc`` smallest keys (uint64 keys).

    Keys are uniform, so a stratum's ``a`` smallest of ``m`` lie below ~``a/m`` of the range:
    keep rows under 3x that (+64 rows' worth), and whole strata that came up short. Exact:
    within a stratum the kept rows are exactly its smallest keys. None for float keys.
    """
    if keys.dtype != np.uint64:
        return None
    unit = (keys >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # exact top 53 bits, [0, 1)
    share = np.minimum((3.0 * alloc + 64.0) / np.maximum(sizes, 1), 1.0)
    keep = unit < share[dense]
    short = np.bincount(dense[keep], minlength=sizes.size) < alloc
    if short.any():
        keep |= short[dense]
    return np.flatnonzero(keep)


def _check_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SchemaError(
            f"{what}: column(s) {missing} not in the table; available: {list(table.columns)}. "
            "Fix the column names or harmonize the table first (cytodata.schema.conform)."
        )


def stratum_ids(table: pd.DataFrame, by: str | Sequence[str]) -> np.ndarray:
    """Dense stratum id per row (int64) for the ``by`` columns; NA is a stratum of its own."""
    cols = [by] if isinstance(by, str) else list(by)
    _check_columns(table, cols, "stratified sampling")
    return combine_codes([column_codes(table[c]) for c in cols], n_rows=len(table))


def stratified_sample(
    table: pd.DataFrame,
    n: int,
    *,
    by: str | Sequence[str],
    seed: RngLike = 0,
    method: str = "balanced",
    key: str | None = "key",
) -> np.ndarray:
    """POSITIONAL indices (sorted int64, use with ``table.iloc``) of ``min(n, len)`` rows.

    Rows are grouped by the ``by`` columns (NA its own stratum; list cells as their
    ``|``-joined text), the budget is split by :func:`allocate` (``method``), and rows are
    drawn uniformly within each stratum. ``seed`` is an int, SeedSequence or Generator.
    Which rows are drawn is a function of each row's ``key`` column (default ``"key"``; the
    table's index when that column is absent or ``key=None``) and the seed, never of row
    positions: the same rows in any order give the same rows (their positions in that order).
    """
    ids = table[key] if key is not None and key in table.columns else table.index
    if seed is None or isinstance(seed, (int, np.integer)):
        salt = int(seed or 0)
    else:  # a Generator / SeedSequence: one draw from it salts the row keys
        salt = int(_rng(seed).integers(0, 2**63))
    return sample_strata(stratum_ids(table, by), n, rng=seed, method=method,
                         keys=row_hashes(ids, salt))


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on a uint64 array (vectorized; a bijection with good avalanche)."""
    x = np.asarray(x, dtype=np.uint64).copy()
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def salt64(*parts) -> np.uint64:
    """A uint64 salt from any text/int parts (stable across processes and Python versions)."""
    import hashlib

    text = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return np.uint64(int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little"))


def base_hashes(ids) -> np.ndarray:
    """Hash each identifier to a uint64 (strings, ints or index values), vectorized.

    ``pandas.util.hash_array`` (SipHash of the UTF-8 text; integers hashed as numbers), so
    equal ids give equal hashes in any process and any row order.
    """
    values = ids.to_numpy() if isinstance(ids, (pd.Series, pd.Index)) else np.asarray(ids)
    if values.dtype.kind not in "iub":
        values = np.asarray(values, dtype=object)
    return pd.util.hash_array(values, categorize=False).astype(np.uint64, copy=False)


def row_hashes(ids, *salt) -> np.ndarray:
    """Per-row random sort keys (uint64) that depend only on each row's id and ``salt``.

    ``mix64(hash(id) ^ salt64(*salt))``: the same row gets the same key whatever its position,
    so draws made with these keys do not change when rows are shuffled or sources re-ordered.
    """
    return mix64(base_hashes(ids) ^ salt64(*salt))
