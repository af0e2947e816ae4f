"""Training configs: YAML -> typed dataclasses, like corpus recipes (unknown keys, wrong types = errors).

A config names its ``method`` (``classifier``, ``dino``, ...); each method registers a dataclass
extending :class:`TrainConfig` with its own fields, so ``--set label_smoothing=0.1`` is checked
against the method that reads it. Shipped configs live in ``configs/`` beside this module and are
found by name (``classifier``, ``classifier-tiny``); any other value is a YAML path.
``--set a.b=value`` overrides any key by dotted path (values parsed as YAML scalars).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from cytodata.errors import RecipeError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: input normalisation levels (per-channel statistics from shards.json; DeepNoise's ablation)
#: DINO embeddings: ``cls`` (WS-DINO's evaluation, the default), ``avg`` (mean of the final
#: patch tokens, DINO's ``eval_linear --avgpool_patchtokens``) or ``cls+avg`` (both, concatenated)
EMBED_POOLS = ("cls", "avg", "cls+avg")
NORMALIZE_LEVELS = ("plate", "controls", "batch", "cell_type", "all", "none")
#: per-sample normalisations computed from the pixels of each image on the device (no statistics)
SAMPLE_NORMALIZE = ("crop_minmax", "image_percentile")
#: channel merges before the model: ``gray`` = mean of the channels (1 input channel),
#: ``gray_rgb`` = that mean fed as three copies (CytoImageNet's merged grayscale read as RGB)
MERGES = ("none", "gray", "gray_rgb")
BALANCE = ("cap", "median")
WEIGHT_DECAY_MODES = ("auto", "coupled", "decoupled", "keras_l2")
FIRST_CONV = ("repeat", "tile")
INITS = ("random", "pretrained")
KINDS = ("paper", "ours", "")  # "": not stated (shown so by --list)


@dataclass
class DataConfig:
    """Where batches come from and how they are prepared on the device."""

    train: str | None = None          # shard set (folder or fsspec URL) to train on
    val: str | None = None            # shard set for validation (default: ``train``)
    train_split: str | None = "train"  # rows of this ``split`` (None: all rows)
    val_split: str | None = "val"
    label: str = "label"              # index column holding the weak label (class)
    crop: int = 224                   # training crop side (random), validation crop (centre)
    resize: int | None = None         # resize every image to resize x resize first (bilinear);
    #                                   images of any size can then share a batch
    normalize: str = "plate"          # per-channel shards.json stats: plate|controls|batch|cell_type|all|none
    #                                   (controls: each plate's negcon images, e.g. DMSO), or per
    #                                   sample: crop_minmax (per crop and channel to [0, 1]) |
    #                                   image_percentile (per image and channel, data.percentiles)
    percentiles: list[float] = field(default_factory=lambda: [0.1, 99.9])  # image_percentile
    merge: str = "none"               # none | gray | gray_rgb (channel mean, fed as 1 or 3 copies)
    threads: int = 2                  # decode threads in the training process (0: inline)
    balanced: bool = False            # class-balanced epochs, by data.balance
    balance: str = "cap"              # cap: classes above the median downsampled to it; median:
    #                                   every class drawn to the median (small ones with
    #                                   replacement; DeepProfiler sampled_crop_generator.py:61-73)
    read_ahead: int = 32
    storage_options: dict[str, Any] = field(default_factory=dict)
    # remote sets: whole shards kept in this node-local folder (docs/streaming.md; None: no cache)
    cache_dir: str | None = None
    cache_limit: int | None = None    # bytes the cache folder may hold (LRU; None: no limit)
    shuffle_window: int | None = None  # shuffle within windows of this many shards (None: shard blocks)
    # second stream of unlabelled images (semi-supervised methods: mean-teacher)
    unlabelled: str | None = None     # shard set (e.g. the test plates); labels there are ignored
    unlabelled_split: str | None = None  # rows of this ``split`` of data.unlabelled (None: all)


@dataclass
class AugmentConfig:
    """Batch augmentations run on the device (seeded per step and rank, so resumes repeat them)."""

    flips: bool = True
    rot90: bool = True
    intensity: float = 0.1            # per-channel gain jitter: x * U(1 - a, 1 + a)
    shift: float = 0.1                # per-channel offset jitter in normalised units: + U(-b, b)
    rotate: float = 0.0               # arbitrary rotation U(-r, r) degrees, reflected corners
    scale_p: float = 0.0              # scale jitter: probability of cropping a fraction ...
    scale_min: float = 1.0            # ... of side U{int(scale_min * side), side - 1}, resized back
    brightness: float = 0.0           # per-channel additive U(-b, b) (tf.image.adjust_brightness)
    contrast: float = 0.0             # per-channel contrast about the mean, U(1 - c, 1 + c)


@dataclass
class OptimConfig:
    """Optimiser and per-step schedules (precomputed arrays, DINO's ``cosine_scheduler``)."""

    name: str = "adam"                # adam | adamw | sgd
    lr: float = 1e-3
    min_lr: float = 0.0               # end of the cosine
    warmup_steps: int = 0             # linear warm-up from 0
    schedule: str = "cosine"          # cosine | constant | step | cosine_restarts
    # step schedule: [[fraction of the run, lr], ...] (DeepNoise: [[0.625, 1e-4], [0.875, 1e-5]])
    milestones: list[list[float]] = field(default_factory=list)
    # cosine_restarts (SGDR): `cycles` cosines lr -> min_lr, then `tail` [fraction of run, lr]
    cycles: int = 1
    tail: list[float] = field(default_factory=list)
    weight_decay: float = 0.0
    weight_decay_end: float | None = None  # cosine weight-decay schedule end (None: constant)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8                 # adam/adamw denominator term (torch's default; Keras' is 1e-7)
    momentum: float = 0.9             # sgd only
    nesterov: bool = False            # sgd only: Nesterov momentum
    # auto: adamw decoupled, adam/sgd coupled (torch's weight_decay: grad += wd * w);
    # decoupled: w -= lr * wd * w; keras_l2: Keras kernel_regularizer l2(wd), i.e.
    # loss += wd * sum(w^2) over conv (not depthwise) and linear kernels: grad += 2 * wd * w
    weight_decay_mode: str = "auto"
    # false: biases and normalisation parameters (tensors of <= 1 dimension) get no decay (timm,
    # DINO); true: every parameter is decayed, as a plain torch optimiser over
    # model.parameters() does (DeepNoise main.py:206, 208)
    decay_norm_and_bias: bool = False
    clip_grad: float | None = None    # max gradient norm (None: no clipping)
    clip_mode: str = "global"         # global: one norm over all parameters | per_tensor: each
    #                                   parameter tensor's norm on its own (DINO's clip_gradients)
    scale_lr_by_batch: bool = False   # lr *= global batch / 256 (DINO's linear scaling rule)


@dataclass
class TrainConfig:
    """Fields every method shares; methods subclass it with their own."""

    method: str = "classifier"
    model: str = "efficientnet_b0"    # any timm model name
    pretrained: str | None = None     # local checkpoint path (no model hub is reachable)
    init: str = "random"              # random | pretrained (then `pretrained` must name a file)
    first_conv: str = "repeat"        # adapting a 3-channel first conv: repeat (timm: repeat,
    #                                   rescaled by 3/in_chans) | tile (DeepProfiler: i <- i % 3)
    embed_layer: str | None = None    # module whose spatial mean is the embedding (None: pooled
    #                                   penultimate features); `cytodata embed --layer` overrides
    embed_view: str = "crops"         # crops (centre crops) | whole (the whole image, resized to
    #                                   data.resize) | native (the whole image, stored size)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000                 # optimiser steps
    epochs: float | None = None       # when set: steps = epochs x ceil(epoch samples / global
    #                                   batch); an epoch = the training rows, or what the balanced
    #                                   sampler draws (DeepProfiler: classes x median)
    batch_size: int = 64              # per rank and micro-batch
    accumulate: int = 1               # micro-batches per optimiser step
    device: str = "auto"              # auto | cpu | cuda | cuda:N (no silent CPU fallback)
    precision: str = "auto"           # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    channels_last: bool = True
    compile: bool = False             # torch.compile the trained module
    torch_threads: int | None = None  # torch intra-op threads (None: torch's default); on small
                                      # CPUs 1 leaves the cores to the decode threads
    seed: int = 0
    checkpoint_every: int = 500       # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 3         # step-N.pt files kept (last.pt always)
    log_every: int = 10
    val_every: int | None = None      # steps between validations (None: each epoch end)
    val_epoch_ends: bool | None = None  # validate at epoch ends too (None: only when val_every
    #                                     is null); with val_every: both, as DeepNoise's stage 1
    #                                     (main.py:292-316, every 1,000 steps and each epoch end)
    # true: a validation at the step where a cosine_restarts cycle ends (the tail's end too)
    # neither keeps best.pt nor counts as the method's improvement (DeepNoise main.py:557-586:
    # `epoch > 0`, the first epoch of each cycle skipped; the run ends before the tail's end is
    # validated, main.py:536-537)
    select_skip_restarts: bool = False
    # a validation metric (e.g. val_balanced_top1) to keep the best checkpoint by: whenever it
    # beats its best so far, RUN_DIR/checkpoints/best.pt is written, and predict, embed and
    # init_from read best.pt (DeepNoise main.py:297-302, 563-569: max_valid_model.pth); null:
    # the last step
    select: str | None = None
    progress: bool = True
    log_keys: bool = False            # RUN_DIR/keys/rank-N.jsonl: the sample keys of every step (audits)
    description: str = ""             # one line for `cytodata train --list`
    kind: str = ""                    # paper (a published recipe, every value cited) | ours


def config_names() -> list[str]:
    """Names of the shipped configs (``cytodata train NAME``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_config_mapping(config: "str | Path | Mapping[str, Any]") -> tuple[dict, str]:
    """A config mapping and where it came from: a mapping, a shipped name, or a YAML path."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), "config"
    path = Path(config)
    if not path.exists() and (CONFIG_DIR / f"{config}.yaml").exists():
        path = CONFIG_DIR / f"{config}.yaml"
    if not path.exists():
        from cytodata._suggest import did_you_mean

        raise RecipeError(f"config {str(config)!r} is neither a file nor a shipped config"
                          f"{did_you_mean(str(config), config_names())}; shipped: {', '.join(config_names())}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc}); fix the syntax at the line shown") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    return data, str(path)


def set_dotted(data: dict, dotted: str, value: Any, where: str = "--set") -> None:
    """``data["a"]["b"] = value`` for ``dotted="a.b"`` (intermediate mappings created)."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{where} {dotted}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["steps=10", "data.train=/x"]`` -> ``{"steps": 10, "data.train": "/x"}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE (dotted keys reach sections, "
                              "e.g. --set data.train=shards/ --set optim.lr=3e-4)")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def check(cfg: TrainConfig, where: str) -> None:
    """Value checks that types alone cannot express (each names the key and the valid values)."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise RecipeError(f"{where}: {msg}")

    need(cfg.steps >= 1, f"steps={cfg.steps}; must be >= 1")
    need(cfg.epochs is None or cfg.epochs > 0, f"epochs={cfg.epochs}; must be > 0 (or null: use steps)")
    need(cfg.batch_size >= 1, f"batch_size={cfg.batch_size}; must be >= 1")
    need(cfg.accumulate >= 1, f"accumulate={cfg.accumulate}; must be >= 1")
    need(cfg.checkpoint_every >= 1, f"checkpoint_every={cfg.checkpoint_every}; must be >= 1")
    need(cfg.log_every >= 1, f"log_every={cfg.log_every}; must be >= 1")
    need(cfg.precision in ("auto", "bf16", "fp16", "fp32"),
         f"precision={cfg.precision!r}; valid: auto, bf16, fp16, fp32")
    need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
         f"device={cfg.device!r}; valid: auto, cpu, cuda, cuda:N")
    need(cfg.optim.name in ("adam", "adamw", "sgd"), f"optim.name={cfg.optim.name!r}; valid: adam, adamw, sgd")
    need(cfg.optim.schedule in ("cosine", "constant", "step", "cosine_restarts"),
         f"optim.schedule={cfg.optim.schedule!r}; valid: cosine, constant, step, cosine_restarts")
    need(cfg.optim.cycles >= 1 and (not cfg.optim.tail or (len(cfg.optim.tail) == 2
                                    and 0 <= cfg.optim.tail[0] < 1 and cfg.optim.tail[1] >= 0)),
         f"optim.cycles={cfg.optim.cycles}, optim.tail={cfg.optim.tail!r}; need cycles >= 1 "
         "and tail [fraction in [0, 1), lr >= 0] (or [])")
    need(all(len(m) == 2 and 0 <= m[0] <= 1 and m[1] >= 0 for m in cfg.optim.milestones),
         f"optim.milestones={cfg.optim.milestones!r}; expected [[fraction 0..1, lr >= 0], ...]")
    need(cfg.optim.clip_mode in ("global", "per_tensor"),
         f"optim.clip_mode={cfg.optim.clip_mode!r}; valid: global, per_tensor (DINO clips each "
         "parameter tensor: --set optim.clip_mode=per_tensor)")
    need(cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr}; must be > 0")
    need(cfg.data.normalize in NORMALIZE_LEVELS + SAMPLE_NORMALIZE,
         f"data.normalize={cfg.data.normalize!r}; valid: {', '.join(NORMALIZE_LEVELS + SAMPLE_NORMALIZE)}")
    need(cfg.data.crop >= 8, f"data.crop={cfg.data.crop}; must be >= 8 pixels")
    need(cfg.data.merge in MERGES, f"data.merge={cfg.data.merge!r}; valid: {', '.join(MERGES)}")
    need(cfg.data.balance in BALANCE, f"data.balance={cfg.data.balance!r}; valid: {', '.join(BALANCE)}")
    need(len(cfg.data.percentiles) == 2 and 0 <= cfg.data.percentiles[0] < cfg.data.percentiles[1] <= 100,
         f"data.percentiles={cfg.data.percentiles!r}; expected [low, high] with 0 <= low < high <= 100")
    if cfg.data.resize is not None:
        need(cfg.data.resize >= 8, f"data.resize={cfg.data.resize}; must be >= 8 pixels")
        need(cfg.data.crop <= cfg.data.resize,
             f"data.crop={cfg.data.crop} is larger than data.resize={cfg.data.resize}: the crop is "
             "taken from the resized image; set data.crop <= data.resize")
    need(cfg.optim.weight_decay_mode in WEIGHT_DECAY_MODES,
         f"optim.weight_decay_mode={cfg.optim.weight_decay_mode!r}; valid: {', '.join(WEIGHT_DECAY_MODES)}")
    need(not cfg.optim.nesterov or cfg.optim.name == "sgd",
         f"optim.nesterov=true needs optim.name=sgd (got {cfg.optim.name!r})")
    need(not (cfg.optim.weight_decay_mode == "decoupled" and cfg.optim.name == "adam"),
         "optim.weight_decay_mode=decoupled with optim.name=adam: use optim.name=adamw")
    need(cfg.first_conv in FIRST_CONV, f"first_conv={cfg.first_conv!r}; valid: {', '.join(FIRST_CONV)}")
    need(cfg.init in INITS, f"init={cfg.init!r}; valid: {', '.join(INITS)}")
    need(cfg.embed_view in ("crops", "whole", "native"),
         f"embed_view={cfg.embed_view!r}; valid: crops, whole, native")
    need(cfg.kind in KINDS, f"kind={cfg.kind!r}; valid: {', '.join(KINDS)}")
    a = cfg.augment
    need(0 <= a.scale_p <= 1 and 0 < a.scale_min <= 1,
         f"augment.scale_p={a.scale_p}, augment.scale_min={a.scale_min}; expected 0..1 and (0, 1]")
    need(a.rotate >= 0 and a.brightness >= 0 and 0 <= a.contrast < 1,
         "augment.rotate, augment.brightness must be >= 0 and augment.contrast in [0, 1)")


def to_dict(cfg: TrainConfig) -> dict:
    """The resolved config as plain data (saved as RUN_DIR/config.yaml and in checkpoints)."""
    return dataclasses.asdict(cfg)


def dump(cfg: TrainConfig) -> str:
    """YAML text of the resolved config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
