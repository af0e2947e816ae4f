"""The package's import graph, read from the source (module-level and deferred imports alike):
no import circles, and no import from a lower layer up to a higher one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import cytodata

ROOT = Path(cytodata.__file__).resolve().parent          # cytodata/
BASELINES = (ROOT / "baselines").resolve()               # baselines/ (installed as cytodata.baselines)

#: inside one layer: (package, the packages it must never import)
NEVER = {
    "cytodata.baselines.config": ("cytodata.baselines.methods", "cytodata.baselines.engine"),
}
ARCHITECTURE = ROOT.parent / "ARCHITECTURE.md"


def read_layers(text: str) -> dict[str, int]:
    """``{"cytodata.UNIT": layer}`` from the table under ARCHITECTURE.md's "## Layers" heading."""
    section = text.split("## Layers", 1)[1].split("```", 2)[1]
    out = {}
    for line in section.splitlines()[2:]:  # the fence's language line, then the column heads
        words = line.split()
        if not words or not words[0].isdigit():
            continue
        for word in words[1:]:
            if not (word.isidentifier() or word in ("__main__",)):
                break  # the "why here" column
            out[f"cytodata.{word}"] = int(words[0])
    return out


def unit_of(module: str, layers: dict[str, int]) -> str | None:
    """The unit of ``layers`` that holds ``module`` (the longest name that is it or a package above it)."""
    hits = [u for u in layers if module == u or module.startswith(u + ".")]
    return max(hits, key=len) if hits else None


def layer_violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Imports that point up the table or sideways to another unit of the same layer."""
    bad = []
    for module, targets in graph.items():
        unit = unit_of(module, layers)
        for target in targets:
            other = unit_of(target, layers)
            if unit is None or other is None or other == unit:
                continue
            if layers[other] > layers[unit]:
                bad.append(f"{module} (layer {layers[unit]}) -> {target} (layer {layers[other]}): up")
            elif layers[other] == layers[unit]:
                bad.append(f"{module} -> {target}: sideways within layer {layers[unit]}")
    return sorted(bad)


def _modules() -> dict[str, Path]:
    """Module name -> file, for cytodata and cytodata.baselines."""
    out = {}
    for base, prefix in ((ROOT, "cytodata"), (BASELINES, "cytodata.baselines")):
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if base == ROOT and rel.parts[0] == "baselines":
                continue  # the symlink: read once, through BASELINES
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports (a package's submodule when one is named)."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            mod = mod.replace("baselines", "cytodata.baselines", 1) if mod.startswith("baselines") else mod
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import cytodata.x.y as z`, names inside modules
                t = t.rpartition(".")[0]
            if t and t != name and t != "cytodata":
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(root):
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))

    for n in sorted(graph):
        if n not in index:
            visit(n)
    return out


def test_the_reader_sees_the_imports(graph):
    # the graph is read right: known arrows are there (the test could otherwise pass on nothing)
    assert "cytodata.images.qc" in graph["cytodata.curate.qc"]
    assert "cytodata.images.qc" in graph["cytodata.shards._samples"]  # a deferred import
    assert "cytodata.baselines.registry" in graph["cytodata.baselines.methods.classifier"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles(graph):
    cycles = _cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(
        " <-> ".join(c) + "\n    " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in cycles)


def test_the_layer_table_is_read_and_holds_every_module(graph):
    layers = read_layers(ARCHITECTURE.read_text(encoding="utf-8"))
    assert layers["cytodata.errors"] == 1 and layers["cytodata.__main__"] == max(layers.values())
    assert layers["cytodata.images"] < layers["cytodata.curate"] < layers["cytodata.manifest"]
    assert layers["cytodata.shards"] < layers["cytodata.loaders"] < layers["cytodata.baselines"]
    unplaced = sorted(m for m in graph if m != "cytodata" and unit_of(m, layers) is None)
    assert not unplaced, ("modules missing from ARCHITECTURE.md's layer table (place each on the "
                          f"lowest layer its imports allow): {unplaced}")


def test_a_layer_violation_is_caught():
    layers = {"cytodata.low": 1, "cytodata.mid": 2, "cytodata.peer": 2, "cytodata.high": 3}
    assert layer_violations({"cytodata.high.x": {"cytodata.low", "cytodata.mid.y"},
                             "cytodata.mid.y": {"cytodata.mid.z", "cytodata.low"}}, layers) == []
    assert layer_violations({"cytodata.low": {"cytodata.mid.y"}}, layers) == [
        "cytodata.low (layer 1) -> cytodata.mid.y (layer 2): up"]
    assert layer_violations({"cytodata.mid.y": {"cytodata.peer"}}, layers) == [
        "cytodata.mid.y -> cytodata.peer: sideways within layer 2"]


def test_no_import_from_a_lower_layer_up(graph):
    bad = layer_violations(graph, read_layers(ARCHITECTURE.read_text(encoding="utf-8")))
    assert not bad, ("imports against ARCHITECTURE.md's layer table (move the code down, or invert "
                     "the dependency):\n" + "\n".join(bad))


def test_no_forbidden_import_inside_a_layer(graph):
    def within(module: str, layer: str) -> bool:
        return module == layer or module.startswith(layer + ".")

    bad = [f"{m} -> {t}" for m, targets in graph.items() for layer, above in NEVER.items() if within(m, layer)
           for t in targets if any(within(t, a) for a in above)]
    assert not bad, "forbidden imports:\n" + "\n".join(sorted(bad))


def test_every_module_imports(graph):
    """The arrows name real modules and names: every module of the package imports."""
    import importlib

    for name in sorted(graph):
        if name.endswith("__main__"):
            continue  # runs the CLI
        importlib.import_module(name)


def test_lazy_package_names_are_never_shadowed_by_a_submodule():
    """Every lazy public name of ``cytodata.baselines`` stays the function/class it names after all
    of the package's modules have been imported (a submodule of the same name would replace it)."""
    code = ("import importlib, pkgutil, types\nimport cytodata.baselines as b\n"
            "for m in pkgutil.walk_packages(b.__path__, b.__name__ + '.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = [n for n in b.__all__ if isinstance(getattr(b, n), types.ModuleType)]\n"
            "print('shadowed:', bad)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "shadowed: []", done.stdout


def test_method_registries_name_every_method_and_agree():
    """``METHODS`` and ``CONFIGS`` know every method by name before any method module loads
    (``train --show`` reads a config class without torch: tests/test_cli_start.py), and each
    config class is the one its method trains with."""
    from cytodata.baselines.registry import CONFIGS, METHODS, MODULES

    assert METHODS.names() == CONFIGS.names() == sorted(MODULES) and "ws-dino" in CONFIGS
    for name in MODULES:
        assert CONFIGS.get(name) is METHODS.get(name).config_class, name
    from cytodata.baselines.methods.dino import WSDinoConfig
    from cytodata.baselines.methods.dino.config import DinoConfig
    from cytodata.baselines.methods.mean_teacher import MeanTeacherConfig

    assert (DinoConfig, WSDinoConfig, MeanTeacherConfig) == tuple(
        CONFIGS.get(n) for n in ("dino", "ws-dino", "mean-teacher"))  # the old paths still work


def test_a_lazy_registry_name_that_its_module_does_not_register_is_an_error():
    from cytodata._registry import Registry

    reg = Registry("thing")
    reg.register_lazy("a", "cytodata.errors")  # imports fine, registers nothing
    assert "a" in reg and reg.names() == ["a"]
    with pytest.raises(ValueError, match=r"module cytodata.errors was imported but does not register it"):
        reg.get("a")
    with pytest.raises(ValueError, match=r"unknown thing 'b'; valid names: a"):
        reg.get("b")
    with pytest.raises(ValueError, match="already registered by cytodata.errors"):
        reg.register_lazy("a", "cytodata.schema")
