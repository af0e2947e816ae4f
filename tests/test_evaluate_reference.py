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
