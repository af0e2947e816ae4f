"""Normalizers fitted on control profiles and applied to all rows (per plate/batch group).

Definitions follow pycytominer's ``normalize``/``Spherize``/``RobustMAD``:

- ``standardize``: (x - mean_ctrl) / std_ctrl (population std, ddof=0; a zero std scales by 1).
- ``mad``: (x - median_ctrl) / (1.4826 * MAD_ctrl + epsilon).
- ``tvn``: typical variation normalization (Ando et al. 2017): centre on the control mean,
  rotate onto the principal axes of the controls, scale axis k by 1/sqrt(lambda_k + epsilon).
  The output columns keep the input names but hold principal-axis coordinates (axis 1 first).
  Axes with lambda_k <= rank_tol * lambda_max (directions controls never vary in) are zeroed;
  each axis' sign is fixed (largest loading positive) so separate fits are comparable.
- ``spherize`` (pycytominer ``Spherize``, any of ``ZCA``, ``ZCA-cor``, ``PCA``, ``PCA-cor``):
  from the SVD X_c = U S V^T of the centred (``-cor``: standardized, ddof=0) controls,
  W = V diag(sqrt(n-1) / (s + epsilon)) (PCA) or W V^T (ZCA); ``epsilon`` regularises the
  *singular values*. With fewer control rows than features (rank r < d) the d - r null
  directions get the smallest non-null singular value (``null="smallest"``, as pycytominer),
  or are zeroed (``null="drop"``); they are never scaled by 1/sqrt(epsilon).
  Variants are also registered by name: ``zca``, ``zca-cor``, ``pca``, ``pca-cor``; and
  ``normalize(..., method="spherize", spherize_method="ZCA-cor")`` works as in pycytominer.
- ``coral`` (CORAL, Sun et al. 2016; used per batch after TVN by Ando et al. 2017): recolour
  each group so its control covariance matches the covariance of all control rows:
  x -> (x - mu_g) (C_g + lam I)^(-1/2) (C_t + lam I)^(1/2) + mu_t  (``center=True``; with
  ``center=False`` the means are left alone, Sun et al.'s original form).

``normalize`` warns (:class:`EvaluationWarning`) naming feature columns that are constant in a
group's controls, with what the method does to them (deleted by TVN, inflated by MAD, ...).

``controls`` selects the rows a normalizer is fitted on:
``None`` -> every row; a boolean mask/Series aligned with the table; or a query dict such as
``{"control_type": "negcon"}`` or ``{"compound": "dmso"}`` (a list value means "any of";
text is compared case-insensitively, so ``"DMSO"`` matches ``"dmso"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd

from .._registry import Registry
from ..errors import EvaluationError, preview
from ._checks import constant_columns, name_columns, warn
from .profiles import Features, feature_matrix, resolve_features

NORMALIZERS: Registry[type] = Registry("normalizer")

Controls = Mapping[str, object] | pd.Series | np.ndarray | Sequence[bool] | None


class Normalizer:
    """fit(X_controls) -> self; transform(X) -> X'. X is (n, d) float64.

    ``on_constant`` says, for the report, what the method does to a feature that is constant
    in the controls (``None``: nothing worth a warning).
    """

    on_constant: str | None = None

    def fit(self, x: np.ndarray) -> "Normalizer":
        """Fit on the (n, d) float64 control rows; returns self."""
        raise NotImplementedError

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Transform (n, d) rows with the fitted statistics."""
        raise NotImplementedError

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        """Fit on ``x`` and transform it."""
        return self.fit(x).transform(x)


@NORMALIZERS.register("standardize")
class Standardize(Normalizer):
    """z-score against the controls (sklearn StandardScaler definition, as pycytominer)."""

    on_constant = "only centred (std 0 -> scale 1): its spread across treatments is kept as is"

    def fit(self, x: np.ndarray) -> "Standardize":
        """Fit on the (n, d) float64 control rows; returns self."""
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Transform (n, d) rows with the fitted statistics."""
        return (x - self.mean_) / self.scale_


@NORMALIZERS.register("mad")
class RobustMAD(Normalizer):
    """(x - median) / (1.4826 * MAD + epsilon) against the controls (pycytominer RobustMAD)."""

    on_constant = ("inflated: its MAD is 0, so differences are divided by epsilon and reach "
                   "~1/epsilon; drop it (select_features) or use 'standardize'")

    def __init__(self, epsilon: float = 1e-18):
        self.epsilon = epsilon

    def fit(self, x: np.ndarray) -> "RobustMAD":
        """Fit on the (n, d) float64 control rows; returns self."""
        self.median_ = np.median(x, axis=0)
        self.mad_ = 1.4826 * np.median(np.abs(x - self.median_), axis=0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Transform (n, d) rows with the fitted statistics."""
        return (x - self.median_) / (self.mad_ + self.epsilon)


def _covariance(x: np.ndarray) -> np.ndarray:
    if len(x) < 2:
        raise EvaluationError(f"a covariance needs at least 2 control rows, got {len(x)}")
    return np.atleast_2d(np.cov(x, rowvar=False))


@NORMALIZERS.register("tvn")
class TVN(Normalizer):
    """PCA whitening on controls: (x - mu) @ U / sqrt(lambda + epsilon)."""

    on_constant = ("deleted: TVN zeroes directions the controls never vary in, so treatment "
                   "differences along it are lost")

    def __init__(self, epsilon: float = 1e-6, rank_tol: float = 1e-10):
        self.epsilon = epsilon
        self.rank_tol = rank_tol

    def fit(self, x: np.ndarray) -> "TVN":
        """Fit on the (n, d) float64 control rows; returns self."""
        self.mean_ = x.mean(axis=0)
        eigval, eigvec = np.linalg.eigh(_covariance(x))
        order = np.argsort(eigval)[::-1]  # principal axis first
        eigval, eigvec = np.clip(eigval[order], 0, None), eigvec[:, order]
        # eigenvector signs are arbitrary: make each one's largest entry positive so fits on
        # different groups (plates, batches) give comparable axes
        flip = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(eigvec.shape[1])])
        eigvec = eigvec * np.where(flip == 0, 1.0, flip)
        scale = 1.0 / np.sqrt(eigval + self.epsilon)
        null = eigval <= self.rank_tol * max(eigval.max(), 0.0)
        scale[null] = 0.0
        self.components_, self.scale_ = eigvec, scale
        self.n_null_ = int(null.sum())
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Transform (n, d) rows with the fitted statistics."""
        return ((x - self.mean_) @ self.components_) * self.scale_


def _natural_rank(x: np.ndarray) -> int:
    """Numpy's default matrix rank (SVD, tol = max(s) * max(n, d) * eps), as pycytominer."""
    return int(np.linalg.matrix_rank(x)) if x.size else 0


@NORMALIZERS.register("spherize")
class Spherize(Normalizer):
    """Sphering on controls, as pycytominer's ``Spherize`` (ZCA, ZCA-cor, PCA, PCA-cor).

    ``null``: what to do with directions the controls never vary in when they have fewer
    rows than features: ``"smallest"`` (pycytominer) scales them like the smallest non-null
    direction, ``"drop"`` zeroes them. ``-cor`` methods need non-constant control columns
    (pycytominer raises); here a constant column is left unscaled and ``normalize`` warns.
    """

    METHODS = ("ZCA", "ZCA-cor", "PCA", "PCA-cor")
    NULL = ("smallest", "drop")
    on_constant = ("a null direction of the controls: scaled like the smallest non-null one "
                   "(null='smallest', as pycytominer) or zeroed (null='drop')")

    def __init__(self, method: str = "ZCA", epsilon: float = 1e-6, center: bool = True,
                 null: str = "smallest"):
        if method not in self.METHODS:
            raise EvaluationError(f"unknown spherize method {method!r}; valid: {self.METHODS}")
        if null not in self.NULL:
            raise EvaluationError(f"unknown spherize null={null!r}; valid: {self.NULL}")
        if method.endswith("-cor") and not center:
            raise EvaluationError(f"spherize method {method!r} needs center=True (correlation "
                                  "is centred); use 'ZCA'/'PCA' for uncentred sphering")
        self.method, self.epsilon, self.center, self.null = method, epsilon, center, null

    def fit(self, x: np.ndarray) -> "Spherize":
        """Fit on the (n, d) float64 control rows; returns self."""
        n, d = x.shape
        if n < 2:
            raise EvaluationError(f"spherize needs at least 2 control rows, got {n}")
        self.mean_ = x.mean(axis=0) if self.center else np.zeros(d)
        std = x.std(axis=0) if self.method.endswith("-cor") else np.ones(d)
        self.std_ = np.where(std > 0, std, 1.0)
        xc = (x - self.mean_) / self.std_
        r = _natural_rank(xc)
        _, s, vt = np.linalg.svd(xc, full_matrices=True)  # vt: (d, d)
        sigma = np.zeros(d)
        sigma[:len(s)] = s
        keep = np.ones(d, dtype=bool)
        if r < d:
            if r == 0:
                raise EvaluationError("spherize: the control rows are all identical; nothing "
                                      "to whiten (check the controls selection)")
            if self.null == "smallest":
                sigma[r:] = sigma[r - 1]  # pycytominer: null directions as the smallest one
            else:
                keep[r:] = False
        self.n_null_ = d - r
        scale = np.where(keep, np.sqrt(n - 1) / (sigma + self.epsilon), 0.0)
        w = vt.T * scale  # (d, d): PCA whitening, column k = axis k
        if self.method.startswith("ZCA"):
            w = w @ vt
        self.w_ = w
        self.whiten_ = (w / self.std_[:, None]).T  # transform = (x - mean) @ whiten_.T
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Transform (n, d) rows with the fitted statistics."""
        return ((x - self.mean_) / self.std_) @ self.w_


for _name, _method in (("zca", "ZCA"), ("zca-cor", "ZCA-cor"), ("pca", "PCA"),
                       ("pca-cor", "PCA-cor")):
    NORMALIZERS.register(_name)(partial(Spherize, method=_method))


def _sym_power(c: np.ndarray, power: float) -> np.ndarray:
    """C^power of a symmetric positive-definite matrix via its eigendecomposition."""
    val, vec = np.linalg.eigh(c)
    return (vec * np.clip(val, 1e-300, None) ** power) @ vec.T


@NORMALIZERS.register("coral")
class CORAL(Normalizer):
    """CORrelation ALignment (Sun et al. 2016) of a group's controls onto a target.

    ``target_cov``/``target_mean`` are the statistics of all control rows; ``normalize``
    fills them in (see :meth:`global_params`) when CORAL is fitted per group.
    """

    def __init__(self, lam: float = 1.0, center: bool = True, target_cov=None,
                 target_mean=None):
        if lam <= 0:
            raise EvaluationError(f"CORAL needs lam > 0 (a ridge on both covariances), got {lam}")
        self.lam, self.center = lam, center
        self.target_cov, self.target_mean = target_cov, target_mean

    @staticmethod
    def global_params(x_controls: np.ndarray) -> dict:
        """Target statistics from every control row (all groups together)."""
        return {"target_cov": _covariance(x_controls), "target_mean": x_controls.mean(axis=0)}

    def fit(self, x: np.ndarray) -> "CORAL":
        """Fit on the (n, d) float64 control rows; returns self."""
        d = x.shape[1]
        target = self.global_params(x) if self.target_cov is None else {
            "target_cov": np.asarray(self.target_cov), "target_mean": self.target_mean}
        ridge = self.lam * np.eye(d)
        self.matrix_ = (_sym_power(_covariance(x) + ridge, -0.5)
                        @ _sym_power(target["target_cov"] + ridge, 0.5))
        self.mean_ = x.mean(axis=0) if self.center else np.zeros(d)
        tm = target["target_mean"]
        self.target_mean_ = (np.asarray(tm) if (self.center and tm is not None)
                             else np.zeros(d))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Transform (n, d) rows with the fitted statistics."""
        return (x - self.mean_) @ self.matrix_ + self.target_mean_


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


#: pycytominer.normalize keyword names -> our normalizer parameters
PYCYTOMINER_PARAMS: dict[str, str] = {
    "spherize_method": "method", "spherize_center": "center", "spherize_epsilon": "epsilon",
    "mad_robustize_epsilon": "epsilon",
}


def _normalizer_params(method: str, params: dict) -> dict:
    out = {}
    for key, value in params.items():
        target = PYCYTOMINER_PARAMS.get(key)
        if target is None:
            out[key] = value
        elif key.startswith("spherize_") and method not in SPHERIZE_NAMES:
            raise EvaluationError(f"{key}= applies to method='spherize', not {method!r}")
        else:
            out[target] = value
    return out


SPHERIZE_NAMES = ("spherize", "zca", "zca-cor", "pca", "pca-cor")


def _group_label(by, key) -> str:
    return "all rows" if by is None else str(dict(zip(by, key, strict=False)))


def normalize(table: pd.DataFrame, *, features: Features, method: str = "standardize",
              controls: Controls = None, by: Sequence[str] | str | None = None,
              **params) -> pd.DataFrame:
    """Fit ``method`` on the control rows of each ``by`` group and transform that group.

    ``params`` go to the normalizer (``epsilon=``, ``null=``, ...); pycytominer's names
    ``spherize_method``/``spherize_center``/``spherize_epsilon``/``mad_robustize_epsilon``
    are accepted too. Returns a copy of ``table`` with the feature columns replaced (float64).
    A group without control rows is an :class:`EvaluationError` naming the group; features
    constant in a group's controls, and rank-deficient whitening fits, are warned about.
    """
    try:
        cls = NORMALIZERS.get(method)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    params = _normalizer_params(method, params)
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
    global_params = getattr(cls, "global_params", None)
    if global_params is not None and not ctrl.any():
        raise EvaluationError(f"no control rows for {method!r}; controls={controls!r}")
    if global_params is not None:
        params = {**global_params(x[ctrl]), **params}
    constant: dict[str, list[str]] = {}
    deficient: list[str] = []
    on_constant = None
    for key, rows in groups.items():
        fit_rows = rows[ctrl[rows]]
        if len(fit_rows) == 0:
            raise EvaluationError(
                f"no control rows in group {_group_label(by, key) if by else 'all rows'} "
                f"({len(rows)} rows) for {method!r}; controls={controls!r}. Check the control "
                "labels (`cytodata evaluate ... --option control=NAME`), or fit over all rows "
                "(the protocol's grouping option set to null, e.g. `--option normalize_by=null`; "
                "Python: by=None)."
            )
        norm = cls(**params).fit(x[fit_rows])
        on_constant = norm.on_constant
        where = _group_label(by, key)
        for c in constant_columns(x[fit_rows], cols):
            constant.setdefault(c, []).append(where)
        n_null = getattr(norm, "n_null_", 0)
        if n_null and n_null > len(constant_columns(x[fit_rows], cols)):
            deficient.append(f"{where}: {len(fit_rows)} control rows for {len(cols)} features, "
                             f"{n_null} null direction(s)")
        out_x[rows] = norm.transform(x[rows])
    if constant and on_constant:
        groups_named = sorted({g for v in constant.values() for g in v})
        warn(f"{method}: {len(constant)} feature column(s) are constant in the controls "
             f"({name_columns(list(constant))}; in {preview(groups_named, 3)}): {on_constant}. "
             "Drop them first: `cytodata evaluate ... --feature-select variance_threshold` "
             "(Python: feature_select=['variance_threshold'] or "
             "select_features(..., operations=['variance_threshold'])).")
    if deficient and method in ("tvn", *SPHERIZE_NAMES):
        warn(f"{method}: controls span fewer directions than there are features "
             f"({preview(deficient, 3)}); "
             + ("TVN zeroes those directions." if method == "tvn" else
                "they are scaled like the smallest non-null direction (null='smallest') or "
                "zeroed (null='drop')."))
    big = np.abs(out_x) > 1e6
    if big.any():
        bad = [c for c, b in zip(cols, big.any(axis=0), strict=False) if b]
        warn(f"{method}: values up to {np.abs(out_x).max():.3g} after normalizing, in column(s) "
             f"{name_columns(bad)}: a direction was inflated (near-zero spread in the controls)")
    out = table.copy()
    out[cols] = out_x
    return out


def tvn(table: pd.DataFrame, *, features: Features, controls: Controls,
        by: Sequence[str] | str | None = None, epsilon: float = 1e-6) -> pd.DataFrame:
    """Typical variation normalization fitted on ``controls`` (per ``by`` group or globally)."""
    return normalize(table, features=features, method="tvn", controls=controls, by=by,
                     epsilon=epsilon)
