"""Normalizers: TVN whitening, shift removal, pycytominer definitions, per-group fits, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytodata.errors import EvaluationError
from cytodata.evaluate import NORMALIZERS, control_mask, normalize, tvn
from cytodata.evaluate._checks import EvaluationWarning
from cytodata.evaluate.normalize import CORAL, TVN, RobustMAD, Spherize, Standardize


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
    assert NORMALIZERS.names() == ["coral", "mad", "pca", "pca-cor", "spherize", "standardize",
                                   "tvn", "zca", "zca-cor"]
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


@pytest.mark.parametrize("name,method", [("zca-cor", "ZCA-cor"), ("pca", "PCA"),
                                         ("pca-cor", "PCA-cor"), ("zca", "ZCA")])
def test_every_spherize_variant_is_reachable(name, method):
    table, cols = screen(seed=3)
    ctrl = {"compound": "dmso"}
    by_name = normalize(table, features=cols, method=name, controls=ctrl)
    by_kw = normalize(table, features=cols, method="spherize", spherize_method=method,
                      controls=ctrl)
    direct = Spherize(method=method).fit(table.loc[table["compound"] == "DMSO", cols]
                                         .to_numpy()).transform(table[cols].to_numpy())
    np.testing.assert_allclose(by_name[cols].to_numpy(), direct)
    np.testing.assert_allclose(by_kw[cols].to_numpy(), direct)
    with pytest.raises(EvaluationError, match="spherize_method"):
        normalize(table, features=cols, method="tvn", spherize_method=method, controls=ctrl)


def test_constant_and_inflated_columns_are_named():
    table, cols = screen(seed=4)
    table["flat"] = 1.0  # constant everywhere
    table["dmso_flat"] = np.where(table["compound"] == "DMSO", 2.0, table["f0"])
    feats = [*cols, "flat", "dmso_flat"]
    for method, what in (("tvn", "deleted"), ("mad", "inflated"), ("spherize", "null")):
        with pytest.warns(EvaluationWarning, match=f"(?s)flat.*dmso_flat.*{what}"):
            normalize(table, features=feats, method=method, controls={"compound": "dmso"})
    with pytest.warns(EvaluationWarning, match="dmso_flat.*inflated"):
        normalize(table, features=feats, method="mad", controls={"compound": "dmso"})
    # TVN fitted on fewer control rows than features: the null directions are named
    wide = pd.DataFrame(np.random.default_rng(0).normal(size=(30, 40)),
                        columns=[f"g{i}" for i in range(40)])
    with pytest.warns(EvaluationWarning, match="10 control rows for 40 features"):
        normalize(wide, features="g", method="tvn", controls=np.arange(30) < 10)


def _coral_direct(source, target, lam=1.0):
    """Sun et al. 2016, Algorithm 1, written out with scipy's matrix square root."""
    from scipy.linalg import fractional_matrix_power, sqrtm

    cs = np.cov(source, rowvar=False) + lam * np.eye(source.shape[1])
    ct = np.cov(target, rowvar=False) + lam * np.eye(source.shape[1])
    whitened = source @ np.real(fractional_matrix_power(cs, -0.5))
    return whitened @ np.real(sqrtm(ct))


def test_coral_matches_direct_implementation():
    table, cols = screen(seed=5, n=400)
    rng = np.random.default_rng(5)
    w2 = (table["batch"] == "w2").to_numpy()
    table.loc[w2, cols] = table.loc[w2, cols].to_numpy() @ rng.normal(size=(6, 6))
    ctrl = (table["compound"] == "DMSO").to_numpy()
    x = table[cols].to_numpy()
    out = normalize(table, features=cols, method="coral", controls=ctrl, by="batch",
                    center=False)
    for b in ("w1", "w2"):
        rows = (table["batch"] == b).to_numpy()
        # a group's own controls are the source; all controls the target
        src = x[rows & ctrl]
        sub = CORAL(lam=1.0, center=False, **CORAL.global_params(x[ctrl])).fit(src)
        np.testing.assert_allclose(out.loc[rows, cols].to_numpy(), sub.transform(x[rows]))
        np.testing.assert_allclose(sub.transform(src), _coral_direct(src, x[ctrl]), atol=1e-8)
    # centred CORAL: each batch's controls end with the target covariance and mean
    out = normalize(table, features=cols, method="coral", controls=ctrl, by="batch", lam=1e-9)
    for b in ("w1", "w2"):
        c = out.loc[(table["batch"] == b).to_numpy() & ctrl, cols].to_numpy()
        np.testing.assert_allclose(np.cov(c, rowvar=False), np.cov(x[ctrl], rowvar=False),
                                   rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(c.mean(0), x[ctrl].mean(0), atol=1e-8)


def test_spherize_null_directions_drop_or_smallest():
    rng = np.random.default_rng(7)
    c, t = rng.normal(size=(10, 30)), rng.normal(size=(4, 30)) * 3
    small = Spherize().fit(c)
    drop = Spherize(null="drop").fit(c)
    assert small.n_null_ == drop.n_null_ == 30 - 9
    # dropping keeps only the 9 directions the controls vary in: a lower-rank output
    assert np.linalg.matrix_rank(drop.transform(t)) == 4
    assert np.linalg.matrix_rank(drop.w_) == 9 and np.linalg.matrix_rank(small.w_) == 30
    assert np.abs(small.transform(t)).max() < 50  # never 1/sqrt(epsilon) ~ 1000
    # a -cor fit with a column constant in the controls: left unscaled, no division by zero
    c[:, 3] = 2.0
    out = Spherize(method="ZCA-cor").fit(c).transform(t)
    assert np.isfinite(out).all()
    with pytest.raises(EvaluationError, match="null"):
        Spherize(null="zero")
