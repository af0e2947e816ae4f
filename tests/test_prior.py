"""The per-plate, plate-group and per-experiment priors of ``cytodata predict`` (DeepNoise)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytodata.baselines.predict import predictions


def _two_site_screen(plates: int = 3, k: int = 12, wells: int = 6, seed: int = 0):
    """Index rows of ``plates`` plates, ``wells`` wells each (distinct classes of ``k``), two
    sites per well (RxRx1: 277 wells of 1,108 classes, so a plate's sites fit distinct classes)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(plates):
        for w, c in enumerate(rng.permutation(k)[:wells]):
            for site in (1, 2):
                rows.append(dict(key=f"P{p}_W{w}_s{site}", plate=f"P{p}", well=f"W{w:02d}",
                                 site=site, batch="E1", label=f"c{c}"))
    return pd.DataFrame(rows), [f"c{i}" for i in range(k)]


def _perfect(meta: pd.DataFrame, classes: list[str]) -> np.ndarray:
    probs = np.full((len(meta), len(classes)), 0.01)
    probs[np.arange(len(meta)), [classes.index(v) for v in meta["label"]]] = 0.95
    return probs / probs.sum(1, keepdims=True)


def test_defaults_keep_a_perfect_classifier_at_one_on_two_site_wells():
    meta, classes = _two_site_screen()
    table, summary = predictions(meta, _perfect(meta, classes), classes, label="label")
    assert summary["accuracy_argmax"] == 1.0
    assert summary["accuracy"] == 1.0                   # the prior must not split a well's sites
    assert summary["per"] == "well" and len(table) == 18   # wells, sites averaged
