"""`cytodata demo`: the end-to-end pipeline on embedded synthetic screens.

synthetic screens -> manifest (weak labels, splits, ledger) -> image QC -> shards (WebDataset,
Zarr, OME-Zarr) -> one streamed epoch -> evaluation report (NSC/NSCB, kNN, mAP).
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


def write_shards(out: Path, workers: int) -> dict:
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
        "zarr": shards.write(bbbc, out / "shards" / "zarr", format="zarr", qc=qc,
                             n_workers=workers, progress=False),
        "ome-zarr": shards.write(bbbc, out / "shards" / "ome-zarr", format="ome-zarr", qc=qc,
                                 n_workers=workers, progress=False),
    }
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


def evaluate_embeddings(out: Path, seed: int) -> dict:
    """Per-channel intensity/texture features and a random timm backbone -> BBBC021 protocols."""
    from . import schema
    from .evaluate import run_protocol
    from .evaluate.features import intensity_texture_features, timm_embeddings
    from .evaluate.report import write_report
    from .loaders import StreamingDataset

    # images come back from the shards: what passed QC, at full bit depth
    ds = StreamingDataset(out / "shards" / "webdataset", shuffle=False)
    images_by_key = {s["__key__"]: s["image"].numpy() for s in ds
                     if s["meta"]["source"] == "synth-bbbc021"}
    manifest = schema.read_manifest(out / "manifest")
    meta = manifest[manifest["key"].isin(images_by_key)].reset_index(drop=True)
    images = [images_by_key[k] for k in meta["key"]]
    feats = np.stack([intensity_texture_features(im) for im in images])
    embeddings = {
        "intensity-texture": feats,
        "timm-resnet18-random": timm_embeddings(images, model_name="resnet18", pretrained=False,
                                                batch_size=32),
    }
    results, lines = {}, ["| embeddings | NSC | NSCB | 11-NN (MOA, images) | mAP (MOA) |",
                          "|---|---|---|---|---|"]
    for name, matrix in embeddings.items():
        emb = pd.DataFrame(matrix, columns=[f"f{i}" for i in range(matrix.shape[1])])
        emb.insert(0, "key", meta["key"].to_numpy())
        ando = run_protocol("bbbc021-ando", emb, meta)
        has_moa = meta["moa"].notna().to_numpy()
        knn = run_protocol("knn", emb[has_moa].reset_index(drop=True),
                           meta[has_moa].reset_index(drop=True), label="moa", k=11)
        mapr = run_protocol("map", emb, meta, seed=seed, null_size=2000)
        merged = {**ando, "protocol": "demo: bbbc021-ando + knn + map",
                  "metrics": {**ando["metrics"], **knn["metrics"],
                              **{f"map_{k}": v for k, v in mapr["metrics"].items()}},
                  "notes": ando["notes"] + knn["notes"] + mapr["notes"]}
        path = write_report(merged, out / "report" / name)
        results[name] = merged
        m = merged["metrics"]
        nscb = m.get("nscb")
        map_moa = next((v for k, v in m.items() if k.startswith("map_") and "moa" in k), None)
        lines.append(f"| {name} | {m['nsc'].accuracy:.3f} | "
                     f"{nscb.accuracy if nscb is not None else float('nan'):.3f} | "
                     f"{m['knn'].accuracy:.3f} | "
                     f"{getattr(map_moa, 'mean_map', float('nan')):.3f} |")
        print(f"{name}: NSC={m['nsc'].accuracy:.3f} NSCB="
              f"{nscb.accuracy if nscb is not None else float('nan'):.3f} -> {path}")
    summary = out / "report" / "summary.md"
    summary.write_text("# Demo evaluation (synthetic BBBC021-layout screen)\n\n" + "\n".join(lines)
                       + "\n\nPer-embedding reports: " + ", ".join(
                           f"[{n}]({n}/)" for n in embeddings) + "\n")
    print("\n".join(lines))
    return results


def run(out: "str | Path" = "demo_output", *, seed: int = 0, workers: int = 2,
        progress: bool = True) -> dict:
    """Run the whole demo into ``out``; returns the per-step results."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = [
        ("sources", "synthetic screens", lambda: make_sources(out, seed)),
        ("manifest", "manifest: harmonize, weak labels, splits, ledger",
         lambda: build_manifest(out, progress)),
        ("qc", "image QC", lambda: run_image_qc(out, workers)),
        ("shards", "shards: WebDataset, Zarr, OME-Zarr (dask)", lambda: write_shards(out, workers)),
        ("stream", "stream one epoch", lambda: stream_epoch(out)),
        ("evaluate", "evaluate: NSC/NSCB/kNN/mAP report", lambda: evaluate_embeddings(out, seed)),
    ]
    t, results = {}, {}
    for i, (name, title, fn) in enumerate(steps, 1):
        print(f"\n== {i}/{len(steps)} {title}", flush=True)
        t0 = time.time()
        results[name] = fn()
        t[name] = time.time() - t0
    rate = results["stream"]
    print("\n== outputs in", out)
    for sub in ("sources", "manifest", "qc", "shards", "report"):
        print(f"  {out / sub}")
    print("timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in t.items()))
    return {"out": out, "images_per_s": rate, "timings": t}


def _cmd(args) -> int:
    run(args.out, seed=args.seed, workers=args.workers, progress=not args.quiet)
    return 0


def register(subparsers) -> None:
    """Add ``cytodata demo``."""
    p = subparsers.add_parser("demo", help="run the end-to-end demo on synthetic screens",
                              description=__doc__)
    p.add_argument("-o", "--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic screens and sampling")
    p.add_argument("--workers", type=int, default=2, help="dask workers / loader workers")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd)
