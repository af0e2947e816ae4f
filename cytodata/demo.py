"""`cytodata demo`: the end-to-end pipeline on embedded synthetic screens.

synthetic screens -> manifest (weak labels, splits, ledger) -> image QC -> shards (WebDataset,
Zarr, OME-Zarr) -> one streamed epoch -> training (weak-label classifier, WS-DINO, DINO) -> embeddings
-> evaluation (NSC/NSCB with and without TVN vs random init and classical features) -> publish
-> verify -> ``report/index.html``.
Everything lands under one output folder, whose layout is printed at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .recipe import recipes_dir

#: the shipped demo recipe (``manifests/demo.yaml`` in a checkout, package data when installed)
RECIPE = recipes_dir() / "demo.yaml"


def make_sources(out: Path, seed: int) -> dict:
    """Write the synthetic BBBC021-, RxRx1- and folder-layout screens."""
    from .synthetic import write_demo_sources

    return write_demo_sources(out / "sources", seed=seed)


def build_manifest(out: Path, progress: bool):
    """Build the demo manifest from the shipped ``demo`` recipe (manifests/demo.yaml)."""
    from .manifest import build

    result = build(RECIPE, out / "manifest", params={"data": str(out / "sources")},
                   progress=progress)
    print(result.summary())
    return result


def run_image_qc(out: Path, workers: int):
    """Image QC over the manifest: ledger, report and montages."""
    from .curate.qc import run_qc

    qc = run_qc(out / "manifest", out / "qc", n_workers=workers)
    reasons = qc["reason"].value_counts()
    print(f"image QC: {len(qc)} images checked; failing: "
          + (", ".join(f"{k}={v}" for k, v in reasons.items()) or "none"))
    return qc


def write_shards(out: Path, workers: int, quick: bool = False) -> dict:
    """Shard the manifest into WebDataset tars, a Zarr training array and an OME-Zarr plate.

    The WebDataset set holds every source (own channels, 64 samples per shard so the demo has
    several shards); Zarr and OME-Zarr hold the BBBC021-layout screen, whose fields share one
    shape and a plate/well/site layout.
    """
    from . import schema, shards
    from .recipe import load_recipe

    qc = load_recipe(RECIPE).image_qc or None
    manifest = schema.read_manifest(out / "manifest")
    bbbc = manifest[manifest["source"] == "synth-bbbc021"]
    results = {
        "webdataset": shards.write(out / "manifest", out / "shards" / "webdataset",
                                   format="webdataset", codec="blosc-lz4", samples_per_shard=64,
                                   qc=qc, n_workers=workers, progress=False),
        # one source, one shape: what the training step and the evaluation read
        "bbbc021": shards.write(bbbc, out / "shards" / "bbbc021", format="webdataset",
                                codec="blosc-lz4", samples_per_shard=64, qc=qc, n_workers=workers,
                                progress=False),
    }
    results["zarr"] = shards.write(bbbc, out / "shards" / "zarr", format="zarr", qc=qc,
                                   n_workers=workers, progress=False)
    if not quick:
        results["ome-zarr"] = shards.write(bbbc, out / "shards" / "ome-zarr", format="ome-zarr",
                                           qc=qc, n_workers=workers, progress=False)
    for res in results.values():
        print(shards.format_summary(res))
    return results


def stream_epoch(out: Path) -> float:
    """Stream the WebDataset shards for one epoch through the loader; returns images/s."""
    import torch

    from .loaders import StreamingDataset

    # the fastest layout: 2 decode threads in this process, no worker processes (README, Benchmarks);
    # one sample at a time because the demo's sources differ in image size
    ds = StreamingDataset(out / "shards" / "webdataset", seed=0, shuffle=True, threads=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)
    t0 = time.time()
    n = 0
    for _sample in loader:
        n += 1
    rate = n / max(time.time() - t0, 1e-9)
    print(f"streamed one epoch: {n} samples at {rate:.0f} images/s (2 decode threads)")
    return rate


#: length and logging of every demo training run (--quick shortens it to QUICK_STEPS)
SHORT_RUN = {"steps": 150, "checkpoint_every": 50, "log_every": 10}

#: DINO views at native resolution on the demo's 128-px fields: 64-px global crops from ~64 px
#: ((64/128)^2 = 0.25 of the field), 32-px local crops from ~32 px (cell size is a phenotype)
DINO_VIEWS = {"data.crop": 64, "local_crop": 32, "global_scale": [0.22, 0.28],
              "local_scale": [0.055, 0.07]}

#: the demo's training runs: (name, shipped config, overrides, embed its random init too);
#: skipped if the method is missing. DINO and WS-DINO share one architecture and seed, so one
#: random-init row serves both (WS-DINO's Table 1: random init, DINO, WS-DINO)
TRAINING = (
    ("classifier", "classifier-tiny", {"data.crop": 64, "batch_size": 32, **SHORT_RUN}, True),
    ("ws-dino", "ws-dino-cells-demo", {"weak_label": "compound", **DINO_VIEWS, **SHORT_RUN,
                                 "data.normalize": "controls"}, True),
    ("dino", "dino-cells-demo", {**DINO_VIEWS, **SHORT_RUN, "data.normalize": "controls"}, False),
)
#: DINO runs are embedded twice: WS-DINO's CLS token and the mean of the patch tokens (DINO's
#: --avgpool_patchtokens), each next to the random init embedded the same way
EXTRA_POOLS = {"ws-dino": ("avg",), "dino": ("avg",)}
QUICK_STEPS = 30


def train_baselines(out: Path, seed: int, quick: bool, progress: bool) -> dict:
    """Train the classifier (and WS-DINO when registered) on the BBBC021-layout shards."""
    from .baselines import METHODS, train
    from .baselines.config import read_config_mapping

    runs = {}
    for name, config, overrides, _baseline in TRAINING:
        method = read_config_mapping(config)[0].get("method") if _has_config(config) else None
        if method is None or method not in METHODS:
            print(f"{name}: not available in this build; skipped")
            continue
        kw = dict(overrides, seed=seed, progress=progress, device="cpu")
        kw["data.train"] = str(out / "shards" / "bbbc021")
        if quick:
            kw.update(steps=QUICK_STEPS, checkpoint_every=QUICK_STEPS, log_every=5)
        t0 = time.time()
        runs[name] = train(config, out / "runs" / name, **kw)
        print(f"{name}: {kw['steps']} steps in {time.time() - t0:.1f} s -> {runs[name]}")
    return runs


def _has_config(name: str) -> bool:
    from .baselines.config import config_names

    return name in config_names()


def _slug(label: str) -> str:
    """File/folder name of a results row: ``ws-dino (trained, patch mean)`` -> ``ws-dino-trained-patch-mean``."""
    return label.replace(" ", "-").replace("(", "").replace(")", "").replace(",", "")


def embed_runs(out: Path, runs: dict) -> dict[str, pd.DataFrame]:
    """Embed the BBBC021-layout shards with every trained run and its random initialisation."""
    from .baselines import embed

    baseline = {name: flag for name, _config, _overrides, flag in TRAINING}
    tables = {}
    for name, run in runs.items():
        for pool in (None, *EXTRA_POOLS.get(name, ())):
            tag = "" if pool is None else ", patch mean"
            labels = [(f"{name} (trained{tag})", False)]
            if baseline.get(name, True):
                labels.append((f"{name} (random init{tag})", True))
            for label, random_init in labels:
                slug = _slug(label)
                path = embed(run, out / "shards" / "bbbc021", out / "embeddings" / f"{slug}.parquet",
                             device="cpu", progress=False, random_init=random_init, pool=pool)
                tables[label] = pd.read_parquet(path)
    return tables


def evaluate_embeddings(out: Path, seed: int, trained: dict[str, pd.DataFrame] | None = None) -> dict:
    """Intensity/texture features and the trained/random backbones -> BBBC021 protocols.

    Each embedding is scored with TVN (``bbbc021-ando``: TVN on DMSO, NSC and NSCB) and without
    (``bbbc021-cytoimagenet``: z-score only, NSC), plus 11-NN and mAP on MOA.
    """
    from . import schema
    from .evaluate import run_protocol
    from .evaluate.features import intensity_texture_features
    from .evaluate.report import write_report
    from .loaders import StreamingDataset

    ds = StreamingDataset(out / "shards" / "bbbc021", shuffle=False)
    images_by_key = {s["__key__"]: s["image"].numpy() for s in ds}
    manifest = schema.read_manifest(out / "manifest")
    meta = manifest[manifest["key"].isin(images_by_key)].reset_index(drop=True)
    feats = np.stack([intensity_texture_features(images_by_key[k]) for k in meta["key"]])
    embeddings = {"intensity-texture": pd.DataFrame(feats, columns=[f"f{i}" for i in range(feats.shape[1])])
                  .assign(key=meta["key"].to_numpy())}
    for name, table in (trained or {}).items():
        cols = [c for c in table.columns if c.startswith("emb_")]
        embeddings[name] = table.set_index("key").loc[meta["key"], cols].reset_index()
    results, lines = {}, ["| embeddings | NSC (TVN) | NSCB (TVN) | NSC (no TVN) | 11-NN (MOA) | mAP (MOA) |",
                          "|---|---|---|---|---|---|"]
    for name, emb in embeddings.items():
        emb = emb[["key"] + [c for c in emb.columns if c != "key"]]
        ando = run_protocol("bbbc021-ando", emb, meta)
        plain = run_protocol("bbbc021-cytoimagenet", emb, meta)
        has_moa = meta["moa"].notna().to_numpy()
        knn = run_protocol("knn", emb[has_moa].reset_index(drop=True),
                           meta[has_moa].reset_index(drop=True), label="moa", k=11)
        # z-scores against DMSO: MAD inflates features that are constant in the controls
        mapr = run_protocol("map", emb, meta, seed=seed, null_size=2000, normalize="standardize")
        merged = {**ando, "protocol": "demo: bbbc021-ando + knn + map",
                  "metrics": {**ando["metrics"], **knn["metrics"],
                              **{f"map_{k}": v for k, v in mapr["metrics"].items()}},
                  "notes": ando["notes"] + knn["notes"] + mapr["notes"]}
        slug = _slug(name)
        write_report(merged, out / "report" / slug)
        m = merged["metrics"]
        nscb = m.get("nscb")
        map_moa = next((v for k, v in m.items() if k.startswith("map_") and "moa" in k), None)
        row = {"nsc": m["nsc"].accuracy, "nscb": nscb.accuracy if nscb is not None else float("nan"),
               "nsc_no_tvn": plain["metrics"]["nsc"].accuracy, "knn": m["knn"].accuracy,
               "map": getattr(map_moa, "mean_map", float("nan")), "report": f"{slug}/"}
        results[name] = dict(row, result=merged)
        lines.append(f"| [{name}]({slug}/) | {row['nsc']:.3f} | {row['nscb']:.3f} | "
                     f"{row['nsc_no_tvn']:.3f} | {row['knn']:.3f} | {row['map']:.3f} |")
    summary = out / "report" / "summary.md"
    summary.write_text("# Demo evaluation (synthetic BBBC021-layout screen)\n\n" + "\n".join(lines)
                       + "\n\nNSC/NSCB: nearest-neighbour MOA accuracy over treatment profiles, "
                       "not counting the same compound (NSC) or the same compound and batch (NSCB). "
                       "`ws-dino (random init)` is the untrained baseline of both DINO rows (one ViT, "
                       "one seed), as in WS-DINO's Table 1. DINO rows embed the CLS token (WS-DINO's "
                       "evaluation) or, marked `patch mean`, the mean of the final patch tokens "
                       "(DINO's --avgpool_patchtokens), each against the random init embedded the "
                       "same way. `benchmarks/dino_bbbc021.py` runs the longer single-cell "
                       "comparison (three seeds).\n")
    print("\n".join(lines))
    return results


def publish_and_verify(out: Path) -> dict | None:
    """Publish the BBBC021-layout shard set (card, Croissant, checksums) and verify it."""
    import importlib.util

    if importlib.util.find_spec("cytodata.publish") is None:
        print("publish: not available in this build; skipped")
        return None
    from . import publish

    dest = out / "published"
    publish.publish(out / "shards" / "bbbc021", dest,
                    name="cytodata-demo-bbbc021-layout", overwrite=True,
                    description="Synthetic BBBC021-layout screen written by `cytodata demo`.",
                    licenses={"synth-bbbc021": "BSD-3-Clause"},
                    citations={"synth-bbbc021": "cytodata synthetic screens (cytodata.synthetic)"})
    problems = publish.verify(dest)
    print(f"published {dest}: verify {'OK' if not problems else problems}")
    return {"dest": dest, "problems": problems}


def run(out: "str | Path" = "demo_output", *, seed: int = 0, workers: int = 2,
        progress: bool = True, quick: bool = False) -> dict:
    """Run the whole demo into ``out``; returns the per-step results.

    ``quick``: fewer training steps and no OME-Zarr export (a couple of minutes on 2 cores).
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    steps = [
        ("sources", "synthetic screens", lambda: make_sources(out, seed)),
        ("manifest", "manifest: harmonize, weak labels, splits, ledger",
         lambda: build_manifest(out, progress)),
        ("qc", "image QC", lambda: run_image_qc(out, workers)),
        ("shards", "shards: WebDataset, Zarr" + ("" if quick else ", OME-Zarr") + " (dask)",
         lambda: write_shards(out, workers, quick=quick)),
        ("stream", "stream one epoch", lambda: stream_epoch(out)),
        ("train", "train: weak-label classifier (+ WS-DINO) on the BBBC021-layout shards",
         lambda: train_baselines(out, seed, quick, progress)),
        ("embed", "embed: trained and random-init backbones", lambda: embed_runs(out, results["train"])),
        ("evaluate", "evaluate: NSC/NSCB with and without TVN, kNN, mAP",
         lambda: evaluate_embeddings(out, seed, results["embed"])),
        ("publish", "publish + verify", lambda: publish_and_verify(out)),
        ("report", "report", lambda: write_index(out, results)),
    ]
    t = {}
    for i, (name, title, fn) in enumerate(steps, 1):
        print(f"\n== {i}/{len(steps)} {title}", flush=True)
        t0 = time.time()
        results[name] = fn()
        t[name] = time.time() - t0
    rate = results["stream"]
    print("\n== outputs in", out)
    for sub in ("sources", "manifest", "qc", "shards", "runs", "embeddings", "report", "published"):
        if (out / sub).exists():
            print(f"  {out / sub}")
    print("timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in t.items()))
    print(f"\nreport: {results['report']}")
    return {"out": out, "images_per_s": rate, "timings": t, "results": results}


def write_index(out: Path, results: dict) -> Path:
    """``report/index.html``: results table, training curves, label distribution, QC, PCA."""
    from .demo_report import write_index_html

    return write_index_html(out, results)


def _cmd(args) -> int:
    run(args.out, seed=args.seed, workers=args.workers, progress=not args.quiet, quick=args.quick)
    return 0


def register(subparsers) -> None:
    """Add ``cytodata demo``."""
    p = subparsers.add_parser("demo", help="run the end-to-end demo on synthetic screens",
                              description=__doc__)
    p.add_argument("-o", "--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic screens and sampling")
    p.add_argument("--workers", type=int, default=2, help="dask workers / loader workers")
    p.add_argument("--quick", action="store_true",
                   help="short training runs, no OME-Zarr export (about 2 minutes)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd)
