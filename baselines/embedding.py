"""``cytodata embed``: a trained run + a shard set -> one row of features per image.

Views (``view``): ``crops`` embeds full fields as WS-DINO did: the feature-wise median over four
non-overlapping centre crops of the training crop size (a single centre crop when the field is
smaller than two crops), or at the fixed boxes a recipe names (``ws-dino``: E:351-357);
``whole`` embeds the whole image, resized to ``data.resize`` when the run trained with one
(else at its stored size); ``native`` the whole image at its stored size (CytoImageNet's
evaluation, model_evaluation.py:107-110: ``input_shape=(None, None, 3)``; images of several
sizes need ``batch_size=1``). Features
(``layer``): the method's embedding (pooled penultimate features for classifiers), or the
spatial mean of any named module of the backbone (the Cell Painting CNN reads
``block6a_activation``: ``blocks.5.0.bn2`` in timm's EfficientNet-B0). ``channels="each"``: every
channel alone through a single-channel (merged-input) model, features concatenated in channel
order (CytoImageNet's ``concat=True``). Single-cell shard sets (several crop rows per field,
``parent_id`` = the field) are averaged per field. Batched, bf16 on CUDA, progress bar, and
resumable per shard: each finished shard is written to ``OUT.parts/`` and a re-run skips it.
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cytodata.errors import TrainingError

from . import checkpoint, runtime
from .data import DataInfo, NormStats, collate, device_prep, make_stats, merge_channels, to_device_float
from .methods import METHODS
from .resolve import load_config

#: index columns that describe storage, not the image (left out of the embeddings table)
STORAGE_COLUMNS = ("shard", "offset", "size", "meta_offset", "meta_size", "shard_index",
                   "n_channels", "height", "width", "sha256", "checksum")
PER = ("auto", "image", "field")
VIEWS = ("crops", "whole", "native")
CHANNELS = ("merged", "each")


class LayerMean(torch.nn.Module):
    """``model``'s forward, returning the spatial mean of module ``layer``'s output ``(B, C)``.

    The output of a module with ``(B, C, H, W)`` output is averaged over H and W (DeepProfiler
    profiling.py:101-102); ``(B, N, C)`` token outputs over N; ``(B, C)`` is returned as is.
    """

    def __init__(self, model: torch.nn.Module, layer: str):
        super().__init__()
        names = [n for n, _ in model.named_modules() if n]
        if layer not in names:
            near = difflib.get_close_matches(layer, names, n=8, cutoff=0.3)
            raise TrainingError(f"embed --layer {layer!r}: {type(model).__name__} has no module of "
                                f"that name; nearest: {', '.join(near) or '(none)'} "
                                f"({len(names)} modules; list them with "
                                "[n for n, _ in model.named_modules()])")
        self.model, self.layer = model, layer
        self._out: list[torch.Tensor] = []
        dict(model.named_modules())[layer].register_forward_hook(
            lambda _m, _i, out: self._out.append(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._out.clear()
        self.model(x)
        out = self._out[-1]
        self._out.clear()
        if out.ndim == 4:
            return out.float().mean(dim=(-2, -1))
        if out.ndim == 3:
            return out.float().mean(dim=1)
        return out.float().flatten(1)


def resolve_layer(cfg, layer: str | None) -> str | None:
    """``--layer`` if given, else the config's ``embed_layer`` (None: the method's embedding)."""
    return layer if layer is not None else cfg.embed_layer


class _FixedOrder:
    """A sampler that yields the given rows in order (one shard at a time)."""

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows, dtype=np.int64)

    def order(self, index, *, seed: int, epoch: int, world_size: int = 1) -> np.ndarray:
        return self.rows


def load_method(ckpt: "str | Path | dict", device: torch.device, stats: NormStats | None = None,
                random_init: bool = False):
    """Rebuild the method of a checkpoint with its trained weights (eval mode).

    ``random_init``: the same architecture, channels and classes at its seeded random
    initialisation instead (the baseline every trained embedding is compared with).
    """
    state = ckpt if isinstance(ckpt, dict) else checkpoint.load(ckpt, map_location="cpu")
    # the run's weights (or a seeded random init) replace any start weights: not read again
    cfg = load_config(state["config"], {"pretrained": None, "init": "random"})
    info = DataInfo(channels=list(state["channels"]), n_channels=len(state["channels"]), shape=None,
                    classes=list(state.get("classes") or []), n_train=0, stats=stats)
    torch.manual_seed(cfg.seed)
    method = METHODS.get(cfg.method)(cfg, info, device)
    for name, module in method.modules().items():
        if not random_init:
            module.load_state_dict(state["modules"][name])
        module.eval()
    if not random_init:
        method.load_state(state.get("method_state") or {})
    return method, cfg, state


def center_views(x: torch.Tensor, crop: int) -> list[torch.Tensor]:
    """WS-DINO's views: four non-overlapping ``crop`` squares around the centre (2x2), else one."""
    h, w = x.shape[-2:]
    if h >= 2 * crop and w >= 2 * crop:
        top, left = h // 2 - crop, w // 2 - crop
        return [x[..., top + dy: top + dy + crop, left + dx: left + dx + crop]
                for dy in (0, crop) for dx in (0, crop)]
    if h > crop or w > crop:
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        return [x[..., top: top + crop, left: left + crop]]
    return [x]


def box_views(x: torch.Tensor, boxes: "list[tuple[int, int, int, int]]") -> list[torch.Tensor]:
    """Crops of ``x`` ``(..., H, W)`` at fixed boxes ``(x_min, y_min, x_max, y_max)`` (pixels,
    end exclusive, as albumentations' ``Crop``); a box outside the image is a :class:`TrainingError`.
    """
    h, w = x.shape[-2:]
    for box in boxes:
        if box[2] > w or box[3] > h:
            raise TrainingError(f"embed crop box {list(box)} (x_min, y_min, x_max, y_max in stored "
                                f"pixels) does not fit {h}x{w} images; embed fields of the size "
                                "the recipe's embed_boxes were set for, or pass --view whole")
    return [x[..., y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]


def embed(checkpoint_or_run: "str | Path", shards: "str | Path", out: "str | Path", *,
          device: str = "auto", batch_size: int = 64, per: str = "auto", threads: int = 2,
          progress: bool = True, storage_options: dict | None = None, random_init: bool = False,
          pool: str | None = None, layer: str | None = None, view: str | None = None,
          channels: str = "merged") -> Path:
    """Write ``out`` (parquet): ``key``, the index's metadata columns, ``emb_0 .. emb_{D-1}``.

    ``pool``: which features of a DINO run (``cls``: WS-DINO's CLS token, the default; ``avg``:
    the mean of the patch tokens; ``cls+avg``: both); other methods have one embedding.

    ``random_init=True`` embeds with the run's architecture at its seeded random initialisation
    (the untrained baseline of the same backbone).

    ``layer``: a module name of the backbone whose spatial mean is the embedding (default: the
    config's ``embed_layer``; None there: the method's embedding). ``view``: ``crops`` or
    ``whole`` (default: the config's ``embed_view``). ``channels="each"``: per-channel
    embeddings concatenated (runs with ``data.merge`` gray/gray_rgb only).
    """
    from cytodata.loaders import StreamingDataset
    from cytodata.shards.source import with_manifest_columns

    if per not in PER:
        raise TrainingError(f"per={per!r}; valid: {', '.join(PER)}")
    if view is not None and view not in VIEWS:
        raise TrainingError(f"view={view!r}; valid: {', '.join(VIEWS)}")
    if channels not in CHANNELS:
        raise TrainingError(f"channels={channels!r}; valid: {', '.join(CHANNELS)}")
    channel_mode = channels
    dev = runtime.resolve_device(device)
    out = Path(out)
    # every column a normalisation level may look up (absent ones are dropped by the loader)
    # rank 0 of 1 whatever process group is open: every caller embeds every row (reading with a
    # training group's rank would embed only this rank's share and drop the rest)
    ds = StreamingDataset(shards, shuffle=False, threads=threads, storage_options=storage_options,
                          columns=("plate", "batch"), rank=0, world_size=1)
    state = checkpoint.load(checkpoint_or_run)  # read once: channels, config and weights
    state_channels = state["channels"]
    channels = ds.shards.meta.get("channels")
    if channels != list(state_channels):
        raise TrainingError(f"{shards}: channels {channels} differ from the checkpoint's "
                            f"{list(state_channels)}; embed a shard set with the training channels")
    run_cfg = load_config(state["config"], {"pretrained": None, "init": "random"})
    stats = make_stats(ds.shards.meta, run_cfg.data.normalize, len(channels))
    method, cfg, _ = load_method(state, dev, stats, random_init=random_init)
    layer = resolve_layer(cfg, layer)
    view = view or cfg.embed_view
    if channel_mode == "each" and cfg.data.merge == "none":
        raise TrainingError("embed --channels each: the run's model takes all channels at once "
                            f"(data.merge=none, {len(state_channels)} channels); per-channel "
                            "embeddings need a single-channel model (data.merge gray or gray_rgb)")
    if layer is not None:
        model = LayerMean(method.backbone(), layer).to(dev).eval()
    else:
        model = method.embedder(pool=pool).to(dev).eval()
    prep = device_prep(cfg, stats, dev)
    crop = method.embed_crop()
    boxes = method.embed_boxes()
    resize = cfg.data.resize if view == "whole" else None
    if view == "native" and batch_size > 1 and {"height", "width"} <= set(ds.index.columns):
        sizes = ds.index[["height", "width"]].drop_duplicates()
        if len(sizes) > 1:
            raise TrainingError(f"embed --view native: {shards} holds images of {len(sizes)} sizes "
                                f"(e.g. {[tuple(r) for r in sizes.head(3).itertuples(index=False)]}); "
                                "they cannot share a batch at their stored size: pass --batch-size 1, "
                                "or --view whole to resize them as in training")

    def features(x: torch.Tensor) -> torch.Tensor:
        """Normalised, un-merged ``x`` -> one feature row per sample for the chosen view."""
        def views_of(z):
            if view in ("whole", "native"):
                return [z]
            return box_views(z, boxes) if boxes else center_views(z, crop)

        def run(z):
            outs = [model(v).float() for v in views_of(merge_channels(z, cfg.data.merge))]
            return outs[0] if len(outs) == 1 else torch.stack(outs).median(dim=0).values

        if channel_mode == "each":
            return torch.cat([run(x[:, c: c + 1]) for c in range(x.shape[1])], dim=1)
        return run(x)
    index = ds.index
    mode = _per(index) if per == "auto" else per
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    shard_col = index["shard"].astype(str).to_numpy()
    names = list(dict.fromkeys(shard_col.tolist()))
    from cytodata._progress import bar as progress_bar
    from cytodata._progress import shown

    bar = None
    if shown(progress):
        bar = progress_bar(total=len(index), desc="embed", unit="img", dynamic_ncols=True)
    files = []
    for i, name in enumerate(names):
        rows = np.flatnonzero(shard_col == name)
        part = parts / f"part-{i:06d}.parquet"
        files.append(part)
        keys = index["key"].to_numpy()[rows]
        if part.exists():
            try:
                done = pd.read_parquet(part, columns=["key"])["key"].to_numpy()
                if len(done) == len(keys) and (np.sort(done) == np.sort(keys)).all():
                    if bar is not None:
                        bar.update(len(rows))
                    continue
            except Exception:  # noqa: BLE001 - an unreadable part is redone
                pass
        ds.sampler = _FixedOrder(rows)
        ds.set_epoch(0)
        ds.start = 0
        feats, got = [], []
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0,
                                             collate_fn=functools.partial(collate, resize=resize))
        with torch.no_grad():
            for batch in loader:
                x = prep.normalize(to_device_float(batch["image"], dev), batch["meta"])
                with runtime.autocast(dev, cfg.precision):
                    f = features(x)
                feats.append(f.cpu().numpy())
                got.extend(batch["key"])
                if bar is not None:
                    bar.update(len(batch["key"]))
        if sorted(got) != sorted(keys.tolist()):
            missing = sorted(set(keys.tolist()) - set(got))
            raise TrainingError(f"embed {shards}: shard {name} gave {len(got)} of {len(keys)} samples "
                                f"(missing e.g. {missing[:3]}); check the shard with `cytodata verify`")
        matrix = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
        table = pd.DataFrame(matrix, columns=[f"emb_{j}" for j in range(matrix.shape[1])])
        table.insert(0, "key", got)
        tmp = part.with_name(part.name + f".tmp-{os.getpid()}")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, part)
    if bar is not None:
        bar.close()
    emb = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    meta = index.drop(columns=[c for c in STORAGE_COLUMNS if c in index.columns])
    table = meta.merge(emb, on="key", how="inner", validate="one_to_one")
    table = with_manifest_columns(table, ds.shards.meta)  # concentration etc. that protocols need
    if mode == "field":
        table = _per_field(table)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    for f in files:
        f.unlink(missing_ok=True)
    parts.rmdir()
    return out


def _per(index: pd.DataFrame) -> str:
    """``field`` when rows are cells of fields (several rows share a ``parent_id``), else ``image``."""
    if "parent_id" not in index.columns or "image_id" not in index.columns:
        return "image"
    crops = (index["parent_id"].astype("string") != index["image_id"].astype("string")).fillna(False)
    return "field" if bool(crops.all()) and index["parent_id"].duplicated().any() else "image"


def _per_field(table: pd.DataFrame) -> pd.DataFrame:
    """Average cell embeddings per field; the field's key is ``make_key(source, parent_id)``."""
    from cytodata.schema import make_key

    emb_cols = [c for c in table.columns if c.startswith("emb_")]
    group = ["source", "parent_id"] if "source" in table.columns else ["parent_id"]
    means = table.groupby(group, sort=True, dropna=False)[emb_cols].mean()
    first = table.drop(columns=emb_cols + ["key"]).groupby(group, sort=True, dropna=False).first()
    counts = table.groupby(group, sort=True, dropna=False).size().rename("n_cells")
    out = first.join(counts).join(means).reset_index()
    src = out["source"] if "source" in out.columns else pd.Series([""] * len(out))
    out.insert(0, "key", [make_key(s, p) for s, p in zip(src, out["parent_id"])])
    out["image_id"] = out["parent_id"]
    return out
