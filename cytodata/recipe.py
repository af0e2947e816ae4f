"""Corpus recipes: YAML -> typed dataclasses, validated on load with errors naming the key.

A recipe names sources (registry adapters and their parameters), vocabulary additions,
metadata QC, weak-label settings, stratified downsampling, the split rule, and settings for
later stages (image QC, shards). ``${name}`` in any string is replaced by a parameter from
``params`` (overridable on the command line with ``--set name=value``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import RecipeError


@dataclass
class SourceSpec:
    """One source: a registered adapter ``adapter`` read with ``params``."""

    adapter: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # source id in the manifest (default: adapter name)


@dataclass
class MetadataQC:
    """Row-level checks before labelling: required non-empty columns, files that must exist."""

    require: list[str] = field(default_factory=list)
    check_files: bool = True


@dataclass
class WeakLabels:
    """CytoImageNet weak-label assignment (see ``cytodata.curate.assign_weak_labels``)."""

    columns: list[str] = field(default_factory=lambda: [
        "organism", "cell_type", "cell_visible", "phenotype", "compound", "gene", "sirna"])
    min_count: int = 287
    presample: int = 10_000
    presample_by: list[str] = field(default_factory=lambda: ["name", "organism", "cell_type"])
    cap: int = 1_000
    sample_by: list[str] = field(default_factory=lambda: [
        "organism", "cell_type", "cell_visible", "sirna", "compound", "phenotype"])
    method: str = "balanced"
    drop_unlabeled: bool = True


@dataclass
class Sample:
    """Stratified downsampling to ``n`` rows over the strata ``by``."""

    n: int
    by: list[str] = field(default_factory=lambda: ["label"])
    method: str = "balanced"


@dataclass
class Split:
    """Group split: whole groups (source image, plate, batch, compound) go to one split."""

    group: str = "parent_id"
    fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    stratify: str | None = "label"


@dataclass
class Recipe:
    """A whole corpus recipe; ``raw`` keeps the resolved mapping for provenance."""

    name: str
    sources: list[SourceSpec]
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    synonyms: dict[str, Any] = field(default_factory=dict)
    metadata_qc: MetadataQC = field(default_factory=MetadataQC)
    weak_labels: WeakLabels | None = None
    sample: Sample | None = None
    split: Split | None = field(default_factory=Split)
    image_qc: dict[str, Any] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)
    shards: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def sha256(self) -> str:
        """Hash of the resolved recipe (canonical JSON): changes whenever the result may."""
        blob = json.dumps(self.raw, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


_PARAM = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute(value: Any, params: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            if m.group(1) not in params:
                raise RecipeError(
                    f"{where}: parameter ${{{m.group(1)}}} is not defined; define it under "
                    f"'params:' or pass --set {m.group(1)}=VALUE (defined: {sorted(params)})"
                )
            return str(params[m.group(1)])
        return _PARAM.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, params, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, params, f"{where}.{k}") for k, v in value.items()}
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``; RecipeError on mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0] if errors else f"{where}: bad value {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _from_dict(cls: type, data: Any, where: str):
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "raw"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecipeError(
            f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{where}: required key {name!r} is missing ({cls.__name__})")
    return cls(**kwargs)


def parse_recipe(data: Mapping[str, Any], *, where: str = "recipe",
                 overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Validate a recipe mapping; ``overrides`` replace entries of ``params``."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: a recipe must be a YAML mapping, got {type(data).__name__}")
    data = dict(data)
    params = dict(data.get("params") or {})
    if overrides:
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            raise RecipeError(
                f"{where}: --set names unknown parameter(s) {unknown}; recipe parameters: "
                f"{sorted(params)}")
        params.update(overrides)
    data["params"] = params
    resolved = {k: (_substitute(v, params, f"{where}:{k}") if k != "params" else v)
                for k, v in data.items()}
    if "sources" in resolved and isinstance(resolved["sources"], list):
        for i, s in enumerate(resolved["sources"]):
            if isinstance(s, dict) and "adapter" not in s and "name" in s:
                raise RecipeError(f"{where}: sources[{i}] uses 'name'; the key is 'adapter'")
    recipe = _from_dict(Recipe, resolved, where)
    if not recipe.sources:
        raise RecipeError(f"{where}: 'sources' is empty; list at least one source adapter")
    _check_source_params(recipe, where)
    recipe.raw = resolved
    return recipe


def _check_source_params(recipe: "Recipe", where: str) -> None:
    """Every source's params against its adapter's signature (RecipeError naming the valid ones)."""
    from .sources import check_params

    for i, spec in enumerate(recipe.sources):
        reserved = sorted(set(spec.params) & {"ledger", "synonyms", "source"})
        if reserved:
            raise RecipeError(f"{where}: sources[{i}].params sets {reserved}; 'source' is a key of the "
                              "source entry itself, 'synonyms' a top-level recipe key")
        check_params(spec.adapter, spec.params, where=f"{where}: sources[{i}] ({spec.adapter})")


def load_recipe(recipe: "str | Path | Mapping[str, Any] | Recipe", *,
                overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Load a recipe from a YAML path, a mapping, or pass a Recipe through."""
    if isinstance(recipe, Recipe):
        return recipe if not overrides else parse_recipe(recipe.raw, overrides=overrides)
    if isinstance(recipe, Mapping):
        return parse_recipe(recipe, overrides=overrides)
    path = Path(recipe)
    if not path.exists():
        raise RecipeError(f"recipe file {path} does not exist; recipes live in manifests/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc}); fix the syntax at the line shown") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text ({exc}); save the recipe as UTF-8") from None
    return parse_recipe(data, where=str(path), overrides=overrides)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a=1", "root=/x"]`` -> ``{"a": 1, "root": "/x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v else ""
    return out
