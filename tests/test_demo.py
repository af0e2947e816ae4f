"""The end-to-end demo (what `make demo` runs) on the embedded synthetic screens."""

import json

import numpy as np
import pandas as pd
import webdataset as wds
import zarr

from cytodata import demo
from cytodata.shards import decode


def test_demo_end_to_end(tmp_path):
    res = demo.run(tmp_path, seed=0, workers=2, progress=False, quick=True)
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
    # Zarr rows are planned before reading; the failed row stays empty and is not indexed
    assert zarr.open_array(str(out / "shards" / "zarr" / "image"), mode="r").shape[0] == 191
    assert len(pd.read_parquet(out / "shards" / "zarr" / "index.parquet")) == 190
    assert res["images_per_s"] > 0
    summary = (out / "report" / "summary.md").read_text()
    assert "intensity-texture" in summary
    metrics = json.loads((out / "report" / "intensity-texture" / "metrics.json").read_text())
    # the synthetic MOAs are separable by design: simple features must find them
    assert metrics["metrics"]["nsc"]["accuracy"] > 0.6
    # the whole mission: a trained run, its embeddings, and one report page
    run = out / "runs" / "classifier"
    assert (run / "checkpoints" / "last.pt").exists() and (run / "metrics.jsonl").exists()
    emb = pd.read_parquet(out / "embeddings" / "classifier-trained.parquet")
    assert len(emb) == len(pd.read_parquet(out / "shards" / "bbbc021" / "index.parquet"))
    index_html = (out / "report" / "index.html").read_text()
    assert "classifier (trained)" in index_html and "classifier (random init)" in index_html
    # WS-DINO's Table 1 rows: one random-init ViT serves DINO and WS-DINO (same model and seed)
    for row in ("ws-dino (random init)", "dino (trained)", "ws-dino (trained)",
                "ws-dino (random init, patch mean)", "dino (trained, patch mean)",
                "ws-dino (trained, patch mean)"):
        assert f"[{row}]" in summary, row
    assert "[dino (random init)]" not in summary and "[dino (random init, patch mean)]" not in summary
    assert (out / "report" / "training-classifier.png").exists()
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
