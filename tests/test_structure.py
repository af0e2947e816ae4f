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

#: (layer, the layers it must never import): a stage imports only the stages below it
NEVER = {
    "cytodata.images": ("cytodata.curate", "cytodata.recipe", "cytodata.manifest", "cytodata.shards",
                        "cytodata.loaders", "cytodata.publish", "cytodata.baselines", "cytodata.demo"),
    "cytodata.curate": ("cytodata.recipe", "cytodata.manifest", "cytodata.shards", "cytodata.loaders",
                        "cytodata.publish", "cytodata.baselines", "cytodata.demo"),
    "cytodata.recipe": ("cytodata.curate", "cytodata.manifest", "cytodata.shards", "cytodata.loaders",
                        "cytodata.publish", "cytodata.baselines"),
    "cytodata.shards": ("cytodata.loaders", "cytodata.publish", "cytodata.baselines", "cytodata.demo",
                        "cytodata.evaluate"),
    "cytodata.loaders": ("cytodata.publish", "cytodata.baselines", "cytodata.demo"),
    "cytodata.evaluate": ("cytodata.shards", "cytodata.loaders", "cytodata.publish", "cytodata.baselines",
                          "cytodata.demo"),
    "cytodata.baselines.config": ("cytodata.baselines.methods", "cytodata.baselines.engine"),
}


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


def test_no_import_from_a_lower_layer_up(graph):
    def within(module: str, layer: str) -> bool:
        return module == layer or module.startswith(layer + ".")

    bad = [f"{m} -> {t}" for m, targets in graph.items() for layer, above in NEVER.items() if within(m, layer)
           for t in targets if any(within(t, a) for a in above)]
    assert not bad, "imports from a lower layer up:\n" + "\n".join(sorted(bad))


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
