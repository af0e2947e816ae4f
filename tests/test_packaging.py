"""The built wheel is complete: installed outside the checkout, recipes ship and the demo runs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cytodata.errors import RecipeError
from cytodata.recipe import load_recipe, recipe_path, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_recipes_are_the_manifests_folder():
    shipped = shipped_recipes()
    on_disk = sorted(p.stem for p in (ROOT / "manifests").glob("*.yaml"))
    assert sorted(shipped) == on_disk and "demo" in shipped
    for name, path in shipped.items():
        assert path.read_bytes() == (ROOT / "manifests" / f"{name}.yaml").read_bytes()
        assert load_recipe(name).name  # every shipped recipe validates


def test_recipe_names_resolve_and_unknown_names_list_the_choices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no manifests/ here
    assert recipe_path("bbbc021") == shipped_recipes()["bbbc021"]
    assert recipe_path("manifests/rxrx1.yaml") == shipped_recipes()["rxrx1"]
    (tmp_path / "demo").mkdir()  # a folder named like a recipe does not shadow it
    assert recipe_path("demo") == shipped_recipes()["demo"]
    own = tmp_path / "bbbc021.yaml"
    own.write_text("name: mine\nsources: [{adapter: csv}]\n")
    assert recipe_path("bbbc021.yaml") == Path("bbbc021.yaml")  # a real file wins
    with pytest.raises(RecipeError, match=r"not a shipped recipe.*bbbc021, cytoimagenet"):
        recipe_path("nope.yaml")


def _demo_command(env: dict, out: Path) -> list[str]:
    """The quick demo when this build has one, else its first two steps (sources, manifest)."""
    helptext = subprocess.run([sys.executable, "-m", "cytodata", "demo", "--help"], env=env,
                              capture_output=True, text=True, check=True).stdout
    if "--quick" in helptext:
        return [sys.executable, "-m", "cytodata", "demo", "--quick", "-q", "-o", str(out)]
    code = ("import sys; from pathlib import Path; from cytodata import demo; "
            "out = Path(sys.argv[1]); demo.make_sources(out, 0); demo.build_manifest(out, False)")
    return [sys.executable, "-c", code, str(out)]


@pytest.mark.timeout(300)
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # offline: the build backend comes from this environment, nothing is downloaded
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(dist.glob("cytodata-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for recipe in (ROOT / "manifests").glob("*.yaml"):
        assert f"cytodata/recipes/{recipe.name}" in names
    assert "cytodata/data/synonyms.csv" in names
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(site), str(wheel)], check=True, capture_output=True)
    # the installed copy, not the checkout: dependencies come from this venv's site-packages
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    run = dict(cwd=elsewhere, env=env, capture_output=True, text=True)
    where = subprocess.run([sys.executable, "-c", "import cytodata; print(cytodata.__file__)"],
                           check=True, **run).stdout
    assert Path(where.strip()).is_relative_to(site)
    listed = subprocess.run([sys.executable, "-m", "cytodata", "recipes", "-q"], check=True,
                            **run).stdout.split()
    assert listed == sorted(p.stem for p in (ROOT / "manifests").glob("*.yaml"))
    out = elsewhere / "demo"
    demo = subprocess.run(_demo_command(env, out), **run)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (out / "manifest" / "manifest.parquet").exists()
