"""Corpus recipes: YAML -> typed dataclasses, validated on load with errors naming the key.

A recipe names sources (registry adapters and their parameters), vocabulary additions,
metadata QC, weak-label settings, stratified downsampling, the split rule, and settings for
later stages (image QC, shards). ``${name}`` in any string is replaced by a parameter from
``params`` (overridable on the command line with ``--set name=value``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml

from .errors import RecipeError

if TYPE_CHECKING:
    from .images.qc import QCConfig


@dataclass
class SourceSpec:
    """One source: a registered adapter ``adapter`` read with ``params``."""

    adapter: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # source id in the manifest (default: adapter name)
    license: str | None = None  # SPDX id of the images' license (the dataset card states it)
    citation: str | None = None  # how to cite the source (the dataset card lists it)
    url: str | None = None  # the source's home page


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
        "name", "organism", "cell_type", "cell_visible", "sirna", "compound", "phenotype"])
    method: str = "proportional"        # CytoImageNet's; "balanced" = equal per stratum
    drop_unlabeled: bool = True
    merge_same_token: bool = False      # true: a token in two columns is ONE class


@dataclass
class Upsample:
    """CytoImageNet's upsampling of weak-label classes by crops (``cytodata.curate.upsample``).

    Crops per image by class size: 1 at >= ``target``, 2 at >= 0.55 ``target``, 3 at >= 0.4
    ``target``, else 4 (one per quadrant); a class is cut back to ``target`` crops, and classes
    under ``floor`` rows afterwards are dropped. Images under ``min_image`` pixels a side are kept
    whole. Needs each image's height/width (columns, or read from the first channel's header).
    """

    target: int = 1_000
    floor: int = 500
    scales: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.125, 0.0625])
    min_size: int = 70
    min_image: int = 140


@dataclass
class Images:
    """How images are read (shard and QC stages): ``gray`` mode for RGB files."""

    gray: str | None = "auto"


@dataclass
class Shards:
    """Defaults of ``cytodata shard`` for this recipe (CLI flags override them)."""

    format: str = "webdataset"
    codec: str = "blosc-lz4"
    channel_mode: str = "own"
    shard_size: str = "256MB"
    samples_per_shard: int | None = None
    tile: int | None = None


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
    upsample: Upsample | None = None
    image_qc: "QCConfig | None" = None
    images: Images = field(default_factory=Images)
    shards: Shards = field(default_factory=Shards)
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
    if hasattr(tp, "from_dict"):  # a section type with its own validation (QCConfig)
        return tp.from_dict(value, where=where)
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
    # each (base) class's annotations resolve in its own module (training configs live in
    # cytodata.baselines); the recipe's "QCConfig" names a class whose module loads numpy, so
    # it is imported only for a class that names it, and comes in as a local name
    try:
        hints = typing.get_type_hints(cls)
    except NameError:
        from .images.qc import QCConfig

        hints = typing.get_type_hints(cls, localns={"QCConfig": QCConfig})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "raw"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        from ._suggest import did_you_mean

        hints_for = "".join(did_you_mean(k, fields).replace("; did you mean", f"; {k!r}: did you mean")
                            for k in unknown)
        raise RecipeError(f"{where}: unknown key(s) {unknown}{hints_for}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{where}: required key {name!r} is missing ({cls.__name__})")
    return cls(**kwargs)


_RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "raw")


def set_path(data: dict, path: str, value: Any, where: str) -> None:
    """Set ``data[a][b]...`` for the dotted ``path`` ``a.b...`` (list items: ``sources.0``).

    Missing mappings on the way are created (``--set sample.n=100`` adds a ``sample`` section);
    the recipe is validated afterwards, so a wrong key still gets its error.
    """
    parts = path.split(".")
    if parts[0] not in _RECIPE_KEYS:
        raise RecipeError(f"{where}: --set {path}: {parts[0]!r} is not a recipe key; valid: "
                          f"{list(_RECIPE_KEYS)} (or a name under 'params:')")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{where}: --set {path}: {'.'.join(parts[:i])} is a list of "
                                  f"{len(node)} item(s); use an index 0..{len(node) - 1}")
            part = int(part)  # type: ignore[assignment]
        elif not isinstance(node, dict):
            raise RecipeError(f"{where}: --set {path}: {'.'.join(parts[:i])} is "
                              f"{type(node).__name__} {node!r}, not a mapping")
        if last:
            node[part] = value
        else:
            nxt = node[part] if (isinstance(node, list) or part in node) else None
            if nxt is None:
                nxt = {}
                node[part] = nxt
            elif isinstance(nxt, (dict, list)):
                nxt = copy.deepcopy(nxt)
                node[part] = nxt
            node = nxt


def parse_recipe(data: Mapping[str, Any], *, where: str = "recipe",
                 overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Validate a recipe mapping.

    ``overrides`` (``--set NAME=VALUE``): a plain NAME defined under ``params`` replaces that
    parameter; otherwise NAME is a dotted path to any recipe key (``metadata_qc.check_files``,
    ``weak_labels.cap``, ``seed``, ``sources.0.params.root``).
    """
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: a recipe must be a YAML mapping, got {type(data).__name__}")
    data = dict(data)
    params = dict(data.get("params") or {})
    for name, value in (overrides or {}).items():
        if name in params:
            params[name] = value
        elif "." in name or name in _RECIPE_KEYS:
            set_path(data, name, value, where)
        else:
            from ._suggest import did_you_mean

            raise RecipeError(
                f"{where}: --set names unknown parameter {name!r}"
                f"{did_you_mean(name, [*params, *_RECIPE_KEYS])}; recipe parameters: "
                f"{sorted(params)}; or give a dotted recipe key such as "
                "metadata_qc.check_files=false")
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
    path = recipe_path(recipe)
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


# ---------------------------------------------------------------- shipped recipes
#: recipe files shipped inside the package: ``cytodata/recipes`` is the checkout's top-level
#: ``manifests/`` folder (a link), so one set of files serves the checkout and the wheel
RECIPES_PACKAGE_DIR = "recipes"


def recipes_dir() -> Path:
    """Folder of the shipped recipes (``manifests/`` in a checkout, package data in a wheel)."""
    from importlib.resources import files

    return Path(str(files("cytodata") / RECIPES_PACKAGE_DIR))


def shipped_recipes() -> dict[str, Path]:
    """Shipped recipe name (file stem; ``sub/name`` in sub-folders) -> path, sorted by name."""
    root = recipes_dir()
    if not root.is_dir():
        return {}
    found = {p.relative_to(root).with_suffix("").as_posix(): p
             for ext in ("*.yaml", "*.yml") for p in root.rglob(ext)}
    return dict(sorted(found.items()))


def recipe_path(recipe: "str | Path") -> Path:
    """Resolve a recipe file path, or a shipped recipe's name (``demo``, ``bbbc021``), to a path.

    An existing file wins over a shipped name; ``manifests/NAME.yaml`` also resolves to the
    shipped copy, so commands written for a checkout run from any folder after ``pip install``.
    """
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    for name in (str(recipe), path.with_suffix("").as_posix(), path.stem):
        if name in shipped:
            return shipped[name]
    if path.parent.name == "manifests" and path.stem in shipped:
        return shipped[path.stem]
    from ._suggest import did_you_mean

    raise RecipeError(
        f"recipe file {str(recipe)!r} does not exist and is not a shipped recipe"
        f"{did_you_mean(Path(str(recipe)).stem, shipped)}; shipped "
        f"recipes: {', '.join(shipped) or 'none'} (list them with `cytodata recipes`), or pass "
        "the path of your own YAML file")


def recipe_summary(path: Path) -> dict[str, Any]:
    """``{"name", "description", "params", "path"}`` of a recipe file (not validated)."""
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    data = data if isinstance(data, Mapping) else {}
    desc = data.get("description")
    if not desc:  # the recipes' first comment line says what they are
        comments = (ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#"))
        comment = next(comments, "")
        desc = comment
    return {"name": data.get("name", path.stem), "description": str(desc or ""),
            "params": dict(data.get("params") or {}), "path": str(path)}


def _cmd_recipes(args) -> int:
    if args.name:  # print one recipe's YAML, e.g. to copy and edit it
        text = recipe_path(args.name).read_text(encoding="utf-8")
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
            if not args.quiet:
                print(f"wrote {args.out}; build it: cytodata manifest build {args.out} -o DIR")
        else:
            print(text, end="")
        return 0
    if args.out:
        raise RecipeError("-o/--out writes one recipe: name it, e.g. `cytodata recipes bbbc021 -o "
                          "my.yaml`")
    shipped = shipped_recipes()
    if not shipped:
        raise RecipeError(f"no recipes found in {recipes_dir()}; reinstall cytodata")
    if not args.quiet:
        print(f"shipped recipes ({recipes_dir()}):")
    for name, path in shipped.items():
        info = recipe_summary(path)
        if args.quiet:
            print(name)
            continue
        params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
        print(f"  {name:<14} {info['description']}")
        if params:
            print(f"  {'':<14} params: {params}")
    if not args.quiet:
        print("build one: cytodata manifest build NAME -o OUT --set PARAM=VALUE; "
              "print one: cytodata recipes NAME")
    return 0


def recipe_of(manifest) -> "Recipe | None":
    """The recipe a manifest folder was built from (its provenance.json), or None."""
    import json
    import warnings
    from pathlib import Path

    p = Path(manifest)
    prov = (p if p.is_dir() else p.parent) / "provenance.json"
    if not prov.exists():
        return None
    try:
        data = json.loads(prov.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("recipe"), dict):
            return None
        return parse_recipe(data["recipe"], where=f"{prov} (recipe)")
    except (RecipeError, ValueError) as exc:  # an older or edited provenance: no defaults
        warnings.warn(f"{prov}: its recipe cannot be read ({exc}); using the command-line "
                      "options only (no recipe image_qc / shards defaults)", UserWarning,
                      stacklevel=2)
        return None
