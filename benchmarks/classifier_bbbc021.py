"""Scientific check of the weak-label classifier in single-cell mode (Cell Painting CNN recipe).

On the synthetic BBBC021-layout screen (MOA phenotypes, batch/plate effects, one MOA confined to
one week): fields -> manifest (bbbc021 adapter) -> one crop per true nucleus centre
(``cytodata cells``; weak label = treatment = ``compound@concentration``) -> WebDataset shards
-> ``baselines.train`` (classifier) -> ``baselines.embed`` (cells averaged per field) ->
``run_protocol("bbbc021-ando")`` (DMSO z-score per batch, TVN, well mean, treatment median,
NSC/NSCB over MOAs). The MOA is never shown to the model.

Baseline, measured in the same run: the same backbone at random initialisation, i.e. the trained
run's checkpoint with the model weights replaced by timm's initialisation under the run's seed
(BatchNorm running statistics at their initial 0/1); embedded and evaluated by the same code.

Usage: python benchmarks/classifier_bbbc021.py [--out DIR] [--steps 200] [--model resnet10t]
       [--torch-threads 1]
Prints one markdown table (NSC, NSCB for both) and writes OUT/results.json.

Recipes: ``--recipes cellpainting-cnn-tiny cytoimagenet-tiny classifier-tiny --seeds 0 1 2``
trains each shipped config as it is (only the data, the seed and, for the Cell Painting CNN,
its box size = the stored cell crop change) on the same cells, embeds with the recipe's own
embedding (layer, view, normalisation) and the same backbone at random init, and scores
NSC/NSCB (bbbc021-ando) with Wilson intervals over the seeds' pooled counts plus the
``cellpainting-cnn`` protocol's mAP on the cells. Prints one markdown table, writes
OUT/recipes.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cytodata.synthetic import DEFAULT_MOAS, SyntheticScreen

#: a small screen: 3 weeks x 2 plates x 24 wells x 2 sites of 96 px (~7 cells per DMSO field),
#: 8 MOAs x 3 compounds x 2 doses (48 treatments; with the 5 default MOAs x 2 compounds both
#: models reach NSCB 1.0, too few treatments to tell them apart there)
SCREEN = SyntheticScreen(n_batches=3, plates_per_batch=2, wells_per_plate=24,
                         dmso_wells_per_plate=4, sites_per_well=2, image_size=96, seed=0,
                         moas=DEFAULT_MOAS + ("Microtubule stabilizers", "Kinase inhibitors",
                                              "Eg5 inhibitors"),
                         compounds_per_moa=3)
CELL_SIZE = 40      # px crop around each nucleus (cells have ~8-17 px semi-axes here)
TRAIN_CROP = 32     # random 32 px training crops inside the 40 px cell crop; embed: centre crop


def prepare(out: Path, screen: SyntheticScreen = SCREEN, cell_size: int = CELL_SIZE) -> dict:
    """Write the screen, the field manifest, the cell manifest and its shards under ``out``."""
    from cytodata.curate.cells import build_cells
    from cytodata.manifest import build
    from cytodata.shards import write
    from cytodata.synthetic import write_bbbc021_layout

    layout = write_bbbc021_layout(out / "screen", screen)
    recipe = {"name": "bbbc021-cells", "seed": 0,
              "sources": [{"adapter": "bbbc021", "source": "synth-bbbc021",
                           "params": {"root": str(layout["root"])}}]}
    build(recipe, out / "fields", progress=False)
    prov = build_cells(out / "fields", layout["locations_csv"], out / "cells", cell_size,
                       label_columns=("compound", "concentration"))
    write(out / "cells", out / "shards", codec="blosc-lz4", samples_per_shard=512,
          scheduler="synchronous", progress=False)
    return {"fields": out / "fields", "cells": out / "cells", "shards": out / "shards",
            "n_cells": prov["counts"]["cells"], "n_fields": prov["counts"]["fields"]}


def random_init_checkpoint(run: Path, dest: Path) -> Path:
    """The run's checkpoint with the model re-initialised as the engine does (seed, timm init)."""
    from cytodata.baselines import checkpoint, load_config
    from cytodata.baselines.models import create

    state = checkpoint.load(run)
    cfg = load_config(state["config"])
    torch.manual_seed(cfg.seed)
    model = create(cfg.model, in_chans=len(state["channels"]), num_classes=len(state["classes"]),
                   pretrained=cfg.pretrained)
    state["modules"] = {"model": model.state_dict()}
    torch.save(state, dest)
    return dest


def evaluate(embeddings: Path, fields: Path) -> dict:
    """NSC / NSCB (bbbc021-ando) of per-field embeddings against the field manifest."""
    from cytodata.evaluate import run_protocol
    from cytodata.schema import read_manifest

    emb = pd.read_parquet(embeddings)
    cols = [c for c in emb.columns if c.startswith("emb_")]
    meta = read_manifest(fields)
    result = run_protocol("bbbc021-ando", emb[["key"] + cols], meta)
    m = result["metrics"]
    return {"nsc": float(m["nsc"].accuracy),
            "nscb": float(m["nscb"].accuracy) if "nscb" in m else float("nan"),
            "fields": int(len(emb)), "dims": len(cols)}


def run(out: "str | Path", *, steps: int = 200, batch_size: int = 64,
        model: str = "resnet10t", lr: float = 3e-3, seed: int = 0,
        screen: SyntheticScreen = SCREEN, cell_size: int = CELL_SIZE,
        train_crop: int = TRAIN_CROP, torch_threads: int | None = None) -> dict:
    """The whole check; returns ``{"trained": {...}, "random": {...}, "n_cells", "seconds"}``.

    ``torch_threads``: intra-op threads for the run (restored after). On a small shared machine
    1 is much faster: OpenMP threads spin against the loader's decode threads.
    """
    previous = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        return _run(Path(out), steps, batch_size, model, lr, seed, screen, cell_size, train_crop)
    finally:
        torch.set_num_threads(previous)


def _run(out: Path, steps: int, batch_size: int, model: str, lr: float, seed: int,
         screen: SyntheticScreen, cell_size: int, train_crop: int) -> dict:
    from cytodata.baselines import train
    from cytodata.baselines.embedding import embed

    t0 = time.perf_counter()
    data = prepare(out, screen, cell_size)
    t_data = time.perf_counter() - t0
    run_dir = train("classifier-tiny", out / "run", **{
        "data.train": str(data["shards"]), "data.train_split": None, "data.val_split": None,
        "data.crop": train_crop, "model": model, "steps": steps, "batch_size": batch_size,
        "optim.lr": lr, "optim.warmup_steps": max(1, steps // 20), "checkpoint_every": steps,
        "log_every": max(1, steps // 10), "progress": False, "seed": seed})
    t_train = time.perf_counter() - t0 - t_data
    results = {}
    for name, ckpt in (("trained", run_dir),
                       ("random", random_init_checkpoint(run_dir, out / "random-init.pt"))):
        emb = embed(ckpt, data["shards"], out / f"embeddings-{name}.parquet", progress=False)
        results[name] = evaluate(emb, data["fields"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    results.update(n_cells=data["n_cells"], n_fields=data["n_fields"], steps=steps, model=model,
                   first_loss=losses[0], last_loss=losses[-1],
                   seconds={"data": round(t_data, 1), "train": round(t_train, 1),
                            "total": round(time.perf_counter() - t0, 1)})
    return results


def run_recipe(data: dict, out: Path, recipe: str, seed: int) -> dict:
    """Train shipped config ``recipe`` with ``seed`` on the prepared cells; score it and the same
    backbone at random init. Returns ``{"trained": {...}, "random": {...}, "seconds", "steps"}``."""
    from cytodata.baselines import load_config, train
    from cytodata.baselines.embedding import embed

    t0 = time.perf_counter()
    overrides = {"data.train": str(data["shards"]), "data.train_split": None, "data.val_split": None,
                 "progress": False, "seed": seed, "checkpoint_every": 100_000, "torch_threads": 1}
    if load_config(recipe).data.normalize == "crop_minmax":   # DeepProfiler: box size = the crop
        overrides["data.crop"] = CELL_SIZE
    run_dir = train(recipe, out / f"{recipe}-s{seed}", **overrides)
    seconds = time.perf_counter() - t0
    res = {"recipe": recipe, "seed": seed, "seconds": round(seconds, 1),
           "steps": int(load_config(str(run_dir / "config.yaml")).steps)}
    # resizing recipes embed at their training size (all cells are 40 px; native would feed 40)
    view = "whole" if load_config(recipe).data.resize else None
    for name, rand in (("trained", False), ("random", True)):
        emb = embed(run_dir, data["shards"], out / f"{recipe}-s{seed}-{name}.parquet", progress=False,
                    random_init=rand, per="image", view=view)
        res[name] = evaluate_cells(emb, data)
    return res


def evaluate_cells(embeddings: Path, data: dict) -> dict:
    """NSC/NSCB (bbbc021-ando on cells averaged per field) and the cellpainting-cnn protocol."""
    from cytodata.baselines.embedding import _per_field
    from cytodata.evaluate import run_protocol
    from cytodata.schema import read_manifest

    cells = pd.read_parquet(embeddings)
    cols = [c for c in cells.columns if c.startswith("emb_")]
    fields = _per_field(cells)
    result = run_protocol("bbbc021-ando", fields[["key"] + cols], read_manifest(data["fields"]))
    m = result["metrics"]
    out = {k: {"correct": int(m[k].correct), "total": int(m[k].total), "accuracy": float(m[k].accuracy),
               "chance": float(m[k].chance)} for k in ("nsc", "nscb") if k in m}
    meta = read_manifest(data["cells"])
    try:
        cp = run_protocol("cellpainting-cnn", cells[["key"] + cols], meta)["metrics"]
        out["cp"] = {k: cp[k] for k in ("map", "precision_top1", "recall_top10", "enrichment_top1")}
        out["cp_chance"] = cp["chance"]
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        out["cp_error"] = f"{type(exc).__name__}: {exc}"
    out["dims"] = len(cols)
    return out


def pooled(rows: list[dict], which: str, metric: str) -> tuple[float, float, float, float]:
    """(accuracy, Wilson low, Wilson high, chance) over the seeds' pooled counts."""
    from cytodata.evaluate.matching import proportion_ci

    correct = sum(r[which][metric]["correct"] for r in rows)
    total = sum(r[which][metric]["total"] for r in rows)
    lo, hi = proportion_ci(correct, total, "wilson")[:2]
    return correct / total, lo, hi, float(np.mean([r[which][metric]["chance"] for r in rows]))


def recipes_table(rows: list[dict]) -> str:
    """Markdown: per recipe, trained vs random init: NSC, NSCB (pooled Wilson 95%), chance, mAP."""
    lines = ["| recipe | embeddings | NSC [95% CI] | NSCB [95% CI] | chance NSC / NSCB | "
             "mAP (cellpainting-cnn) mean over seeds | per-seed NSC | steps | train s/seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        rs = [r for r in rows if r["recipe"] == recipe]
        for which in ("trained", "random"):
            nsc_ = pooled(rs, which, "nsc")
            nscb_ = pooled(rs, which, "nscb") if all("nscb" in r[which] for r in rs) else None
            maps = [r[which]["cp"]["map"] for r in rs if "cp" in r[which]]
            chance_map = np.mean([r[which]["cp_chance"]["map"] for r in rs if "cp_chance" in r[which]]) \
                if maps else float("nan")
            per_seed = ", ".join(f"{r[which]['nsc']['accuracy']:.2f}" for r in rs)
            nscb_txt = (f"{nscb_[0]:.3f} [{nscb_[1]:.2f}, {nscb_[2]:.2f}]" if nscb_ else "n/a")
            chance = f"{nsc_[3]:.3f} / {nscb_[3]:.3f}" if nscb_ else f"{nsc_[3]:.3f}"
            label = "trained" if which == "trained" else "same backbone, random init"
            lines.append(f"| {recipe} | {label} | {nsc_[0]:.3f} [{nsc_[1]:.2f}, {nsc_[2]:.2f}] | "
                         f"{nscb_txt} | {chance} | "
                         f"{(np.mean(maps) if maps else float('nan')):.3f} (chance ~{chance_map:.3f}) | "
                         f"{per_seed} | {rs[0]['steps']} | "
                         f"{np.mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(lines)


def table(results: dict) -> str:
    """Markdown table of NSC/NSCB, trained vs random init."""
    lines = ["| embeddings | NSC | NSCB |", "|---|---|---|"]
    for name, label in (("trained", f"classifier {results['model']}, {results['steps']} steps "
                                     "(treatment labels, single cells)"),
                        ("random", "same backbone, random init")):
        r = results[name]
        lines.append(f"| {label} | {r['nsc']:.3f} | {r['nscb']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--recipes", nargs="*", default=None,
                        help="shipped configs to compare with random init (e.g. cellpainting-cnn-tiny "
                             "cytoimagenet-tiny classifier-tiny)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--difficulty", default="easy", choices=["easy", "hard"],
                        help="the synthetic screen: easy (MOAs differ in size/count/brightness) or "
                             "hard (morphology and arrangement only; cytodata.synthetic)")
    args = parser.parse_args()
    if args.recipes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(args.out) if args.out else Path(tmp)
            t0 = time.perf_counter()
            if args.torch_threads:
                torch.set_num_threads(args.torch_threads)
            data = prepare(out, SCREEN.replace(difficulty=args.difficulty))
            rows = []
            for recipe in args.recipes:
                for seed in args.seeds:
                    rows.append({**run_recipe(data, out, recipe, seed), "difficulty": args.difficulty})
                    (out / "recipes.json").write_text(json.dumps(rows, indent=2, default=str))
                    print(f"{recipe} seed {seed}: {rows[-1]['seconds']} s", flush=True)
        print(f"{data['n_cells']} cells from {data['n_fields']} fields; total "
              f"{time.perf_counter() - t0:.0f} s")
        print(recipes_table(rows))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        results = run(out, steps=args.steps, batch_size=args.batch_size, model=args.model,
                      lr=args.lr, seed=args.seed, torch_threads=args.torch_threads)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"{results['n_cells']} cells from {results['n_fields']} fields; loss "
          f"{results['first_loss']:.3f} -> {results['last_loss']:.3f}; "
          f"seconds {results['seconds']}")
    print(table(results))


if __name__ == "__main__":
    main()
