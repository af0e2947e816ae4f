"""Token normalization, the synonym table and harmonize_labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytodata import vocab
from cytodata.errors import RecipeError


@pytest.mark.parametrize("value, expected", [
    (None, []), (np.nan, []), (pd.NA, []), ("", []), ("   ", []),
    ("NEUTROPHIL", ["neutrophil"]),
    ("['red blood cell', 'white blood cell']", ["red blood cell", "white blood cell"]),
    ("mcf7|a549", ["mcf7", "a549"]),
    ("fluorescence (?)", ["fluorescence"]),
    ("  U-2   OS ?", ["u-2 os"]),
    ("(?) hela", ["hela"]),
    ("a|A| a |", ["a"]),
    (["X", "y|z"], ["x", "y", "z"]),
    (("b", "a"), ["b", "a"]),
    (np.array(["Q", "r"]), ["q", "r"]),
    ("[not a literal", ["[not a literal"]),
    ("[sic]", ["[sic]"]),              # bracketed text that is not a Python literal
    ("(?)", []),
    ("a.b*c+/d", ["a.b*c+/d"]),        # regex characters and '/' kept verbatim
])
def test_parse_cell(value, expected):
    assert vocab.parse_cell(value) == expected


def test_parse_cell_commas():
    assert vocab.parse_cell("NEUTROPHIL, EOSINOPHIL") == ["neutrophil, eosinophil"]
    assert vocab.parse_cell("NEUTROPHIL, EOSINOPHIL", commas=True) == ["neutrophil", "eosinophil"]
    table = pd.DataFrame({"cell_type": ["NEUTROPHIL,BASOPHIL"], "compound": ["1,10-Phenanthroline"]})
    out = vocab.harmonize_labels(table)
    assert out.loc[0, "cell_type"] == "white blood cell"
    assert out.loc[0, "compound"] == "1,10-phenanthroline"


def test_parse_cell_never_evaluates_code():
    assert vocab.parse_cell("[__import__('os').getcwd()]") == ["[__import__('os').getcwd()]"]


def test_shipped_synonyms():
    syn = vocab.load_synonyms()
    assert syn["cell_visible"]["nuclei"] == "nucleus"
    for raw in ("neutrophil", "eosinophil", "lymphocyte", "monocyte"):
        assert syn["cell_type"][raw] == "white blood cell"
    assert syn["cell_type"]["erythrocyte"] == syn["cell_type"]["rbc"] == "red blood cell"
    for raw in ("u-2 os", "u2-os"):
        assert syn["cell_type"][raw] == "u2os"
    assert syn["cell_type"]["mcf-7"] == "mcf7"
    assert syn["cell_type"]["he-la"] == "hela"
    assert syn["organism"]["homo sapiens"] == "human"


def test_load_synonyms_extra_flat_and_per_column():
    syn = vocab.load_synonyms({"Foo Bar": "Baz", "cell_type": {"HeLa S3": "hela"}})
    assert syn["*"]["foo bar"] == "baz"
    assert syn["cell_type"]["hela s3"] == "hela"
    with pytest.raises(RecipeError, match="unknown column 'nope'"):
        vocab.load_synonyms({"nope": {"a": "b"}})
    with pytest.raises(RecipeError, match="expected a string or a mapping"):
        vocab.load_synonyms({"a": 3})


def test_harmonize_labels():
    table = pd.DataFrame({
        "cell_type": ["NEUTROPHIL", "['red blood cell', 'white blood cell']", "U-2 OS",
                      "mcf7|a549", None, "Erythrocyte|rbc"],
        "cell_visible": ["nuclei", "Nucleus", np.nan, "", "nuclei|nucleus", "actin/tubulin"],
        "gene": ["ACTB", None, "actb targeted", "TP53|ACTB", None, None],
        "phenotype": ["x"] * 6,
    })
    out = vocab.harmonize_labels(table)
    assert out["cell_type"].tolist()[:4] == ["white blood cell", "red blood cell|white blood cell",
                                             "u2os", "mcf7|a549"]
    assert out["cell_type"].isna().tolist() == [False] * 4 + [True, False]
    assert out.loc[5, "cell_type"] == "red blood cell"          # both synonyms collapse to one
    assert out["cell_visible"].tolist()[:2] == ["nucleus", "nucleus"]
    assert out["cell_visible"].isna().tolist()[2:5] == [True, True, False]
    assert out.loc[4, "cell_visible"] == "nucleus"
    assert out.loc[5, "cell_visible"] == "actin/tubulin"
    assert out["gene"].tolist()[0] == "actb targeted"
    assert out.loc[2, "gene"] == "actb targeted"                  # not suffixed twice
    assert out.loc[3, "gene"] == "tp53 targeted|actb targeted"
    assert str(out["cell_type"].dtype) == "string"
    assert table.loc[0, "cell_type"] == "NEUTROPHIL"              # input untouched
    plain = vocab.harmonize_labels(table, gene_suffix=None, synonyms={"x": "y"})
    assert plain.loc[0, "gene"] == "actb" and plain.loc[0, "phenotype"] == "y"


def test_harmonize_labels_list_cells_and_per_column_synonyms():
    table = pd.DataFrame({"cell_type": pd.Series([["HeLa", "mcf-7"], ["hela"], None], dtype=object),
                          "organism": ["Homo sapiens", "nuclei", "nuclei"]})
    out = vocab.harmonize_labels(table, synonyms={"cell_type": {"hela": "HELA-x"}})
    assert out["cell_type"].tolist()[:2] == ["hela-x|mcf7", "hela-x"]
    assert out["organism"].tolist() == ["human", "nucleus", "nucleus"]   # '*' nuclei applies


def test_harmonize_labels_matches_rowwise_loop():
    rng = np.random.default_rng(0)
    pool = np.array(["NEUTROPHIL", "U-2 OS", "mcf7|a549", None, "nuclei (?)", "['a', 'B']"],
                    dtype=object)
    table = pd.DataFrame({"cell_type": rng.choice(pool, 5000)})
    fast = vocab.harmonize_labels(table, columns=["cell_type"])["cell_type"]
    syn = vocab.load_synonyms()
    lookup = {**syn["*"], **syn["cell_type"]}
    slow = ["|".join(vocab.canonical_tokens(v, lookup)) or None for v in table["cell_type"]]
    assert [None if pd.isna(v) else v for v in fast] == slow
