"""The end-to-end demo (what `make demo` runs) on the embedded synthetic screens, and its report."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
import zarr

from cytodata import demo
from cytodata.demo_report import run_collapse, status_of, write_index_html
from cytodata.shards import decode


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One quick demo for every test here (the demo is the slow part)."""
    return demo.run(tmp_path_factory.mktemp("demo"), seed=0, workers=2, progress=False, quick=True)


def test_demo_end_to_end(demo_run):
    res = demo_run
    out = res["out"]
    prov = json.loads((out / "manifest" / "provenance.json").read_text())
    ledger = pd.read_parquet(out / "manifest" / "ledger.parquet")
    manifest = pd.read_parquet(out / "manifest" / "manifest.parquet")
    assert prov["counts"]["inputs"] == len(manifest) + len(ledger)
    assert "missing file" in set(ledger["reason"])
    qc = pd.read_parquet(out / "qc" / "qc.parquet")
    assert (qc["reason"] == "truncated").sum() == 1
    # plain webdataset reads the shards; every sample decodes at full bit depth
    tars = sorted(str(p) for p in (out / "shards" / "webdataset").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    index = pd.read_parquet(out / "shards" / "webdataset" / "index.parquet")
    assert len(samples) == len(index) == len(manifest) - 1          # the truncated TIFF is out
    image, meta = decode(samples[0])
    assert image.dtype in (np.uint16, np.uint8) and image.ndim == 3
    # a finished Zarr set holds no unwritten rows: the truncated TIFF's row is cut from the array
    assert zarr.open_array(str(out / "shards" / "zarr" / "image"), mode="r").shape[0] == 190
    assert len(pd.read_parquet(out / "shards" / "zarr" / "index.parquet")) == 190
    assert res["images_per_s"] > 0
    summary = (out / "report" / "summary.md").read_text()
    assert "intensity-texture" in summary
    metrics = json.loads((out / "report" / "intensity-texture" / "metrics.json").read_text())
    assert 0 <= metrics["metrics"]["nsc"]["accuracy"] <= 1
    # the demo runs on the hard screen and says so, in the summary and on the page
    assert json.loads((out / "sources" / "screen.json").read_text())["difficulty"] == "hard"
    assert summary.startswith("# Demo evaluation (hard synthetic BBBC021-layout screen)")
    assert "MOAs differ only in cell morphology" in summary
    # the whole mission: a trained run, its embeddings, and one report page
    run = out / "runs" / "classifier"
    assert (run / "checkpoints" / "last.pt").exists() and (run / "metrics.jsonl").exists()
    emb = pd.read_parquet(out / "embeddings" / "classifier-trained.parquet")
    assert len(emb) == len(pd.read_parquet(out / "shards" / "bbbc021" / "index.parquet"))
    index_html = (out / "report" / "index.html").read_text()
    assert "on the hard synthetic BBBC021-layout screen" in index_html
    assert "classifier (trained)" in index_html and "classifier (random init)" in index_html
    # WS-DINO's Table 1 rows: one random-init ViT serves DINO and WS-DINO (same model and seed)
    for row in ("ws-dino (random init)", "dino (trained)", "ws-dino (trained)",
                "ws-dino (random init, patch mean)", "dino (trained, patch mean)",
                "ws-dino (trained, patch mean)"):
        assert f"[{row}]" in summary, row
    assert "[dino (random init)]" not in summary and "[dino (random init, patch mean)]" not in summary
    assert (out / "report" / "training.png").exists()
    assert (out / "report" / "labels.png").exists()
    # published: Croissant validates with mlcroissant, verify catches a truncated and a flipped shard
    import mlcroissant as mlc

    from cytodata.publish import verify

    pub = out / "published"
    mlc.Dataset(jsonld=str(pub / "croissant.json"))      # raises on validation errors
    assert verify(pub) == []
    shards_pub = sorted(pub.rglob("shard-*.tar"))
    assert len(shards_pub) >= 2
    data = shards_pub[0].read_bytes()
    shards_pub[0].write_bytes(data[: len(data) // 2])
    flipped = bytearray(shards_pub[1].read_bytes())
    flipped[len(flipped) // 3] ^= 0xFF
    shards_pub[1].write_bytes(bytes(flipped))
    problems = verify(pub)
    assert any(shards_pub[0].name in p and "truncated" in p for p in problems), problems
    assert any(shards_pub[1].name in p and "altered" in p for p in problems), problems
    # trained embeddings beat the same backbone at random initialisation on NSC
    scores = res["results"]["evaluate"]
    assert scores["classifier (trained)"]["nsc"] > scores["classifier (random init)"]["nsc"]


SCORE_CELL = re.compile(r"<b>(\d\.\d\d)</b><br><span class='ci'>\[(\d\.\d\d), (\d\.\d\d)\] "
                        r"n=(\d+) (treatments|images)<br>chance (\d\.\d\d)</span>")


def _result_rows(index_html: str) -> list[str]:
    table = index_html.split("<table class='results'>", 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1])


def test_every_score_in_the_report_has_n_interval_and_chance(demo_run):
    out = demo_run["out"]
    index_html = (out / "report" / "index.html").read_text()
    rows = _result_rows(index_html)
    evaluation = demo_run["results"]["evaluate"]
    assert len(rows) == len(evaluation) >= 7
    for row in rows:
        cells = re.findall(r"<td>(.*?)</td>", row)
        scores = cells[4:]
        assert len(scores) == 6, row
        for cell in scores:
            m = SCORE_CELL.fullmatch(cell)
            assert m or cell == "<span class='na'>not computed</span>", cell
            if m:
                score, low, high, n, _, chance = m.groups()
                assert float(low) <= float(score) <= float(high) and int(n) > 0 and 0 <= float(chance) <= 1
        # the four NSC/k-NN scores of every row are computed, never left blank
        assert all(SCORE_CELL.fullmatch(c) for c in (scores[0], scores[2], scores[3], scores[4])), row
    summary = (out / "report" / "summary.md").read_text()
    for name in evaluation:
        line = next(x for x in summary.splitlines() if x.startswith(f"| [{name}]"))
        assert line.count("chance") >= 5 and line.count("n=") >= 5, line


def test_each_trained_row_names_the_config_it_ran(demo_run):
    index_html = (demo_run["out"] / "report" / "index.html").read_text()
    rows = {re.search(r">([^<]+)</a>", r).group(1): re.findall(r"<td>(.*?)</td>", r)[2]
            for r in _result_rows(index_html)}
    # the demo's DINO rows are the project's own settings, never shown under a paper recipe's name
    assert rows["ws-dino (trained)"] == "ws-dino-cells-demo" and rows["dino (trained)"] == "dino-cells-demo"
    assert rows["classifier (trained)"] == "classifier-tiny" and rows["intensity-texture"] == "-"
    assert "project's own settings" in index_html


def test_knn_excludes_the_querys_own_compound_and_says_so(demo_run):
    out = demo_run["out"]
    index_html = (out / "report" / "index.html").read_text()
    assert "11-NN MOA, own compound excluded" in index_html
    compound = pd.read_parquet(out / "manifest-bbbc021" / "manifest.parquet").set_index("key")["compound"]
    for name, r in demo_run["results"]["evaluate"].items():
        knn = r["result"]["metrics"]["knn"]
        assert "own 'compound' excluded" in knn.definition
        pred = knn.predictions
        # no image's nearest neighbour is an image of its own compound
        neighbour_keys = pred["key"].loc[pred["neighbour"]].to_numpy()
        same = compound.reindex(pred["key"]).to_numpy() == compound.reindex(neighbour_keys).to_numpy()
        assert len(pred) == knn.total and not same.any(), name


def test_held_out_split_scores_the_models_that_saw_labels(demo_run):
    evaluation = demo_run["results"]["evaluate"]
    for name in ("classifier (trained)", "ws-dino (trained)"):
        r = evaluation[name]
        assert r["labels_in_training"] and "compound" in r["labels_in_training"]
        held, full = r["scores"]["nsc_held_out"], r["scores"]["nsc_no_tvn"]
        assert held is not None and 0 < held["n"] <= full["n"], name
    assert evaluation["dino (trained)"]["labels_in_training"] is None
    assert "which no training run saw" in (demo_run["out"] / "report" / "index.html").read_text()


def test_report_links_open_rendered_reports_and_shows_qc_montages(demo_run):
    out = demo_run["out"]
    report = out / "report"
    index_html = (report / "index.html").read_text()
    links = re.findall(r'href="([^"]+)"', index_html)
    assert len(links) == len(demo_run["results"]["evaluate"])
    for link in links:
        assert link.endswith("/report.html") and (report / link).is_file(), link
        assert "<h1>" in (report / link).read_text()
    assert (report / "qc_montage.png").stat().st_size > 10_000
    # the truncated TIFF QC failed cannot be drawn: the report names it instead
    assert "QC FAILED: truncated" in index_html and "cannot be decoded" in index_html
    # fewer, larger plots: one figure per view instead of one per embedding and colouring
    pngs = re.findall(r'<img src="([^"]+)"', index_html)
    assert len(pngs) <= 8 and {"scores.png", "training.png", "pca_moa.png", "qc_montage.png"} <= set(pngs)


def test_publish_with_the_demo_manifest(demo_run, tmp_path):
    from cytodata.cli import main

    out = demo_run["out"]
    dest = tmp_path / "pub"
    code = main(["publish", str(out / "shards" / "bbbc021"), "-o", str(dest), "--manifest",
                 str(out / "manifest-bbbc021"), "--name", "demo-bbbc021", "-q"])
    assert code in (0, None)
    card = (dest / "README.md").read_text()
    assert "Recipe `demo`" in card
    # the subset's provenance names the full manifest it came from
    prov = json.loads((out / "manifest-bbbc021" / "provenance.json").read_text())
    assert prov["subset_of"]["rows"] == "source == 'synth-bbbc021'"
    assert prov["counts"]["kept"] == len(pd.read_parquet(out / "manifest-bbbc021" / "manifest.parquet"))


def _metrics(run, rows):
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_a_collapsed_run_is_labelled_collapsed_never_trained(tmp_path):
    ln_k = float(np.log(256))
    flat = [{"step": s, "loss": 0.99 * ln_k, "loss_over_ln_k": 0.99, "teacher_entropy": 0.995 * ln_k,
             "kl_teacher_student": 0.001 * ln_k, "images_per_s": 10.0, "data_wait": 0.1}
            for s in range(10, 160, 10)]
    healthy = [dict(r, loss=0.6 * ln_k, loss_over_ln_k=0.6, teacher_entropy=0.5 * ln_k,
                    kl_teacher_student=0.1 * ln_k) for r in flat]
    sharp = [dict(r, loss=0.3 * ln_k, loss_over_ln_k=0.3, teacher_entropy=0.01 * ln_k,
                  kl_teacher_student=0.29 * ln_k) for r in flat]
    # a loss near ln K while KL stays well above zero is a run that still learns (measured: the demo's
    # ws-dino-cells-demo run ended at loss 0.94 ln K, teacher entropy 0.79, KL 0.15 ln K)
    learning = [dict(r, loss=0.94 * ln_k, loss_over_ln_k=0.94, teacher_entropy=0.79 * ln_k,
                     kl_teacher_student=0.15 * ln_k) for r in flat]
    loss_only = [{k: v for k, v in r.items() if k not in ("teacher_entropy", "kl_teacher_student")}
                 for r in flat]
    assert not run_collapse(_metrics(tmp_path / "learning", learning))["collapsed"]
    assert run_collapse(_metrics(tmp_path / "loss-only", loss_only))["kind"] == "uniform"
    clf = [{"step": s, "loss": 2.0 - s / 100, "images_per_s": 10.0, "data_wait": 0.1} for s in range(10, 60, 10)]
    runs = {"dino": _metrics(tmp_path / "dino", flat), "ws-dino": _metrics(tmp_path / "ws", healthy),
            "sharp": _metrics(tmp_path / "sharp", sharp), "classifier": _metrics(tmp_path / "clf", clf),
            "flagged": _metrics(tmp_path / "flagged", [dict(r, collapse=None) for r in flat])}
    assert run_collapse(runs["dino"])["collapsed"] and run_collapse(runs["dino"])["kind"] == "uniform"
    assert not run_collapse(runs["ws-dino"])["collapsed"] and run_collapse(runs["ws-dino"])["checked"]
    assert run_collapse(runs["sharp"])["kind"] == "one-prototype"
    assert run_collapse(runs["classifier"]) == {"collapsed": False, "kind": None, "checked": False,
                                                "evidence": "", "source": None}
    # the engine's summary row (no loss) with the run's own verdict is taken at its word
    said = _metrics(tmp_path / "said", healthy + [{"step": 150, "epoch": 2, "summary": True, "collapsed": True,
                                                   "collapse": "uniform", "collapse_evidence": {"rule": "r"}}])
    assert run_collapse(said)["collapsed"] and run_collapse(said)["kind"] == "uniform"
    assert run_collapse(said)["source"] == "run"
    # a run that logs its own verdict is taken at its word
    assert not run_collapse(runs["flagged"])["collapsed"] and run_collapse(runs["flagged"])["source"] == "run"
    assert status_of({"kind": "trained", "run": "dino"}, run_collapse(runs["dino"])).startswith("collapsed")
    assert status_of({"kind": "random init", "run": "dino"}, run_collapse(runs["dino"])) == "random init"
    # the page: the collapsed run's row and its training panel say collapsed, not trained
    score = {"score": 0.5, "ci_low": 0.3, "ci_high": 0.7, "n": 20, "unit": "treatments", "chance": 0.2}
    evaluation = {f"{n} (trained)": {"kind": "trained", "run": n, "labels_in_training": None,
                                     "report": f"{n}/report.html", "scores": {"nsc": score}}
                  for n in ("dino", "ws-dino")}
    index = write_index_html(tmp_path / "out", {"evaluate": evaluation,
                                                "train": {"dino": runs["dino"], "ws-dino": runs["ws-dino"]}})
    rows = _result_rows(index.read_text())
    dino_row = next(r for r in rows if "dino (trained)</a>" in r and "ws-dino" not in r)
    ws_row = next(r for r in rows if "ws-dino (trained)</a>" in r)
    assert "collapsed (uniform)" in dino_row and ">trained<" not in dino_row
    assert ">trained<" in ws_row and "collapsed" not in ws_row
    assert "COLLAPSED" not in index.read_text()          # the figure's titles are in the PNG, not the HTML
    assert (tmp_path / "out" / "report" / "training.png").exists()
