"""DINO and WS-DINO vs the random-init backbone on the synthetic BBBC021-layout screen (CPU).

The screen of ``benchmarks/classifier_bbbc021.py`` (8 MOAs x 3 compounds x 2 doses = 48
treatments, 3 weeks, batch and plate effects, one MOA confined to one week) with 6 fields per
well (864 fields, 144 of them DMSO) -> field manifest -> one 40-px crop per nucleus (5,379 cells,
``cytodata cells``) -> WebDataset shards -> short CPU runs of ``dino`` and ``ws-dino`` (weak
label = compound) -> ``cytodata embed`` (cells averaged per field), once as the teacher's CLS
token (WS-DINO's evaluation) and once as the mean of its final patch tokens (DINO's
``--avgpool_patchtokens``) -> ``bbbc021-ando`` (TVN on DMSO, CORAL per batch, NSC/NSCB over
MOAs). The baseline is the same architecture at its seeded random initialisation
(``embed(..., random_init=True)``), embedded the same way and scored by the same code. Prints
the rows side by side like WS-DINO's Table 1 and writes ``OUT/results.json``.

    python benchmarks/dino_bbbc021.py [--steps 1500] [--out DIR] [--seeds 0,1,2] [--data DIR]
    python benchmarks/dino_bbbc021.py --combine DIR/seed-*/results.json
    python benchmarks/dino_bbbc021.py --recipes --steps 300 --seeds 0,1,2 --out DIR

``--recipes`` compares the shipped recipes on whole fields (WS-DINO's input, no cell crops):
``ws-dino-tiny`` and ``dino-tiny`` (the authors' values) and ``ws-dino-cells-tiny`` /
``dino-cells-tiny`` (the project's), each against its own random init (same architecture and
seed), CLS token and patch-token mean, NSC/NSCB with Wilson 95% intervals and chance levels,
the collapse verdict of each run, and the week confound: the 1-NN week (batch) accuracy of
field embeddings (11-NN vote), where a higher value means the features carry the batch.

Choices made by measurement on this screen:

- 6 fields per well: with the classifier benchmark's 2, TVN is fitted on 48 DMSO fields for 64
  features (17 null directions) and the random init's NSC swings 0.58-0.90 with its seed;
- inputs normalised per plate by its DMSO images (``data.normalize: controls``): a plate's
  all-image statistics move with the compounds on it, and every compound sits in one week;
- views at native resolution (global crops 32 px from ~32 px, local 16 px from ~16 px): DINO's
  0.4-1 / 0.05-0.4 area fractions resample cells by 0.6-1.8x, so the model learns to ignore
  cell size, one of the phenotypes;
- per-channel gain jitter of +-30% (``augment.intensity: 0.3``; DINO's colour jitter has
  brightness 0.4);
- the patch-token mean as well as the CLS token: after 1500 steps of a 4-block ViT the CLS
  token scores below the random init (NSC 0.68 vs 0.81, three seeds), while the patch-token
  mean of the same runs beats its random init (DINO 0.875 vs 0.694 at 1500 steps, WS-DINO 0.826
  at 3000: every seed; WS-DINO learns more slowly).

Figures are CPU runs of a 4-block, 64-wide ViT: an ordering check of the methods, not
WS-DINO's numbers (ViT-S/8, 224 px, GPU; see dino_gpu.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: the small-ViT recipe shared by DINO and WS-DINO (WS-DINO's choices otherwise: teacher
#: momentum 0.99, no weight decay); lr not scaled by batch/256: 5e-4 x 32/256 barely moves a
#: few hundred steps
#: fields per well: 6 gives 144 DMSO fields, so TVN (fitted on DMSO fields) sees more controls
#: than the ViT has features (64); the classifier benchmark's 2 sites leave 48 controls for 64
#: features, 17 null directions, and NSC then swings with the random projection (0.58-0.90)
SITES = 6

#: embeddings scored: WS-DINO's CLS token, and the mean of the final patch tokens (DINO's
#: ``eval_linear --avgpool_patchtokens``), each against the random init embedded the same way
POOLS = ("cls", "avg")

#: (row name, shipped method, method-specific settings); both share one ViT and seed, so one
#: random init is the baseline of both (WS-DINO's Table 1)
METHODS = (("DINO", "dino", {}), ("WS-DINO (compound)", "ws-dino", {"weak_label": "compound"}))

RECIPE = {
    "model": "test_vit", "patch_size": 4, "model_kwargs": {"depth": 4}, "drop_path_rate": 0.0,
    "out_dim": 256, "head_hidden_dim": 256, "head_bottleneck_dim": 64,
    "data.crop": 32, "global_scale": [0.6, 0.66], "local_crops": 4, "local_crop": 16,
    "local_scale": [0.15, 0.17], "augment.intensity": 0.3, "data.normalize": "controls",
    "data.train_split": None, "data.val_split": None, "batch_size": 32, "device": "cpu",
    "precision": "fp32", "channels_last": False, "optim.lr": 5e-4, "optim.scale_lr_by_batch": False,
    "optim.min_lr": 1e-5, "optim.warmup_steps": 30, "optim.weight_decay": 0.0,
    "optim.clip_grad": 3.0, "warmup_epochs": None, "freeze_last_layer": 1.0,
    "checkpoint_every": 10**9, "progress": False, "data.threads": 1,
}


def make_shards_sized(out: Path, seed: int, image_size: int) -> Path:
    """Whole fields of the default synthetic screen at ``image_size`` px as WebDataset shards
    (for ``dino_gpu.py``: WS-DINO at its own image size)."""
    from cytodata import shards
    from cytodata.manifest import build
    from cytodata.synthetic import SyntheticScreen, write_bbbc021_layout

    src = out / "sources" / "bbbc021"
    write_bbbc021_layout(src, SyntheticScreen(seed=seed, image_size=image_size))
    source = {"adapter": "bbbc021", "source": "synth-bbbc021", "params": {"root": str(src)}}
    build({"name": "dino-bench", "seed": seed, "sources": [source]}, out / "manifest", progress=False)
    shards.write(out / "manifest", out / "shards", format="webdataset", codec="blosc-lz4",
                 samples_per_shard=64, scheduler="synchronous", progress=False)
    return out / "shards"


def run(out: "str | Path", *, steps: int = 1500, seed: int = 0, torch_threads: int | None = 1,
        sites: int = SITES, data_dir: "str | Path | None" = None, overrides: dict | None = None,
        pools: tuple[str, ...] = POOLS, rescore: bool = False,
        methods: tuple[str, ...] = ("dino", "ws-dino")) -> dict:
    """The whole check; returns ``{"rows": {name: {nsc, nscb, steps, seconds, ...}}, ...}``.

    ``sites``: fields per well of the screen; ``data_dir``: where the screen and its cell shards
    are written (reused when already there, so seeds run side by side share one copy).
    ``pools``: the embeddings scored (``embed(pool=)``); ``rescore``: reuse finished runs.
    """
    previous = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        return _run(Path(out), steps, seed, sites, Path(data_dir) if data_dir else Path(out) / "data",
                    overrides or {}, tuple(pools), rescore, tuple(methods))
    finally:
        torch.set_num_threads(previous)


#: the recipes compared on whole fields: (row, shipped config, overrides)
RECIPES = (("ws-dino-tiny (authors')", "ws-dino-tiny", {}),
           ("dino-tiny (DINO's)", "dino-tiny", {}),
           ("ws-dino-cells-tiny (ours)", "ws-dino-cells-tiny", {"weak_label": "compound"}),
           ("dino-cells-tiny (ours)", "dino-cells-tiny", {}),
           ("ws-dino-cells-demo (ours)", "ws-dino-cells-demo", {}),
           ("dino-cells-demo (ours)", "dino-cells-demo", {}))
#: whole fields of 128 px (the tiny WS-DINO views need >= 48 px after its 0.5x prescale)
FIELD_SIZE = 128


def prepare_fields(data_dir: Path, sites: int = SITES, difficulty: str = "hard") -> dict:
    """The screen (``FIELD_SIZE`` px fields, ``sites`` per well, the hard synthetic phenotypes
    by default) as field shards (reused)."""
    from classifier_bbbc021 import SCREEN

    from cytodata.manifest import build
    from cytodata.shards import write
    from cytodata.synthetic import write_bbbc021_layout

    if not (data_dir / "shards" / "shards.json").exists():
        layout = write_bbbc021_layout(data_dir / "screen", SCREEN.replace(
            sites_per_well=sites, image_size=FIELD_SIZE, difficulty=difficulty))
        recipe = {"name": "bbbc021-fields", "seed": 0,
                  "sources": [{"adapter": "bbbc021", "source": "synth-bbbc021",
                               "params": {"root": str(layout["root"])}}]}
        build(recipe, data_dir / "fields", progress=False)
        write(data_dir / "fields", data_dir / "shards", codec="blosc-lz4", samples_per_shard=256,
              scheduler="synchronous", progress=False)
    return {"fields": data_dir / "fields", "shards": data_dir / "shards"}


def score_fields(parquet: Path, fields: Path) -> dict:
    """NSC/NSCB (bbbc021-ando) with Wilson intervals and chance, and the 11-NN week accuracy."""
    import pandas as pd

    from cytodata.evaluate import knn_accuracy, run_protocol
    from cytodata.schema import read_manifest

    emb = pd.read_parquet(parquet)
    cols = [c for c in emb.columns if c.startswith("emb_")]
    meta = read_manifest(fields)
    m = run_protocol("bbbc021-ando", emb[["key"] + cols], meta)["metrics"]
    row = {}
    for name in ("nsc", "nscb"):
        r = m[name]
        row[name] = {"acc": r.accuracy, "correct": r.correct, "total": r.total,
                     "ci": [r.ci_low, r.ci_high], "chance": r.chance}
    table = emb[["key"] + cols].merge(meta[["key", "batch"]], on="key")
    week = knn_accuracy(table, features=cols, label="batch", k=11, metric="cosine")
    row["week_knn"] = {"acc": week.accuracy, "ci": [week.ci_low, week.ci_high],
                       "chance": week.chance}
    return row


def run_recipes(out: Path, *, steps: int, seed: int, sites: int = SITES,
                data_dir: "Path | None" = None, pools: tuple[str, ...] = POOLS,
                configs: "tuple[str, ...] | None" = None) -> dict:
    """Train each of :data:`RECIPES` (or those named in ``configs``) on the field shards and
    score it against its random init."""
    import warnings

    from cytodata.baselines import embed, train

    t0 = time.perf_counter()
    data = prepare_fields(Path(data_dir) if data_dir else out / "data", sites)
    rows = {}
    for name, config, extra in RECIPES:
        if configs and config not in configs:
            continue
        run_dir = out / "runs" / config
        t = time.perf_counter()
        if not (run_dir / "summary.json").exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train(config, run_dir, **{"data.train": str(data["shards"]), "data.train_split": None,
                                          "steps": steps, "seed": seed, "progress": False,
                                          "checkpoint_every": 10**9, "log_every": max(1, steps // 10),
                                          "data.threads": 1, "device": "cpu", **extra})
        seconds = time.perf_counter() - t
        summary = json.loads((run_dir / "summary.json").read_text())
        for pool in pools:
            for init in (False, True):
                label = f"{name}{' random init' if init else ''} [{pool}]"
                parquet = out / f"{config}-{'init' if init else 'trained'}-{pool}.parquet"
                embed(run_dir, data["shards"], parquet, device="cpu", progress=False,
                      random_init=init, pool=pool)
                rows[label] = {**score_fields(parquet, data["fields"]), "config": config,
                               "trained": not init, "pool": pool,
                               "steps": 0 if init else steps,
                               "seconds": 0.0 if init else round(seconds, 1),
                               "collapsed": None if init else summary["collapsed"],
                               "collapse": None if init else summary["collapse_evidence"]}
                r = rows[label]
                print(f"{label}: NSC {r['nsc']['acc']:.3f} NSCB {r['nscb']['acc']:.3f} week "
                      f"{r['week_knn']['acc']:.3f} collapsed {r['collapsed']}", flush=True)
    return {"rows": rows, "seed": seed, "steps": steps, "sites": sites, "field_size": FIELD_SIZE,
            "seconds": round(time.perf_counter() - t0, 1)}


def recipes_table(runs: list[dict]) -> str:
    """Per row: NSC/NSCB pooled over seeds (sum of correct / sum of total, Wilson 95%), chance,
    per-seed values, the week 11-NN accuracy, and how many seeds' runs collapsed."""
    from cytodata.evaluate import proportion_ci

    by_seed: dict = {}
    for r in runs:                  # several results files of one seed (--configs) are merged
        by_seed.setdefault(r["seed"], {"seed": r["seed"], "rows": {}})["rows"].update(r["rows"])
    runs = list(by_seed.values())
    lines = [f"| embeddings (seeds {', '.join(str(r['seed']) for r in runs)}) | NSC [95% CI] "
             "(per seed) | NSCB [95% CI] (per seed) | chance NSC/NSCB | week 11-NN (chance) | "
             "collapsed |", "|---|---|---|---|---|---|"]
    for name in runs[0]["rows"]:
        rs = [r["rows"][name] for r in runs]
        cells = []
        for metric in ("nsc", "nscb"):
            c = sum(x[metric]["correct"] for x in rs)
            n = sum(x[metric]["total"] for x in rs)
            lo, hi = proportion_ci(c, n)
            per = ", ".join(f"{x[metric]['acc']:.2f}" for x in rs)
            cells.append(f"{c / n:.3f} [{lo:.2f}, {hi:.2f}] ({per})")
        chance = f"{rs[0]['nsc']['chance']:.2f} / {rs[0]['nscb']['chance']:.2f}"
        week = sum(x["week_knn"]["acc"] for x in rs) / len(rs)
        week = f"{week:.3f} ({rs[0]['week_knn']['chance']:.2f})"
        coll = "" if rs[0]["collapsed"] is None else f"{sum(bool(x['collapsed']) for x in rs)}/{len(rs)}"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {chance} | {week} | {coll} |")
    return "\n".join(lines)


def prepare_data(data_dir: Path, sites: int = SITES) -> dict:
    """The screen with ``sites`` fields per well, its cell crops and their shards (reused)."""
    from classifier_bbbc021 import CELL_SIZE, SCREEN, prepare

    from cytodata.schema import read_manifest

    done = data_dir / "prepared.json"
    if done.exists():
        info = json.loads(done.read_text())
        return {**info, **{k: data_dir / k for k in ("fields", "cells", "shards")}}
    data = prepare(data_dir, SCREEN.replace(sites_per_well=sites), CELL_SIZE)
    fields = read_manifest(data["fields"])
    info = {"n_cells": data["n_cells"], "n_fields": data["n_fields"], "sites": sites,
            "control_fields": int((fields["compound"].astype(str).str.lower() == "dmso").sum())}
    done.write_text(json.dumps(info))
    return {**data, **info}


def _run(out: Path, steps: int, seed: int, sites: int, data_dir: Path, overrides: dict,
         pools: tuple[str, ...], rescore: bool, methods: tuple[str, ...]) -> dict:
    from cytodata.baselines import train

    t0 = time.perf_counter()
    data = prepare_data(data_dir, sites)
    runs, seconds = {}, {}
    for name, method, extra in METHODS:
        if method not in methods:
            continue
        t = time.perf_counter()
        cfg = {**RECIPE, **overrides, **extra, "steps": steps, "seed": seed, "log_every": max(1, steps // 20),
               "data.train": str(data["shards"])}
        runs[name] = out / "runs" / method
        if not (rescore and (runs[name] / "checkpoints").is_dir()):
            train(method, runs[name], **{k.replace(".", "__"): v for k, v in cfg.items()})
        seconds[name] = time.perf_counter() - t
    rows = {}
    for pool in pools:  # each pooling against the random init embedded the same way
        base = f"random init [{pool}]"
        rows[base] = _score(next(iter(runs.values())), data, out / f"random-init-{pool}.parquet", 0, 0.0,
                            random_init=True, pool=pool)
        for name, run_dir in runs.items():
            rows[f"{name} [{pool}]"] = {**_score(run_dir, data, out / f"{run_dir.name}-{pool}.parquet",
                                                 steps, seconds[name], pool=pool), "vs": base}
            print(f"{name} [{pool}]: {rows[f'{name} [{pool}]']}", flush=True)
    return {"rows": rows, "n_cells": data["n_cells"], "n_fields": data["n_fields"],
            "control_fields": data["control_fields"], "sites": sites, "steps": steps, "seed": seed,
            "recipe": {**RECIPE, **overrides},
            "seconds": round(time.perf_counter() - t0, 1)}


def _score(run_dir: Path, data: dict, parquet: Path, steps: int, seconds: float,
           random_init: bool = False, pool: str | None = None) -> dict:
    from classifier_bbbc021 import evaluate

    from cytodata.baselines import embed

    emb = embed(run_dir, data["shards"], parquet, device="cpu", progress=False,
                random_init=random_init, pool=pool)
    row = {**evaluate(emb, data["fields"]), "steps": steps, "seconds": round(seconds, 1)}
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "loss_over_ln_k" in m]
    if steps and last:
        row.update({k: round(last[-1][k], 3) for k in ("loss_over_ln_k", "teacher_entropy",
                                                       "kl_teacher_student")})
    return row


def table(results: dict) -> str:
    """WS-DINO's Table 1 layout: one row per embedding, NSC and NSCB."""
    lines = ["| embeddings (synthetic BBBC021 cells, bbbc021-ando) | steps | NSC | NSCB |",
             "|---|---|---|---|"]
    for name, r in results["rows"].items():
        lines.append(f"| {name} | {r['steps']} | {r['nsc']:.3f} | {r['nscb']:.3f} |")
    return "\n".join(lines)


def seeds_table(runs: list[dict]) -> str:
    """Mean over seeds (each seed's value listed) and how often each method beat random init."""
    names = list(runs[0]["rows"])
    seeds = [r["seed"] for r in runs]
    lines = [f"| embeddings (seeds {', '.join(map(str, seeds))}) | steps | NSC mean (per seed) | "
             "NSCB mean (per seed) | beats random init (NSC, NSCB) |", "|---|---|---|---|---|"]
    for name in names:
        cells = []
        for metric in ("nsc", "nscb"):
            vals = [r["rows"][name][metric] for r in runs]
            cells.append(f"{sum(vals) / len(vals):.3f} ({', '.join(f'{v:.3f}' for v in vals)})")
        base = runs[0]["rows"][name].get("vs")
        if base is None and name != "random init" and "random init" in runs[0]["rows"]:
            base = "random init"  # results.json of runs before pools were scored
        wins = "" if base is None else ", ".join(
            f"{sum(r['rows'][name][m] > r['rows'][base][m] for r in runs)}/{len(runs)}"
            for m in ("nsc", "nscb"))
        lines.append(f"| {name} | {runs[0]['rows'][name]['steps']} | {cells[0]} | {cells[1]} | {wins} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (one run each)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe entry for both methods (YAML value), e.g. "
                         "--set data.normalize=controls")
    ap.add_argument("--pools", default=",".join(POOLS),
                    help="embeddings to score: cls (WS-DINO's), avg (patch-token mean), cls+avg")
    ap.add_argument("--methods", default="dino,ws-dino", help="methods to train (dino, ws-dino)")
    ap.add_argument("--rescore", action="store_true",
                    help="reuse finished runs under --out (only embed and score again)")
    ap.add_argument("--sites", type=int, default=SITES, help="fields per well of the screen")
    ap.add_argument("--data", default=None,
                    help="folder for the screen and its cell shards, reused when there (seeds "
                         "run side by side can share it; default: per seed under --out)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--combine", nargs="+", metavar="RESULTS_JSON",
                    help="only print the seeds table of earlier runs' results.json files")
    ap.add_argument("--recipes", action="store_true",
                    help="compare ws-dino-tiny, dino-tiny, ws-dino-cells-tiny, dino-cells-tiny on "
                         "whole fields (see the module docstring)")
    ap.add_argument("--configs", default=None,
                    help="--recipes: only these shipped configs (comma-separated)")
    args = ap.parse_args(argv)
    if args.combine:
        loaded = [json.loads(Path(p).read_text()) for p in args.combine]
        print(recipes_table(loaded) if "field_size" in loaded[0] else seeds_table(loaded))
        return
    if args.recipes:
        torch.set_num_threads(args.torch_threads)
        base = Path(args.out or tempfile.mkdtemp())
        done = []
        for seed in (int(s) for s in args.seeds.split(",")):
            res = run_recipes(base / f"seed-{seed}", steps=args.steps, seed=seed, sites=args.sites,
                              data_dir=Path(args.data) if args.data else base / "data",
                              pools=tuple(args.pools.split(",")),
                              configs=tuple(args.configs.split(",")) if args.configs else None)
            (base / f"seed-{seed}" / "results.json").write_text(json.dumps(res, indent=1, default=str))
            done.append(res)
            print(f"seed {seed}: {res['seconds']} s", flush=True)
        print(recipes_table(done))
        return
    from cytodata.baselines.config import parse_set

    overrides = parse_set(args.set)  # the same KEY=VALUE rule as `cytodata train --set`
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            out = (Path(args.out) if args.out else Path(tmp)) / f"seed-{seed}"
            results = run(out, steps=args.steps, seed=seed, torch_threads=args.torch_threads,
                          sites=args.sites, data_dir=args.data, overrides=overrides,
                          pools=tuple(args.pools.split(",")), rescore=args.rescore,
                          methods=tuple(args.methods.split(",")))
            (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
            print(f"seed {seed}: {results['n_cells']} cells from {results['n_fields']} fields; "
                  f"{results['seconds']} s")
            print(table(results), flush=True)
            runs.append(results)
    if len(runs) > 1:
        print(seeds_table(runs))


if __name__ == "__main__":
    main()
