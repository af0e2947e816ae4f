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
  5. the project's mean teacher (soft pseudo-labels) learning also from the unlabelled test plates
  6. DeepNoise's stage 2 (deepnoise-stage2-tiny, epochs scaled to the run) from row 4's run
  7. row 6 with the student's head loaded too (a diagnostic: DeepNoise starts it fresh)
  8. row 6 at learning rate 1e-3 instead of DeepNoise's 0.1 (a diagnostic)
``--stage2-diagnosis`` trains row 4 and then stage 2 from it with one change each
(``STAGE2_VARIANTS``), to find what makes row 6 drop.
Columns: the priors on each row's probabilities: argmax, plate (exact / DeepNoise balancing),
experiment, group (exact / DeepNoise balancing; groups learned from the training plates; a
plate whose best group is not 100x more likely than the next gets the plate prior), and
group_always (every plate takes its most likely group).

Accuracy is per well on the test plates (sites averaged), mean and standard error over seeds
(screen and training seeded together), with a Wilson interval on the pooled wells. Short CPU
runs on a tiny CNN are far from the paper's 99.6%; the point is the direction of each step.
``--simulated RXRX1_DIR`` runs only the prior columns on simulated logits over the real RxRx1
plate layout (no training, seconds).

    python benchmarks/mean_teacher_rxrx1.py [--steps 60] [--seeds 0,1,2] [--out /tmp/mt-bench]
    python benchmarks/mean_teacher_rxrx1.py --simulated ../shared/data/rxrx1
"""

from __future__ import annotations

import argparse
import json
import math
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
    ("+ mean teacher (ours, test plates)", {"data.normalize": "plate", "head": "arcface",
                                            "mean_teacher": True}),
    ("+ DeepNoise stage 2 from row 4", {"data.normalize": "plate", "head": "arcface",
                                        "mean_teacher": True}),
    ("  stage 2, student head kept", {"init_skip_head": False}),
    ("  stage 2, lr 1e-3 (not 0.1)", {"optim.lr": 1e-3, "optim.min_lr": 1e-5}),
]

#: ``--stage2-diagnosis``: stage 2 from row 4 with one change each (why row 6 drops);
#: "scaled" = the consistency weight times K / 1,139 (DeepNoise's class count, main.py:38)
STAGE2_VARIANTS = [
    ("stage 2 recipe (row 6)", {}),
    ("  no teacher (plain SGD restarts)", {"mean_teacher": False}),
    ("  pseudo-labels off", {"pseudo_label": 0.0}),
    ("  consistency off", {"consistency": 0.0}),
    ("  consistency 100 x K/1139", "scaled"),
    ("  EMA 0.9 throughout (no 0.99)", {"ema_schedule": [[0, 0.5], [1, 0.9]]}),
    ("  ramp-up 5 epochs", {"rampup_epochs": 5}),
    ("  one cosine, no restarts", {"optim.cycles": 1}),
    ("  lr 0.01", {"optim.lr": 0.01, "optim.min_lr": 1e-4}),
    ("  lr 1e-3", {"optim.lr": 1e-3, "optim.min_lr": 1e-5}),
]

#: the prior columns: (name, --prior, --prior-method, --min-group-evidence)
PRIORS = [("argmax", "none", "exact", 0.0), ("plate", "plate", "exact", 0.0),
          ("plate_deepnoise", "plate", "deepnoise", 0.0),
          ("experiment", "experiment", "exact", 0.0),
          ("group", "group", "exact", math.log(100.0)),
          ("group_deepnoise", "group", "deepnoise", math.log(100.0)),
          ("group_always", "group", "exact", 0.0)]


def prior_accuracies(meta: pd.DataFrame, probs: np.ndarray, classes: list[str], groups,
                     label: str = "label") -> dict[str, float]:
    """Per-well accuracy of every prior column on one set of probabilities."""
    from cytodata.baselines.predict import predictions

    out = {}
    for name, prior, method, evidence in PRIORS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, s = predictions(meta, probs, classes, label=label, prior=prior, per="well",
                               prior_method=method, groups=groups, min_group_evidence=evidence)
        out[name] = s["accuracy"]
        if name == "group":
            out["plates_without_group"] = len(s.get("plates_without_group", []))
            out["plates"] = len(s.get("plate_groups", {}))
    out["wells"] = s["rows_scored"]
    return out


def simulated_rows(seeds: list[int], root: Path, signal: float, noise: float) -> pd.DataFrame:
    """The priors on simulated logits over the real RxRx1 plate layout (competition metadata).

    Wells: the treatment wells of the held-out experiments HEPG2-07, HUVEC-16, RPE-07, U2OS-03
    (train.csv, labels known); groups learned from the other training experiments. Logits per
    well: ``N(0, noise)`` for every class (1,108 siRNAs + 31 controls) plus ``signal`` on the
    true class; two sites per well (independent noise), averaged by ``predict``.
    """
    from cytodata.baselines.plate_groups import discover_groups
    from cytodata.sources.rxrx1 import read_rxrx1

    table = read_rxrx1(root)
    train = table[table["dataset"] == "train"]
    held = {"HEPG2-07", "HUVEC-16", "RPE-07", "U2OS-03"}
    fit = train[~train["batch"].isin(held)]
    groups = discover_groups(fit["plate"], fit["sirna"], fit["batch"])
    test = train[train["batch"].isin(held) & (train["well_type"] == "treatment")]
    meta = pd.DataFrame({"key": test["image_id"].astype(str).to_numpy(),
                         "plate": test["plate"].astype(str).to_numpy(),
                         "well": test["well"].astype(str).to_numpy(),
                         "batch": test["batch"].astype(str).to_numpy(),
                         "label": test["sirna"].astype(str).to_numpy()})
    classes = [str(i) for i in range(1139)]
    truth = meta["label"].astype(int).to_numpy()
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        logits = rng.normal(0.0, noise, (len(meta), len(classes)))
        logits[np.arange(len(meta)), truth] += signal
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        t = time.perf_counter()
        row = {"seed": seed, **prior_accuracies(meta, probs, classes, groups)}
        row["seconds"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame, columns: list[str], by: str | None = None) -> pd.DataFrame:
    """Mean, standard error over seeds and a Wilson 95% interval on the pooled wells."""
    from cytodata.evaluate.matching import proportion_ci

    groups = frame.groupby(by, sort=False) if by else [(None, frame)]
    out = []
    for key, part in groups:
        for col in columns:
            v = part[col].astype(float)
            n = int(part["wells"].sum())
            lo, hi = proportion_ci(int(round((v * part["wells"]).sum())), n, "wilson")
            out.append({**({by: key} if by else {}), "prior": col, "mean": v.mean(),
                        "se": v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan"),
                        "wilson_lo": lo, "wilson_hi": hi, "seeds": len(v), "wells": n})
    return pd.DataFrame(out)


def trained_rows(args, seed: int) -> list[dict]:
    """Train the ablation rows on one seeded screen; per-well accuracy of every prior."""
    from cytodata.baselines import train
    from cytodata.baselines.config import parse_set
    from cytodata.baselines.plate_groups import groups_from_shards

    root = Path(args.out) / f"seed{seed}"
    t0 = time.perf_counter()
    train_set, test_set, n_classes = make_screen(
        root, experiments=args.experiments, plates=args.plates, sirnas=args.sirnas,
        size=args.size, plate_effect=args.plate_effect, batch_effect=args.batch_effect,
        seed=seed)
    print(f"seed {seed}: screen + shards {time.perf_counter() - t0:.0f} s; {n_classes} classes",
          flush=True)
    groups = groups_from_shards(train_set)
    common = {"model": args.model, "steps": args.steps, "batch_size": args.batch_size,
              "data.train": str(train_set), "data.crop": args.crop, "data.val_split": None,
              "progress": False, "log_every": 25, "checkpoint_every": args.steps,
              "optim.lr": 1e-3, "optim.milestones": [[0.625, 3.3e-4], [0.875, 3.3e-5]],
              "ema_decay": 0.99, "unlabelled_ratio": 0.5, "seed": seed, "torch_threads": 1}
    # stage 2 at benchmark scale: the recipe's structure, its epochs scaled to the short run
    epoch = max(1, args.steps // 10)
    stage2 = {"model": args.model, "steps": args.steps, "batch_size": args.batch_size,
              "data.train": str(train_set), "data.unlabelled": str(test_set),
              "data.crop": args.crop, "data.val_split": None, "progress": False,
              "log_every": 25, "checkpoint_every": args.steps, "seed": seed,
              "epoch_steps": epoch, "pseudo_first_epoch": 3, "pseudo_warmup_epochs": 4,
              "pseudo_views": 2, "torch_threads": 1,
              "ema_schedule": [[0, 0.5], [1, 0.9], [3, 0.99]], "rampup_epochs": 1}
    stage2.update(parse_set(args.s2_set))
    results = []
    wanted = {int(x) for x in args.rows.split(",")}
    if args.stage2_diagnosis:
        wanted = {4}
    for i, (name, over) in enumerate(ROWS, start=1):
        if i not in wanted:
            continue
        run = root / "runs" / f"row{i}"
        t = time.perf_counter()
        if not (run / "checkpoints" / "last.pt").exists():
            if i >= 6:
                train("deepnoise-stage2-tiny", run,
                      **{**stage2, "init_from": str(root / "runs" / "row4"),
                         **(over if i > 6 else {})})
            else:
                extra = dict(over)
                if over.get("mean_teacher"):
                    extra["data.unlabelled"] = str(test_set)
                    extra.update(parse_set(args.mt_set))
                train("mean-teacher-tiny", run, **{**common, **extra})
        results.append(score_row(run, test_set, groups, n_classes, seed=seed, row=i,
                                 setting=name, train_s=round(time.perf_counter() - t)))
    for j, (name, over) in enumerate(STAGE2_VARIANTS if args.stage2_diagnosis else []):
        if over == "scaled":
            over = {"consistency": 100.0 * n_classes / 1139}
        run = root / "runs" / f"stage2-variant{j}"
        t = time.perf_counter()
        if not (run / "checkpoints" / "last.pt").exists():
            train("deepnoise-stage2-tiny", run,
                  **{**stage2, "init_from": str(root / "runs" / "row4"), **over})
        results.append(score_row(run, test_set, groups, n_classes, seed=seed, row=100 + j,
                                 setting=name, train_s=round(time.perf_counter() - t)))
    return results


def score_row(run, test_set, groups, n_classes: int, **row) -> dict:
    """One table row: the run's per-well accuracies under every prior, with the chance level."""
    from cytodata.baselines.predict import image_probabilities

    index, probs, classes, _ = image_probabilities(run, test_set, progress=False)
    meta = index[[c for c in ("key", "plate", "well", "batch", "label") if c in index]]
    row.update(prior_accuracies(meta, probs, classes, groups))
    row["chance"] = 1.0 / n_classes
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/mean-teacher-rxrx1")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--experiments", type=int, default=3,
                   help="per cell type; the last is a test experiment (>= 3: cell type != batch)")
    p.add_argument("--plates", type=int, default=2, help="siRNA groups = plates per experiment")
    p.add_argument("--sirnas", type=int, default=22)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--plate-effect", type=float, default=0.15)
    p.add_argument("--batch-effect", type=float, default=0.3)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (screen + training)")
    p.add_argument("--rows", default="1,2,3,4,5,6,7,8", help="which ablation rows to train")
    p.add_argument("--mt-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides for the mean-teacher row (e.g. ema_decay=0.9)")
    p.add_argument("--s2-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides for the stage-2 rows and variants")
    p.add_argument("--stage2-diagnosis", action="store_true",
                   help="train row 4, then stage 2 from it with one change each "
                        "(STAGE2_VARIANTS: teacher, pseudo-labels, consistency, EMA, ramp-up, "
                        "restarts, learning rate)")
    p.add_argument("--simulated", default=None, metavar="RXRX1_DIR",
                   help="only the prior rows on simulated logits over the real RxRx1 layout "
                        "(competition CSVs in this folder); no training")
    p.add_argument("--signal", type=float, default=5.0, help="--simulated: true-class logit")
    p.add_argument("--noise", type=float, default=1.0, help="--simulated: logit noise sd")
    args = p.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]
    cols = [name for name, *_ in PRIORS]
    t0 = time.perf_counter()
    if args.simulated:
        frame = simulated_rows(seeds, Path(args.simulated), args.signal, args.noise)
        print(f"\npriors on simulated logits over the real RxRx1 layout (signal {args.signal}, "
              f"noise {args.noise}; {int(frame['wells'].iloc[0])} wells of 4 held-out "
              f"experiments; chance 1/1139):")
        print(summarise(frame, cols).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"total {time.perf_counter() - t0:.0f} s")
        return
    results = []
    for seed in seeds:
        results += trained_rows(args, seed)
    frame = pd.DataFrame(results)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ablation.json").write_text(json.dumps(results, indent=1))
    print(f"\nDeepNoise ablation on a synthetic RxRx1-layout screen ({args.model}, {args.steps} "
          f"steps x {args.batch_size}, {args.crop} px crops, CPU, seeds {seeds}); per-well "
          f"accuracy on the held-out test plates, mean (SE over seeds) [Wilson 95% pooled]:")
    summary = summarise(frame, cols, by="setting")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"chance (argmax): {frame['chance'].iloc[0]:.3f}")
    print("test plates without a group (plate prior used) / all, summed over seeds:")
    print(frame.groupby("setting", sort=False)[["plates_without_group", "plates"]].sum()
          .to_string())
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
