"""The paper protocols by name on the real BBBC021 metadata; interop and input errors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from test_evaluate_helpers import bbbc021_metadata, random_embeddings, simulate_screen

from cytodata.errors import EvaluationError
from cytodata.evaluate import run_protocol
from cytodata.evaluate._checks import EvaluationWarning
from cytodata.evaluate.interop import from_metadata_names, to_metadata_names
from cytodata.evaluate.matching import median_batch, nscb


@pytest.fixture(scope="module")
def bbbc021():
    meta = bbbc021_metadata()
    return meta, random_embeddings(meta)


def test_ws_dino_scores_92_nscb_treatments_on_real_metadata(bbbc021):
    meta, emb = bbbc021
    res = run_protocol("bbbc021-ws-dino", emb, meta)
    m = res["metrics"]
    assert m["nsc"].total == 103 and m["nscb"].total == 92
    assert res["counts"]["nscb_scored"] == 92 and res["counts"]["treatments_profiled"] == 103
    # taxol 0.3 (in all ten weeks) is scored with its median batch (Week5)
    preds = m["nscb"].predictions
    assert "taxol@0.3" in preds.index
    assert not m["nscb"].unmatched
    assert (preds["neighbour_batch"] != "Week5").loc["taxol@0.3"]
    ex = m["nscb"].excluded
    assert len(ex) == 11 and ex["reason"].str.contains("only in batch").all()
    assert {m_.lower() for m_ in ex["moa"]} == {"cholesterol-lowering", "kinase inhibitors"}
    # names, not row numbers, everywhere a reader looks
    assert preds["neighbour"].str.contains("@").all()
    assert any("92 of 103" in n for n in res["notes"])
    # per-(treatment, plate) mean then median: a 3-plate treatment has n_plates == 3
    assert res["profiles"].loc["taxol@0.3", "n_plates"] > 3


def test_ando_drops_taxol_with_a_reason_and_ljosa_runs(bbbc021):
    meta, emb = bbbc021
    ando = run_protocol("bbbc021-ando", emb, meta)
    b = ando["metrics"]["nscb"]
    assert b.total == 91 and b.unmatched == ["taxol@0.3"]
    reason = b.excluded.set_index("profile").loc["taxol@0.3", "reason"]
    assert "no admissible neighbour" in reason
    lj = run_protocol("bbbc021-ljosa", emb, meta)
    assert lj["metrics"]["nsc"].total == 103
    assert lj["profiles"]["n_images"].min() >= 6
    assert "Ljosa" in " ".join(lj["notes"])


def test_median_batch_rule():
    assert median_batch(frozenset(f"Week{i}" for i in range(1, 11))) == "Week5"
    assert median_batch(frozenset({"b", "a", "c"})) == "b"
    table, cols = simulate_screen(seed=1)
    trt = table[table["compound"] != "dmso"]
    prof = trt.groupby(["compound"], as_index=False).agg(
        {**{c: "mean" for c in cols}, "moa": "first", "batch": "first"})
    prof.loc[0, "batch"] = "B0|B1|B2"  # one profile in every batch
    with pytest.raises(EvaluationError, match="unknown multi_batch"):
        nscb(prof, features=cols, multi_batch="mode")
    anyb = nscb(prof, features=cols, multi_batch="any")
    med = nscb(prof, features=cols, multi_batch="median")
    assert anyb.total == len(prof) - 1 and med.total == len(prof)
    assert med.predictions.loc[0, "neighbour_batch"] != "B1"


def test_ando_coral_step_equals_a_direct_implementation():
    from scipy.linalg import fractional_matrix_power, sqrtm

    from cytodata.evaluate import aggregate
    from cytodata.evaluate.normalize import TVN

    table, cols = simulate_screen(seed=2, dim=6)
    emb, meta = table[["key", *cols]], table.drop(columns=cols)
    res = run_protocol("bbbc021-ando", emb, meta)
    # by hand: TVN on all DMSO images, then per batch (x - mu_b) Cb^-1/2 Ct^1/2 + mu_t
    x = table[cols].to_numpy()
    dmso = (table["compound"] == "dmso").to_numpy()
    z = TVN().fit(x[dmso]).transform(x)
    ct = np.cov(z[dmso], rowvar=False) + np.eye(len(cols))
    out = np.empty_like(z)
    for b in table["batch"].unique():
        rows = (table["batch"] == b).to_numpy()
        cb = np.cov(z[rows & dmso], rowvar=False) + np.eye(len(cols))
        a = np.real(fractional_matrix_power(cb, -0.5)) @ np.real(sqrtm(ct))
        out[rows] = (z[rows] - z[rows & dmso].mean(0)) @ a + z[dmso].mean(0)
    by_hand = table.drop(columns=cols).join(pd.DataFrame(out, columns=cols))
    w = aggregate(by_hand[~dmso], features=cols, by=["plate", "well"],
                  carry=["compound", "concentration"])
    t = aggregate(w, features=cols, by=["compound", "concentration"], how="median")
    np.testing.assert_allclose(res["profiles"][cols].to_numpy(), t[cols].to_numpy(), atol=1e-8)


def test_pycytominer_table_with_metadata_prefix(bbbc021):
    meta, emb = bbbc021
    sub = meta[meta["batch"].isin(["Week1", "Week2", "Week3", "Week4"])]
    one = sub.merge(emb, on="key")
    feats = [c for c in one.columns if c.startswith("emb_")]
    pyc = to_metadata_names(one[["compound", "concentration", "moa", "batch", "plate",
                                 "well", "image_id", *feats]], feats)
    pyc = pyc.rename(columns={"Metadata_Compound": "Metadata_pert_iname"})
    pyc.columns = [c.replace("emb_", "Cells_feature_") for c in pyc.columns]
    assert "Metadata_Plate" in pyc.columns and "Metadata_Moa" in pyc.columns
    back = from_metadata_names(pyc)
    assert {"compound", "plate", "moa", "image_id"} <= set(back.columns)
    res = run_protocol("bbbc021-ando", pyc, pyc, metadata_prefix="Metadata_",
                       id_column="Metadata_ImageId")
    direct = run_protocol("bbbc021-ando", emb[emb["key"].isin(sub["key"])], sub)
    assert res["metrics"]["nsc"].correct == direct["metrics"]["nsc"].correct
    assert res["metrics"]["nsc"].total == direct["metrics"]["nsc"].total


def test_input_errors_name_columns_rows_and_coverage(bbbc021):
    meta, emb = bbbc021
    bad = emb.copy()
    bad["emb_05"] = np.nan
    with pytest.raises(EvaluationError, match="emb_05.*every row"):
        run_protocol("bbbc021-ws-dino", bad, meta)
    dup = pd.concat([meta, meta.iloc[[7]]], ignore_index=True)
    with pytest.raises(EvaluationError, match=f"{meta.loc[7, 'key']}.*more than once"):
        run_protocol("bbbc021-ws-dino", emb, dup)
    half = emb[meta["batch"] != "Week10"]
    with pytest.warns(EvaluationWarning, match=f"cover {len(half)} of 13200"):
        res = run_protocol("bbbc021-ws-dino", half, meta)
    assert res["counts"]["rows_scored"] == len(half) and res["counts"]["rows_expected"] == 13200
    flat = emb.assign(emb_03=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_protocol("bbbc021-cytoimagenet", flat, meta)
    assert any("emb_03" in str(w.message) and "constant" in str(w.message) for w in caught)


def test_feature_selection_in_protocols_drops_redundant_columns():
    table, cols = simulate_screen(seed=0)
    for i in range(4):  # four exact copies of one column weigh it five times in cosine
        table[f"copy{i}"] = table[cols[0]]
    feats = [*cols, *(f"copy{i}" for i in range(4))]
    emb, meta = table[["key", *feats]], table.drop(columns=feats)
    mapped = run_protocol("map", emb, meta, null_size=300)
    assert mapped["counts"]["features_selected"] == len(cols)
    assert any("correlation_threshold" in n for n in mapped["notes"])
    ws = run_protocol("bbbc021-ws-dino", emb, meta, feature_select=["correlation_threshold"])
    clones = {cols[0], *(f"copy{i}" for i in range(4))}
    assert len(clones & set(ws["features"])) == 1  # one of the five identical columns kept
    assert any("by correlation_threshold" in n for n in ws["notes"])
    with pytest.raises(EvaluationError, match="unknown feature selection operation"):
        run_protocol("bbbc021-ws-dino", emb, meta, feature_select=["pca"])


def test_one_table_without_ids_refuses_duplicate_rows():
    table, cols = simulate_screen(seed=3)
    one = table.drop(columns=["key", "image_id"])
    res = run_protocol("bbbc021-ws-dino", one, one)
    assert res["metrics"]["nsc"].total == 12
    twice = pd.concat([one, one.iloc[[4]]], ignore_index=True)
    with pytest.raises(EvaluationError, match="rows 4, 144.*exact duplicates"):
        run_protocol("bbbc021-ws-dino", twice, twice)
