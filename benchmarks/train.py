"""Training throughput: the engine fed by the real loader vs the same batches already on the device.

  loader  ``cytodata.baselines.train`` on WebDataset shards (StreamingDataset, threaded layout,
          uint16 to the device, normalise there): images/s and data-wait fraction from the run's
          ``metrics.jsonl`` (the first log window, with start-up and warm-up, is left out)
  bound   the same method's loss + backward + optimiser step over batches taken from the same
          loader beforehand and kept on the device, already converted and normalised: the upper
          bound no loader can beat (no reading, decoding, host-to-device copy or conversion)

Prints loader images/s, bound images/s, their ratio (target on CUDA: >= 0.9 for EfficientNet-B0,
5 channels, 224 px crops, batch 256, bf16) and the data-wait fraction.

Usage:
  python benchmarks/train.py                      # CUDA defaults: efficientnet_b0, 5 x 256 px
                                                  # shards, 224 crops, batch 256, bf16
  python benchmarks/train.py --tiny               # CPU: classifier-tiny (test_efficientnet,
                                                  # 40 px shards, 32 crops, batch 16, fp32)
  options: --model --channels --size --crop --batch --steps --n --threads --device --precision
           --torch-threads --resident --dir --compile (torch.compile on both sides)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

CUDA_DEFAULTS = dict(config="classifier", model="efficientnet_b0", channels=5, size=256, crop=224,
                     batch=256, steps=60, n=2048, device="cuda", precision="bf16", threads=8)
TINY_DEFAULTS = dict(config="classifier-tiny", model="test_efficientnet", channels=5, size=40,
                     crop=32, batch=16, steps=100, n=400, device="cpu", precision="fp32",
                     threads=2)


def overrides(args, shards: Path) -> dict:
    """Config keys shared by both sides (one config, so both run the same method and model)."""
    return {"data.train": str(shards), "data.train_split": None, "data.val_split": None,
            "data.crop": args.crop, "data.threads": args.threads, "model": args.model,
            "batch_size": args.batch, "steps": args.steps, "device": args.device,
            "precision": args.precision, "checkpoint_every": args.steps, "progress": False,
            "log_every": args.window, "optim.warmup_steps": 0, "optim.schedule": "constant",
            "compile": bool(getattr(args, "compile", False))}


def loader_side(args, shards: Path, run: Path) -> dict:
    """Train with the engine; images/s and data wait over the log windows after the first."""
    from cytodata.baselines import train

    train(args.config, run, **overrides(args, shards))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "images_per_s" in r][1:]   # first window: start-up, warm-up
    # windows are equally many steps, so the harmonic mean is images / total time
    ips = len(rows) / sum(1.0 / r["images_per_s"] for r in rows)
    wait = sum(r["data_wait"] for r in rows) / len(rows)
    return {"images_per_s": ips, "data_wait": wait, "windows": len(rows)}


def bound_side(args, shards: Path, run: Path) -> dict:
    """The engine's step (method.loss, backward, optimiser) over device-resident batches."""
    from cytodata.baselines import augment, load_config, runtime
    from cytodata.baselines.data import DevicePrep, loader
    from cytodata.baselines.engine import Engine
    from cytodata.baselines.methods import METHODS

    cfg = load_config(args.config, overrides(args, shards))
    engine = Engine(cfg, run)
    device = runtime.resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_ds, _, info, _ = engine._datasets(device)
    train_ds.set_epoch(0)
    method = METHODS.get(cfg.method)(cfg, info, device)
    module = method.trainable()
    if cfg.channels_last:
        module.to(memory_format=torch.channels_last)
    model = torch.compile(module) if cfg.compile else module
    optimizer = engine._optimizer(module, method)
    prep = DevicePrep(info.stats, device, cfg.channels_last)
    resident = []
    for batch in loader(train_ds, cfg.batch_size, pin=device.type == "cuda"):
        if len(batch["key"]) < cfg.batch_size:
            continue
        batch["image"] = prep(batch["image"], batch["meta"])
        batch["label"] = batch["label"].to(device)
        resident.append(batch)
        if len(resident) == args.resident:
            break
    module.train()

    def step(i: int) -> None:
        batch = resident[i % len(resident)]
        optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(i)
        g = augment.step_generator(cfg.seed, i, 0)
        with runtime.autocast(device, cfg.precision):
            loss, _ = method.loss(model, batch, i, g)
        loss.backward()
        optimizer.step()
        method.after_step(i)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(args.window):        # warm-up, like the loader side's first window
        step(i)
    sync()
    t0 = time.perf_counter()
    timed = args.steps - args.window
    for i in range(args.window, args.steps):
        step(i)
    sync()
    seconds = time.perf_counter() - t0
    return {"images_per_s": timed * cfg.batch_size / seconds, "resident_batches": len(resident)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU classifier-tiny settings")
    for name, kind in (("config", str), ("model", str), ("channels", int), ("size", int),
                       ("crop", int), ("batch", int), ("steps", int), ("n", int), ("device", str),
                       ("precision", str), ("threads", int)):
        parser.add_argument(f"--{name}", type=kind, default=None)
    parser.add_argument("--resident", type=int, default=8,
                        help="distinct batches kept on the device")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trained module (both sides)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads for both sides (1 is fastest on a shared "
                             "2-core machine: OpenMP threads spin against the decode threads)")
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    for k, v in (TINY_DEFAULTS if args.tiny else CUDA_DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.window = max(1, args.steps // 5)
    from cytodata.loaders.demo import write_demo_shards

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.dir) if args.dir else Path(tmp)
        shards = work / "shards"
        t0 = time.perf_counter()
        if not (shards / "shards.json").exists():
            write_demo_shards(shards, n=args.n, shape=(args.channels, args.size, args.size),
                              pixels="cells", samples_per_shard=256, images=work / "images")
        print(f"shards: {args.n} x {args.channels} x {args.size} x {args.size} uint16 "
              f"({time.perf_counter() - t0:.0f} s to write)", flush=True)
        stamp = time.strftime("%H%M%S")
        ours = loader_side(args, shards, work / f"run-loader-{stamp}")
        bound = bound_side(args, shards, work / f"run-bound-{stamp}")
    ratio = ours["images_per_s"] / bound["images_per_s"]
    print(f"model {args.model}, {args.channels} channels, {args.crop} px crops, "
          f"batch {args.batch}, {args.precision} on {args.device}; {args.steps} steps, "
          f"first {args.window} left out")
    print(f"loader (engine + StreamingDataset): {ours['images_per_s']:8.1f} images/s, "
          f"data wait {ours['data_wait']:.3f} of step time")
    print(f"bound (batches resident on device): {bound['images_per_s']:8.1f} images/s")
    print(f"ratio loader / bound: {ratio:.3f}")
    return {"model": args.model, "channels": args.channels, "crop": args.crop, "batch": args.batch,
            "precision": args.precision, "device": args.device, "steps": args.steps,
            "compile": args.compile, "loader_images_per_s": ours["images_per_s"],
            "bound_images_per_s": bound["images_per_s"], "ratio": ratio, "data_wait": ours["data_wait"]}


if __name__ == "__main__":
    main()
