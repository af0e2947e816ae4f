"""Benchmark: vectorized ``assign_weak_labels`` vs the straightforward per-label pandas loop.

The baseline (:func:`reference_assign_weak_labels`) is CytoImageNet's loop done correctly: for
every label it rescans the whole label column with exact token matching (pandas string ops:
equal, ``startswith "tok|"``, ``endswith "|tok"``, contains ``"|tok|"``, no regex), drops rows
already labelled, and samples with the same :func:`stratified_sample`. It consumes randomness
exactly like the fast path, so both must give IDENTICAL labels (tests/test_weak_labels.py checks).

Its cost is linear in rows x labels, so it is timed on a row subset and extrapolated; the fast
path is timed on the full table and on the same subset (a measured ratio as well).

    .venv/bin/python benchmarks/weak_labels.py --rows 2700000 --seed 0 --baseline-rows 270000
    .venv/bin/python benchmarks/weak_labels.py --scaling 1000000,10000000   # linearity, memory
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cytodata.curate.sampling import row_hashes, sample_strata, stratum_ids
from cytodata.curate.weak_labels import (
    BELOW_THRESHOLD,
    DEFAULT_COLUMNS,
    DEFAULT_PRESAMPLE_BY,
    DEFAULT_SAMPLE_BY,
    NOT_SAMPLED,
    assign_weak_labels,
    cell_tokens,
    label_names,
    label_rng,
    label_strata,
)


def has_token(values: pd.Series, token: str) -> np.ndarray:
    """Rows whose cell carries ``token`` exactly (boolean (N,)); one full rescan per call."""
    if values.dtype == object:  # list cells: the plain Python check
        return values.map(lambda v: token in cell_tokens(v)).to_numpy(dtype=bool)
    s = values.astype("string")
    hit = ((s == token) | s.str.startswith(token + "|") | s.str.endswith("|" + token)
           | s.str.contains("|" + token + "|", regex=False))
    return hit.fillna(False).to_numpy(dtype=bool)


def reference_assign_weak_labels(
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
) -> pd.DataFrame:
    """The per-label pandas loop: same output contract as ``assign_weak_labels``."""
    counts = []
    for ci, col in enumerate(columns):
        tally = Counter(t for v in table[col].to_numpy(dtype=object) for t in cell_tokens(v))
        for token, count in tally.items():
            if count >= min_count:
                counts.append((int(count), ci, str(token)))
    ids = table[key] if key in table.columns else table.index
    assigned = np.full(len(table), -1, dtype=np.int64)
    touched = np.zeros(len(table), dtype=bool)
    lab_col, lab_tok = [], []
    for _, ci, token in sorted(counts):
        col = columns[ci]
        carries = has_token(table[col], token)
        pos = np.flatnonzero(carries & (assigned < 0))
        if pos.size < min_count:
            continue
        touched |= carries
        rng = label_rng(seed, col, token)
        pre_by, cap_by = label_strata(col, pos.size > presample, presample_by, sample_by)
        if pos.size > presample:
            keys = row_hashes(np.asarray(ids)[pos], seed, col, token, "presample")
            pos = pos[sample_strata(stratum_ids(table.iloc[pos], pre_by), presample, rng=rng,
                                    method=method, keys=keys)]
        if pos.size > cap:
            keys = row_hashes(np.asarray(ids)[pos], seed, col, token, "cap")
            pos = pos[sample_strata(stratum_ids(table.iloc[pos], cap_by), cap, rng=rng,
                                    method=method, keys=keys)]
        assigned[pos] = len(lab_tok)
        lab_col.append(col)
        lab_tok.append(token)
    names = label_names(lab_col, lab_tok, assigned, columns)
    label = np.array([None] + names, dtype=object)[assigned + 1]
    category = np.array([None] + lab_col, dtype=object)[assigned + 1]
    out = table.copy()
    out["label"] = pd.array(label, dtype="string")
    out["category"] = pd.array(category, dtype="string")
    status = np.where(~pd.isna(label), "assigned",
                      np.where(touched, NOT_SAMPLED, BELOW_THRESHOLD))
    out["label_status"] = pd.array(status.astype(object), dtype="string")
    return out


# --- a realistic synthetic metadata table -------------------------------------------------

def _zipf_codes(rng, n_rows: int, n_tokens: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n_tokens + 1) ** exponent
    return rng.choice(n_tokens, size=n_rows, p=p / p.sum())


def make_table(n_rows: int = 2_700_000, seed: int = 0) -> pd.DataFrame:
    """A CytoImageNet-like table: ~65 sources (``name``), Zipf-like tokens, ``|`` cells, NA.

    Each source carries only some label columns (screens have compounds or siRNAs, not both);
    ~3% of cells hold two tokens ``a|b``. Tokens include regex and ``/`` characters.
    """
    rng = np.random.default_rng(seed)
    n_sources = 65
    source = _zipf_codes(rng, n_rows, n_sources, 0.8)
    spec = {  # column: (vocabulary size, Zipf exponent, share of sources that carry it)
        "organism": (12, 1.5, 1.0), "cell_type": (160, 1.1, 0.95),
        "cell_visible": (40, 1.2, 0.7), "phenotype": (120, 1.1, 0.5),
        "compound": (30_000, 0.75, 0.35), "gene": (20_000, 0.75, 0.2),
        "sirna": (8_000, 0.6, 0.12),
    }
    data = {"name": pd.array(np.array([f"source_{i:02d}" for i in range(n_sources)],
                                      dtype=object)[source], dtype="string")}
    # manifest row keys (what the key-based draws hash), in a shuffled order like real tables
    ids = np.char.add("src__img", rng.permutation(n_rows).astype(str))
    data["key"] = pd.array(ids.astype(object), dtype="string")
    for col, (vocab_size, exponent, share) in spec.items():
        vocab = np.array([f"{col[:3]}-{i}" if i % 97 else f"{col[:3]} a+b ({i})/x"
                          for i in range(vocab_size)], dtype=object)
        values = vocab[_zipf_codes(rng, n_rows, vocab_size, exponent)]
        multi = rng.random(n_rows) < 0.03
        second = vocab[_zipf_codes(rng, int(multi.sum()), vocab_size, exponent)]
        values[multi] = values[multi] + "|" + second
        carried = rng.random(n_sources) < share
        missing = ~carried[source] | (rng.random(n_rows) < 0.02)
        values[missing] = None
        data[col] = pd.array(values, dtype="string")
    return pd.DataFrame(data)


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _rss() -> int:
    """Resident set size of this process in bytes (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_during(fn, *args, **kwargs):
    """``(result, seconds, peak extra RSS bytes)``: RSS sampled every 5 ms on a thread."""
    import gc
    import threading

    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            stop.wait(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    cpu = time.process_time()
    try:
        out, seconds = _timed(fn, *args, **kwargs)
    finally:
        cpu = time.process_time() - cpu
        stop.set()
        t.join()
    return out, seconds, max(peak[0], _rss()) - base, cpu


def scaling(sizes: list[int], seed: int, repeats: int) -> None:
    """Linearity in rows: time and peak memory of ``assign_weak_labels`` at each size, one run.

    Label thresholds stay CytoImageNet's (min_count 287, presample 10,000, cap 1,000), as on a
    real table growing by more screens. Prints time(N)/time(first) against N/first, for wall
    time and for this process's CPU time (robust to a shared, overloaded machine).
    """
    first = None
    for n in sizes:
        table = make_table(n, seed)
        best, best_cpu, peak = float("inf"), float("inf"), 0
        for _ in range(repeats):
            out, seconds, extra, cpu = _peak_during(assign_weak_labels, table, seed=seed)
            best, best_cpu, peak = min(best, seconds), min(best_cpu, cpu), max(peak, extra)
            del out
        first = first or (n, best, best_cpu)
        print(f"{n:>11,} rows: {best:7.1f} s wall, {best_cpu:7.1f} s CPU (best of {repeats}), "
              f"peak extra memory {peak / 1e9:5.2f} GB = {peak / n:5.0f} B/row; ratio vs "
              f"{first[0]:,} rows: wall {best / first[1]:5.2f}, CPU {best_cpu / first[2]:5.2f} "
              f"for {n / first[0]:.0f}x rows (target <= {1.1 * n / first[0]:.0f})", flush=True)
        del table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_700_000, help="rows of the full table")
    parser.add_argument("--seed", type=int, default=0, help="table and sampling seed")
    parser.add_argument("--baseline-rows", type=int, default=270_000,
                        help="rows the per-label loop is timed on (it is linear in rows x labels)")
    parser.add_argument("--scaling", default=None, metavar="N1,N2,...",
                        help="instead: time assign_weak_labels at these row counts in one run "
                             "(linearity; e.g. 1000000,10000000) and report peak memory")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size in --scaling")
    args = parser.parse_args(argv)
    if args.scaling:
        scaling([int(x) for x in args.scaling.split(",")], args.seed, args.repeats)
        return

    table, t_make = _timed(make_table, args.rows, args.seed)
    print(f"table: {len(table):,} rows x {table.shape[1]} columns (built in {t_make:.1f} s)")
    fast, t_fast = _timed(assign_weak_labels, table, seed=args.seed)
    n_labels = fast["label"].nunique()
    print(f"assign_weak_labels: {t_fast:.1f} s on {len(table):,} rows; {n_labels} labels "
          f"assigned to {fast['label'].notna().sum():,} rows; status counts "
          f"{fast['label_status'].value_counts().to_dict()}")

    # the baseline on a subset, thresholds scaled so it meets a similar number of labels
    frac = args.baseline_rows / len(table)
    sub = table.iloc[: args.baseline_rows]
    params = dict(min_count=max(1, round(287 * frac)), presample=max(1, round(10_000 * frac)),
                  cap=max(1, round(1_000 * frac)), seed=args.seed)
    ref, t_ref = _timed(reference_assign_weak_labels, sub, **params)
    fast_sub, t_fast_sub = _timed(assign_weak_labels, sub, **params)
    same = fast_sub["label"].equals(ref["label"]) and fast_sub["label_status"].equals(
        ref["label_status"])
    sub_labels = ref["label"].nunique()
    print(f"per-label pandas loop (baseline): {t_ref:.1f} s on {len(sub):,} rows, "
          f"{sub_labels} labels ({params}); vectorized on the same subset {t_fast_sub:.2f} s "
          f"-> measured ratio {t_ref / t_fast_sub:.0f}x; identical labels: {same}")
    t_extra = t_ref * (len(table) / len(sub)) * (n_labels / max(sub_labels, 1))
    print(f"baseline extrapolated to {len(table):,} rows x {n_labels} labels "
          f"(linear in rows x labels): {t_extra:.0f} s -> vectorized is "
          f"{t_extra / t_fast:.0f}x faster (target >= 20x)")


if __name__ == "__main__":
    main()
