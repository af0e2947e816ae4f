"""The one training engine every baseline runs on: a plain PyTorch loop, no framework.

Per optimiser step: ``accumulate`` micro-batches are taken from the streaming loader (time
blocked on it is the data wait), moved to the device as uint16, converted and normalised there,
and handed to the method's ``loss``; then gradients are (optionally) clipped and the optimiser
steps with the learning rate and weight decay of that step (arrays precomputed for the whole
run). Randomness is reseeded per (seed, step, micro-batch, rank), so a run resumed from a
checkpoint repeats the uninterrupted run exactly on the CPU. DDP under ``torchrun`` (gloo on CPU,
NCCL on CUDA), bf16 autocast on CUDA, ``channels_last`` and ``torch.compile`` are options.

RUN_DIR: ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per logged step),
``summary.json`` (the method's outcome, e.g. DINO's ``collapsed``, also the last metrics row),
``checkpoints/step-N.pt`` + ``checkpoints/last.pt``, ``tensorboard/`` (if installed).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from cytodata.errors import TrainingError
from cytodata.loaders.partition import seed_for

from . import augment, checkpoint, runtime
from .clipping import clip_gradients
from .config import TrainConfig, dump, to_dict
from .data import DataInfo, class_ids, device_prep, loader, make_stats, open_dataset, relabel
from .methods import METHODS
from .resolve import load_config
from .schedules import cycle_ends

#: config keys that may change between a run and its resume (they do not change the result)
RESUMABLE_CHANGES = ("steps", "progress", "checkpoint_every", "keep_checkpoints", "log_every",
                     "val_every", "description", "data.threads", "data.read_ahead", "torch_threads",
                     "data.cache_dir", "data.cache_limit")


def train(config: "str | Path | Mapping[str, Any] | TrainConfig", out: "str | Path", *,
          resume: bool = False, **overrides) -> Path:
    """Train ``config`` (a shipped name, YAML path, mapping or TrainConfig) into run folder ``out``.

    ``overrides`` are config keys; sections by dotted name passed as a dict
    (``**{"data.train": "shards/"}``) or with ``__`` (``data__train="shards/"``). Returns ``out``.
    """
    flat = {k.replace("__", "."): v for k, v in overrides.items()}
    cfg = load_config(config, flat)
    return Engine(cfg, out, resume=resume).run()


class Engine:
    """One run: set-up, the loop, checkpoints and metrics (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, out: "str | Path", *, resume: bool = False):
        self.cfg, self.out, self.resume = cfg, Path(out), resume
        self.ckpt_dir = self.out / "checkpoints"

    # ------------------------------------------------------------------ set-up
    def _check_run_dir(self) -> dict | None:
        found = checkpoint.newest(self.ckpt_dir)
        if found is not None and not self.resume:
            raise TrainingError(f"{self.out} already holds checkpoints ({found.name}); pass --resume "
                                "to continue that run, or choose a new run folder")
        if found is None:
            if self.resume:
                warnings.warn(f"--resume: no checkpoint in {self.ckpt_dir}; starting from step 0",
                              stacklevel=3)
            return None
        state = checkpoint.load(found)
        _check_same_config(state.get("config") or {}, to_dict(self.cfg), found)
        return state

    def _datasets(self, device: torch.device):
        cfg, d = self.cfg, self.cfg.data
        method_cls = METHODS.get(cfg.method)
        if d.merge != "none" and not getattr(method_cls, "supports_merge", False):
            raise TrainingError(f"data.merge={d.merge}: the {cfg.method} method builds its model for "
                                "the shard set's channels; channel merges are a classifier option "
                                "(--set data.merge=none)")
        sampler = method_cls.make_sampler(cfg)
        train_ds = open_dataset(d.train, split=d.train_split, cfg=d, seed=cfg.seed, shuffle=True,
                                sampler=sampler, what="data.train")
        meta = train_ds.shards.meta
        channels = meta.get("channels")
        shape = tuple(meta["shape"]) if meta.get("shape") else None
        if channels is not None and d.resize is not None:
            shape = (len(channels), d.resize, d.resize)   # any image size: resized in the collate
        if channels is None or shape is None:
            shapes = sorted({tuple(r) for r in train_ds.index[["n_channels", "height", "width"]]
                             .drop_duplicates().itertuples(index=False)}) \
                if "n_channels" in train_ds.index.columns else []
            raise TrainingError(f"data.train={d.train}: samples differ in channels or shape "
                                f"({shapes[:4]}); train on a shard set of one source/shape "
                                "(shard one source, or use --channel-mode merged)")
        classes: list[str] = []
        if method_cls.supervised:
            ids, classes = class_ids(train_ds, d.label, None, f"data.train={d.train}")
            if (ids < 0).all():
                raise TrainingError(f"data.train={d.train}: no row has a {d.label!r} label; the "
                                    f"{cfg.method} baseline is supervised")
            if len(classes) < 2:
                raise TrainingError(f"data.train={d.train}: {len(classes)} class(es) {classes}; a "
                                    "classifier needs at least 2")
            relabel(train_ds, ids, classes)
        val_ds = None
        val_path = d.val or d.train
        explicit = d.val is not None
        if d.val_split is not None or explicit:
            try:
                val_ds = open_dataset(val_path, split=d.val_split, cfg=d, seed=cfg.seed, shuffle=False,
                                      rank=0, world_size=1, what="data.val")
            except TrainingError:
                if explicit:
                    raise
                val_ds = None  # the training set has no validation rows: nothing to validate
        if val_ds is not None:
            vmeta = val_ds.shards.meta
            if vmeta.get("channels") != channels:
                raise TrainingError(f"channels differ between data.train ({channels}) and data.val "
                                    f"({vmeta.get('channels')}); validate on a set with the same channels")
            if method_cls.supervised:
                relabel(val_ds, class_ids(val_ds, d.label, classes, f"data.val={val_path}")[0], classes)
        stats = make_stats(meta, d.normalize, len(channels))
        vstats = make_stats(val_ds.shards.meta, d.normalize, len(channels)) if val_ds is not None else None
        info = DataInfo(channels=list(channels), n_channels=len(channels), shape=shape,
                        classes=classes, n_train=len(train_ds.index), stats=stats,
                        extra={"train_index": train_ds.index})
        return train_ds, val_ds, info, vstats

    def _optimizer(self, module: torch.nn.Module, method) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups = method.param_groups(module)
        for g in groups:
            g.setdefault("weight_decay_scale", 1.0)
            g["weight_decay"] = o.weight_decay * g["weight_decay_scale"]
        return build_optimizer(o, groups)

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        cfg = self.cfg
        device = runtime.resolve_device(cfg.device)
        if cfg.torch_threads:
            torch.set_num_threads(int(cfg.torch_threads))
        started_dist = not runtime.is_dist() and runtime.init_distributed(device)
        try:
            return self._run(device)
        finally:
            if started_dist:
                runtime.shutdown_distributed()

    def _run(self, device: torch.device) -> Path:
        cfg = self.cfg
        rank, world = runtime.rank(), runtime.world_size()
        main = rank == 0
        state = self._check_run_dir()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        train_ds, val_ds, info, vstats = self._datasets(device)
        if cfg.select and val_ds is None:
            raise TrainingError(f"select={cfg.select}: the checkpoint kept is chosen on validation "
                                "rows, and this run has none; name a validation set (--set "
                                "data.val=SHARDS, or data.val_split=SPLIT for rows of data.train) "
                                "or keep the last step (--set select=null)")
        self._best = dict(state.get("select") or {}) if state is not None else {}
        if cfg.epochs:
            cfg.steps = steps_for_epochs(cfg.epochs, epoch_samples(train_ds),
                                         cfg.batch_size * cfg.accumulate * world)
        method = METHODS.get(cfg.method)(cfg, info, device)
        module = method.trainable()
        if cfg.channels_last:
            module.to(memory_format=torch.channels_last)
        if state is not None:
            checkpoint.check_signature(state.get("signature") or {}, method.signature(),
                                       f"checkpoint {checkpoint.newest(self.ckpt_dir)}")
            for name, m in method.modules().items():
                m.load_state_dict(state["modules"][name])
            method.load_state(state.get("method_state") or {})
        model: torch.nn.Module = module
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            model = torch.compile(model)
        optimizer = self._optimizer(module, method)
        precision = runtime.resolve_precision(device, cfg.precision)
        scaler = torch.amp.GradScaler(device.type, enabled=precision is torch.float16)
        global_batch = cfg.batch_size * cfg.accumulate * world
        lrs, wds = method.schedules(cfg.steps, global_batch)
        step, epoch = 0, 0
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            step, epoch = int(state["step"]), int(state["epoch"])
            train_ds.load_state_dict(state["loader"])
        else:
            method.init_optimizer(optimizer)
            train_ds.set_epoch(0)
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump(cfg), encoding="utf-8")
        log = _MetricsLog(self.out / "metrics.jsonl", step, enabled=main)
        keys_log = _MetricsLog(self.out / "keys" / f"rank-{rank}.jsonl", step, enabled=cfg.log_keys,
                               tensorboard=False, keep=lambda row, start: row["step"] < start)
        prep = device_prep(cfg, info.stats, device)
        vprep = device_prep(cfg, vstats, device) if val_ds is not None else None
        pin = device.type == "cuda"
        batches = loader(train_ds, cfg.batch_size, pin, resize=cfg.data.resize)
        l2 = keras_l2_params(module) if cfg.optim.weight_decay_mode == "keras_l2" else []
        it = iter(batches)
        bar = _progress(cfg, main, step)
        window = _Window()
        last_finite: tuple[int, float] | None = None
        saved_at = -1
        epoch_ends = cfg.val_epoch_ends if cfg.val_epoch_ends is not None else cfg.val_every is None
        skipped = cycle_ends(cfg.optim, cfg.steps) if cfg.select_skip_restarts else set()
        validated_at = -1

        def validation() -> None:
            nonlocal validated_at
            if validated_at == step:     # an epoch end on a val_every step: validated once
                return
            validated_at = step
            row = self._validate(method, val_ds, vprep)
            counts = step not in skipped
            log.write(dict(step=step, epoch=epoch, **row, **({} if counts else
                                                             {"select_skipped": True})))
            method.after_validation(row, counts)
            if cfg.select and counts:
                self._keep_best(row, method, optimizer, scaler, train_ds, step, epoch, info)

        module.train()
        while step < cfg.steps:
            t_step = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
                group["weight_decay"] = float(wds[step]) * group.get("weight_decay_scale", 1.0)
            optimizer.zero_grad(set_to_none=True)
            logs: dict[str, float] = {}
            loss_sum = 0.0
            for micro in range(cfg.accumulate):
                t_wait = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    if main and val_ds is not None and epoch_ends:
                        validation()
                    runtime.barrier()
                    epoch += 1
                    train_ds.set_epoch(epoch)
                    it = iter(batches)
                    batch = next(it)
                window.wait += time.perf_counter() - t_wait
                window.images += len(batch["key"]) * world
                keys_log.write({"step": step, "epoch": epoch, "micro": micro, "keys": batch["key"]})
                torch.manual_seed(seed_for(cfg.seed, "torch", step, micro, rank) % 2**63)
                g = augment.step_generator(cfg.seed, step * cfg.accumulate + micro, rank)
                batch["image"] = prep(batch["image"], batch["meta"])
                if "partner" in batch:
                    batch["partner"]["image"] = prep(batch["partner"]["image"], batch["partner"]["meta"])
                sync = (contextlib.nullcontext() if world == 1 or micro == cfg.accumulate - 1
                        else model.no_sync())
                with sync:
                    with runtime.autocast(device, cfg.precision):
                        loss, extra = method.loss(model, batch, step, g)
                    value = loss.detach().float().clone()
                    runtime.all_reduce_sum(value)  # non-finite on any rank -> non-finite everywhere
                    value = float(value) / world
                    if not math.isfinite(value):
                        raise TrainingError(_nan_message(step, value, last_finite))
                    scaler.scale(loss / cfg.accumulate).backward()
                loss_sum += value
                for k, v in extra.items():
                    logs[k] = logs.get(k, 0.0) + float(v) / cfg.accumulate
            method.before_step(module, step)
            if l2 or cfg.optim.clip_grad:
                scaler.unscale_(optimizer)
            if l2:
                add_keras_l2(l2, float(wds[step]))
            if cfg.optim.clip_grad:
                logs["grad_norm"] = clip_gradients(module.parameters(), cfg.optim.clip_grad,
                                                   cfg.optim.clip_mode)
            scaler.step(optimizer)
            scaler.update()
            method.after_step(step)
            step += 1
            loss_value = loss_sum / cfg.accumulate
            last_finite = (step, loss_value)
            window.add(time.perf_counter() - t_step, loss_value, logs)
            if bar is not None:
                bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = dict(step=step, epoch=epoch, lr=float(lrs[step - 1]), **window.flush())
                log.write(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}",
                                    wait=f"{row['data_wait']:.2f}")
            if cfg.val_every and step % cfg.val_every == 0 and val_ds is not None:
                if main:
                    validation()
                runtime.barrier()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                self._save(method, optimizer, scaler, train_ds, step, epoch, info)
                saved_at = step
        if saved_at != step:
            self._save(method, optimizer, scaler, train_ds, step, epoch, info)
        if main and val_ds is not None and epoch_ends:
            validation()
        if main and cfg.select:
            log.write({"step": step, "epoch": epoch, "selected": True, **self._best})
        outcome = method.summary()
        if main and outcome:
            log.write({"step": step, "epoch": epoch, "summary": True, **outcome})
            (self.out / "summary.json").write_text(json.dumps({"step": step, **outcome}, indent=1),
                                                   encoding="utf-8")
        if world > 1:  # every rank must hold the same weights after DDP training
            sums = runtime.all_gather_floats(_param_checksum(module))
            log.write({"step": step, "params_checksum_ranks": sums})
            if len(set(sums)) > 1:
                raise TrainingError(f"ranks ended with different weights (checksums {sums}); "
                                    "report this with the run's config.yaml")
        if bar is not None:
            bar.close()
        log.close()
        keys_log.close()
        runtime.barrier()
        return self.out

    def _validate(self, method, val_ds, vprep) -> dict:
        batches = loader(val_ds, self.cfg.batch_size, pin=False, resize=self.cfg.data.resize)
        out = method.validate(iter(batches), vprep)
        return out

    def _keep_best(self, row: dict, method, optimizer, scaler, train_ds, step: int, epoch: int,
                   info: DataInfo) -> None:
        """Write ``best.pt`` when ``row[select]`` beats the best so far (strictly, as DeepNoise's
        ``max_valid < acc``, main.py:297, 563); rank 0 only (validation runs there).
        """
        name = self.cfg.select
        if name not in row:
            raise TrainingError(f"select={name}: validation reports no such metric (it reports "
                                f"{', '.join(sorted(row)) or 'nothing'}); choose one of those, or "
                                "--set select=null to keep the last step")
        value = float(row[name])
        if not math.isfinite(value) or (self._best and not value > float(self._best["value"])):
            return
        self._best = {"metric": name, "value": value, "step": step}
        checkpoint.save_best(self._state(method, optimizer, scaler, train_ds, step, epoch, info),
                             self.ckpt_dir)

    def _state(self, method, optimizer, scaler, train_ds, step: int, epoch: int,
               info: DataInfo) -> dict:
        return {
            "config": to_dict(self.cfg), "signature": method.signature(), "step": step,
            "epoch": epoch, "classes": list(info.classes), "channels": list(info.channels),
            "modules": {k: m.state_dict() for k, m in method.modules().items()},
            "method_state": method.state(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "loader": train_ds.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "select": dict(self._best),
        }

    def _save(self, method, optimizer, scaler, train_ds, step: int, epoch: int, info: DataInfo) -> None:
        if runtime.is_main():
            checkpoint.save(self._state(method, optimizer, scaler, train_ds, step, epoch, info),
                            self.ckpt_dir, step, keep=self.cfg.keep_checkpoints)
        runtime.barrier()


def epoch_samples(ds) -> int:
    """Samples in one training epoch: what the dataset's sampler draws, else every row."""
    counts = getattr(getattr(ds, "sampler", None), "counts", None)
    if counts is not None:
        return int(sum(counts(ds.index).values()))
    return len(ds.index)


def steps_for_epochs(epochs: float, samples: int, global_batch: int) -> int:
    """``ceil(epochs x ceil(samples / global_batch))`` optimiser steps (DeepProfiler's
    ``expected_steps`` per epoch, sampled_crop_generator.py:51-52), at least 1.
    """
    per_epoch = max(1, math.ceil(samples / global_batch))
    return max(1, math.ceil(epochs * per_epoch))


def weight_decay_mode(optim) -> str:
    """The resolved ``optim.weight_decay_mode`` (``auto``: decoupled for adamw, else coupled)."""
    if optim.weight_decay_mode != "auto":
        return optim.weight_decay_mode
    return "decoupled" if optim.name == "adamw" else "coupled"


def build_optimizer(o, groups: list[dict]) -> torch.optim.Optimizer:
    """The torch optimiser of an :class:`~baselines.config.OptimConfig` over param ``groups``.

    ``keras_l2`` decay is added to the gradients by the engine (:func:`add_keras_l2`), so the
    optimiser itself gets weight_decay 0 then.
    """
    mode = weight_decay_mode(o)
    if mode == "keras_l2":
        for g in groups:
            g["weight_decay_scale"] = 0.0
            g["weight_decay"] = 0.0
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    if mode == "decoupled":
        raise TrainingError(f"optim.weight_decay_mode=decoupled with optim.name={o.name!r}: "
                            "decoupled decay is AdamW's; use optim.name=adamw or mode coupled")
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


def keras_l2_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The tensors a Keras ``kernel_regularizer`` reaches: kernels of convolutions that are not
    depthwise (Keras ``DepthwiseConv2D`` keeps its own ``depthwise_regularizer``) and of linear
    layers; no biases, no normalisation parameters.
    """
    out = []
    for m in module.modules():
        if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.groups == 1):
            if m.weight.requires_grad:
                out.append(m.weight)
    return out


@torch.no_grad()
def add_keras_l2(params: list[torch.nn.Parameter], l2: float) -> None:
    """``grad += 2 * l2 * w``: the gradient of Keras' ``l2(l2)`` penalty ``l2 * sum(w ** 2)``."""
    if l2 <= 0:
        return
    for p in params:
        if p.grad is not None:
            p.grad.add_(p, alpha=2.0 * l2)


def _param_checksum(module: torch.nn.Module) -> float:
    """A float64 digest of all parameters (equal weights <=> equal digests, in practice)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(module.parameters()):
        total += (p.detach().double().cpu().flatten() * (1 + (i % 7))).sum()
    return float(total)


class _Window:
    """Sums over the steps since the last log line."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.steps, self.time, self.wait, self.images, self.loss = 0, 0.0, 0.0, 0, 0.0
        self.extra: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def add(self, seconds: float, loss: float, extra: dict) -> None:
        self.steps += 1
        self.time += seconds
        self.loss += loss
        for k, v in extra.items():
            self.extra[k] = self.extra.get(k, 0.0) + v

    def flush(self) -> dict:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        n = max(self.steps, 1)
        row = {"loss": self.loss / n, "images_per_s": self.images / elapsed,
               "data_wait": min(1.0, self.wait / max(self.time, 1e-9)),
               **{k: v / n for k, v in self.extra.items()}}
        self.reset()
        return row


class _MetricsLog:
    """``metrics.jsonl`` (+ TensorBoard when installed); on resume, lines past the checkpoint go."""

    def __init__(self, path: Path, start_step: int, enabled: bool, tensorboard: bool = True,
                 keep=None):
        self.path, self.enabled, self.tb = path, enabled, None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        keep = keep or _keep_metrics_row
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and keep(json.loads(line), start_step)]
            path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        self.file = path.open("a", encoding="utf-8")
        if not tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"), purge_step=start_step or None)
        except ImportError:
            self.tb = None

    def write(self, row: dict) -> None:
        if not self.enabled or not row:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _keep_metrics_row(row: dict, start: int) -> bool:
    """On resume from ``start``: keep training rows up to it; validation/summary rows written at
    ``start`` itself are written again by the resumed run.
    """
    step = row.get("step", 0)
    return step < start or (step == start and "loss" in row)


def _progress(cfg: TrainConfig, main: bool, step: int):
    from cytodata._progress import bar, shown

    if not (main and shown(cfg.progress)):
        return None
    return bar(total=cfg.steps, initial=step, desc=f"train {cfg.method}", unit="step", dynamic_ncols=True)


def _nan_message(step: int, value: float, last: tuple[int, float] | None) -> str:
    where = f"step {step + 1}: loss is {value}"
    prev = (f"; the last finite loss was {last[1]:.6g} at step {last[0]}" if last else
            "; no step had a finite loss")
    return (where + prev + ". Lower optim.lr, add warm-up (optim.warmup_steps), clip gradients "
            "(--set optim.clip_grad=1.0), use precision=fp32, or check the shards' normalization "
            "statistics; resume from the last checkpoint with --resume after the change")


def _check_same_config(saved: dict, current: dict, where: Path) -> None:
    """Only keys that do not change the result may differ between a run and its resume."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("storage_options",):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(saved), flat(current)
    diffs = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES]
    if diffs:
        detail = "; ".join(f"{k}: run {a.get(k)!r} vs now {b.get(k)!r}" for k in diffs[:6])
        raise TrainingError(f"--resume from {where}: the config differs ({detail}); resume with the "
                            "run's own config (RUN_DIR/config.yaml) or start a new run folder")
