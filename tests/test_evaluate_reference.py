"""Our normalizers, feature selection and metrics against pycytominer and copairs."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from cytodata.evaluate.normalize import Spherize

pycytominer_transform = pytest.importorskip("pycytominer.operations.transform")


def _pyc_spherize(fit, apply, method, epsilon=1e-6, center=True):
    cols = [f"f{i}" for i in range(fit.shape[1])]
    sp = pycytominer_transform.Spherize(method=method, epsilon=epsilon, center=center)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp.fit(pd.DataFrame(fit, columns=cols))
        return sp.transform(pd.DataFrame(apply, columns=cols)).to_numpy()


@pytest.mark.parametrize("method", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
@pytest.mark.parametrize("shape", [(20, 50), (200, 12), (13, 13)])
def test_spherize_matches_pycytominer(method, shape):
    rng = np.random.default_rng(shape[0])
    mix = rng.normal(size=(shape[1], shape[1]))
    c = rng.normal(size=shape) @ mix * 3 + 2
    t = rng.normal(size=(5, shape[1])) @ mix * 3 + 2
    ours = Spherize(method=method).fit(c).transform(t)
    ref = _pyc_spherize(c, t, method)
    if method.startswith("PCA"):
        # principal axes have arbitrary signs, and the basis of the controls' null space
        # (rank r < d) is arbitrary: compare the first r axes and the norm of the rest
        r = min(shape[0] - 1, shape[1])
        np.testing.assert_allclose(np.abs(ours[:, :r]), np.abs(ref[:, :r]), rtol=1e-6,
                                   atol=1e-8)
        np.testing.assert_allclose(np.linalg.norm(ours[:, r:], axis=1),
                                   np.linalg.norm(ref[:, r:], axis=1), rtol=1e-6, atol=1e-8)
    else:
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-8)


def test_spherize_rank_deficient_stays_bounded():
    # the case: 20 control rows, 50 features
    rng = np.random.default_rng(0)
    c, t = rng.normal(size=(20, 50)), rng.normal(size=(5, 50))
    out = Spherize().fit(c).transform(t)
    ref = _pyc_spherize(c, t, "ZCA")
    assert np.abs(out).max() < 10
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-8)


def _profiles_for_selection(seed=0, n=120):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 8))
    data = {f"Cells_f{i}": base[:, i] for i in range(8)}
    data["Cells_dup"] = base[:, 2]  # exact duplicate
    data["Cells_near"] = base[:, 3] + rng.normal(size=n) * 0.05  # r ~ 0.999
    data["Cells_anti"] = -base[:, 4]  # r = -1: pycytominer's threshold is signed
    data["Cells_flat"] = np.full(n, 3.0)
    data["Cells_tiny"] = 1 + rng.normal(size=n) * 1e-5  # variance 1e-10
    data["Cells_rare"] = np.where(np.arange(n) < 2, 1.0, 0.0)  # second value 2/118 < 0.05
    nan_col = rng.normal(size=n)
    nan_col[:10] = np.nan  # 8% NaN > 5%
    data["Cells_nan"] = nan_col
    table = pd.DataFrame(data)
    table.insert(0, "Metadata_Plate", np.where(np.arange(n) < n // 2, "p1", "p2"))
    table.insert(1, "Metadata_control_type", np.where(np.arange(n) % 4 == 0, "negcon", "trt"))
    return table


@pytest.mark.parametrize("operation", ["drop_na_columns", "variance_threshold",
                                       "frequency_threshold", "correlation_threshold",
                                       "blocklist"])
@pytest.mark.parametrize("samples", ["all", "Metadata_control_type == 'negcon'"])
def test_feature_selection_matches_pycytominer(operation, samples):
    from pycytominer import feature_select

    from cytodata.evaluate.selection import drop_features

    table = _profiles_for_selection()
    feats = [c for c in table.columns if c.startswith("Cells_")]
    if operation == "correlation_threshold":  # pycytominer needs complete columns here
        table, feats = table.drop(columns="Cells_nan"), [c for c in feats if c != "Cells_nan"]
    block = ["Cells_f1", "Cells_not_there"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = feature_select(table, features=feats, samples=samples, operation=operation,
                             blocklist=block if operation == "blocklist" else None)
    ref_dropped = sorted(set(feats) - set(ref.columns))
    ours = drop_features(table, features=feats, operations=[operation], samples=samples,
                         blocklist=block)
    assert sorted(ours[operation]) == ref_dropped
    assert ref_dropped  # each fixture column trips the operation it is built for


def test_feature_selection_chain_and_attrs():
    from cytodata.evaluate.selection import select_features

    table = _profiles_for_selection()
    out = select_features(table, features="Cells_",
                          operations=["drop_na_columns", "variance_threshold",
                                      "correlation_threshold"])
    dropped = out.attrs["dropped_features"]
    assert dropped["drop_na_columns"] == ["Cells_nan"]
    assert set(dropped["variance_threshold"]) == {"Cells_flat", "Cells_tiny"}
    assert len({"Cells_f2", "Cells_dup"} & set(dropped["correlation_threshold"])) == 1
    assert "Cells_anti" not in dropped["correlation_threshold"]
    assert "Metadata_Plate" in out.columns and "Cells_f0" in out.columns


@pytest.mark.parametrize("how", ["median", "modz"])
def test_consensus_matches_pycytominer(how):
    from pycytominer import consensus as pyc_consensus

    from cytodata.evaluate.profiles import consensus

    rng = np.random.default_rng(1)
    n = 40
    table = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"Cells_f{i}" for i in range(6)])
    table.iloc[:5] += 2  # one noisy-ish replicate block
    table.insert(0, "Metadata_treatment", [f"t{i % 7}" for i in range(n)])
    feats = [c for c in table.columns if c.startswith("Cells_")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pyc_consensus(table, replicate_columns=["Metadata_treatment"], operation=how,
                            features=feats).sort_values("Metadata_treatment")
    ours = consensus(table, features=feats, by="Metadata_treatment", how=how)
    assert list(ours["Metadata_treatment"]) == list(ref["Metadata_treatment"])
    np.testing.assert_allclose(ours[feats].to_numpy(), ref[feats].to_numpy(), atol=1e-12)
