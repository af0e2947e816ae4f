"""The ``dino`` method: DINO (Caron et al. 2021) on the shared engine (WS-DINO extends it).

DINO: a student ViT (timm, ``dynamic_img_size`` so local crops pass) + DINO head (3-layer MLP,
bottleneck, L2 normalisation, weight-normalised last layer, frozen during the first epoch) learns
to match a teacher that is the EMA of the student (momentum on a cosine to 1). Loss: cross-entropy
between the centred, sharpened teacher output on the 2 global crops and the student output on
every other view; the centre is an EMA (all-reduced under DDP) of the teacher's batch means.
Multi-crop (2 global + N local random resized crops, flips, 90-degree rotations, DINO's
photometric ops per view kind) runs on the device on the float batch: one ``grid_sample`` per
view for the whole batch, parameters drawn on the CPU from the engine's per-step generator (a
resumed run draws the same crops).

WS-DINO: the same, but the local crops come from a *partner* image with the same weak label
(any index column, or several joined with ``+`` such as ``compound+concentration``), images
drawn evenly across weak-label groups (WS-DINO's weighted sampler). Weak-label groups with a
single image fall back to same-image local crops; their count is reported.

"Epoch" for the per-epoch settings (last-layer freeze, teacher-temperature warm-up, lr warm-up
``warmup_epochs``) is ``steps_per_epoch = training rows // global batch`` (global batch =
``batch_size * accumulate * world size``): the streaming loader has no epoch of its own length.

Embeddings (``cytodata embed``): the teacher's CLS token; per-channel models' CLS tokens are
concatenated then L2-normalised; ``embedding.py`` takes the median over four centre crops.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from cytodata.errors import TrainingError

from ... import augment, runtime
from ...config import EMBED_POOLS
from ...models import create, read_checkpoint
from ...registry import METHODS
from ...schedules import cosine_schedule, lr_schedule, wd_schedule
from ..base import Method
from ..dino_config import DinoConfig
from .collapse import REMEDIES, collapse_kind
from .head import DINOHead, DinoModels, DinoNet
from .loss import DINOLoss, teacher_temp_schedule
from .photometric import GLOBAL_1, GLOBAL_2, LOCAL, photometric
from .pretrained import is_full_checkpoint, load_dino_centre, load_dino_optimizer, load_dino_pretrained
from .views import ZOOM_TOLERANCE, native_scale, resized_crops


@METHODS.register("dino")
class Dino(Method):
    """Self-distillation with no labels; embeddings = the teacher's CLS token."""

    config_class = DinoConfig
    supervised = False
    pairs = False           # WS-DINO: local crops from ``batch["partner"]``

    def __init__(self, cfg: DinoConfig, info, device):
        super().__init__(cfg, info, device)
        if cfg.per_channel and info.n_channels == 1:
            raise TrainingError(f"{cfg.method}: per_channel=true trains one model per channel, but "
                                f"the training set has one channel ({info.channels[0]}); set "
                                "--set per_channel=false")
        self.n_models = info.n_channels if cfg.per_channel else 1
        in_chans = 1 if cfg.per_channel else info.n_channels
        raw = read_checkpoint(cfg.pretrained) if cfg.pretrained else None
        full = raw is not None and is_full_checkpoint(raw)
        student = [self._net(in_chans, cfg.drop_path_rate, raw, "student" if full else None)
                   for _ in range(self.n_models)]
        self.student = DinoModels(student, cfg.per_channel).to(device)
        # the teacher starts as the student's copy, without drop-path (DINO), never optimised;
        # from a full checkpoint, as its own teacher (WS-DINO_BBBC021.py:355-363 restores both)
        self.teacher = DinoModels([self._net(in_chans, 0.0, raw, "teacher" if full else None)
                                   for _ in range(self.n_models)], cfg.per_channel).to(device)
        if not full:
            self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.teacher.eval()
        self.criterion = DINOLoss(cfg.out_dim, self.n_models, cfg.student_temp,
                                  cfg.center_momentum, sum_models=cfg.per_channel).to(device)
        self.centre_loaded = full and load_dino_centre(self.criterion.center, raw, cfg.pretrained)
        # the optimiser is built by the engine: its saved moments wait for init_optimizer
        self._saved_optimizer = raw.get("optimizer") if full else None
        self.optimizer_restored = 0
        del raw
        self._check_sizes()
        self.global_scale, self.local_scale = self._scales()
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
        self._collapse_kind: str | None = None
        self._collapse_since, self._last_stats = -1, {}

    # --- construction ---
    def _net(self, in_chans: int, drop_path: float, raw: dict | None = None,
             part: str | None = None) -> DinoNet:
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
            load_dino_pretrained(backbone, head, cfg.pretrained, in_chans, raw=raw, part=part)
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
        shape = self.view_shape()
        if shape is not None:
            h, w = shape
            scaled = f" after prescale={cfg.prescale}" if cfg.prescale != 1 else ""
            for name, size in (("data.crop (global crop)", cfg.data.crop),
                               ("local_crop", cfg.local_crop)):
                if size > min(h, w):
                    raise TrainingError(f"{name}={size} is larger than the training images "
                                        f"({h}x{w}{scaled}); lower it to at most {min(h, w)} "
                                        "(a crop is resampled from inside the image)")

    def view_shape(self) -> tuple[int, int] | None:
        """``(H, W)`` of the training images views are cut from (after ``prescale``)."""
        shape = self.info.shape
        if shape is None:
            return None
        return (int(round(shape[-2] * self.cfg.prescale)), int(round(shape[-1] * self.cfg.prescale)))

    def _scales(self) -> tuple[list[float] | None, list[float] | None]:
        """Area fractions of the global and local views: the config's, or native (derived)."""
        cfg, shape = self.cfg, self.view_shape()
        out = []
        for name, side, given in (("data.crop", cfg.data.crop, cfg.global_scale),
                                  ("local_crop", cfg.local_crop, cfg.local_scale)):
            if given is not None:
                out.append(list(given))
            elif shape is None:
                out.append(None)          # cytodata embed: no views are cut
            else:
                out.append(native_scale(side, shape[0], shape[1], name))
        return out[0], out[1]

    def _warn_zoom(self) -> None:
        """Warn when the views resample cells far from the resolution ``embed`` sees them at.

        Area fractions are of the whole image (DINO's rule): on fields much larger than the
        crop, ``global_scale`` 0.4-1 shrinks cells several-fold in training while embeddings use
        native-resolution centre crops, and the model learns to ignore cell size.
        """
        cfg, shape = self.cfg, self.view_shape()
        if shape is None or not runtime.is_main():
            return
        area = float(shape[-2]) * float(shape[-1])
        for name, size, given in (("global_scale", cfg.data.crop, cfg.global_scale),
                                  ("local_scale", cfg.local_crop, cfg.local_scale)):
            if given is None:             # derived: native resolution by construction
                continue
            lo, hi = given
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

    def init_optimizer(self, optimizer):
        """A fresh run from a full checkpoint takes its AdamW moments (W:355-363)."""
        saved, self._saved_optimizer = self._saved_optimizer, None
        self.optimizer_restored = load_dino_optimizer(optimizer, saved, str(self.cfg.pretrained),
                                                      self.n_models)

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

        Local crops come from the partner for WS-DINO; each view gets symmetries, intensity
        jitter (``augment``) and DINO's photometric ops of its kind (``photometric``). Returns
        (views, n_global).
        """
        cfg, aug = self.cfg, self.cfg.augment
        if self.global_scale is None or self.local_scale is None:
            raise TrainingError(f"{cfg.method}: the image shape is unknown, so native-resolution "
                                "views cannot be derived; set global_scale and local_scale")
        x = self.preprocess(batch["image"])
        local_src = self.preprocess(batch["partner"]["image"]) if self.pairs else x

        def one(src, size, scale, kind):
            v = resized_crops(src, size, scale, g, flips=aug.flips, rot90=aug.rot90,
                              ratio=cfg.crop_ratio, mode=cfg.view_interpolation,
                              vflip=cfg.vertical_flip)
            v = augment.intensity_jitter(v, g, aug.intensity, aug.shift)
            return photometric(v, g, cfg.photometric, kind)

        views = [one(x, cfg.data.crop, self.global_scale, kind) for kind in (GLOBAL_1, GLOBAL_2)]
        views += [one(local_src, cfg.local_crop, self.local_scale, LOCAL)
                  for _ in range(cfg.local_crops)]
        return views, 2

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The recipe's image preprocessing before any view (training and embedding alike)."""
        return preprocess(x, self.cfg.prescale, self.cfg.intensity_clip)

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
        return {"collapse_run": self._collapse_run, "collapse_warned": self._collapse_warned,
                "collapse_kind": self._collapse_kind or "", "collapse_since": self._collapse_since,
                "last_stats": dict(self._last_stats)}

    def load_state(self, state):
        self._collapse_run = int(state.get("collapse_run", 0))
        self._collapse_warned = bool(state.get("collapse_warned", False))
        self._collapse_kind = state.get("collapse_kind") or None
        self._collapse_since = int(state.get("collapse_since", -1))
        self._last_stats = dict(state.get("last_stats") or {})

    def summary(self) -> dict:
        """``collapsed``: the run ended in a collapse (its last ``collapse_patience`` steps, or
        all of a shorter run, collapsed); ``collapse``: its kind or None; ``collapse_evidence``:
        the last step's monitor as fractions of ln K and when the collapse began. Written to
        RUN_DIR/summary.json and as the last metrics row.
        """
        patience = min(self.cfg.collapse_patience, self.cfg.steps)
        collapsed = self._collapse_run >= patience
        ln_k = math.log(self.cfg.out_dim)
        last = self._last_stats
        evidence = {
            "steps_in_collapse": int(self._collapse_run),
            "since_step": int(self._collapse_since) + 1 if collapsed else None,
            "warned_during_run": bool(self._collapse_warned),
            "loss_over_ln_k": last.get("loss_over_ln_k"),
            "teacher_entropy_over_ln_k": (last["teacher_entropy"] / ln_k
                                          if "teacher_entropy" in last else None),
            "kl_over_ln_k": (last["kl_teacher_student"] / ln_k
                             if "kl_teacher_student" in last else None),
            "teacher_marginal_entropy": last.get("teacher_marginal_entropy"),
            "rule": "uniform: teacher entropy > 0.9 ln K and KL < 0.02 ln K; one-prototype: "
                    "entropy < 0.05 ln K and batch-marginal entropy < 0.1 ln(min(K, N))",
        }
        return {"collapsed": bool(collapsed),
                "collapse": self._collapse_kind if collapsed else None,
                "collapse_evidence": evidence}

    def _watch(self, stats: dict, step: int) -> None:
        """Track collapse per step; warn once when it has lasted ``collapse_patience`` steps."""
        kind = collapse_kind(stats, self.cfg.out_dim)
        self._last_stats = {k: float(stats[k]) for k in ("loss_over_ln_k", "kl_teacher_student",
                                                         "teacher_entropy",
                                                         "teacher_marginal_entropy")}
        if kind and (not self._collapse_run or kind != self._collapse_kind):
            self._collapse_since = step
            self._collapse_run = 0
        self._collapse_kind = kind
        self._collapse_run = self._collapse_run + 1 if kind else 0
        if kind and self._collapse_run >= self.cfg.collapse_patience and not self._collapse_warned:
            self._collapse_warned = True
            if runtime.is_main():
                warnings.warn(
                    f"{self.cfg.method}: {kind} collapse at step {step + 1} (for "
                    f"{self._collapse_run} steps): loss/ln(out_dim)={stats['loss_over_ln_k']:.3f}, "
                    f"KL(teacher||student)={stats['kl_teacher_student']:.4f}, teacher entropy="
                    f"{stats['teacher_entropy']:.3f} of ln({self.cfg.out_dim})="
                    f"{math.log(self.cfg.out_dim):.3f}. Remedies: {REMEDIES[kind]}",
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
        """Side of embed's crops in source pixels (``embed_crop`` is in prescaled pixels)."""
        side = int(self.cfg.embed_crop or self.cfg.data.crop)
        return side if self.cfg.prescale == 1 else int(round(side / self.cfg.prescale))

    def embed_boxes(self) -> list[tuple[int, int, int, int]] | None:
        """``embed_boxes`` (prescaled pixels) in stored pixels: each coordinate / ``prescale``."""
        if not self.cfg.embed_boxes:
            return None
        return [tuple(int(round(v / self.cfg.prescale)) for v in box) for box in self.cfg.embed_boxes]

    def embedder(self, pool=None):
        pool = "cls" if pool is None else pool
        if pool not in EMBED_POOLS:
            raise TrainingError(f"embed pool={pool!r}; valid for DINO runs: {', '.join(EMBED_POOLS)}")
        return _TeacherFeatures(self.teacher, self.cfg.per_channel, pool,
                                prescale=self.cfg.prescale, intensity_clip=self.cfg.intensity_clip)


class _TeacherFeatures(nn.Module):
    """Teacher backbone(s) -> ``(B, D)``: CLS token, patch-token mean or both (per-channel
    models: concatenated over channels, then L2-normalised).
    """

    def __init__(self, models: DinoModels, per_channel: bool, pool: str = "cls",
                 prescale: float = 1.0, intensity_clip: float | None = None):
        super().__init__()
        self.models, self.per_channel, self.pool = models, per_channel, pool
        self.prescale, self.intensity_clip = prescale, intensity_clip

    def _one(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            return backbone(x)
        tokens = backbone.forward_features(x)             # (B, prefix + patches, D), normed
        patches = tokens[:, getattr(backbone, "num_prefix_tokens", 1):].mean(dim=1)
        return patches if self.pool == "avg" else torch.cat([tokens[:, 0], patches], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = preprocess(x, self.prescale, self.intensity_clip)
        if not self.per_channel:
            return self._one(self.models.nets[0].backbone, x)
        feats = [self._one(net.backbone, x[:, i: i + 1]) for i, net in enumerate(self.models.nets)]
        return F.normalize(torch.cat(feats, dim=1), dim=1)


def preprocess(x: torch.Tensor, prescale: float = 1.0, intensity_clip: float | None = None
               ) -> torch.Tensor:
    """Resize by ``prescale`` (bicubic, antialiased), then clip raw intensities at
    ``intensity_clip`` and divide by it (WS-DINO: values > 10,000 set to 10,000, then / 10,000).

    ``x`` ``(B, C, H, W)`` float as ``data.normalize: none`` gives it (raw / 65535).
    """
    if prescale != 1:             # WS-DINO resized before saving, then clipped on reading
        x = F.interpolate(x, scale_factor=prescale, mode="bicubic", antialias=True,
                          align_corners=False)
    if intensity_clip is not None:
        x = (x * 65535.0).clamp(max=float(intensity_clip)) / float(intensity_clip)
    return x
