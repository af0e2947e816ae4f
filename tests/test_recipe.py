import pytest

from cytodata.errors import RecipeError
from cytodata.recipe import load_recipe, parse_overrides

BASE = {"name": "t", "params": {"d": "/data"},
        "sources": [{"adapter": "bbbc021", "params": {"root": "${d}/bbbc021"}}]}


def test_parameters_are_substituted_and_overridable():
    r = load_recipe(BASE)
    assert r.sources[0].params["root"] == "/data/bbbc021"
    r2 = load_recipe(BASE, overrides={"d": "/other"})
    assert r2.sources[0].params["root"] == "/other/bbbc021"
    assert r.sha256() != r2.sha256()
    assert r.sha256() == load_recipe(BASE).sha256()


def test_unknown_key_names_valid_keys():
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['grp'\].*valid keys"):
        load_recipe({**BASE, "split": {"grp": "plate"}})
    with pytest.raises(RecipeError, match="unknown key"):
        load_recipe({**BASE, "colour": 1})


def test_wrong_type_names_the_key():
    with pytest.raises(RecipeError, match=r"weak_labels.min_count: expected an integer"):
        load_recipe({**BASE, "weak_labels": {"min_count": "many"}})
    with pytest.raises(RecipeError, match=r"check_files: expected true/false"):
        load_recipe({**BASE, "metadata_qc": {"check_files": "yes"}})


def test_undefined_parameter_and_bad_override():
    with pytest.raises(RecipeError, match=r"\$\{nope\} is not defined"):
        load_recipe({**BASE, "sources": [{"adapter": "x", "params": {"root": "${nope}"}}]})
    with pytest.raises(RecipeError, match="unknown parameter"):
        load_recipe(BASE, overrides={"zzz": 1})
    assert parse_overrides(["a=1", "b=/x"]) == {"a": 1, "b": "/x"}


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources: [\n  - adapter: a\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    py = tmp_path / "evil.yaml"
    py.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RecipeError):
        load_recipe(py)


def test_shipped_recipes_parse():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "manifests"
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    assert {"demo", "bbbc021", "rxrx1", "jump", "cytoimagenet"} <= set(names)
    for p in folder.glob("*.yaml"):
        assert load_recipe(p).name == p.stem


def test_source_parameter_typo_is_a_recipe_error_listing_valid_names(tmp_path):
    """`id_colum:` is a RecipeError listing the valid names, not a TypeError from the adapter."""
    import subprocess
    import sys

    bad = {**BASE, "sources": [{"adapter": "csv", "params": {"path": "/x.csv", "id_colum": "id"}}]}
    with pytest.raises(RecipeError, match=r"no parameter\(s\) \['id_colum'\].*'id_column'.*valid parameters"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match=r"needs parameter\(s\) \['root'\]"):
        load_recipe({**BASE, "sources": [{"adapter": "bbbc021", "params": {}}]})
    with pytest.raises(RecipeError, match=r"sets \['source'\]"):
        load_recipe({**BASE, "sources": [{"adapter": "bbbc021", "params": {"root": "/d", "source": "b"}}]})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nsources:\n  - adapter: csv\n    params: {path: /x.csv, id_colum: id}\n")
    run = subprocess.run([sys.executable, "-m", "cytodata", "manifest", "build", str(recipe), "-o",
                          str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "id_colum" in run.stderr and "id_column" in run.stderr


def test_shipped_recipes_fit_their_adapters():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "manifests").glob("*.yaml")):
        load_recipe(path)
