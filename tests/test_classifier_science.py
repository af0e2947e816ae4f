"""Scientific check (issue 16): the weak-label classifier trained on single cells with the
treatment as label beats the same backbone at random initialisation on NSC (bbbc021-ando).

Runs ``benchmarks/classifier_bbbc021.py`` end to end on its small synthetic BBBC021-layout screen:
synthetic fields -> manifest -> `cytodata cells` -> shards -> train -> embed (cells averaged per
field) -> TVN -> NSC/NSCB. The MOA is never shown to the model.
"""

from __future__ import annotations

import math

import pandas as pd


def test_trained_single_cell_classifier_beats_random_init(tmp_path, benchmark_module):
    bench = benchmark_module("classifier_bbbc021")
    results = bench.run(tmp_path, torch_threads=1)   # the benchmark's defaults: 200 steps, batch 64
    trained, random = results["trained"], results["random"]
    # the pipeline really ran on cells: per-field rows, cells from every field, loss went down
    assert trained["fields"] == random["fields"] == 288
    assert results["n_cells"] > 1500 and results["last_loss"] < results["first_loss"] - 1.0
    cells = pd.read_parquet(tmp_path / "cells" / "manifest.parquet")
    assert cells["label"].str.fullmatch(r".+@[0-9.e+-]+").all()
    assert (cells["parent_id"] != cells["image_id"]).all()
    # the science, scored as the paper-faithful bbbc021-ando (TVN, then CORAL per batch):
    # measured resnet10t 200 steps 0.917 / 1.000 vs random init 0.708 / 0.881 (NSC / NSCB)
    assert not math.isnan(trained["nscb"]) and not math.isnan(random["nscb"])
    assert trained["nsc"] >= random["nsc"] + 0.15, bench.table(results)
    assert trained["nscb"] >= random["nscb"] + 0.08, bench.table(results)
