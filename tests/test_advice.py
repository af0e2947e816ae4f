"""Advice in warnings and errors names the command-line way, not only a Python name: a user of
`cytodata evaluate` is told the option to pass, a Python caller the keyword."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cytodata
from cytodata.errors import EvaluationError
from cytodata.evaluate import EvaluationWarning, normalize, run_protocol

EVALUATE = Path(cytodata.__file__).resolve().parent / "evaluate"
#: advice naming a Python call or keyword: ``f(...``, ``(Python: ...)``, ``pass x=``, ``x=...``
PYTHON_ADVICE = re.compile(r"\b\w+\(\.\.\.|\(Python:|\bpass \w+=|\b\w+=\.\.\.|\(select_features\)")


def _table(n: int = 24) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"key": [f"k{i}" for i in range(n)], "label": ["a", "b", "c"] * (n // 3),
                          "compound": ["dmso", "x", "y", "z"] * (n // 4)})
    for j in range(4):
        table[f"emb_{j}"] = rng.normal(size=n)
    table["emb_4"] = 1.0  # constant: carries no information
    return table


def _messages(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, EvaluationWarning)]


def test_constant_feature_warnings_name_the_evaluate_option():
    table = _table()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_protocol("knn", table, table, label="label", k=3)
        normalize(table, features="emb_", method="standardize", controls={"compound": "dmso"})
    said = [m for m in _messages(caught) if "constant" in m]
    assert len(said) == 2, _messages(caught)
    for message in said:
        assert "`cytodata evaluate ... --feature-select variance_threshold`" in message, message
        assert "variance_threshold" in message.split("Python:", 1)[1], message


def test_errors_name_the_evaluate_option():
    table = _table().drop(columns="key")
    with pytest.raises(EvaluationError, match=r"--id-column NAME"):
        run_protocol("knn", table, table.assign(key=range(len(table))), label="label")
    table = _table()
    with pytest.raises(EvaluationError, match=r"--features PREFIX"):
        run_protocol("knn", table.assign(emb_5="text"), table, label="label")
    with pytest.raises(EvaluationError, match=r"--option control=NAME"):
        normalize(table, features="emb_", method="standardize", controls={"compound": "none"},
                  by="label")


def test_evaluate_advice_naming_python_also_names_the_cli():
    """Every raise/warn message in cytodata/evaluate that advises a Python call or keyword also
    names a command-line way (``cytodata ...`` or an ``--option``)."""
    def text(node) -> str:
        return "".join(n.value if isinstance(n, ast.Constant) and isinstance(n.value, str) else "{}"
                       for n in ast.walk(node) if isinstance(n, (ast.Constant, ast.FormattedValue)))

    found, python_only = 0, []
    for path in sorted(EVALUATE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                message = text(node.exc)
            elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "warn":
                message = text(node)
            else:
                continue
            if PYTHON_ADVICE.search(message):
                found += 1
                if "cytodata " not in message and "--" not in message:
                    python_only.append(f"{path.name}:{node.lineno}: {message[:160]}")
    assert found >= 5  # the scan reads the messages (it could otherwise pass on nothing)
    assert not python_only, "advice naming only a Python API:\n" + "\n".join(python_only)
