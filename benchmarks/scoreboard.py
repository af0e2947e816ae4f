"""The baseline scoreboard: every shipped CPU recipe on the hard synthetic screen, three seeds.

The screen (:data:`SCREEN`): ``SyntheticScreen(difficulty="hard")`` in the BBBC021 layout,
8 MOAs x 3 compounds x 2 doses (48 treatments), 3 weeks x 2 plates x 24 wells x 3 sites of
96 px; MOAs differ in morphology only, per-week gains and offsets, plate focus blur,
background gradients and vignettes, every compound in one week. One shared copy under
``OUT/data``: fields -> field manifest (bbbc021 adapter) -> one 40-px crop per nucleus
(``cytodata cells``, label = treatment) -> WebDataset shards.

Rows:

- reference rows, no training: whole-image per-channel intensity statistics, per-cell
  hand-crafted intensity/texture features (averaged per field), and the oracle (the ground
  truth latents, :mod:`cytodata.synthetic.truth`);
- every ``baselines/configs/*-tiny.yaml`` (found by listing, so added recipes are included):
  trained for ``--budget`` CPU-minutes per seed (steps from the CPU time of two short
  calibration runs),
  its random initialisation (same architecture and seed), each embedded (cells averaged per
  field; ViTs as CLS token and as patch-token mean) and scored by ``bbbc021-ws-dino`` (TVN on
  DMSO, per-plate mean, treatment median, cosine 1-NN NSC / NSCB over MOAs) and by same-MOA mAP
  (other compounds of the MOA as positives) on the same treatment profiles.

Each row: NSC and NSCB (mean over seeds; Wilson 95% interval of the seeds' pooled matches), mAP
(bootstrap 95% interval over queries, pooled), chance levels, how many seeds beat the random
init (NSC), CPU-minutes per seed (training, and all of the worker's CPU time: calibration,
training, embedding, scoring). Runs go
side by side (``--jobs``) as separate processes reading one data copy. Writes
``OUT/scoreboard.md`` and ``OUT/results.json`` and prints the table.

    python benchmarks/scoreboard.py [--only NAMES] [--seeds N] [--budget MIN] [--jobs 2]
                                    [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cytodata.synthetic import DEFAULT_MOAS, SyntheticScreen

CONFIGS = Path(__file__).resolve().parents[1] / "baselines" / "configs"

SCREEN = SyntheticScreen(
    difficulty="hard", n_batches=3, plates_per_batch=2, wells_per_plate=24,
    dmso_wells_per_plate=4, sites_per_well=3, image_size=96, seed=0,
    moas=DEFAULT_MOAS + ("Microtubule stabilizers", "Kinase inhibitors", "Eg5 inhibitors"),
    compounds_per_moa=3)
CELL_SIZE = 40      # px crop around each nucleus (cells are ~28 px long)
TRAIN_CROP = 32     # the recipes' crop inside the 40 px cell crop
CALIBRATION_STEPS = 6
VIT_MODELS = ("vit", "deit", "test_vit")
PROTOCOL = "bbbc021-ws-dino"


def first_stage(name: str) -> str | None:
    """The first-stage recipe a second-stage recipe starts from (``*-stage2-*`` -> ``*-stage1-*``).

    ``None`` for recipes that train from scratch (no ``requires_init`` in the config).
    """
    from cytodata.baselines import load_config

    if not getattr(load_config(name), "requires_init", False):
        return None
    first = name.replace("-stage2", "-stage1")
    if first == name or not (CONFIGS / f"{first}.yaml").exists():
        raise SystemExit(f"{name} needs a first-stage run (requires_init) and no {first} recipe "
                         "ships beside it")
    return first


def tiny_configs() -> list[str]:
    """Names of every shipped CPU recipe (``baselines/configs/*-tiny.yaml``), sorted."""
    return sorted(p.stem for p in CONFIGS.glob("*-tiny.yaml"))


# --------------------------------------------------------------------------------------------
# data (one copy, written once)
# --------------------------------------------------------------------------------------------

def prepare(data: Path, screen: SyntheticScreen = SCREEN) -> dict:
    """The screen, its field manifest, cell crops and shards under ``data`` (reused when done)."""
    done = data / "prepared.json"
    if not done.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from classifier_bbbc021 import prepare as write_cells_and_shards  # one data path for both benchmarks

        t0 = time.perf_counter()
        written = write_cells_and_shards(data, screen, CELL_SIZE)
        done.write_text(json.dumps({"response_fraction": screen.response_fraction,
                                    "cells": written["n_cells"], "fields": written["n_fields"],
                                    "seconds": round(time.perf_counter() - t0, 1)}))
    return json.loads(done.read_text())


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------

def score(embeddings: pd.DataFrame, fields: pd.DataFrame, seed: int = 0) -> dict:
    """NSC/NSCB (``bbbc021-ws-dino``) and same-MOA mAP of per-field ``emb_*`` embeddings.

    ``embeddings``: ``key`` + features; ``fields``: the field manifest.
    """
    from cytodata.evaluate import run_protocol
    from cytodata.evaluate.retrieval import mean_average_precision

    cols = [c for c in embeddings.columns if c.startswith("emb_")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # TVN/feature warnings are in the notes, not the score
        result = run_protocol(PROTOCOL, embeddings[["key"] + cols], fields)
        treat = result["profiles"]
        feats = result["features"]
        ap = mean_average_precision(treat, features=feats, pos_sameby=["moa"],
                                    pos_diffby=["compound"], neg_diffby=["moa"],
                                    null_size=100).ap
    out = {}
    for name in ("nsc", "nscb"):
        m = result["metrics"].get(name)
        if m is not None:
            out[name] = {"accuracy": float(m.accuracy), "correct": int(m.correct),
                         "total": int(m.total), "chance": float(m.chance)}
    ap = ap[ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)]
    out["map"] = {"values": [float(v) for v in ap["average_precision"]],
                  "chance": float((ap["n_pos_pairs"] / ap["n_total_pairs"]).mean())}
    return out


def _field_key_frame(fields: pd.DataFrame, features: np.ndarray) -> pd.DataFrame:
    cols = [f"emb_{i}" for i in range(features.shape[1])]
    return pd.concat([fields[["key"]].reset_index(drop=True),
                      pd.DataFrame(features, columns=cols)], axis=1)


def reference_rows(data: Path) -> dict:
    """Scores of the rows that need no training (cached in ``data/reference.json``)."""
    cache = data / "reference.json"
    if cache.exists():
        return json.loads(cache.read_text())
    import tifffile

    from cytodata.evaluate.features import intensity_texture_features
    from cytodata.schema import read_manifest
    from cytodata.synthetic import oracle_columns, read_ground_truth

    t0 = time.process_time()
    fields = read_manifest(data / "fields").reset_index(drop=True)
    locations = pd.read_csv(data / "screen" / "BBBC021_cell_locations.csv")
    by_image = {k: g for k, g in locations.groupby("Image_FileName_DAPI")}
    oracle = read_ground_truth(data / "screen")["fields"].set_index("image")[oracle_columns()]
    stats, hand, orc = [], [], []
    half = CELL_SIZE // 2
    for paths in fields["channel_paths"]:
        image = np.stack([tifffile.imread(p) for p in paths]).astype(np.float64)
        stats.append(np.concatenate([[*np.percentile(c, [1, 5, 25, 50, 75, 95, 99]), c.mean(),
                                      c.std()] for c in image]))
        name = Path(paths[0]).name
        padded = np.pad(image, ((0, 0), (half, half), (half, half)), mode="reflect")
        cells = by_image.get(name)
        crops = ([padded[:, int(round(y)):int(round(y)) + CELL_SIZE,
                         int(round(x)):int(round(x)) + CELL_SIZE]
                  for x, y in zip(cells["Nuclei_Location_Center_X"],
                                  cells["Nuclei_Location_Center_Y"], strict=True)]
                 if cells is not None else [image])
        hand.append(np.mean([intensity_texture_features(c, size=CELL_SIZE) for c in crops], 0))
        orc.append(oracle.loc[name].to_numpy(np.float64))
    rows = {}
    for label, feats in (("whole-image intensity statistics", stats),
                         ("per-cell hand-crafted (intensity/texture)", hand),
                         ("oracle (ground-truth latents)", orc)):
        x = np.asarray(feats, dtype=np.float64)
        rows[label] = {"seeds": {"-": score(_field_key_frame(fields, x), fields)}}
    rows["_cpu_seconds"] = time.process_time() - t0
    cache.write_text(json.dumps(rows))
    return rows


# --------------------------------------------------------------------------------------------
# one (recipe, seed): a worker process
# --------------------------------------------------------------------------------------------

def _overrides(name: str, shards: Path, seed: int) -> dict:
    """What every recipe changes to run on the cell shards (paths, crop, logging, seed).

    Steps (the CPU budget) set the length: recipes measured in epochs drop them. A recipe that
    first shrinks whole fields (``prescale``: WS-DINO halves the 1024 x 1280 BBBC021 fields)
    gets ``prescale: 1``: the scoreboard's inputs are 40-px single-cell crops already at the
    cell scale the recipe's halving aims at (halved, they are smaller than the crop).
    """
    from cytodata.baselines import load_config

    kw = {"data.train": str(shards), "data.train_split": None, "data.val_split": None,
          "epochs": None,
          "data.crop": TRAIN_CROP, "progress": False, "seed": seed, "device": "cpu",
          "data.threads": 1}
    if getattr(load_config(name), "prescale", 1.0) != 1.0:
        kw["prescale"] = 1.0
    return kw


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def work(name: str, seed: int, data: Path, out: Path, budget_min: float) -> dict:
    """Train ``name`` for ``budget_min`` CPU-minutes, embed trained + random init, score."""
    import torch

    from cytodata.baselines import embed, load_config, train
    from cytodata.schema import read_manifest

    torch.set_num_threads(1)
    if out.exists():        # a rerun of (recipe, seed) replaces the earlier one
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shards = data / "shards"
    kw = _overrides(name, shards, seed)
    first = first_stage(name)
    if first:   # a second stage starts from the same seed's first-stage run (its own budget)
        source = out.parent / f"{first}-seed{seed}" / "run"
        if not (out.parent / f"{first}-seed{seed}" / "result.json").exists():
            raise SystemExit(f"{name} seed {seed} starts from {first} seed {seed}, which has not "
                             f"run under {out.parent}: run both (--only {first},{name})")
        kw["init_from"] = str(source)
    cpu0 = _cpu_seconds()
    # CPU per step from two short runs after a warm-up run (one-off import and first-call costs
    # land in the warm-up; the difference of the other two cancels the per-run start-up)
    spent = []
    for n in (2, CALIBRATION_STEPS, 4 * CALIBRATION_STEPS):
        before = _cpu_seconds()
        train(name, out / f"calibration-{n}", **kw, steps=n, checkpoint_every=n, log_every=n)
        spent.append(_cpu_seconds() - before)
    per_step = (spent[2] - spent[1]) / (3 * CALIBRATION_STEPS)
    if per_step <= 0:   # the start-up cost varied more than 18 steps cost: use the whole run
        per_step = spent[2] / (4 * CALIBRATION_STEPS)
    steps = max(CALIBRATION_STEPS, int(budget_min * 60 / per_step))
    cpu1 = _cpu_seconds()
    run = train(name, out / "run", **kw, steps=steps, checkpoint_every=steps,
                log_every=max(1, steps // 20))
    train_cpu = _cpu_seconds() - cpu1
    cfg = load_config(name)
    vit = any(v in cfg.model for v in VIT_MODELS)
    pools = ("cls", "avg") if vit and cfg.method in ("dino", "ws-dino") else (None,)
    fields = read_manifest(data / "fields")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    result = {"config": name, "seed": seed, "steps": steps, "budget_min": budget_min,
              "overrides": {k: v for k, v in kw.items() if k in ("prescale", "init_from")},
              "model": cfg.model,
              "method": cfg.method, "first_loss": losses[0] if losses else None,
              "last_loss": losses[-1] if losses else None, "rows": {}}
    for pool in pools:
        for init in ("trained", "random init"):
            path = out / f"emb-{init.replace(' ', '-')}-{pool or 'default'}.parquet"
            embed(run, shards, path, progress=False, threads=1, random_init=init != "trained",
                  pool=pool)
            label = f"{name} ({init}{', patch mean' if pool == 'avg' else ''})"
            result["rows"][label] = score(pd.read_parquet(path), fields, seed)
    result["cpu_seconds"] = _cpu_seconds() - cpu0
    result["train_cpu_seconds"] = train_cpu
    (out / "result.json").write_text(json.dumps(result))
    return result


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------

def _wilson(per_seed: list[dict]) -> str:
    from cytodata.evaluate.matching import proportion_ci

    correct = sum(m["correct"] for m in per_seed)
    total = sum(m["total"] for m in per_seed)
    lo, hi = proportion_ci(correct, total, "wilson")
    mean = np.mean([m["accuracy"] for m in per_seed])
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def _bootstrap(values: list[float], n: int = 2000) -> str:
    rng = np.random.default_rng(0)
    v = np.asarray(values)
    if not len(v):
        return "-"
    boots = rng.choice(v, size=(n, len(v))).mean(1)
    return f"{v.mean():.2f} [{np.percentile(boots, 2.5):.2f}, {np.percentile(boots, 97.5):.2f}]"


def table(rows: dict[str, dict], cpu: dict[str, float], beats: dict[str, str],
          steps: dict[str, str] | None = None) -> str:
    """Markdown table: one line per row name; ``rows[name]["seeds"]`` = {seed: score()}."""
    steps = steps or {}
    lines = ["| embedding | seeds | steps (budget, CPU-min) | NSC [Wilson 95%] | NSCB [Wilson 95%] "
             "| mAP [bootstrap 95%] | chance NSC / NSCB / mAP | beats random init (NSC) "
             "| CPU-min per seed (train / all) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        per = list(row["seeds"].values())
        nsc = [p["nsc"] for p in per if "nsc" in p]
        nscb = [p["nscb"] for p in per if "nscb" in p]
        maps = [v for p in per for v in p["map"]["values"]]
        chance = (f"{np.mean([m['chance'] for m in nsc]):.2f} / "
                  + (f"{np.mean([m['chance'] for m in nscb]):.2f}" if nscb else "-")
                  + f" / {np.mean([p['map']['chance'] for p in per]):.2f}")
        seeds = ",".join(str(s) for s in row["seeds"])
        lines.append(f"| {name} | {seeds} | {steps.get(name, '-')} | {_wilson(nsc) if nsc else '-'} | "
                     f"{_wilson(nscb) if nscb else '-'} | {_bootstrap(maps)} | {chance} | "
                     f"{beats.get(name, '-')} | {cpu.get(name, '-')} |")
    return "\n".join(lines)


def collect(results: list[dict], reference: dict) -> tuple[dict, dict, dict, dict]:
    """Rows by name (reference first), CPU-minutes, beats-random-init counts, steps per row."""
    rows = {k: v for k, v in reference.items() if not k.startswith("_")}
    steps: dict[str, str] = {}
    cpu = {k: "0 (no training)" for k in rows}
    cpu[next(iter(rows))] = f"{reference['_cpu_seconds'] / 60:.1f} (all three reference rows)"
    beats: dict[str, str] = {}
    for res in sorted(results, key=lambda r: (r["config"], r["seed"])):
        for label, sc in res["rows"].items():
            rows.setdefault(label, {"seeds": {}})["seeds"][res["seed"]] = sc
        trained = [label for label in res["rows"] if "(trained" in label]
        for label in trained:
            rand = label.replace("(trained", "(random init")
            won = res["rows"][label]["nsc"]["accuracy"] > res["rows"][rand]["nsc"]["accuracy"]
            beats.setdefault(label, [])
            beats[label].append(won)  # type: ignore[union-attr]
        mine = [r for r in results if r["config"] == res["config"]]
        train_min = np.mean([r["train_cpu_seconds"] / 60 for r in mine])
        total_min = np.mean([r["cpu_seconds"] / 60 for r in mine])
        for label in trained:
            cpu[label] = f"{train_min:.1f} / {total_min:.1f}"
        for label in res["rows"]:
            budgets = sorted({r["budget_min"] for r in mine if r.get("budget_min") is not None})
            steps[label] = (f"{min(r['steps'] for r in mine)}-{max(r['steps'] for r in mine)}"
                            + (f" ({', '.join(str(b) for b in budgets)})" if budgets else ""))
    counts = {k: f"{sum(v)}/{len(v)}" for k, v in beats.items()}  # type: ignore[arg-type]
    return rows, cpu, counts, steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None,
                   help="comma-separated recipe names (default: every *-tiny config)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per recipe")
    p.add_argument("--budget", type=float, default=10.0,
                   help="training CPU-minutes per (recipe, seed)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes side by side")
    p.add_argument("--out", default="scoreboard_output")
    p.add_argument("--response-fraction", type=float, default=SCREEN.response_fraction,
                   help="share of a treatment's cells responding at the top dose (the screen's "
                        "phenotype strength; a new --out for another value)")
    p.add_argument("--report", action="store_true",
                   help="only rebuild the table from the runs already under --out")
    p.add_argument("--worker", nargs=2, metavar=("NAME", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out).resolve()
    data = out / "data"
    if args.worker:
        work(args.worker[0], int(args.worker[1]), data,
             out / "runs" / f"{args.worker[0]}-seed{args.worker[1]}", args.budget)
        return
    names = tiny_configs()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            p.error(f"--only {','.join(unknown)}: not a shipped CPU recipe; valid: "
                    f"{', '.join(names)}")
        names = wanted
    t0 = time.perf_counter()
    if args.report:
        report(out, json.loads((data / "prepared.json").read_text()), reference_rows(data),
               f"python benchmarks/scoreboard.py --out {args.out} --report", [], t0)
        return
    info = prepare(data, SCREEN.replace(response_fraction=args.response_fraction))
    print(f"data: {info['fields']} fields, {info['cells']} cells ({info['seconds']} s)",
          flush=True)
    reference = reference_rows(data)
    # first stages before the second stages that start from them
    needs = {n: first_stage(n) for n in names}
    jobs = sorted(((n, s) for n in names for s in range(args.seeds)),
                  key=lambda job: (needs[job[0]] is not None, job[1], job[0]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list[tuple[subprocess.Popen, tuple[str, int]]] = []
    failed = []
    while jobs or running:
        while jobs and len(running) < args.jobs:
            ready = [j for j in jobs if _ready(j, needs, out, running, failed)]
            if not ready:
                if not running:     # waiting on a first stage that is neither run nor queued
                    for name, seed in jobs:
                        print(f"skipped {name} seed {seed}: no {needs[name]} seed {seed} run "
                              f"under {out} (add it to --only)", flush=True)
                    failed.extend(jobs)
                    jobs = []
                break
            name, seed = ready[0]
            jobs.remove((name, seed))
            if needs[name] and (needs[name], seed) in failed:
                failed.append((name, seed))
                print(f"skipped {name} seed {seed}: {needs[name]} seed {seed} failed", flush=True)
                continue
            cmd = [sys.executable, __file__, "--worker", name, str(seed), "--out", str(out),
                   "--budget", str(args.budget)]
            log = open(out / f"{name}-seed{seed}.log", "w")  # noqa: SIM115 (closed with the process)
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                            (name, seed)))
            print(f"started {name} seed {seed}", flush=True)
        time.sleep(2)
        for proc, job in list(running):
            if proc.poll() is not None:
                running.remove((proc, job))
                print(f"finished {job[0]} seed {job[1]}: exit {proc.returncode}", flush=True)
                if proc.returncode:
                    failed.append(job)
    command = (f"python benchmarks/scoreboard.py --seeds {args.seeds} --budget {args.budget}"
               + (f" --only {args.only}" if args.only else ""))
    report(out, info, reference, command, failed, t0)


def _ready(job: tuple[str, int], needs: dict, out: Path, running: list, failed: list) -> bool:
    """A job may start: it needs no first stage, or that stage's same seed has ended."""
    first = needs.get(job[0])
    if not first:
        return True
    if (first, job[1]) in failed:
        return True      # started only to be reported as skipped
    busy = any(j == (first, job[1]) for _, j in running)
    return not busy and (out / "runs" / f"{first}-seed{job[1]}" / "result.json").exists()


def report(out: Path, info: dict, reference: dict, command: str, failed: list,
           t0: float) -> str:
    """Write ``scoreboard.md`` and ``results.json`` from every run under ``out/runs``.

    Runs of earlier invocations into the same ``--out`` (other recipes, budgets or seeds) are
    included; the steps column gives each row's steps and CPU-minute budget.
    """
    results = [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*/result.json"))]
    rows, cpu, beats, steps = collect(results, reference)
    header = (f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on "
              f"{platform.machine()} ({os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}); `{command}`; screen: {info['fields']} fields, "
              f"{info['cells']} cells, response_fraction {info.get('response_fraction', 0.5)}; "
              f"protocol {PROTOCOL}; wall {time.perf_counter() - t0:.0f} s.")
    text = header + "\n\n" + table(rows, cpu, beats, steps)
    if failed:
        text += "\n\nFailed runs (see their logs): " + ", ".join(f"{n} seed {s}" for n, s in failed)
    (out / "scoreboard.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"runs": results, "reference": reference,
                                                  "failed": failed}, default=str))
    print(text)
    return text


if __name__ == "__main__":
    main()
