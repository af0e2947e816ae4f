"""Normalizers: TVN whitening, shift removal, pycytominer definitions, per-group fits, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytodata.errors import EvaluationError
from cytodata.evaluate import NORMALIZERS, control_mask, normalize, tvn
from cytodata.evaluate.normalize import TVN, RobustMAD, Spherize, Standardize


def screen(seed=0, n=300, d=6):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    x = rng.normal(size=(n, d)) @ mix * 2.0 + 3.0
    cols = [f"f{i}" for i in range(d)]
    table = pd.DataFrame(x, columns=cols)
    table["compound"] = np.where(np.arange(n) % 3 == 0, "DMSO", "drug")
    table["batch"] = np.where(np.arange(n) < n // 2, "w1", "w2")
    return table, cols


def test_tvn_controls_have_identity_covariance():
    table, cols = screen()
    out = tvn(table, features=cols, controls={"compound": "dmso"}, epsilon=0.0)
    ctrl = out.loc[table["compound"] == "DMSO", cols].to_numpy()
    np.testing.assert_allclose(ctrl.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(np.cov(ctrl, rowvar=False), np.eye(len(cols)), atol=1e-6)
    # the default epsilon (1e-6) shrinks axis k by lambda_k / (lambda_k + 1e-6) only
    out = tvn(table, features=cols, controls={"compound": "dmso"})
    ctrl = out.loc[table["compound"] == "DMSO", cols].to_numpy()
    lam = np.linalg.eigvalsh(np.cov(table.loc[table["compound"] == "DMSO", cols], rowvar=False))
    np.testing.assert_allclose(np.sort(np.diag(np.cov(ctrl, rowvar=False))),
                               np.sort(lam / (lam + 1e-6)), atol=1e-10)
    # treated rows are transformed too, with the controls' transform
    assert not np.allclose(out[cols].to_numpy(), table[cols].to_numpy())


def test_tvn_per_batch_removes_planted_shift():
    table, cols = screen(seed=1, n=600)
    shift = np.linspace(5, 10, len(cols))
    in_w2 = (table["batch"] == "w2").to_numpy()
    table.loc[in_w2, cols] += shift
    before = table[in_w2][cols].mean() - table[~in_w2][cols].mean()
    out = tvn(table, features=cols, controls={"compound": "dmso"}, by="batch", epsilon=0.0)
    for b in ("w1", "w2"):
        ctrl = out[(out["batch"] == b) & (out["compound"] == "DMSO")][cols].to_numpy()
        np.testing.assert_allclose(ctrl.mean(axis=0), 0, atol=1e-9)
        np.testing.assert_allclose(np.cov(ctrl, rowvar=False), np.eye(len(cols)), atol=1e-6)
    drug = out["compound"] == "drug"
    after = out[drug & in_w2][cols].mean() - out[drug & ~in_w2][cols].mean()
    assert np.abs(before).min() > 4
    assert np.abs(after).max() < 0.6  # sampling noise of ~100 rows per batch


def test_standardize_and_mad_definitions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * [1, 2, 3] + 4
    z = Standardize().fit_transform(x)
    np.testing.assert_allclose(z, (x - x.mean(0)) / x.std(0))
    m = RobustMAD().fit_transform(x)
    med = np.median(x, 0)
    np.testing.assert_allclose(m, (x - med) / (1.4826 * np.median(np.abs(x - med), 0) + 1e-18))


@pytest.mark.parametrize("method", ["ZCA", "ZCA-cor"])
def test_spherize_whitens(method):
    table, cols = screen(seed=2)
    x = table[cols].to_numpy()
    w = Spherize(method=method, epsilon=0.0).fit_transform(x)
    np.testing.assert_allclose(np.cov(w, rowvar=False), np.eye(len(cols)), atol=1e-8)
    if method == "ZCA":  # ZCA is the symmetric whitening: closest to the input
        sp = Spherize(method=method, epsilon=0.0).fit(x)
        np.testing.assert_allclose(sp.whiten_, sp.whiten_.T, atol=1e-10)


def test_registry_and_controls_forms():
    assert NORMALIZERS.names() == ["mad", "spherize", "standardize", "tvn"]
    assert NORMALIZERS.get("tvn") is TVN
    table, cols = screen()
    by_query = control_mask(table, {"compound": "DMSO"})
    assert by_query.sum() == 100
    np.testing.assert_array_equal(control_mask(table, table["compound"] == "DMSO"), by_query)
    np.testing.assert_array_equal(control_mask(table, {"compound": ["dmso", "x"]}), by_query)
    with pytest.raises(EvaluationError, match="boolean mask"):
        control_mask(table, [1, 0])
    with pytest.raises(ValueError, match="valid names"):
        normalize(table, features=cols, method="nope")


def test_no_controls_in_a_group_names_the_group():
    table, cols = screen()
    table.loc[(table["batch"] == "w2") & (table["compound"] == "DMSO"), "compound"] = "drug"
    with pytest.raises(EvaluationError, match=r"\{'batch': 'w2'\}"):
        tvn(table, features=cols, controls={"compound": "dmso"}, by="batch")
