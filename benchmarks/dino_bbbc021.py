"""DINO and WS-DINO vs the random-init backbone on the synthetic BBBC021-layout screen (CPU).

synthetic BBBC021 screen -> manifest -> WebDataset shards -> short CPU runs of ``dino`` and
``ws-dino`` (weak label = compound) -> ``cytodata embed`` (teacher CLS, median of four centre
crops) -> ``bbbc021-ando`` (DMSO z-score per batch, TVN, NSC/NSCB). The baseline is the same
architecture at its random initialisation (the student before any step, as the engine seeds
it), embedded the same way. Prints the three rows side by side like WS-DINO's Table 1.

    python benchmarks/dino_bbbc021.py [--steps 250] [--out /tmp/dino-bbbc021] [--seed 0]

Every run is a real engine run (checkpoints, metrics.jsonl); the figures are from one seed on a
shared CPU, small ViTs and a few hundred steps: an ordering check, not WS-DINO's numbers.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

#: the small-ViT recipe shared by the three rows (WS-DINO's choices otherwise: batch 16,
#: teacher momentum 0.99, no weight decay)
COMMON = {
    "model": "test_vit", "patch_size": 8, "model_kwargs": {"depth": 4}, "drop_path_rate": 0.0,
    "out_dim": 1024, "head_hidden_dim": 256, "head_bottleneck_dim": 64, "local_crops": 4,
    "local_crop": 32, "data.crop": 64, "data.train_split": None, "data.val_split": None,
    "batch_size": 16, "device": "cpu", "precision": "fp32", "channels_last": False,
    "optim.lr": 5e-4, "optim.scale_lr_by_batch": True, "optim.min_lr": 1e-5,
    "optim.warmup_steps": 20, "optim.weight_decay": 0.0, "optim.clip_grad": 3.0,
    "warmup_epochs": None, "freeze_last_layer": 1.0, "log_every": 25, "checkpoint_every": 10_000,
    "progress": False, "data.threads": 1,
}


def make_shards(out: Path, seed: int) -> Path:
    """The synthetic BBBC021-layout screen as a WebDataset shard set."""
    return make_shards_sized(out, seed, image_size=128)


def make_shards_sized(out: Path, seed: int, image_size: int) -> Path:
    """:func:`make_shards` with fields of ``image_size`` pixels."""
    from cytodata import shards
    from cytodata.manifest import build
    from cytodata.synthetic import SyntheticScreen, write_bbbc021_layout

    src = out / "sources" / "bbbc021"
    write_bbbc021_layout(src, SyntheticScreen(seed=seed, image_size=image_size))
    source = {"adapter": "bbbc021", "source": "synth-bbbc021", "params": {"root": str(src)}}
    recipe = {"name": "dino-bench", "seed": seed, "sources": [source]}
    build(recipe, out / "manifest", progress=False)
    shards.write(out / "manifest", out / "shards", format="webdataset", codec="blosc-lz4",
                 samples_per_shard=64, scheduler="synchronous", progress=False)
    return out / "shards"


def evaluate(parquet: Path, manifest: Path) -> dict:
    """NSC/NSCB of one embeddings parquet (metadata from the manifest, as cytodata/demo.py)."""
    from cytodata import schema
    from cytodata.evaluate import run_protocol

    table = pd.read_parquet(parquet)
    feats = [c for c in table.columns if c.startswith("emb_")]
    emb = table[["key", *feats]]
    meta = schema.read_manifest(manifest)
    meta = meta[meta["key"].isin(emb["key"])].reset_index(drop=True)
    m = run_protocol("bbbc021-ando", emb, meta)["metrics"]
    return {"nsc": m["nsc"].accuracy, "nscb": m["nscb"].accuracy if "nscb" in m else float("nan")}


def main(argv=None) -> None:
    from cytodata.baselines import embed, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--out", default="/tmp/dino-bbbc021")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    shard_dir = make_shards(out, args.seed)
    rows = {}
    runs = {"random init": ("dino", {"steps": 1, "optim.lr": 1e-30, "optim.warmup_steps": 0}),
            "DINO": ("dino", {"steps": args.steps}),
            "WS-DINO (compound)": ("ws-dino", {"steps": args.steps, "weak_label": "compound"})}
    for name, (method, extra) in runs.items():
        t0 = time.time()
        cfg = {**COMMON, **extra, "seed": args.seed, "data.train": str(shard_dir)}
        run = train(method, out / "runs" / method.replace("-", "_") / str(extra["steps"]),
                    **{k.replace(".", "__"): v for k, v in cfg.items()})
        parquet = embed(run, shard_dir, out / f"{name.split()[0].lower()}.parquet",
                              device="cpu", progress=False)
        rows[name] = {**evaluate(parquet, out / "manifest"), "steps": extra["steps"],
                      "seconds": time.time() - t0}
        print(f"{name}: {rows[name]}", flush=True)
    print("\n| embeddings (synthetic BBBC021, bbbc021-ando) | steps | NSC | NSCB |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['steps']} | {r['nsc']:.3f} | {r['nscb']:.3f} |")


if __name__ == "__main__":
    main()
