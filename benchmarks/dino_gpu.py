"""WS-DINO at WS-DINO's scale on one GPU: ViT-S/8, 224-px global / 96-px local crops, batch 16.

Writes a synthetic BBBC021-layout screen with 448x448 fields (four 224-px centre crops fit)
-> manifest -> WebDataset shards, then trains ``ws-dino`` (weak label = compound) for
``--steps`` steps and prints images/s (steady state, from metrics.jsonl after the first
``--skip`` steps), the data-wait fraction and peak GPU memory, against the same run's
first-window figures. One prepared script for a device session:

    python benchmarks/dino_gpu.py --steps 300            # on the GPU machine
    python benchmarks/dino_gpu.py --device cpu --steps 3 --model test_vit --crop 32 --local 16
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> dict:
    import torch
    from dino_bbbc021 import make_shards_sized

    from cytodata.baselines import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="ws-dino", help="a ws-dino config (the CPU check: ws-dino-tiny)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--skip", type=int, default=50, help="warm-up steps left out of the rate")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="vit_small_patch8_224")
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--local", type=int, default=96)
    ap.add_argument("--image", type=int, default=448)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default="/tmp/dino-gpu")
    ap.add_argument("--shards", default=None,
                    help="an existing shard set with a `compound` column (default: write one)")
    ap.add_argument("--out-dim", type=int, default=None,
                    help="DINO prototypes (default: 65536 on CUDA, 256 on the CPU)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    shards = Path(args.shards) if args.shards else make_shards_sized(out, seed=0, image_size=args.image)
    print(f"shards written in {time.time() - t0:.0f} s", flush=True)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    log_every = max(1, min(25, args.steps))
    run = train(args.config, out / "run", **{
        "model": args.model, "data__train": str(shards), "data__train_split": None,
        "data__crop": args.crop, "local_crop": args.local, "batch_size": args.batch,
        "steps": args.steps, "weak_label": "compound", "device": args.device,
        "log_every": log_every, "checkpoint_every": 10**9, "progress": False,
        "warmup_epochs": None, "optim__warmup_steps": min(20, args.steps), "data__threads": 8,
        "out_dim": args.out_dim or (65536 if args.device.startswith("cuda") else 256)})
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    steady = [r for r in rows if r["step"] > args.skip] or rows
    rate = sum(r["images_per_s"] for r in steady) / len(steady)
    wait = sum(r["data_wait"] for r in steady) / len(steady)
    cuda = args.device.startswith("cuda")
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    print(f"ws-dino {args.model} crop {args.crop}/{args.local} batch {args.batch}: "
          f"{rate:.1f} images/s steady (first window {rows[0]['images_per_s']:.1f}), data wait "
          f"{wait:.3f}, peak GPU memory {mem:.2f} GiB, final loss {rows[-1]['loss']:.3f} "
          f"(ln K {rows[-1]['loss'] / rows[-1]['loss_over_ln_k']:.2f}), teacher entropy "
          f"{rows[-1]['teacher_entropy']:.2f}")
    return {"model": args.model, "crop": args.crop, "local_crop": args.local, "batch": args.batch,
            "steps": args.steps, "device": args.device, "images_per_s": rate,
            "first_window_images_per_s": rows[0]["images_per_s"], "data_wait": wait,
            "peak_memory_gib": mem if cuda else None, "final_loss": rows[-1]["loss"],
            "loss_over_ln_k": rows[-1]["loss_over_ln_k"], "teacher_entropy": rows[-1]["teacher_entropy"]}


if __name__ == "__main__":
    main()
