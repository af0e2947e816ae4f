"""Image QC rules: pure functions ``(image (C, H, W), QCConfig) -> bool`` (True = the image
fails), their thresholds (:class:`QCConfig`) and :func:`check`.

Rules live in :data:`QC_RULES` (``@QC_RULES.register("reason")``); a rule's registered name is
the ledger reason. Statistics are computed at full bit depth and exactly (histogram
percentiles for 8/16-bit images), never on a pixel subsample. The recipe (``image_qc:``), the
QC stage (``cytodata qc``) and the shard writers (QC while sharding) all take the rules from
here, with one rule set per manifest (:func:`manifest_image_qc`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._registry import Registry
from ..errors import RecipeError
from .normalize import channel_percentiles

__all__ = ["QC_RULES", "QCConfig", "DEFAULT_RULES", "check", "manifest_image_qc"]

QCRule = Callable[[np.ndarray, "QCConfig"], bool]
#: the rule registry; a rule's name is the reason written to the ledger
QC_RULES: Registry[QCRule] = Registry("qc rule")
#: default rule order: cheap structural checks first, then pixel statistics
DEFAULT_RULES: tuple[str, ...] = (
    "wrong shape", "wrong dtype", "nan or inf", "uniform", "binary mask", "dim", "saturated",
)


@dataclass
class QCConfig:
    """Thresholds and toggles of image QC (YAML ``qc:`` block or ``--config qc.yaml``).

    ``rules`` run in order and the first failure is the reason. ``low``/``high`` are the
    percentiles (in %) that must differ for an image not to be "uniform". An image is
    "saturated" when more than ``saturation_fraction`` of a channel's pixels equal
    ``saturation_value`` (default: the integer dtype's maximum; float images are skipped
    unless a value is given). ``expected_*`` are ``None`` (not checked) or the shape
    (``(H, W)`` or ``(C, H, W)``), dtype name and channel count every image must have.
    """

    rules: tuple[str, ...] = DEFAULT_RULES
    low: float = 0.1
    high: float = 99.9
    saturation_fraction: float = 0.05
    saturation_value: float | None = None
    expected_shape: tuple[int, ...] | None = None
    expected_dtype: str | None = None
    expected_channels: int | None = None

    def __post_init__(self) -> None:
        self.rules = tuple(self.rules)
        for name in self.rules:
            if name not in QC_RULES:
                raise RecipeError(f"qc config: unknown rule {name!r} in 'rules'; valid rules: "
                                  f"{', '.join(QC_RULES.names())}")
        if not 0 <= self.low < self.high <= 100:
            raise RecipeError(f"qc config: need 0 <= low < high <= 100, got low={self.low} high={self.high}")
        if not 0 <= self.saturation_fraction <= 1:
            raise RecipeError(f"qc config: 'saturation_fraction' must be in [0, 1], got {self.saturation_fraction}")
        if self.expected_shape is not None:
            self.expected_shape = tuple(int(v) for v in self.expected_shape)
            if len(self.expected_shape) not in (2, 3):
                raise RecipeError(f"qc config: 'expected_shape' must be [H, W] or [C, H, W], "
                                  f"got {list(self.expected_shape)}")
        if self.expected_dtype is not None:
            try:
                self.expected_dtype = np.dtype(self.expected_dtype).name
            except TypeError:
                raise RecipeError(f"qc config: 'expected_dtype' {self.expected_dtype!r} is not a numpy "
                                  "dtype name (e.g. uint16, uint8, float32)") from None

    @classmethod
    def from_dict(cls, data: Mapping | None, *, where: str = "qc config") -> "QCConfig":
        """Build from a plain mapping (parsed YAML); unknown keys or wrong types raise RecipeError."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise RecipeError(f"{where}: expected a mapping of QC settings, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise RecipeError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = _typed(key, value, where)
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "QCConfig":
        """Read a YAML file holding the settings (optionally under a top-level ``qc:`` key)."""
        import yaml

        p = Path(path)
        if not p.exists():
            raise RecipeError(f"qc config file {p} not found")
        with p.open() as fh:
            data = yaml.safe_load(fh)
        if isinstance(data, Mapping) and set(data) == {"qc"}:
            data = data["qc"]
        return cls.from_dict(data, where=str(p))

    def to_dict(self) -> dict:
        """Plain-data view (saved next to QC outputs)."""
        d = dataclasses.asdict(self)
        d["rules"] = list(self.rules)
        if self.expected_shape is not None:
            d["expected_shape"] = list(self.expected_shape)
        return d


_NUMBER = (int, float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "low": _NUMBER, "high": _NUMBER, "saturation_fraction": _NUMBER,
    "saturation_value": _NUMBER, "expected_channels": (int,), "expected_dtype": (str,),
}


def _typed(key: str, value, where: str):
    if value is None and key not in ("rules", "low", "high", "saturation_fraction"):
        return None
    if key in ("rules", "expected_shape"):
        inner = str if key == "rules" else int
        if isinstance(value, str) and key == "rules":
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, inner) and not isinstance(v, bool) for v in value):
            raise RecipeError(f"{where}: {key!r} must be a list of {inner.__name__}, got {value!r}")
        return tuple(value)
    types = _FIELD_TYPES[key]
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise RecipeError(f"{where}: {key!r} must be {names}, got {value!r} ({type(value).__name__})")
    return value


def _as_config(config: "QCConfig | Mapping | None") -> QCConfig:
    return config if isinstance(config, QCConfig) else QCConfig.from_dict(config)


# --- rules (True = the image fails) -------------------------------------------------------

@QC_RULES.register("wrong shape")
def _wrong_shape(img: np.ndarray, cfg: QCConfig) -> bool:
    if img.ndim != 3 or 0 in img.shape:
        return True
    if cfg.expected_channels is not None and img.shape[0] != cfg.expected_channels:
        return True
    if cfg.expected_shape is not None:
        return tuple(img.shape[-len(cfg.expected_shape):]) != cfg.expected_shape
    return False


@QC_RULES.register("wrong dtype")
def _wrong_dtype(img: np.ndarray, cfg: QCConfig) -> bool:
    return cfg.expected_dtype is not None and img.dtype.name != cfg.expected_dtype


@QC_RULES.register("nan or inf")
def _nan_or_inf(img: np.ndarray, cfg: QCConfig) -> bool:
    return img.dtype.kind in "fc" and not bool(np.isfinite(img).all())


@QC_RULES.register("uniform")
def _uniform(img: np.ndarray, cfg: QCConfig) -> bool:
    """Any channel whose ``low``-th and ``high``-th percentiles are equal (exact)."""
    flat = img.reshape(img.shape[0], -1)
    mins, maxs = flat.min(axis=1), flat.max(axis=1)
    if (mins == maxs).any():  # shortcut: a constant channel is uniform at any percentile
        return True
    pct = channel_percentiles(img, (cfg.low, cfg.high))
    return bool((pct[:, 0] == pct[:, 1]).any())


@QC_RULES.register("binary mask")
def _binary_mask(img: np.ndarray, cfg: QCConfig) -> bool:
    """Any channel with exactly two distinct values (a segmentation mask, not an image)."""
    for plane in img.reshape(img.shape[0], -1):
        lo, hi = plane.min(), plane.max()
        if lo != hi and np.count_nonzero((plane == lo) | (plane == hi)) == plane.size:
            return True
    return False


@QC_RULES.register("dim")
def _dim(img: np.ndarray, cfg: QCConfig) -> bool:
    """The 75th percentile of all pixels (all channels together) is 0: mostly empty."""
    if img.dtype.kind == "u":
        # exact shortcut for non-negative data: the interpolated p75 is 0 iff both order
        # statistics around rank 0.75 * (n - 1) are 0, i.e. enough pixels are exactly 0
        n_zero = img.size - np.count_nonzero(img)
        return n_zero >= math.ceil(0.75 * (img.size - 1)) + 1
    return bool(np.percentile(img, 75) == 0)


@QC_RULES.register("saturated")
def _saturated(img: np.ndarray, cfg: QCConfig) -> bool:
    """Any channel with more than ``saturation_fraction`` of pixels at the saturation value."""
    value = cfg.saturation_value
    if value is None:
        if img.dtype.kind not in "ui":
            return False
        value = np.iinfo(img.dtype).max
    flat = img.reshape(img.shape[0], -1)
    frac = np.count_nonzero(flat >= value, axis=1) / flat.shape[1]
    return bool((frac > cfg.saturation_fraction).any())


def check(image: np.ndarray, config: "QCConfig | Mapping | None" = None) -> str | None:
    """The first failing rule's reason for a ``(C, H, W)`` image, or ``None`` if it passes."""
    cfg = _as_config(config)
    img = np.asarray(image)
    if img.ndim != 3 or img.size == 0:
        return "wrong shape"  # every rule assumes a non-empty (C, H, W) array
    for name in cfg.rules:
        if QC_RULES.get(name)(img, cfg):
            return name
    return None


def manifest_image_qc(manifest) -> tuple[QCConfig, str]:
    """The image QC rules for the manifest folder (or file) ``manifest`` and where they came from:
    the ``image_qc`` section of the recipe it was built from (its provenance.json), else the
    defaults. ``cytodata qc`` and ``cytodata shard`` both take their rules from here, so the two
    commands apply the same rules to one manifest.
    """
    import json

    p = Path(manifest)
    prov = (p if p.is_dir() else p.parent) / "provenance.json"
    try:
        recipe = json.loads(prov.read_text()).get("recipe") if prov.exists() else None
    except (OSError, ValueError, AttributeError):
        recipe = None
    section = recipe.get("image_qc") if isinstance(recipe, dict) else None
    if section is None:
        return QCConfig(), "the default"
    return QCConfig.from_dict(section, where=f"{prov} (recipe image_qc)"), "the recipe's image_qc"
