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

from .demo_report import BBBC_MANIFEST, KNN_K, SCORE_COLUMNS, SCREEN_TEXT, screen_of
from .recipe import recipes_dir

#: the shipped demo recipe (``manifests/demo.yaml`` in a checkout, package data when installed)
RECIPE = recipes_dir() / "demo.yaml"


def make_sources(out: Path, seed: int, screen: str = "hard") -> dict:
    """Write the synthetic BBBC021-, RxRx1- and folder-layout screens at difficulty ``screen``."""
    import json

    from .synthetic import SyntheticScreen, write_demo_sources

    written = write_demo_sources(out / "sources", seed=seed,
                                 config=SyntheticScreen(difficulty=screen))
    (out / "sources" / "screen.json").write_text(json.dumps({"difficulty": screen, "seed": seed}))
    return written


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


#: the source the training, evaluation and publishing steps use, and its own manifest folder
BBBC_SOURCE = "synth-bbbc021"


def write_source_manifest(manifest_dir: Path, dest: Path, source: str) -> Path:
    """The rows of one ``source`` as a manifest folder of their own (manifest, ledger, provenance).

    The shards written from it record its ``manifest.parquet``, so
    ``cytodata publish SHARDS --manifest DEST`` finds the manifest they came from. The
    provenance is the full build's, with counts and ledger reasons of this source and a
    ``subset_of`` entry naming the full manifest (its sha256 and counts).
    """
    import json

    from . import schema
    from ._files import file_sha256

    manifest = schema.read_manifest(manifest_dir)
    rows = manifest[manifest["source"] == source].reset_index(drop=True)
    ledger = pd.read_parquet(manifest_dir / "ledger.parquet")
    ledger = ledger[ledger["source"] == source].reset_index(drop=True)
    dest.mkdir(parents=True, exist_ok=True)
    schema.write_manifest(rows, dest / "manifest.parquet")
    ledger.to_parquet(dest / "ledger.parquet", index=False)
    prov = json.loads((manifest_dir / "provenance.json").read_text(encoding="utf-8"))
    by_reason = ledger.groupby(["stage", "reason"]).size()
    prov["subset_of"] = {"manifest": str(manifest_dir), "rows": f"source == {source!r}",
                         "manifest_sha256": file_sha256(manifest_dir / "manifest.parquet"),
                         "counts": prov.get("counts")}
    prov["counts"] = {"inputs": len(rows) + len(ledger), "kept": len(rows), "dropped": len(ledger)}
    prov["ledger_by_reason"] = {f"{a}/{b}": int(n) for (a, b), n in by_reason.items()}
    (dest / "provenance.json").write_text(json.dumps(prov, indent=2, default=str), encoding="utf-8")
    return dest


def write_shards(out: Path, workers: int, quick: bool = False) -> dict:
    """Shard the manifest into WebDataset tars, a Zarr training array and an OME-Zarr plate.

    The WebDataset set holds every source (own channels, 64 samples per shard so the demo has
    several shards); Zarr and OME-Zarr hold the BBBC021-layout screen, whose fields share one
    shape and a plate/well/site layout. The BBBC021-layout sets are written from that source's
    own manifest folder (``manifest-bbbc021/``), which publishing names as their origin.
    """
    from . import shards
    from .recipe import load_recipe

    qc = load_recipe(RECIPE).image_qc or None
    bbbc = write_source_manifest(out / "manifest", out / BBBC_MANIFEST, BBBC_SOURCE)
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
#: run name -> the shipped config it trains (the report names it: the demo's DINO rows are the
#: project's own settings, not the papers' recipes)
CONFIGS = {name: config for name, config, _, _ in TRAINING}
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
    from .baselines.embedding import embed

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


#: what each demo run learned from: the label column its loss read (None: no labels)
LABELS_IN_TRAINING = {"classifier": "compound (the weak label)", "ws-dino": "compound (weak-label pairs)",
                      "dino": None}
#: bootstrap resamples for the mAP interval and random rankings per query for its chance level
MAP_BOOTSTRAP, MAP_NULL = 1000, 1000


def _match(res, unit: str) -> dict:
    """A MatchResult as the report's score cell: score, n, Wilson interval, chance."""
    return {"score": float(res.accuracy), "correct": int(res.correct), "n": int(res.total), "unit": unit,
            "ci_low": float(res.ci_low), "ci_high": float(res.ci_high), "interval": "Wilson 95%",
            "chance": float(res.chance)}


def _map_score(res, seed: int) -> dict:
    """MOA mAP (mean over MOAs of per-treatment AP) with a bootstrap interval over treatments.

    Chance: the same mean over the APs of random rankings (``MAP_NULL`` per treatment, the
    null of ``cytodata.evaluate.retrieval``).
    """
    from .evaluate.retrieval import null_average_precision

    ap = res.ap.dropna(subset=["average_precision"]).reset_index(drop=True)
    group = [c for c in res.map.columns if c in ap.columns and c not in
             ("n_pos_pairs", "n_total_pairs", "average_precision")][:1]
    if not len(ap) or not group:
        return {"score": float("nan"), "n": 0, "unit": "treatments", "ci_low": float("nan"),
                "ci_high": float("nan"), "interval": "bootstrap 95%", "chance": float("nan")}
    codes = pd.factorize(ap[group[0]].astype(str))[0]
    values = ap["average_precision"].to_numpy(float)
    n_groups = codes.max() + 1

    def mean_of_groups(v: np.ndarray, idx: np.ndarray) -> float:
        """Mean over the groups present in ``idx`` of the mean of ``v`` per group."""
        sums = np.bincount(codes[idx], weights=v[idx], minlength=n_groups)
        counts = np.bincount(codes[idx], minlength=n_groups)
        return float((sums[counts > 0] / counts[counts > 0]).mean())

    rng = np.random.default_rng(seed)
    boots = [mean_of_groups(values, rng.integers(0, len(ap), len(ap))) for _ in range(MAP_BOOTSTRAP)]
    null = np.array([float(null_average_precision(int(p), int(t), MAP_NULL, seed).mean())
                     for p, t in zip(ap["n_pos_pairs"], ap["n_total_pairs"])])
    every = np.arange(len(ap))
    return {"score": float(res.mean_map), "n": len(ap), "unit": "treatments",
            "ci_low": float(np.percentile(boots, 2.5)), "ci_high": float(np.percentile(boots, 97.5)),
            "interval": "bootstrap 95% over treatments", "chance": mean_of_groups(null, every)}


def _kind(name: str) -> tuple[str, str | None]:
    """(kind, run) of an embedding row: features | trained | random init, and its run's name."""
    if "(" not in name:
        return "features", None
    run, rest = name.split(" (", 1)
    return ("random init" if rest.startswith("random init") else "trained"), run


def evaluate_embeddings(out: Path, seed: int, trained: dict[str, pd.DataFrame] | None = None) -> dict:
    """Intensity/texture features and the trained/random backbones -> BBBC021 protocols.

    Each embedding is scored on treatment profiles with TVN (``bbbc021-ando``: TVN on DMSO, NSC
    and NSCB) and without (``bbbc021-cytoimagenet``: z-score only, NSC), on the held-out images
    only (the splits no run trained on: NSC without TVN), by image-level 11-NN MOA accuracy with
    the query's own compound excluded, and by MOA mAP. Every score carries its n, a 95%
    interval and its chance level.
    """
    from . import schema
    from .errors import EvaluationError
    from .evaluate import run_protocol
    from .evaluate.features import intensity_texture_features
    from .evaluate.report import write_report
    from .loaders import StreamingDataset

    ds = StreamingDataset(out / "shards" / "bbbc021", shuffle=False)
    images_by_key = {s["__key__"]: s["image"].numpy() for s in ds}
    manifest = schema.read_manifest(out / BBBC_MANIFEST)
    meta = manifest[manifest["key"].isin(images_by_key)].reset_index(drop=True)
    feats = np.stack([intensity_texture_features(images_by_key[k]) for k in meta["key"]])
    embeddings = {"intensity-texture": pd.DataFrame(feats, columns=[f"f{i}" for i in range(feats.shape[1])])
                  .assign(key=meta["key"].to_numpy())}
    for name, table in (trained or {}).items():
        cols = [c for c in table.columns if c.startswith("emb_")]
        embeddings[name] = table.set_index("key").loc[meta["key"], cols].reset_index()
    held_out = meta["split"].astype("string").fillna("").ne("train").to_numpy()
    results = {}
    for name, emb in embeddings.items():
        emb = emb[["key"] + [c for c in emb.columns if c != "key"]]
        ando = run_protocol("bbbc021-ando", emb, meta)
        plain = run_protocol("bbbc021-cytoimagenet", emb, meta)
        scores = {"nsc": _match(ando["metrics"]["nsc"], "treatments"),
                  "nscb": _match(ando["metrics"]["nscb"], "treatments") if "nscb" in ando["metrics"] else None,
                  "nsc_no_tvn": _match(plain["metrics"]["nsc"], "treatments")}
        notes = list(ando["notes"])
        try:
            held = run_protocol("bbbc021-cytoimagenet", emb[held_out].reset_index(drop=True),
                                meta[held_out].reset_index(drop=True))
            scores["nsc_held_out"] = _match(held["metrics"]["nsc"], "treatments")
        except EvaluationError as exc:
            scores["nsc_held_out"] = None
            notes.append(f"held-out NSC not computed: {exc}")
        has_moa = meta["moa"].notna().to_numpy()
        knn = run_protocol("knn", emb[has_moa].reset_index(drop=True), meta[has_moa].reset_index(drop=True),
                           label="moa", k=KNN_K, exclude_same="compound")
        scores["knn"] = _match(knn["metrics"]["knn"], "images")
        # z-scores against DMSO: MAD inflates features that are constant in the controls
        mapr = run_protocol("map", emb, meta, seed=seed, null_size=2000, normalize="standardize")
        moa_map = mapr["metrics"].get("moa_map")
        scores["map"] = _map_score(moa_map, seed) if moa_map is not None else None
        merged = {**ando, "protocol": "demo: bbbc021-ando + knn (own compound excluded) + map",
                  "metrics": {**ando["metrics"], **knn["metrics"],
                              **{f"map_{k}": v for k, v in mapr["metrics"].items()}},
                  "notes": notes + knn["notes"] + mapr["notes"]}
        slug = _slug(name)
        write_report(merged, out / "report" / slug, format="html")
        kind, run = _kind(name)
        row = {k: (v["score"] if v else float("nan")) for k, v in scores.items()}
        results[name] = dict(row, scores=scores, kind=kind, run=run,
                             labels_in_training=LABELS_IN_TRAINING.get(run) if kind == "trained" else None,
                             config=CONFIGS.get(run), report=f"{slug}/report.html", result=merged)
    lines = summary_lines(results, screen_of(out))
    (out / "report" / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[:len(results) + 4]))
    return results


def score_text(score: dict | None, digits: int = 2) -> str:
    """``0.65 [0.43, 0.82] n=20 treatments, chance 0.17`` (or ``not computed``)."""
    if not score or not np.isfinite(score["score"]):
        return "not computed"
    f = f".{digits}f"
    return (f"{score['score']:{f}} [{score['ci_low']:{f}}, {score['ci_high']:{f}}] n={score['n']} "
            f"{score['unit']}, chance {score['chance']:{f}}")


def summary_lines(results: dict, screen: str = "hard") -> list[str]:
    """``report/summary.md``: every score with its n, 95% interval and chance level."""
    head = "| embeddings | trained on | " + " | ".join(t for _, t in SCORE_COLUMNS) + " |"
    lines = [f"# Demo evaluation ({screen} synthetic BBBC021-layout screen)", "",
             SCREEN_TEXT[screen], "", head,
             "|" + "---|" * (len(SCORE_COLUMNS) + 2)]
    for name, r in results.items():
        cells = " | ".join(score_text(r["scores"].get(k)) for k, _ in SCORE_COLUMNS)
        trained_on = (r["labels_in_training"] or "no labels") if r["kind"] == "trained" else "-"
        lines.append(f"| [{name}]({r['report']}) | {trained_on} | {cells} |")
    lines += ["", "Each cell: score [95% interval] n=what was scored, chance = what a random neighbour "
              "(or ranking) scores under the same exclusions. NSC/NSCB: nearest-neighbour MOA accuracy "
              "over treatment profiles (TVN on DMSO then CORAL per week; no TVN: z-scores), not "
              "counting the same compound (NSC) or the same compound and "
              "batch (NSCB); Wilson intervals. Held-out: profiles of the val and test images only, which "
              f"no run trained on. {KNN_K}-NN: image-level MOA vote among images of other compounds "
              "(the query's own compound is excluded). mAP: bootstrap interval over treatments, chance "
              "from random rankings. `ws-dino (random init)` is the untrained baseline of both DINO rows "
              "(one ViT, one seed), as in WS-DINO's Table 1; rows marked `patch mean` embed the mean of "
              "the final patch tokens (DINO's --avgpool_patchtokens). One seed: "
              "`benchmarks/dino_bbbc021.py` runs the longer comparison with three seeds."]
    return lines


def publish_and_verify(out: Path) -> dict | None:
    """Publish the BBBC021-layout shard set (card, Croissant, checksums) and verify it."""
    import importlib.util

    if importlib.util.find_spec("cytodata.publish") is None:
        print("publish: not available in this build; skipped")
        return None
    from . import publish

    dest = out / "published"
    publish.publish(out / "shards" / "bbbc021", dest, manifest=out / BBBC_MANIFEST,
                    name="cytodata-demo-bbbc021-layout", overwrite=True,
                    description="Synthetic BBBC021-layout screen written by `cytodata demo`.",
                    licenses={"synth-bbbc021": "BSD-3-Clause"},
                    citations={"synth-bbbc021": "cytodata synthetic screens (cytodata.synthetic)"})
    problems = publish.verify(dest)
    print(f"published {dest}: verify {'OK' if not problems else problems}")
    return {"dest": dest, "problems": problems}


def run(out: "str | Path" = "demo_output", *, seed: int = 0, workers: int = 2,
        progress: bool = True, quick: bool = False, screen: str = "hard") -> dict:
    """Run the whole demo into ``out``; returns the per-step results.

    ``quick``: fewer training steps and no OME-Zarr export (a couple of minutes on 2 cores).
    ``screen``: the synthetic screens' difficulty (:class:`~cytodata.synthetic.SyntheticScreen`):
    ``"hard"`` (MOAs differ only in morphology; intensity histograms and cell sizes are matched
    across treatments) or ``"easy"`` (simple intensity features separate the MOAs).
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    steps = [
        ("sources", "synthetic screens", lambda: make_sources(out, seed, screen)),
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
    for sub in ("sources", "manifest", BBBC_MANIFEST, "qc", "shards", "runs", "embeddings", "report",
                "published"):
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
    run(args.out, seed=args.seed, workers=args.workers, progress=not args.quiet, quick=args.quick,
        screen=args.screen)
    return 0
