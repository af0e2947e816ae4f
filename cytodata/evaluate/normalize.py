"""Normalizers fitted on control profiles and applied to all rows (per plate/batch group).

Definitions follow pycytominer's ``normalize``/``Spherize``/``RobustMAD``:

- ``standardize``: (x - mean_ctrl) / std_ctrl (population std, ddof=0; a zero std scales by 1).
- ``mad``: (x - median_ctrl) / (1.4826 * MAD_ctrl + epsilon).
- ``tvn``: typical variation normalization (Ando et al. 2017): centre on the control mean,
  rotate onto the principal axes of the controls, scale axis k by 1/sqrt(lambda_k + epsilon).
  The output columns keep the input names but hold principal-axis coordinates (axis 1 first).
  Axes with lambda_k <= rank_tol * lambda_max (directions controls never vary in) are zeroed;
  each axis' sign is fixed (largest loading positive) so separate fits are comparable.
- ``spherize``: ZCA whitening, W = U diag(1/sqrt(s + eps)) U^T of the control covariance
  (ddof=1); ``method="ZCA-cor"`` whitens the correlation matrix and divides by the std first.

``controls`` selects the rows a normalizer is fitted on:
``None`` -> every row; a boolean mask/Series aligned with the table; or a query dict such as
``{"control_type": "negcon"}`` or ``{"compound": "dmso"}`` (a list value means "any of";
text is compared case-insensitively, so ``"DMSO"`` matches ``"dmso"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .._registry import Registry
from ..errors import EvaluationError, preview
from .profiles import Features, feature_matrix, resolve_features

NORMALIZERS: Registry[type] = Registry("normalizer")

Controls = Mapping[str, object] | pd.Series | np.ndarray | Sequence[bool] | None


class Normalizer:
    """fit(X_controls) -> self; transform(X) -> X'. X is (n, d) float64."""

    def fit(self, x: np.ndarray) -> "Normalizer":
        raise NotImplementedError

    def transform(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)


@NORMALIZERS.register("standardize")
class Standardize(Normalizer):
    """z-score against the controls (sklearn StandardScaler definition, as pycytominer)."""

    def fit(self, x: np.ndarray) -> "Standardize":
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) / self.scale_


@NORMALIZERS.register("mad")
class RobustMAD(Normalizer):
    """(x - median) / (1.4826 * MAD + epsilon) against the controls (pycytominer RobustMAD)."""

    def __init__(self, epsilon: float = 1e-18):
        self.epsilon = epsilon

    def fit(self, x: np.ndarray) -> "RobustMAD":
        self.median_ = np.median(x, axis=0)
        self.mad_ = 1.4826 * np.median(np.abs(x - self.median_), axis=0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.median_) / (self.mad_ + self.epsilon)


def _covariance(x: np.ndarray) -> np.ndarray:
    if len(x) < 2:
        raise EvaluationError(f"a covariance needs at least 2 control rows, got {len(x)}")
    return np.atleast_2d(np.cov(x, rowvar=False))


@NORMALIZERS.register("tvn")
class TVN(Normalizer):
    """PCA whitening on controls: (x - mu) @ U / sqrt(lambda + epsilon)."""

    def __init__(self, epsilon: float = 1e-6, rank_tol: float = 1e-10):
        self.epsilon = epsilon
        self.rank_tol = rank_tol

    def fit(self, x: np.ndarray) -> "TVN":
        self.mean_ = x.mean(axis=0)
        eigval, eigvec = np.linalg.eigh(_covariance(x))
        order = np.argsort(eigval)[::-1]  # principal axis first
        eigval, eigvec = np.clip(eigval[order], 0, None), eigvec[:, order]
        # eigenvector signs are arbitrary: make each one's largest entry positive so fits on
        # different groups (plates, batches) give comparable axes
        flip = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(eigvec.shape[1])])
        eigvec = eigvec * np.where(flip == 0, 1.0, flip)
        scale = 1.0 / np.sqrt(eigval + self.epsilon)
        scale[eigval <= self.rank_tol * max(eigval.max(), 0.0)] = 0.0
        self.components_, self.scale_ = eigvec, scale
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean_) @ self.components_) * self.scale_


@NORMALIZERS.register("spherize")
class Spherize(Normalizer):
    """ZCA (or ZCA-cor) whitening on controls, as pycytominer's Spherize with center=True."""

    _METHODS = ("ZCA", "ZCA-cor")

    def __init__(self, method: str = "ZCA", epsilon: float = 1e-6):
        if method not in self._METHODS:
            raise EvaluationError(f"unknown spherize method {method!r}; valid: {self._METHODS}")
        self.method = method
        self.epsilon = epsilon

    def fit(self, x: np.ndarray) -> "Spherize":
        self.mean_ = x.mean(axis=0)
        cov = _covariance(x)
        if self.method == "ZCA-cor":
            std = np.sqrt(np.diag(cov))
            std = np.where(std > 0, std, 1.0)
            cov = cov / np.outer(std, std)
        else:
            std = np.ones(cov.shape[0])
        s, u = np.linalg.eigh(cov)
        s = np.clip(s, 0, None)
        zca = u @ np.diag(1.0 / np.sqrt(s + self.epsilon)) @ u.T
        self.whiten_ = zca @ np.diag(1.0 / std)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) @ self.whiten_.T


def control_mask(table: pd.DataFrame, controls: Controls) -> np.ndarray:
    """Boolean array of control rows (see the module docstring for the accepted forms)."""
    if controls is None:
        return np.ones(len(table), dtype=bool)
    if isinstance(controls, Mapping):
        mask = np.ones(len(table), dtype=bool)
        for col, want in controls.items():
            if col not in table.columns:
                raise EvaluationError(
                    f"controls query names column {col!r}, not in the table; "
                    f"columns are {preview(table.columns, 10)}"
                )
            wanted = want if isinstance(want, (list, tuple, set, frozenset)) else [want]
            values = table[col]
            if all(isinstance(w, str) for w in wanted):
                got = values.astype("string").str.casefold()
                ok = got.isin([w.casefold() for w in wanted]).fillna(False)
            else:
                ok = values.isin(list(wanted)).fillna(False)
            mask &= np.asarray(ok, dtype=bool)
        return mask
    if isinstance(controls, pd.Series):
        if not controls.index.equals(table.index):
            controls = controls.reindex(table.index)
        if controls.isna().any():
            raise EvaluationError(
                f"controls mask has no value for rows {preview(table.index[controls.isna()])}"
            )
        return controls.to_numpy(dtype=bool)
    arr = np.asarray(controls)
    if arr.dtype != bool or arr.shape != (len(table),):
        raise EvaluationError(
            f"controls must be a boolean mask of length {len(table)}, a query dict such as "
            f"{{'control_type': 'negcon'}}, or None; got {type(controls).__name__} "
            f"with dtype {arr.dtype} and shape {arr.shape}"
        )
    return arr


def normalize(table: pd.DataFrame, *, features: Features, method: str = "standardize",
              controls: Controls = None, by: Sequence[str] | str | None = None,
              **params) -> pd.DataFrame:
    """Fit ``method`` on the control rows of each ``by`` group and transform that group.

    Returns a copy of ``table`` with the feature columns replaced (float64). A group without
    control rows is an :class:`EvaluationError` naming the group.
    """
    cls = NORMALIZERS.get(method)
    cols = resolve_features(table, features)
    x = feature_matrix(table, cols)
    ctrl = control_mask(table, controls)
    out_x = np.empty_like(x)
    if by is None:
        groups = {("all rows",): np.arange(len(table))}
    else:
        by = [by] if isinstance(by, str) else list(by)
        missing = [c for c in by if c not in table.columns]
        if missing:
            raise EvaluationError(f"normalize by={by}: column(s) {missing} not in the table")
        null = table[by].isna().any(axis=1).to_numpy()
        if null.any():
            raise EvaluationError(
                f"normalize by={by}: group key is NA in rows {preview(table.index[null])}"
            )
        groups = {k if isinstance(k, tuple) else (k,): v
                  for k, v in table.groupby(by, sort=True, observed=True).indices.items()}
    for key, rows in groups.items():
        fit_rows = rows[ctrl[rows]]
        if len(fit_rows) == 0:
            where = dict(zip(by, key)) if by is not None else "all rows"
            raise EvaluationError(
                f"no control rows in group {where} ({len(rows)} rows) for {method!r}; "
                f"controls={controls!r}. Fit globally (by=None) or check the control labels."
            )
        norm = cls(**params).fit(x[fit_rows])
        out_x[rows] = norm.transform(x[rows])
    out = table.copy()
    out[cols] = out_x
    return out


def tvn(table: pd.DataFrame, *, features: Features, controls: Controls,
        by: Sequence[str] | str | None = None, epsilon: float = 1e-6) -> pd.DataFrame:
    """Typical variation normalization fitted on ``controls`` (per ``by`` group or globally)."""
    return normalize(table, features=features, method="tvn", controls=controls, by=by,
                     epsilon=epsilon)
