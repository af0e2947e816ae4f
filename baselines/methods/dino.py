"""DINO (Caron et al. 2021) and WS-DINO (Cross-Zamirski et al. 2022) on the shared engine.

DINO: a student ViT (timm, ``dynamic_img_size`` so local crops pass) + DINO head (3-layer MLP,
bottleneck, L2 normalisation, weight-normalised last layer, frozen during the first epoch) learns
to match a teacher that is the EMA of the student (momentum on a cosine to 1). Loss: cross-entropy
between the centred, sharpened teacher output on the 2 global crops and the student output on
every other view; the centre is an EMA (all-reduced under DDP) of the teacher's batch means.
Multi-crop (2 global + N local random resized crops, flips, 90-degree rotations) runs on the
device on the float batch: one ``grid_sample`` per view for the whole batch, parameters drawn on
the CPU from the engine's per-step generator (a resumed run draws the same crops).

WS-DINO: the same, but the local crops come from a *partner* image with the same weak label
(any index column, or several joined with ``+`` such as ``compound+concentration``), images
drawn evenly across weak-label groups (WS-DINO's weighted sampler). Weak-label groups with a
single image fall back to same-image local crops; their count is reported.

"Epoch" for the per-epoch settings (last-layer freeze, teacher-temperature warm-up, lr warm-up
``warmup_epochs``) is ``steps_per_epoch = training rows // global batch`` (global batch =
``batch_size * accumulate * world size``): the streaming loader has no epoch of its own length.

Embeddings (``cytodata embed``): the teacher's CLS token; per-channel models' CLS tokens are
concatenated then L2-normalised; ``embed.py`` takes the median over four centre crops.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from cytodata.errors import RecipeError, TrainingError
from cytodata.loaders.partition import rng_for
from cytodata.loaders.samplers import local_first

from .. import augment, runtime
from ..config import EMBED_POOLS, TrainConfig
from ..models import create, load_pretrained, read_state_dict
from ..schedules import cosine_schedule, lr_schedule, wd_schedule
from . import METHODS
from .base import Method


@dataclass
class DinoConfig(TrainConfig):
    """DINO settings on top of the engine's (``data.crop`` is the global crop side)."""

    out_dim: int = 65536              # prototypes K (DINO 65536)
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True      # weight-norm gain fixed at 1 (DINO's default for ViT-S)
    freeze_last_layer: float = 1.0    # epochs with the last head layer frozen
    patch_size: int | None = None     # override the timm model's patch size (e.g. test_vit -> 8)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # more timm kwargs (depth, ...)
    drop_path_rate: float = 0.1       # student only; the teacher has none
    per_channel: bool = False         # one model per channel, in_chans=1 (WS-DINO's choice)
    student_temp: float = 0.1
    teacher_temp: float = 0.04        # after warm-up
    warmup_teacher_temp: float = 0.04  # start of the linear warm-up
    warmup_teacher_temp_epochs: float = 0.0
    center_momentum: float = 0.9      # 1.0 = no centring
    momentum_teacher: float = 0.99    # WS-DINO 0.99; DINO 0.996; cosine to 1
    local_crops: int = 8
    local_crop: int = 96
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    warmup_epochs: float | None = None  # lr warm-up in epochs (overrides optim.warmup_steps)
    embed_crop: int | None = None     # side of the four centre crops (default data.crop)
    collapse_patience: int = 50       # consecutive collapsed steps before the warning

    def __post_init__(self):
        where = f"{self.method} config"

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise RecipeError(f"{where}: {msg}")

        need(self.out_dim >= 2, f"out_dim={self.out_dim}; the DINO head needs >= 2 prototypes "
             "(DINO uses 65536; tiny runs 256)")
        need(self.head_hidden_dim >= 1 and self.head_bottleneck_dim >= 1 and self.head_layers >= 1,
             f"head_hidden_dim={self.head_hidden_dim}, head_bottleneck_dim="
             f"{self.head_bottleneck_dim}, head_layers={self.head_layers}; all must be >= 1")
        need(self.local_crops >= 0, f"local_crops={self.local_crops}; must be >= 0 (DINO: 8)")
        need(self.local_crop >= 8, f"local_crop={self.local_crop}; must be >= 8 pixels")
        for name in ("global_scale", "local_scale"):
            lo_hi = getattr(self, name)
            need(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1,
                 f"{name}={lo_hi}; expected [min, max] area fractions with 0 < min <= max <= 1")
        need(self.student_temp > 0 and self.teacher_temp > 0 and self.warmup_teacher_temp > 0,
             "student_temp, teacher_temp and warmup_teacher_temp must be > 0")
        need(0.0 <= self.center_momentum <= 1.0,
             f"center_momentum={self.center_momentum}; must be in [0, 1]")
        need(0.0 <= self.momentum_teacher <= 1.0,
             f"momentum_teacher={self.momentum_teacher}; must be in [0, 1]")
        need(self.patch_size is None or self.patch_size >= 1, f"patch_size={self.patch_size}")
        need(self.collapse_patience >= 1, f"collapse_patience={self.collapse_patience}; >= 1")


@dataclass
class WSDinoConfig(DinoConfig):
    """WS-DINO: local crops from a partner image sharing ``weak_label``."""

    weak_label: str = "label"         # index column(s); "compound+concentration" = treatment
    pair_image_column: str = "auto"   # what makes two rows the same image (auto: parent_id/key)


# ----------------------------------------------------------------------------- multi-crop
#: the 8 symmetries of the square as 2x2 matrices acting on output coordinates (u, v)
_DIHEDRAL = torch.tensor([[[a, 0.0], [0.0, b]] for a in (1.0, -1.0) for b in (1.0, -1.0)]
                         + [[[0.0, a], [b, 0.0]] for a in (1.0, -1.0) for b in (1.0, -1.0)])


def resized_crops(x: torch.Tensor, size: int, scale: "tuple[float, float] | list[float]",
                  g: torch.Generator, *, flips: bool = True, rot90: bool = True,
                  ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crops of a whole batch in one ``grid_sample`` (torchvision's rule, batched).

    ``x`` ``(B, C, H, W)`` float -> ``(B, C, size, size)``: per sample an area fraction
    ``U(scale)`` of the image and a log-uniform aspect ratio in ``ratio`` (clipped to the image),
    a uniform position, and (``flips``/``rot90``) a random symmetry of the square folded into
    the same affine map, resampled bilinearly. Parameters come from ``g`` (CPU).
    """
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(float(scale[0]), float(scale[1]), generator=g) * (h * w)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    cw = torch.sqrt(area * torch.exp(log_r)).clamp(1.0, float(w))
    ch = torch.sqrt(area / torch.exp(log_r)).clamp(1.0, float(h))
    cx = cw / 2 + torch.rand(b, generator=g) * (w - cw)          # centre, pixels
    cy = ch / 2 + torch.rand(b, generator=g) * (h - ch)
    n_sym = (4 if flips else 1) * (2 if rot90 else 1)
    pick = torch.randint(0, n_sym, (b,), generator=g)
    if flips and not rot90:
        sym = _DIHEDRAL[pick]
    elif rot90 and not flips:
        sym = _DIHEDRAL[pick * 4]
    else:
        sym = _DIHEDRAL[pick]
    theta = torch.zeros(b, 2, 3)
    theta[:, :, :2] = torch.diag_embed(torch.stack([cw / w, ch / h], 1)) @ sym
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 2] = 2 * cy / h - 1
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


#: views resampled by more than this factor (either way) from native resolution get a warning
ZOOM_TOLERANCE = 1.6


# ----------------------------------------------------------------------------- modules
class DINOHead(nn.Module):
    """MLP (``layers`` Linear, GELU between) -> bottleneck -> L2 norm -> weight-normed Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if layers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            mods: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(layers - 2):
                mods += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            mods.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*mods)
        self.apply(self._init)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad = not norm_last_layer

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class DinoNet(nn.Module):
    """Backbone + head over a list of views; views of one size share a backbone call (DINO)."""

    def __init__(self, backbone: nn.Module, head: DINOHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Map views ``[(B, C, s, s), ...]`` to ``(len(views) * B, out_dim)`` (view-major)."""
        feats, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-1] == views[start].shape[-1]:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))
            start = end
        return self.head(torch.cat(feats))


class DinoModels(nn.Module):
    """One :class:`DinoNet` over all channels, or one per channel (``per_channel``)."""

    def __init__(self, nets: list[DinoNet], per_channel: bool):
        super().__init__()
        self.nets, self.per_channel = nn.ModuleList(nets), per_channel

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        """-> ``(n_models, len(views) * B, out_dim)``."""
        if not self.per_channel:
            return self.nets[0](views)[None]
        return torch.stack([net([v[:, i: i + 1] for v in views])
                            for i, net in enumerate(self.nets)])


def dino_cross_entropy(student: torch.Tensor, teacher_probs: torch.Tensor, n_views: int,
                       n_global: int = 2, student_temp: float = 0.1) -> torch.Tensor:
    """DINO's loss, averaged over the batch and the view pairs.

    Mean over (teacher global view q, student view v != q) of
    ``-sum_k p_t[q] log softmax(s[v] / student_temp)``.

    ``student`` ``(n_views * B, K)`` raw logits, ``teacher_probs`` ``(n_global * B, K)``
    (centred, sharpened softmax), both view-major.
    """
    s = F.log_softmax(student.float() / student_temp, dim=-1).chunk(n_views)
    t = teacher_probs.float().chunk(n_global)
    total, n = student.new_zeros((), dtype=torch.float32), 0
    for iq, q in enumerate(t):
        for v in range(n_views):
            if v == iq:
                continue
            total = total + torch.sum(-q * s[v], dim=-1).mean()
            n += 1
    return total / max(n, 1)


class DINOLoss(nn.Module):
    """Cross-entropy with a centred, sharpened teacher; the centre (a buffer) is checkpointed.

    ``center`` ``(n_models, 1, K)``: EMA with ``center_momentum`` of the teacher's batch mean,
    summed over ranks with ``all_reduce`` under DDP (identical on every rank).
    """

    def __init__(self, out_dim: int, n_models: int = 1, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(n_models, 1, out_dim))

    def teacher_probs(self, teacher: torch.Tensor, temp: float) -> torch.Tensor:
        """``(M, N, K)`` teacher logits -> centred, sharpened probabilities."""
        return F.softmax((teacher.float() - self.center) / temp, dim=-1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, temp: float, n_views: int,
                n_global: int = 2) -> tuple[torch.Tensor, dict]:
        """``student`` ``(M, V*B, K)``, ``teacher`` ``(M, G*B, K)`` -> (loss, monitor stats)."""
        probs = self.teacher_probs(teacher, temp)
        losses = [dino_cross_entropy(student[m], probs[m], n_views, n_global, self.student_temp)
                  for m in range(student.shape[0])]
        loss = torch.stack(losses).mean()
        stats = _monitor(probs.detach(), float(loss.detach()))
        self.update_center(teacher)
        return loss, stats

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """``center = m * center + (1 - m) * mean(teacher over batch and ranks)``."""
        batch = teacher.detach().float().sum(dim=1, keepdim=True)
        runtime.all_reduce_sum(batch)
        batch = batch / (teacher.shape[1] * runtime.world_size())
        self.center.mul_(self.center_momentum).add_(batch, alpha=1 - self.center_momentum)


def _monitor(probs: torch.Tensor, loss: float) -> dict:
    """Collapse statistics of teacher probabilities ``(M, N, K)`` (averaged over models).

    KL(teacher || student) averaged over the loss pairs equals ``loss - teacher entropy``: each
    teacher view meets the same number of student views.
    """
    k = probs.shape[-1]
    ent = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
    marg = probs.mean(dim=1)
    marg_ent = -(marg * torch.log(marg.clamp_min(1e-12))).sum(-1).mean()
    h = float(ent)
    return {"teacher_entropy": h, "teacher_marginal_entropy": float(marg_ent),
            "kl_teacher_student": max(loss - h, 0.0), "loss_over_ln_k": loss / math.log(k),
            "n_samples": probs.shape[1]}


def collapse_kind(stats: dict, out_dim: int) -> str | None:
    """``"uniform"``, ``"one-prototype"`` or None from one step's :func:`_monitor` stats.

    Uniform: the teacher is (nearly) flat and the student copies it, so the loss sits near
    ln(out_dim) and KL(teacher || student), the only learning signal, is ~ 0. Thresholds (as
    fractions of ln(out_dim)): teacher entropy > 0.9 and KL < 0.02. Measured: runs that drifted
    there (entropy 0.94-0.99, KL 0.2-1.4%) had lost to the random-init backbone on NSC; healthy
    runs keep KL at 5-15% of ln K. One prototype: every teacher output is sharp *and* on the
    same prototype (entropy ~ 0 and the batch-mean distribution is ~ one-hot too).
    """
    ln_k = math.log(out_dim)
    if stats["teacher_entropy"] > 0.9 * ln_k and stats["kl_teacher_student"] < 0.02 * ln_k:
        return "uniform"
    reach = math.log(max(2, min(out_dim, int(stats.get("n_samples", out_dim)))))
    if stats["teacher_entropy"] < 0.05 * ln_k and stats["teacher_marginal_entropy"] < 0.1 * reach:
        return "one-prototype"
    return None


_REMEDIES = {
    "uniform": "the centring outweighs the sharpening: lower teacher_temp (0.04; warm up to "
               "0.07 at most, warmup_teacher_temp_epochs), raise center_momentum towards "
               "0.9-0.99, lower optim.lr or raise momentum_teacher (0.996)",
    "one-prototype": "the sharpening outweighs the centring: keep centring on "
                     "(center_momentum 0.9; 1.0 disables it), raise teacher_temp slightly "
                     "(0.04 -> 0.07), raise momentum_teacher (0.996), lower optim.lr or add "
                     "warm-up",
}


# ----------------------------------------------------------------------------- sampler
def group_codes(index: pd.DataFrame, weak_label: str, what: str = "weak_label"
                ) -> tuple[np.ndarray, list[str]]:
    """Per-row weak-label group ids (-1 where any column is NA) and the column names used.

    ``weak_label`` names an index column or several joined with ``+``; a missing column is a
    :class:`TrainingError` naming the columns present.
    """
    cols = [c.strip() for c in str(weak_label).split("+") if c.strip()]
    missing = [c for c in cols if c not in index.columns]
    if not cols or missing:
        raise TrainingError(f"{what}={weak_label!r}: the shard index has no column(s) "
                            f"{missing or cols}; columns: {sorted(map(str, index.columns))}. "
                            "Pass --set weak_label=COLUMN "
                            "(e.g. compound, moa, label, or compound+concentration for treatments)")
    frame = index[cols]
    na = frame.isna().any(axis=1).to_numpy()
    keys = frame.astype("string").fillna("").agg("\x1f".join, axis=1) if len(cols) > 1 \
        else frame[cols[0]].astype("string").fillna("")
    codes, _ = pd.factorize(keys.to_numpy(dtype=object), sort=True)
    codes = np.where(na, -1, codes).astype(np.int64)
    return codes, cols


def image_ids(index: pd.DataFrame, column: str = "auto") -> np.ndarray:
    """Per-row image ids: rows sharing one are the same image (crops of one field never pair)."""
    if column == "auto":
        has_parent = "parent_id" in index.columns and index["parent_id"].notna().all()
        column = "parent_id" if has_parent else "key"
    if column not in index.columns:
        raise TrainingError(f"pair_image_column={column!r} is not an index column; columns: "
                            f"{sorted(map(str, index.columns))}")
    codes, _ = pd.factorize(index[column].astype("string").fillna("").to_numpy(dtype=object))
    return codes.astype(np.int64)


@dataclass
class BalancedWeakLabelPairs:
    """(anchor, partner) pairs for WS-DINO: anchors drawn evenly across weak-label groups.

    Each epoch has as many pairs as labelled rows; every group gets an equal share (largest
    remainder), its rows taken without replacement, whole passes first when the share is larger
    than the group (WS-DINO's inverse-frequency weighted sampler, without its draw noise). The
    partner is uniform over the group's rows of *another image*; an anchor whose group has a
    single image is paired with itself (``self_pairs`` counts them). Rows with an NA label are
    left out. Same 2-D order contract as :class:`cytodata.loaders.WeakLabelPairs`.
    """

    weak_label: str = "label"
    image_column: str = "auto"
    self_pairs: int = field(default=0, init=False)
    lone_images: int = field(default=0, init=False)

    def order(self, index: pd.DataFrame, *, seed: int, epoch: int, world_size: int = 1
              ) -> np.ndarray:
        """Return the ``(n, 2)`` (anchor, partner) rows of ``epoch`` (pure in its inputs)."""
        codes, _ = group_codes(index, self.weak_label)
        images = image_ids(index, self.image_column)
        rng = rng_for("ws-dino-pairs", seed, epoch)
        labelled = np.flatnonzero(codes >= 0)
        if not len(labelled):
            raise TrainingError(f"weak_label={self.weak_label!r}: every training row is NA; choose "
                                "a column with values")
        groups = pd.Series(labelled).groupby(codes[labelled]).apply(np.asarray).to_dict()
        names = sorted(groups)
        total = len(labelled)
        share = np.full(len(names), total // len(names))
        share[rng.permutation(len(names))[: total - share.sum()]] += 1
        pairs, self_pairs, lone = [], 0, 0
        for name, want in zip(names, share, strict=True):
            rows = np.asarray(groups[name], dtype=np.int64)
            full, rest = divmod(int(want), len(rows))
            pos = np.concatenate([np.tile(np.arange(len(rows)), full),
                                  rng.choice(len(rows), size=rest, replace=False)]).astype(np.int64)
            partners = _partners(rows, images[rows], pos, rng)
            if len(np.unique(images[rows])) == 1:
                lone += len(rows)
            self_pairs += int((partners == rows[pos]).sum())
            pairs.append(np.stack([rows[pos], partners], axis=1))
        self.self_pairs, self.lone_images = self_pairs, lone
        return local_first(np.concatenate(pairs), index, seed=seed, epoch=epoch)


def _partners(rows: np.ndarray, images: np.ndarray, pos: np.ndarray, rng: np.random.Generator
              ) -> np.ndarray:
    """For anchors ``rows[pos]``, a partner uniform over the rows with another image (else self).

    Rows are sorted by image so an image's rows form one block ``[start, start + width)``; a
    uniform draw over the ``n - width`` other positions skips it (vectorised, exact).
    """
    n = len(rows)
    order = np.argsort(images, kind="stable")
    inv = np.empty(n, np.int64)
    inv[order] = np.arange(n)
    _, start, width = np.unique(images[order], return_index=True, return_counts=True)
    block = np.repeat(np.arange(len(start)), width)
    s = inv[pos]
    first, wide = start[block[s]], width[block[s]]
    others = n - wide
    draw = np.floor(rng.random(len(pos)) * np.maximum(others, 1)).astype(np.int64)
    at = np.where(draw < first, draw, draw + wide)
    return np.where(others > 0, rows[order][np.minimum(at, n - 1)], rows[pos])


# ----------------------------------------------------------------------------- the method
@METHODS.register("dino")
class Dino(Method):
    """Self-distillation with no labels; embeddings = the teacher's CLS token."""

    config_class = DinoConfig
    supervised = False
    pairs = False           # WS-DINO: local crops from ``batch["partner"]``

    def __init__(self, cfg: DinoConfig, info, device):
        super().__init__(cfg, info, device)
        self.n_models = info.n_channels if cfg.per_channel else 1
        in_chans = 1 if cfg.per_channel else info.n_channels
        student = [self._net(in_chans, cfg.drop_path_rate) for _ in range(self.n_models)]
        self.student = DinoModels(student, cfg.per_channel).to(device)
        # the teacher starts as the student's copy, without drop-path (DINO), never optimised
        self.teacher = DinoModels([self._net(in_chans, 0.0) for _ in range(self.n_models)],
                                  cfg.per_channel).to(device)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.teacher.eval()
        self.criterion = DINOLoss(cfg.out_dim, self.n_models, cfg.student_temp,
                                  cfg.center_momentum).to(device)
        self._check_sizes()
        self._warn_zoom()
        world = runtime.world_size()
        self.global_batch = cfg.batch_size * cfg.accumulate * world
        self.steps_per_epoch = max(1, int(info.n_train) // self.global_batch)
        spe = self.steps_per_epoch
        self.momentum = cosine_schedule(cfg.momentum_teacher, 1.0, cfg.steps)
        self.teacher_temp = teacher_temp_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp,
                                                  int(round(cfg.warmup_teacher_temp_epochs * spe)),
                                                  cfg.steps)
        self.freeze_steps = int(round(cfg.freeze_last_layer * spe))
        self._collapse_run, self._collapse_warned = 0, False

    # --- construction ---
    def _net(self, in_chans: int, drop_path: float) -> DinoNet:
        cfg = self.cfg
        kwargs = dict(cfg.model_kwargs)
        if drop_path:
            kwargs["drop_path_rate"] = drop_path
        if cfg.patch_size:
            kwargs["patch_size"] = cfg.patch_size
        try:
            backbone = create(cfg.model, in_chans=in_chans, num_classes=0,
                              **{"dynamic_img_size": True, **kwargs})
        except TypeError as exc:
            if "dynamic_img_size" not in str(exc) and "patch_size" not in str(exc):
                raise
            if cfg.patch_size:
                raise TrainingError(f"model={cfg.model!r} takes no patch_size; drop --set "
                                    f"patch_size={cfg.patch_size} or use a ViT") from None
            kwargs.pop("patch_size", None)
            kwargs.pop("dynamic_img_size", None)
            backbone = create(cfg.model, in_chans=in_chans, num_classes=0, **kwargs)  # a convnet
        if getattr(backbone, "global_pool", None) not in (None, "token") and \
                getattr(backbone, "cls_token", None) is not None:
            backbone.reset_classifier(0, "token")  # DINO's feature is the CLS token
        head = DINOHead(backbone.num_features, cfg.out_dim, cfg.head_hidden_dim,
                        cfg.head_bottleneck_dim, cfg.head_layers, cfg.norm_last_layer)
        if cfg.pretrained:
            _load_pretrained(backbone, head, cfg.pretrained, in_chans)
        return DinoNet(backbone, head)

    def _check_sizes(self) -> None:
        cfg = self.cfg
        embed = getattr(self.student.nets[0].backbone, "patch_embed", None)
        patch = getattr(embed, "patch_size", None)
        if isinstance(patch, (tuple, list)):
            patch = patch[0]
        self.patch = int(patch) if patch else None
        sizes = {"data.crop (global crop)": cfg.data.crop, "local_crop": cfg.local_crop,
                 "embed_crop": self.embed_crop()}
        if self.patch:
            bad = {k: v for k, v in sizes.items() if v % self.patch or v < self.patch}
            if bad:
                detail = ", ".join(f"{k}={v}" for k, v in bad.items())
                example = max(self.patch, min(bad.values()) // self.patch * self.patch)
                raise TrainingError(f"{detail}: not a multiple of the patch size {self.patch} of "
                                    f"model={cfg.model!r}; use multiples of {self.patch} (e.g. "
                                    f"{example}) or set patch_size")
        shape = self.info.shape
        if shape is not None:
            h, w = shape[-2:]
            for name, size in (("data.crop (global crop)", cfg.data.crop),
                               ("local_crop", cfg.local_crop)):
                if size > min(h, w):
                    raise TrainingError(f"{name}={size} is larger than the training images "
                                        f"({h}x{w}); lower it to at most {min(h, w)} (a crop "
                                        "is resampled from "
                                        "inside the image)")

    def _warn_zoom(self) -> None:
        """Warn when the views resample cells far from the resolution ``embed`` sees them at.

        Area fractions are of the whole image (DINO's rule): on fields much larger than the
        crop, ``global_scale`` 0.4-1 shrinks cells several-fold in training while embeddings use
        native-resolution centre crops, and the model learns to ignore cell size.
        """
        cfg, shape = self.cfg, self.info.shape
        if shape is None or not runtime.is_main():
            return
        area = float(shape[-2]) * float(shape[-1])
        for name, size, (lo, hi) in (("global_scale", cfg.data.crop, cfg.global_scale),
                                     ("local_scale", cfg.local_crop, cfg.local_scale)):
            zoom = size / math.sqrt(math.sqrt(lo * hi) * area)   # output px per source px
            if not 1 / ZOOM_TOLERANCE <= zoom <= ZOOM_TOLERANCE:
                native = size * size / area
                warnings.warn(
                    f"{cfg.method}: {name}=[{lo}, {hi}] of {shape[-2]}x{shape[-1]} images "
                    f"resampled to {size} px scales cells by "
                    f"~{zoom:.2f}x in training, while embed uses native-resolution "
                    f"{self.embed_crop()}-px crops. For native-resolution views set "
                    f"{name}=[{0.9 * native:.3g}, {min(1.0, 1.1 * native):.3g}] "
                    f"(area fractions of the image; cell size is a phenotype)",
                    RuntimeWarning, stacklevel=3)

    # --- engine hooks ---
    def modules(self):
        return {"student": self.student, "teacher": self.teacher, "dino_loss": self.criterion}

    def trainable(self):
        return self.student

    def signature(self):
        cfg = self.cfg
        return {"method": cfg.method, "model": cfg.model, "patch_size": self.patch,
                "model_kwargs": dict(cfg.model_kwargs),
                "in_chans": 1 if cfg.per_channel else self.info.n_channels,
                "n_models": self.n_models,
                "out_dim": cfg.out_dim, "head": [cfg.head_hidden_dim, cfg.head_bottleneck_dim,
                                                  cfg.head_layers, cfg.norm_last_layer]}

    def schedules(self, steps: int, global_batch: int):
        optim = self.cfg.optim
        if self.cfg.warmup_epochs is not None:
            optim = copy.copy(optim)
            optim.warmup_steps = int(round(self.cfg.warmup_epochs * self.steps_per_epoch))
        return lr_schedule(optim, steps, global_batch), wd_schedule(optim, steps)

    def views(self, batch: dict, g: torch.Generator) -> tuple[list[torch.Tensor], int]:
        """Make 2 global crops of ``batch["image"]`` + ``local_crops`` local ones.

        Local crops come from the partner for WS-DINO; each view gets symmetries and intensity
        jitter. Returns (views, n_global).
        """
        cfg, aug = self.cfg, self.cfg.augment
        x = batch["image"]
        local_src = batch["partner"]["image"] if self.pairs else x

        def one(src, size, scale):
            v = resized_crops(src, size, scale, g, flips=aug.flips, rot90=aug.rot90)
            return augment.intensity_jitter(v, g, aug.intensity, aug.shift)

        views = [one(x, cfg.data.crop, cfg.global_scale) for _ in range(2)]
        views += [one(local_src, cfg.local_crop, cfg.local_scale) for _ in range(cfg.local_crops)]
        return views, 2

    def loss(self, model, batch, step, g):
        extra = self._check_pairs(batch) if self.pairs else {}
        views, n_global = self.views(batch, g)
        student = model(views)
        with torch.no_grad():
            teacher = self.teacher(views[:n_global])
        temp = float(self.teacher_temp[min(step, len(self.teacher_temp) - 1)])
        loss, stats = self.criterion(student.float(), teacher.float(), temp, len(views), n_global)
        self._watch(stats, step)
        stats.pop("n_samples")
        if runtime.world_size() > 1:
            extra["center_rank_spread"] = self._center_spread()
        return loss, {**stats, **extra, "teacher_temp": temp,
                      "teacher_momentum": float(self.momentum[min(step, len(self.momentum) - 1)])}

    def before_step(self, module, step):
        """DINO's ``cancel_gradients_last_layer``: no update of the last layer in epoch 0."""
        if step < self.freeze_steps:
            for net in module.nets:
                for p in net.head.last_layer.parameters():
                    p.grad = None

    @torch.no_grad()
    def after_step(self, step):
        m = float(self.momentum[min(step, len(self.momentum) - 1)])
        ps = [p.detach() for p in self.student.parameters()]
        pt = list(self.teacher.parameters())
        torch._foreach_mul_(pt, m)
        torch._foreach_add_(pt, ps, alpha=1 - m)

    def state(self):
        return {"collapse_run": self._collapse_run, "collapse_warned": self._collapse_warned}

    def load_state(self, state):
        self._collapse_run = int(state.get("collapse_run", 0))
        self._collapse_warned = bool(state.get("collapse_warned", False))

    def _watch(self, stats: dict, step: int) -> None:
        """Warn once when the run has sat in a collapse for ``collapse_patience`` steps."""
        kind = collapse_kind(stats, self.cfg.out_dim)
        self._collapse_run = self._collapse_run + 1 if kind else 0
        if kind and self._collapse_run >= self.cfg.collapse_patience and not self._collapse_warned:
            self._collapse_warned = True
            if runtime.is_main():
                warnings.warn(
                    f"{self.cfg.method}: {kind} collapse at step {step + 1} (for "
                    f"{self._collapse_run} steps): loss/ln(out_dim)={stats['loss_over_ln_k']:.3f}, "
                    f"KL(teacher||student)={stats['kl_teacher_student']:.4f}, teacher entropy="
                    f"{stats['teacher_entropy']:.3f} of ln({self.cfg.out_dim})="
                    f"{math.log(self.cfg.out_dim):.3f}. Remedies: {_REMEDIES[kind]}",
                    RuntimeWarning, stacklevel=2)

    def _check_pairs(self, batch: dict) -> dict:
        return {}

    def _center_spread(self) -> float:
        """Return max - min over ranks of a float64 digest of the centre (0: ranks agree)."""
        c = self.criterion.center.detach().double().flatten()
        digest = (c * torch.arange(1, c.numel() + 1, dtype=torch.float64, device=c.device)).sum()
        v = torch.zeros(runtime.world_size(), dtype=torch.float64, device=c.device)
        v[runtime.rank()] = digest
        runtime.all_reduce_sum(v)
        return float(v.max() - v.min())

    # --- evaluation ---
    def embed_crop(self) -> int:
        return int(self.cfg.embed_crop or self.cfg.data.crop)

    def embedder(self, pool=None):
        pool = "cls" if pool is None else pool
        if pool not in EMBED_POOLS:
            raise TrainingError(f"embed pool={pool!r}; valid for DINO runs: {', '.join(EMBED_POOLS)}")
        return _TeacherFeatures(self.teacher, self.cfg.per_channel, pool)


class _TeacherFeatures(nn.Module):
    """Teacher backbone(s) -> ``(B, D)``: CLS token, patch-token mean or both (per-channel
    models: concatenated over channels, then L2-normalised).
    """

    def __init__(self, models: DinoModels, per_channel: bool, pool: str = "cls"):
        super().__init__()
        self.models, self.per_channel, self.pool = models, per_channel, pool

    def _one(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            return backbone(x)
        tokens = backbone.forward_features(x)             # (B, prefix + patches, D), normed
        patches = tokens[:, getattr(backbone, "num_prefix_tokens", 1):].mean(dim=1)
        return patches if self.pool == "avg" else torch.cat([tokens[:, 0], patches], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.per_channel:
            return self._one(self.models.nets[0].backbone, x)
        feats = [self._one(net.backbone, x[:, i: i + 1]) for i, net in enumerate(self.models.nets)]
        return F.normalize(torch.cat(feats, dim=1), dim=1)


@METHODS.register("ws-dino")
class WSDino(Dino):
    """DINO whose local crops come from another image with the same weak label."""

    config_class = WSDinoConfig
    pairs = True

    def __init__(self, cfg: WSDinoConfig, info, device):
        super().__init__(cfg, info, device)
        index = (info.extra or {}).get("train_index")
        self._keys = None
        if index is None:       # cytodata embed: no training index, nothing to pair
            return
        codes, cols = group_codes(index, cfg.weak_label)
        images = image_ids(index, cfg.pair_image_column)
        labelled = codes >= 0
        per_group = pd.Series(images[labelled]).groupby(codes[labelled]).nunique()
        n_images = np.zeros(max(int(codes.max()) + 1, 1), np.int64)
        n_images[per_group.index.to_numpy()] = per_group.to_numpy()
        self._keys = pd.Index(index["key"].astype(str))
        self._codes, self._images, self._n_images = codes, images, n_images
        lone_groups = int((per_group == 1).sum())
        self.lone_images = int(np.isin(codes, per_group.index[per_group == 1]).sum())
        self.na_rows = int((~labelled).sum())
        self.n_groups = len(per_group)
        if self.lone_images or self.na_rows:
            warnings.warn(
                f"ws-dino: weak_label={cfg.weak_label!r} has {self.n_groups} groups over "
                f"{int(labelled.sum())} training rows; {self.lone_images} images in {lone_groups} "
                "group(s) of a single image have no partner and fall back to same-image local "
                f"crops (plain DINO); {self.na_rows} rows with no {'+'.join(cols)} value are not "
                "sampled", RuntimeWarning, stacklevel=2)

    @classmethod
    def make_sampler(cls, cfg):
        return BalancedWeakLabelPairs(cfg.weak_label, cfg.pair_image_column)

    def _check_pairs(self, batch: dict) -> dict:
        """Check the pair invariant on a batch and return the same-image fallback fraction.

        Same weak label; another image unless the group has a single image.
        """
        if "partner" not in batch:
            raise TrainingError("ws-dino: the batch has no 'partner' images; the loader must use "
                                "the WS-DINO pair sampler (make_sampler)")
        if self._keys is None:
            return {}
        a = self._keys.get_indexer([str(k) for k in batch["key"]])
        p = self._keys.get_indexer([str(k) for k in batch["partner"]["key"]])
        if (a < 0).any() or (p < 0).any():
            raise TrainingError("ws-dino: a batch key is not in the training index")
        ca, cp = self._codes[a], self._codes[p]
        same_image = self._images[a] == self._images[p]
        bad_label = (ca != cp) | (ca < 0)
        bad_self = same_image & (self._n_images[np.maximum(ca, 0)] > 1)
        if bad_label.any() or bad_self.any():
            i = int(np.flatnonzero(bad_label | bad_self)[0])
            raise TrainingError(f"ws-dino pair invariant broken: anchor {batch['key'][i]!r} paired "
                                f"with {batch['partner']['key'][i]!r} ("
                                + ("different weak labels" if bad_label[i] else
                                   "the same image although its group has others") + ")")
        return {"pair_fallback": float(same_image.mean())}


def teacher_temp_schedule(start: float, end: float, warmup_steps: int, steps: int) -> np.ndarray:
    """Linear ``start -> end`` over ``warmup_steps`` (its last step is ``end``), then ``end``."""
    out = np.full(int(steps), float(end))
    w = min(int(warmup_steps), int(steps))
    if w > 0:
        out[:w] = np.linspace(start, end, w)
    return out


def _load_pretrained(backbone: nn.Module, head: DINOHead, path: str, in_chans: int) -> None:
    """Load local DINO/timm weights into a backbone (timm's first-conv rule) and head.

    A DINO head (``head.mlp.*``, ``head.last_layer.*``) is loaded when its shapes fit, else the
    head stays fresh (a warning says so).
    """
    state = read_state_dict(path)
    head_state = {k[len("head."):]: v for k, v in state.items()
                  if k.startswith(("head.mlp.", "head.last_layer."))}
    body = {k: v for k, v in state.items() if k not in {"head." + h for h in head_state}}
    load_pretrained(backbone, path, in_chans, state=body)
    if head_state:
        wn = "last_layer.parametrizations.weight.original"
        renamed = {k.replace("last_layer.weight_g", wn + "0")
                    .replace("last_layer.weight_v", wn + "1"): v for k, v in head_state.items()}
        own = head.state_dict()
        if set(renamed) == set(own) and all(own[k].shape == v.shape for k, v in renamed.items()):
            head.load_state_dict(renamed)
        else:
            warnings.warn(f"pretrained={path}: its DINO head does not fit (out_dim or sizes "
                          "differ); the head starts fresh, the backbone is loaded",
                          RuntimeWarning, stacklevel=3)


__all__ = ["BalancedWeakLabelPairs", "DINOHead", "DINOLoss", "Dino", "DinoConfig", "DinoModels",
           "DinoNet", "WSDino", "WSDinoConfig", "collapse_kind", "dino_cross_entropy",
           "group_codes", "resized_crops", "teacher_temp_schedule"]
