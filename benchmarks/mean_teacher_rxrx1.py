"""DeepNoise's ablation (Fig. 3 and 4) on a synthetic RxRx1-layout screen, short CPU runs.

The screen: ``--experiments`` experiments per cell type (HEPG2, HUVEC, U2OS), the last one of
each cell type held out as the test experiments, ``--plates`` plates each (one siRNA group per
plate, so each siRNA once per experiment; one positive control + EMPTY on every plate), two sites
per well, 6 channels, 8-bit PNGs, with
planted batch (experiment) and plate intensity effects. Manifest -> WebDataset shards (train
experiments / test experiments) -> ``cytodata train`` runs -> ``cytodata predict --per well`` on
the test plates.

Rows, in the paper's order (each adds one change to the row above):
  1. cell-type normalisation, softmax head, students only
  2. batch (experiment) normalisation
  3. plate normalisation
  4. ArcFace head (m = 0.1, s = 30)
  5. mean teacher learning also from the unlabelled test plates
  6. the per-plate prior (post-processing of row 5; every row's before/after is printed too)

Accuracy is per well on the test plates (sites averaged). Short CPU runs on a tiny CNN are far
from the paper's 99.6%; the point is the direction of each step.

    python benchmarks/mean_teacher_rxrx1.py [--steps 60] [--out /tmp/mt-bench] [--model resnet10t]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

EXPERIMENTS = ("HEPG2", "HUVEC", "U2OS")


def make_screen(root: Path, *, experiments: int, plates: int, sirnas: int, size: int,
                plate_effect: float, batch_effect: float, seed: int) -> tuple[Path, Path, int]:
    """Write the synthetic screen and its train/test shard sets; returns (train, test, classes)."""
    from cytodata import shards
    from cytodata.schema import conform, make_key
    from cytodata.sources.rxrx1 import read_rxrx1
    from cytodata.synthetic import SyntheticScreen, write_rxrx1_layout

    exps = tuple(f"{c}-{i + 1:02d}" for c in EXPERIMENTS for i in range(experiments))
    test = tuple(f"{c}-{experiments:02d}" for c in EXPERIMENTS)
    wells = sirnas + 2                      # classes: the siRNAs + poscon + EMPTY
    config = SyntheticScreen(rxrx_experiments=exps, rxrx_test_experiments=test,
                             rxrx_sirna_groups=plates, rxrx_sirnas=sirnas,
                             rxrx_positive_controls=1, image_size=size, seed=seed,
                             plate_effect=plate_effect, batch_effect=batch_effect)
    if not (root / "rxrx1" / "metadata.csv").exists():
        write_rxrx1_layout(root / "rxrx1", config)
    table = read_rxrx1(root / "rxrx1")
    table["source"] = "synth-rxrx1"
    table["label"] = table["sirna"]
    table["split"] = table["dataset"].map({"train": "train", "test": "test"})
    table["key"] = [make_key(s, i) for s, i in zip(table["source"], table["image_id"], strict=True)]
    table = conform(table)
    out = {}
    for split in ("train", "test"):
        part = table[table["split"] == split].reset_index(drop=True)
        out[split] = root / "shards" / split
        if not (out[split] / "shards.json").exists():
            shards.write(part, out[split], samples_per_shard=128, scheduler="synchronous",
                         progress=False)
    return out["train"], out["test"], wells


ROWS = [
    ("cell-type norm, softmax", {"data.normalize": "cell_type", "head": "softmax",
                                 "mean_teacher": False}),
    ("+ batch norm", {"data.normalize": "batch", "head": "softmax", "mean_teacher": False}),
    ("+ plate norm", {"data.normalize": "plate", "head": "softmax", "mean_teacher": False}),
    ("+ ArcFace", {"data.normalize": "plate", "head": "arcface", "mean_teacher": False}),
    ("+ mean teacher (test plates)", {"data.normalize": "plate", "head": "arcface",
                                      "mean_teacher": True}),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/mean-teacher-rxrx1")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--experiments", type=int, default=3,
                   help="per cell type; the last is a test experiment (>= 3: cell type != batch)")
    p.add_argument("--plates", type=int, default=2)
    p.add_argument("--sirnas", type=int, default=22)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--plate-effect", type=float, default=0.15)
    p.add_argument("--batch-effect", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", default="1,2,3,4,5", help="which ablation rows to train")
    p.add_argument("--mt-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides for the mean-teacher row (e.g. ema_decay=0.9)")
    args = p.parse_args()

    from cytodata.baselines import train
    from cytodata.baselines.config import parse_set
    from cytodata.baselines.predict import accuracy, predict
    from cytodata.baselines.prior import apply_prior

    root = Path(args.out)
    t0 = time.perf_counter()
    train_set, test_set, n_classes = make_screen(
        root, experiments=args.experiments, plates=args.plates, sirnas=args.sirnas,
        size=args.size, plate_effect=args.plate_effect, batch_effect=args.batch_effect,
        seed=args.seed)
    print(f"screen + shards: {time.perf_counter() - t0:.0f} s; {n_classes} classes")
    common = {"model": args.model, "steps": args.steps, "batch_size": args.batch_size,
              "data.train": str(train_set), "data.crop": args.crop, "data.val_split": None,
              "progress": False, "log_every": 25, "checkpoint_every": args.steps,
              "optim.lr": 1e-3, "optim.milestones": [[0.625, 3.3e-4], [0.875, 3.3e-5]],
              "ema_decay": 0.99, "unlabelled_ratio": 0.5, "seed": args.seed}
    results = []
    wanted = {int(x) for x in args.rows.split(",")}
    for i, (name, over) in enumerate(ROWS, start=1):
        if i not in wanted:
            continue
        run = root / "runs" / f"row{i}"
        extra = dict(over)
        if over.get("mean_teacher"):
            extra["data.unlabelled"] = str(test_set)
            extra.update(parse_set(args.mt_set))
        t = time.perf_counter()
        if not (run / "checkpoints" / "last.pt").exists():
            train("mean-teacher-tiny", run, **{**common, **extra})
        t_train = time.perf_counter() - t
        row = {"row": i, "setting": name, "train_s": round(t_train)}
        out = root / "pred" / f"row{i}.parquet"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = predict(run, test_set, out, per="well", prior="plate", prior_method="exact",
                        progress=False)
        row["acc"], row["acc_prior_exact"] = s["accuracy_argmax"], s["accuracy"]
        # the iterative balancing on the same probabilities
        pred = pd.read_parquet(out)
        probs = np.stack(pred["probabilities"].to_numpy())
        it = apply_prior(probs, pred["plate"].astype(str).to_numpy(), "iterative").classes
        row["acc_prior_iterative"], _ = accuracy(it, pred["label"], s["classes"])
        row["wells"] = s["rows_scored"]
        results.append(row)
        print(json.dumps(row), flush=True)
    table = pd.DataFrame(results)
    print()
    print(f"DeepNoise ablation on a synthetic RxRx1-layout screen ({n_classes} classes, "
          f"{args.model}, {args.steps} steps x {args.batch_size}, {args.crop} px crops, CPU); "
          "per-well accuracy on the held-out test plates:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if 5 in wanted:
        last = table[table["row"] == 5].iloc[0]
        print(f"\n6. + per-plate prior (row 5): {last['acc']:.3f} -> "
              f"{last['acc_prior_exact']:.3f} exact, {last['acc_prior_iterative']:.3f} iterative")
    (root / "ablation.json").write_text(json.dumps(results, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
