"""``cytodata train`` and ``cytodata embed``."""

from __future__ import annotations

import argparse

from .config import EMBED_POOLS


def _train(args) -> int:
    from .config import parse_set

    if args.list:
        from .describe import format_list, list_configs

        print(format_list(list_configs()))
        return 0
    if args.show:
        from .describe import format_show

        print(format_show(args.show))
        return 0
    from .engine import train
    if not args.config or not args.out:
        raise SystemExit("cytodata train: CONFIG and -o RUN_DIR are required (see --help)")
    overrides = parse_set(args.set)
    if args.quiet:
        overrides["progress"] = False
    out = train(args.config, args.out, resume=args.resume, **overrides)
    import os

    if os.environ.get("RANK", "0") == "0":
        print(f"run folder: {out} (config.yaml, metrics.jsonl, checkpoints/last.pt)")
    return 0


def _embed(args) -> int:
    from .embedding import embed

    out = embed(args.checkpoint, args.shards, args.out, device=args.device,
                batch_size=args.batch_size, per=args.per, threads=args.threads,
                progress=not args.quiet, random_init=args.random_init, pool=args.pool,
                layer=args.layer, view=args.view, channels=args.channels)
    print(f"embeddings: {out}")
    return 0


def _predict(args) -> int:
    from .predict import format_summary, predict

    summary = predict(args.run, args.shards, args.out, prior=args.prior, per=args.per,
                      prior_method=args.prior_method, device=args.device,
                      batch_size=args.batch_size, threads=args.threads, progress=not args.quiet,
                      train_plates=args.train_plates,
                      min_group_evidence=args.min_group_evidence, tta=args.tta)
    print(format_summary(summary))
    return 0


def register(subparsers) -> None:
    """Add ``train``, ``embed`` and ``predict``."""
    from .config import config_names

    p = subparsers.add_parser(
        "train", help="train a baseline (classifier, ...) from a config on shard sets",
        description="Train a baseline on the one engine. CONFIG is a YAML path or a shipped "
                    f"config: {', '.join(config_names())}. Under torchrun, DDP is used "
                    "(gloo on CPU, NCCL on CUDA): torchrun --nproc_per_node N -m cytodata train ...",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="shipped config name or YAML path")
    p.add_argument("-o", "--out", help="run folder (config.yaml, metrics.jsonl, checkpoints/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key by dotted path, e.g. --set data.train=SHARDS "
                        "--set steps=1000 --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in the run folder (same results "
                        "as the uninterrupted run)")
    p.add_argument("--list", action="store_true",
                   help="list the shipped configs (name, paper recipe or ours, method, one-line "
                        "description) and exit")
    p.add_argument("--show", metavar="NAME",
                   help="print every resolved key of config NAME with its default and the source "
                        "the config cites for it, and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    e = subparsers.add_parser(
        "embed", help="embed a shard set with a trained run -> embeddings.parquet",
        description="One row per image key: its index metadata and emb_0..emb_{D-1}. Full fields: "
                    "median over four centre crops (WS-DINO); single-cell sets: mean per field. "
                    "Resumable per shard (OUT.parts/).")
    e.add_argument("checkpoint", help="run folder or checkpoint file")
    e.add_argument("shards", help="shard set (folder or URL)")
    e.add_argument("-o", "--out", required=True, help="output parquet file")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    e.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    e.add_argument("--per", default="auto", choices=["auto", "image", "field"],
                   help="one row per image, or per field (cells averaged); auto detects cells")
    e.add_argument("--threads", type=int, default=2, help="decode threads (default 2)")
    e.add_argument("--random-init", action="store_true",
                   help="embed with the run's architecture at its random initialisation (the "
                        "untrained baseline to compare trained embeddings with)")
    e.add_argument("--pool", default=None, choices=EMBED_POOLS,
                   help="DINO runs: CLS token (WS-DINO's evaluation, default), mean of the patch "
                        "tokens (DINO's --avgpool_patchtokens), or both concatenated")
    e.add_argument("--layer", default=None, metavar="NAME",
                   help="embed the spatial mean of this named module of the backbone (timm names, "
                        "e.g. blocks.5.0.bn2 = Keras EfficientNet-B0 block6a_activation); default: "
                        "the run's embed_layer, else the pooled penultimate features")
    e.add_argument("--view", default=None, choices=["crops", "whole", "native"],
                   help="crops: median over four centre crops (WS-DINO); whole: the whole image, "
                        "resized to the run's data.resize if it trained with one; native: the whole "
                        "image at its stored size (CytoImageNet's evaluation; --batch-size 1 for "
                        "images of several sizes). Default: the run's embed_view")
    e.add_argument("--channels", default="merged", choices=["merged", "each"],
                   help="each: every channel alone through a single-channel (data.merge) model, "
                        "features concatenated (CytoImageNet's per-channel variant)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_embed)

    r = subparsers.add_parser(
        "predict", help="class predictions of a trained run on a shard set -> parquet",
        description="One row per key (or per well: its sites averaged) with key, plate, well, "
                    "prediction, probability, top5, the argmax before the prior, all class "
                    "probabilities and the index metadata. The prior acts on wells (sites "
                    "averaged, each site inherits its well's class): --prior plate, each class "
                    "at most once per plate; group, restricted to the plate's group of classes "
                    "learned from the training plates (DeepNoise; RxRx1: 4 x 277); experiment, "
                    "each class at most once per experiment (batch column). Plates with more "
                    "wells than classes keep the argmax (warning). "
                    "Accuracy before and after is printed when the shards carry labels "
                    "(OUT.summary.json).")
    r.add_argument("run", help="run folder or checkpoint file")
    r.add_argument("shards", help="shard set (folder or URL)")
    r.add_argument("-o", "--out", required=True, help="output parquet file")
    r.add_argument("--prior", default="plate", choices=["plate", "group", "experiment", "none"],
                   help="plate: each class at most once per plate (default); group: and only "
                        "the classes of the plate's group (learned from the run's training "
                        "plates, the strongest on RxRx1-like layouts); experiment: each class "
                        "at most once per experiment; none: argmax")
    r.add_argument("--prior-method", default="exact",
                   choices=["exact", "deepnoise", "auction", "iterative"],
                   help="exact linear assignment (scipy, default), DeepNoise's balancing "
                        "(the authors' heuristic), or an auction (iterative: its old name)")
    r.add_argument("--per", default="auto", choices=["auto", "key", "well"],
                   help="output rows: one per image key, or per (plate, well) with its sites "
                        "averaged; auto (default): per well when a well has several images")
    r.add_argument("--train-plates", default=None, metavar="SHARDS",
                   help="--prior group: learn the plate groups from this shard set (plate and "
                        "label columns) instead of the run's data.train")
    r.add_argument("--min-group-evidence", type=float, default=4.6,
                   help="--prior group: a plate whose best group is less than this many nats "
                        "more likely than the next fits no group and gets the plate prior "
                        "(default 4.6 = a likelihood ratio of 100)")
    r.add_argument("--tta", type=int, default=None, choices=[1, 2, 4, 8],
                   help="test-time views per crop: 8 = every flip x 90-degree rotation, their "
                        "logits averaged (DeepNoise); default: the run's predict_tta (the "
                        "deepnoise configs: 8), else 1")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    r.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    r.add_argument("--threads", type=int, default=2, help="decode threads (default 2)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_predict)
