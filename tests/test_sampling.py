import numpy as np
import pandas as pd
import pytest

from cytodata.curate.sampling import (
    allocate,
    column_codes,
    combine_codes,
    sample_strata,
    stratified_sample,
    stratum_ids,
)
from cytodata.errors import SchemaError


def test_balanced_water_filling_keeps_small_strata():
    assert allocate(np.array([100, 1, 1, 1, 1]), 10).tolist() == [6, 1, 1, 1, 1]
    assert allocate(np.array([2, 50, 0, 7]), 12).tolist() == [2, 5, 0, 5]


def test_balanced_remainder_goes_one_each_to_random_strata():
    alloc = allocate(np.array([5, 5, 5]), 7, rng=3)
    assert sorted(alloc.tolist()) == [2, 2, 3]
    picks = {int(np.argmax(allocate(np.array([5, 5, 5]), 7, rng=s))) for s in range(30)}
    assert picks == {0, 1, 2}  # the extra row lands on different strata for different seeds


def test_balanced_fewer_rows_than_strata_gives_distinct_strata():
    sizes = np.array([3] * 10)
    alloc = allocate(sizes, 4, rng=1)
    assert alloc.sum() == 4 and set(alloc.tolist()) == {0, 1}
    assert np.array_equal(alloc, allocate(sizes, 4, rng=1))
    assert not all(np.array_equal(alloc, allocate(sizes, 4, rng=s)) for s in range(2, 10))


def test_proportional_is_largest_remainder():
    assert allocate(np.array([50, 30, 20]), 10, method="proportional").tolist() == [5, 3, 2]
    # quotas 3.5, 3.5, 3.0: floors 3,3,3; the one extra goes to one of the two .5 remainders
    alloc = allocate(np.array([7, 7, 6]), 10, method="proportional", rng=0)
    assert alloc[2] == 3 and sorted(alloc[:2].tolist()) == [3, 4]
    # small strata can be rounded away proportionally but never with "balanced"
    prop = allocate(np.array([96, 1, 1, 1, 1]), 5, method="proportional")
    assert prop.tolist() == [5, 0, 0, 0, 0]
    assert allocate(np.array([96, 1, 1, 1, 1]), 5).tolist() == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("method", ["balanced", "proportional"])
def test_allocation_invariants(method):
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 40, size=rng.integers(1, 12))
        n = int(rng.integers(0, 300))
        alloc = allocate(sizes, n, method=method, rng=rng)
        assert alloc.sum() == min(n, sizes.sum())
        assert (alloc >= 0).all() and (alloc <= sizes).all()


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="balanced, cytoimagenet, proportional"):
        allocate(np.array([3, 3]), 2, method="equal")


def test_column_codes_are_ordered_with_na_last():
    s = pd.Series(["b", None, "a", "c", "a"], dtype="string")
    assert column_codes(s).tolist() == [1, 3, 0, 2, 0]
    mixed = pd.Series([["x", "y"], "x|y", None, 5], dtype=object)
    codes = column_codes(mixed)
    assert codes[0] == codes[1] and codes[2] == codes.max() and codes[3] != codes[0]


def test_stratum_ids_match_pandas_groupby():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({
        "a": pd.array(rng.choice(["x", "y", None], 500), dtype="string"),
        "b": pd.array(rng.choice(["p", "q", "r", None], 500), dtype="string"),
        "c": rng.integers(0, 3, 500),
    })
    expected = table.groupby(["a", "b", "c"], dropna=False, sort=True).ngroup().to_numpy()
    assert np.array_equal(stratum_ids(table, ["a", "b", "c"]), expected)
    sub = np.sort(rng.choice(500, 120, replace=False))
    # whole-table codes restricted to a subset give the subset's own strata
    whole = [column_codes(table[c]) for c in "abc"]
    assert np.array_equal(combine_codes([w[sub] for w in whole]),
                          stratum_ids(table.iloc[sub], ["a", "b", "c"]))


def test_stratified_sample_covers_strata_including_na():
    table = pd.DataFrame({"cell": pd.array(["hela"] * 40 + ["u2os"] * 2 + [None] * 3,
                                           dtype="string")})
    pos = stratified_sample(table, 6, by="cell", seed=0)
    assert pos.dtype == np.int64 and np.all(np.diff(pos) > 0)
    picked = table["cell"].iloc[pos].fillna("<NA>").value_counts().to_dict()
    assert picked == {"hela": 2, "u2os": 2, "<NA>": 2}
    assert np.array_equal(pos, stratified_sample(table, 6, by="cell", seed=0))
    assert len(stratified_sample(table, 100, by="cell")) == len(table)


def test_sampling_is_uniform_within_a_stratum():
    strata = np.repeat([0, 1], [10, 10])
    hits = np.zeros(20)
    for seed in range(400):
        hits[sample_strata(strata, 4, rng=seed)] += 1
    assert hits.sum() == 1600 and np.all(hits[:10].sum() == hits[10:].sum())
    # each row is drawn with probability 2/10 -> expected 80 hits of 400
    assert hits.min() > 50 and hits.max() < 110


def test_list_cells_and_missing_column():
    table = pd.DataFrame({"g": pd.Series([["a"], ["a"], ["b"], ["b"]], dtype=object)})
    picked = table["g"].iloc[stratified_sample(table, 2, by=["g"], seed=5)].map(tuple)
    assert sorted(picked) == [("a",), ("b",)]
    with pytest.raises(SchemaError, match=r"\['plate'\].*available: \['g'\]"):
        stratified_sample(table, 2, by=["plate"])


def test_keyed_draws_prefilter_is_exact(monkeypatch):
    """Big strata sort only their likely picks; the picks equal a full sort's."""
    import cytodata.curate.sampling as sampling
    from cytodata.curate.sampling import row_hashes

    rng = np.random.default_rng(1)
    for trial in range(12):
        n_rows, n_strata = int(rng.integers(2_000, 60_000)), int(rng.integers(1, 200))
        strata = rng.integers(0, n_strata, n_rows) ** 2 % n_strata
        keys = row_hashes(np.arange(n_rows), trial)
        n = int(rng.integers(1, n_rows // 9))
        for method in ("balanced", "proportional"):
            fast = sample_strata(strata, n, rng=trial, method=method, keys=keys)
            with monkeypatch.context() as m:
                m.setattr(sampling, "_likely_picks", lambda *a: None)
                full = sample_strata(strata, n, rng=trial, method=method, keys=keys)
            assert np.array_equal(fast, full) and fast.size == n


def test_cytoimagenet_allocation_rounds_per_stratum():
    """CytoImageNet's groupby().sample(frac): round(frac * size) per stratum, frac raised until
    the draft holds n rows, then cut to n at random; 1-row strata are rounded away."""
    sizes = np.array([5000, 1, 1, 2, 300, 40])
    alloc = allocate(sizes, 100, method="cytoimagenet", rng=0)
    assert alloc.sum() == 100 and (alloc <= sizes).all()
    assert alloc[1:4].sum() == 0
    # fifty 1-row strata next to a big one: frac stays ~0.1, so all fifty are rounded away
    sizes = np.array([1] * 50 + [1000])
    alloc = allocate(sizes, 100, method="cytoimagenet", rng=1)
    assert alloc.sum() == 100 and alloc[:50].sum() == 0
    assert allocate(sizes, 100, method="proportional", rng=1)[:50].sum() == 4  # remainders
    assert allocate(sizes, 100, method="balanced", rng=1)[:50].sum() == 50
