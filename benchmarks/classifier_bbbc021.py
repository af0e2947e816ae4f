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
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

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
    from cytodata.baselines import embed, train

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
    args = parser.parse_args()
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
