"""Mean teacher with an ArcFace head, pseudo-labels and two-architecture ensembles (DeepNoise).

DeepNoise (RxRx1 winner, 99.6%) trained students whose teachers are exponential moving averages
of their weights (Tarvainen & Valpola 2017) on labelled training plates plus the unlabelled test
plates:

- every image (labelled or not) is seen twice, a student view and a teacher view (independent
  random scale, crop, flips/90-degree rotations, intensity jitter, random erasing); the
  consistency loss is the MSE between the student's and the teacher's softmax (summed over
  classes, mean over images), weighted by ``consistency`` times a sigmoid ramp-up
  ``exp(-5 (1 - t/T)^2)`` over the first ``consistency_rampup`` of the run;
- labelled images add the ArcFace loss (``head: arcface``, m = 0.1, s = 30) or plain softmax
  cross-entropy (``head: softmax``, the ablation);
- the teachers' softmax averaged over the ``members`` (DeepNoise: Xception and a larger
  Xception, trained together in one run; one member: its own teacher) is a soft pseudo-label
  for every unlabelled image, and each student adds the soft cross-entropy to it
  (``pseudo_label`` weight, same ramp-up); predictions average the members.

Unlabelled images come from ``data.unlabelled`` (a second shard set, normalised with its own
``shards.json`` statistics; ``unlabelled_ratio`` of them per labelled image in each micro-batch)
and from rows of the training set without a label. The unlabelled stream is owned here; its
position is checkpointed through :meth:`MeanTeacher.state`, so a resumed run sees the same
images. Predictions and embeddings use the students (``predict_with: teacher``: the teachers).
The teachers keep their own BatchNorm statistics (they run in train mode on their own views).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cytodata.errors import RecipeError, TrainingError

from .. import augment, runtime
from ..arcface import HEADS
from ..data import DevicePrep, NormStats, collate, open_dataset
from ..models import create
from ..registry import METHODS
from ..runtime import autocast
from .base import Method
from .mean_teacher_config import MeanTeacherConfig


def sigmoid_rampup(step: float, length: float) -> float:
    """Return Tarvainen & Valpola's ramp-up ``exp(-5 (1 - t)^2)``, ``t = step / length`` in [0, 1].

    Starts at ``exp(-5)`` (~0.0067) and is exactly 1 from ``step >= length`` on (1 when
    ``length`` is 0).
    """
    if length <= 0:
        return 1.0
    t = float(np.clip(step / length, 0.0, 1.0))
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student`` for parameters.

    Buffers (BatchNorm running statistics) are left alone: the teacher, run in train mode on
    its own views, tracks its own (CuriousAI/mean-teacher ``pytorch/main.py:189-194, 212``;
    DeepNoise ``main.py:32-36, 555``).
    """
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)


def softmax_mse(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean over images of ``sum_k (softmax(s)_k - t_k)^2 / K`` (the reference's normalisation).

    CuriousAI/mean-teacher ``pytorch/mean_teacher/losses.py:15-27`` (``softmax_mse_loss``: summed
    squared error divided by the number of classes) and ``pytorch/main.py:263`` (divided by the
    minibatch size); DeepNoise ``main.py:14-26, 652`` the same.
    """
    p = F.softmax(student_logits.float(), dim=1)
    return ((p - teacher_probs) ** 2).mean(1).mean()


def ema_decay_at(step: int, decay: float) -> float:
    """Return the EMA decay after optimiser step ``step`` (0-based): ``min(1 - 1/(step+2), decay)``.

    Tarvainen & Valpola's warm-up: the teacher follows the student closely at first (0.5 after
    the first step), then averages over ever longer windows up to ``decay``.
    """
    return min(1.0 - 1.0 / (step + 2), decay)


def scheduled_decay(step: int, steps_per_epoch: int, schedule: list[list[float]],
                    decay: float) -> float:
    """The EMA decay after step ``step``: ``schedule`` ``[[epoch, decay], ...]`` by 0-based epoch
    (DeepNoise ``main.py:693-700``), else ``decay``; capped by the warm-up of :func:`ema_decay_at`.
    """
    epoch = step // max(1, steps_per_epoch)
    for start, value in sorted(schedule):
        if epoch >= start:
            decay = value
    return ema_decay_at(step, decay)


class Member(torch.nn.Module):
    """One architecture: a timm backbone (pooled features) and a classification head."""

    def __init__(self, name: str, in_chans: int, n_classes: int, cfg: MeanTeacherConfig):
        super().__init__()
        kwargs = {"drop_rate": cfg.drop_rate} if cfg.drop_rate else {}
        self.backbone = create(name, in_chans=in_chans, num_classes=0, pretrained=cfg.pretrained,
                               **kwargs)
        self.head = HEADS.get(cfg.head)(self.backbone.num_features, n_classes, s=cfg.arcface_s,
                                        m=cfg.arcface_m, easy_margin=cfg.easy_margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, D)`` pooled features."""
        return self.backbone(x)


class Ensemble(torch.nn.Module):
    """The members side by side; ``forward(x, labels)`` -> per member ``(logits, train_logits)``.

    ``logits`` carry no margin (prediction, consistency); ``train_logits`` the ArcFace margin
    on labelled rows (``labels`` None: no margin). One module, so DDP wraps all members.
    """

    def __init__(self, members: list[Member]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        """Return ``[(logits, train_logits), ...]``, float32 ``(B, K)`` each."""
        out = []
        for m in self.members:
            f = m(x)
            logits = m.head.logits(f)
            out.append((logits, m.head.train_logits(f, labels) if labels is not None else logits))
        return out

    def proba(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` softmax averaged over the members."""
        return torch.stack([F.softmax(m.head.logits(m(x)), dim=1) for m in self.members]).mean(0)


def random_scale_crop(x: torch.Tensor, crop: int, scale: tuple[float, float],
                      g: torch.Generator) -> torch.Tensor:
    """Crop a window of side ``crop * f`` (``f ~ U(scale)``, one per batch), resize to ``crop``."""
    h, w = x.shape[-2:]
    lo, hi = scale
    f = lo + (hi - lo) * float(torch.rand((), generator=g))
    side = int(round(min(max(8, crop * f), h, w)))
    x = augment.random_crop(x, side, g)
    if side != crop:
        x = F.interpolate(x, size=(crop, crop), mode="bilinear", align_corners=False)
    return x


def shift_scale_aspect(x: torch.Tensor, g: torch.Generator, p: float, shift: float, scale: float,
                       aspect: float) -> torch.Tensor:
    """DeepNoise's ``randomShiftScaleRotate`` without rotation (process/augmentation.py:157-190):
    with probability ``p`` per image, zoom about the centre and translate, borders 0.

    Scale ``U(1 - scale, 1 + scale)``, aspect ``U(1 - aspect, 1 + aspect)``, shift
    ``round(U(-shift, shift) x side)`` pixels per axis. At rotation 0 their matrix is
    ``diag(sx, sx)`` with ``sx = scale x aspect / sqrt(aspect)`` (``:169, 174-176``: ``cc = cos x
    sx``, ``ss = sin x sy = 0``), so the aspect enters as an isotropic factor ``sqrt(aspect)``;
    the same here. 0 is the mean of normalised images (their ``borderValue`` 0).
    """
    b, _, h, w = x.shape
    if p <= 0:
        return x
    on = torch.rand(b, generator=g) < p
    sc = 1.0 + scale * (2 * torch.rand(b, generator=g) - 1)
    asp = 1.0 + aspect * (2 * torch.rand(b, generator=g) - 1)
    dx = torch.round((2 * torch.rand(b, generator=g) - 1) * shift * w)
    dy = torch.round((2 * torch.rand(b, generator=g) - 1) * shift * h)
    s = torch.where(on, sc * asp.sqrt(), torch.ones(b))
    dx, dy = torch.where(on, dx, torch.zeros(b)), torch.where(on, dy, torch.zeros(b))
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / s, 1 / s          # output -> input sampling
    theta[:, 0, 2], theta[:, 1, 2] = -2 * dx / w / s, -2 * dy / h / s
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def hard_crops(x: torch.Tensor, ratio: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """DeepNoise's 'hard' crop (process/augmentation.py:83-97, 225-226) per image: a window of
    side ``int(side x r)``, ``r ~ U(ratio)`` drawn for each image, at a uniform random position,
    resized back to the side (bilinear, half-pixel centres, the window's edge pixels repeated
    beyond it, as ``cv2.resize``); one ``grid_sample`` for the batch.
    """
    b, _, h, w = x.shape
    lo, hi = ratio
    r = lo + (hi - lo) * torch.rand(b, generator=g, dtype=torch.float64)
    sh = torch.clamp((h * r).floor(), min=1)       # int(height * ratio), per image
    sw = torch.clamp((w * r).floor(), min=1)
    oy = (torch.rand(b, generator=g, dtype=torch.float64) * (h - sh + 1)).floor()
    ox = (torch.rand(b, generator=g, dtype=torch.float64) * (w - sw + 1)).floor()

    def coords(n: int, size: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        """``(b, n)`` normalised input coordinates of the output pixel centres."""
        j = torch.arange(n, dtype=torch.float64)[None] + 0.5
        src = (j * size[:, None] / n - 0.5).clamp(min=0) + off[:, None]
        src = torch.minimum(src, (off + size - 1)[:, None])   # inside the window
        return (2 * src + 1) / n - 1

    gy, gx = coords(h, sh, oy), coords(w, sw, ox)
    grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], dim=-1)
    return F.grid_sample(x.float(), grid.to(x.device, torch.float32), mode="bilinear",
                         padding_mode="border", align_corners=False).to(x.dtype)


def random_erasing(x: torch.Tensor, p: float, g: torch.Generator,
                   area: tuple[float, float] = (0.02, 0.25),
                   ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Zhong et al.'s random erasing: with probability ``p`` a rectangle per image is set to 0.

    0 is the mean of normalised images. Rectangle area ``U(area)`` of the image, aspect ratio
    log-uniform in ``ratio``; one masked op for the whole batch.
    """
    if p <= 0:
        return x
    b, _, h, w = x.shape
    on = torch.rand(b, generator=g) < p
    a = (area[0] + (area[1] - area[0]) * torch.rand(b, generator=g)) * h * w
    r = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0]))
                  * torch.rand(b, generator=g))
    eh = torch.sqrt(a * r).clamp(1, h).long()
    ew = torch.sqrt(a / r).clamp(1, w).long()
    top = (torch.rand(b, generator=g) * (h - eh + 1).float()).long()
    left = (torch.rand(b, generator=g) * (w - ew + 1).float()).long()
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    mask = ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
            & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None]) & on[:, None, None])
    return x.masked_fill(mask[:, None].to(x.device), 0.0)


@METHODS.register("mean-teacher")
class MeanTeacher(Method):
    """Students + EMA teachers, ArcFace or softmax heads, consistency and pseudo-label losses."""

    config_class = MeanTeacherConfig

    def __init__(self, cfg: MeanTeacherConfig, info, device):
        super().__init__(cfg, info, device)
        _check(cfg)
        names = list(cfg.members) or [cfg.model]
        self.names = names
        self.students = Ensemble([Member(n, info.n_channels, len(info.classes), cfg)
                                  for n in names]).to(device)
        self.teachers = copy.deepcopy(self.students)
        for p in self.teachers.parameters():
            p.requires_grad_(False)
        self.unlabelled = None        # the second stream (training only)
        self._u_iter, self._u_prep, self._u_batch = None, None, 0
        per_step = cfg.batch_size * cfg.accumulate * runtime.world_size()
        self.steps_per_epoch = (int(cfg.epoch_steps) if cfg.epoch_steps else
                                max(1, int(info.n_train) // per_step) if info.n_train else 1)
        # DeepNoise pseudo-labels: per unlabelled key its class (-1 none), smoothed well logits
        self._pl_label: dict[str, int] = {}
        self._pl_logits: np.ndarray | None = None
        self._pl_best, self._pl_due, self._groups = -1.0, False, None
        self._groups_tried = False
        if info.n_train and cfg.requires_init and not cfg.init_from:
            raise TrainingError("this config is a second stage: it starts from a stage-1 run "
                                "(e.g. cytodata train deepnoise-stage1 -o RUN1), so pass "
                                "--set init_from=RUN1")
        if info.n_train and cfg.init_from:
            self._init_from(cfg.init_from)
        if info.n_train and cfg.data.unlabelled and cfg.mean_teacher and cfg.unlabelled_ratio > 0:
            self._open_unlabelled(info)
        if self.unlabelled is not None and cfg.pseudo_mode == "deepnoise":
            from ..plate_groups import groups_from_shards

            self._groups = groups_from_shards(cfg.data.train, cfg.data.label,
                                              cfg.data.storage_options)

    def _init_from(self, source: str) -> None:
        """Start students and teachers from a stage-1 run's students (DeepNoise main.py:427-431)."""
        from .. import checkpoint

        try:
            state = checkpoint.load(source)
        except (TrainingError, FileNotFoundError, OSError) as exc:
            raise TrainingError(f"init_from={source}: no stage-1 checkpoint there ({exc}); train "
                                "stage 1 first (cytodata train deepnoise-stage1 -o RUN) and pass "
                                "--set init_from=RUN") from None
        saved = state.get("signature") or {}
        mine = self.signature()
        for key in ("members", "in_chans", "classes"):
            if saved.get(key) != mine.get(key):
                raise TrainingError(f"init_from={source}: its {key} {saved.get(key)!r} differ "
                                    f"from this run's {mine.get(key)!r}; stage 2 must use stage "
                                    "1's architecture, channels and classes")
        weights = state["modules"].get("students")
        if weights is None:
            raise TrainingError(f"init_from={source}: not a mean-teacher run (no students); "
                                "train stage 1 with cytodata train deepnoise-stage1")
        self.teachers.load_state_dict(weights)
        if self.cfg.init_skip_head:   # main.py:429 is_skip_fc=True: the student's head is fresh
            weights = {k: v for k, v in weights.items() if ".head." not in k}
            self.students.load_state_dict(weights, strict=False)
        else:
            self.students.load_state_dict(weights)

    # ------------------------------------------------------------ the unlabelled stream
    def _open_unlabelled(self, info) -> None:
        cfg, d = self.cfg, self.cfg.data
        ds = open_dataset(d.unlabelled, split=d.unlabelled_split, cfg=d, seed=cfg.seed + 1,
                          shuffle=True, rank=runtime.rank(), world_size=runtime.world_size(),
                          what="data.unlabelled")
        channels = ds.shards.meta.get("channels")
        if channels != list(info.channels):
            raise TrainingError(f"data.unlabelled={d.unlabelled}: channels {channels} differ from "
                                f"data.train's {list(info.channels)}; use unlabelled images of "
                                "the same stains in the same order (re-shard them), or drop "
                                "data.unlabelled")
        try:
            stats = (None if d.normalize == "none"
                     else NormStats(ds.shards.meta, d.normalize, len(channels)))
        except TrainingError as exc:
            raise TrainingError(f"data.unlabelled={d.unlabelled}: {exc}") from None
        self.unlabelled = ds
        self._u_prep = DevicePrep(stats, self.device, cfg.channels_last)
        self._u_batch = max(1, int(round(cfg.batch_size * cfg.unlabelled_ratio)))
        ds.set_epoch(0)

    def _next_unlabelled(self) -> tuple[torch.Tensor, list[str]]:
        """Return the next normalised unlabelled batch and its keys (new epoch at the end)."""
        ds = self.unlabelled
        if self._u_iter is None:
            self._u_iter = iter(torch.utils.data.DataLoader(
                ds, batch_size=self._u_batch, num_workers=0, collate_fn=collate))
        try:
            batch = next(self._u_iter)
        except StopIteration:
            ds.set_epoch(ds.epoch + 1)
            self._u_iter = iter(torch.utils.data.DataLoader(
                ds, batch_size=self._u_batch, num_workers=0, collate_fn=collate))
            batch = next(self._u_iter)
        return self._u_prep(batch["image"], batch["meta"]), list(batch["key"])

    # ------------------------------------------------------------ engine hooks
    def modules(self):
        """Students and teachers (both checkpointed)."""
        return {"students": self.students, "teachers": self.teachers}

    def trainable(self):
        """Return the students (all members in one module, so DDP wraps them together)."""
        return self.students

    def signature(self):
        """Members, head, channels and classes must match to resume or load."""
        return {"method": "mean-teacher", "members": list(self.names), "head": self.cfg.head,
                "in_chans": self.info.n_channels, "num_classes": len(self.info.classes),
                "classes": list(self.info.classes)}

    def state(self) -> dict:
        """Return the unlabelled stream's position and the pseudo-labels (exact resume)."""
        if self.unlabelled is None:
            return {}
        out = {"unlabelled": self.unlabelled.state_dict()}
        if self.cfg.pseudo_mode == "deepnoise":
            out["pseudo"] = {"best": self._pl_best, "due": self._pl_due,
                             "keys": list(self._pl_label), "labels": list(self._pl_label.values()),
                             "logits": None if self._pl_logits is None
                             else torch.from_numpy(self._pl_logits)}
        return out

    def load_state(self, state: dict) -> None:
        """Continue the unlabelled stream where the checkpoint left it."""
        if self.unlabelled is not None and state.get("unlabelled"):
            self.unlabelled.load_state_dict(state["unlabelled"])
            self._u_iter = None
        pl = state.get("pseudo")
        if pl:
            self._pl_best, self._pl_due = float(pl["best"]), bool(pl["due"])
            self._pl_label = dict(zip(pl["keys"], (int(v) for v in pl["labels"]), strict=True))
            self._pl_logits = None if pl["logits"] is None else pl["logits"].numpy()

    def _jitter_images(self, parts: list[torch.Tensor], g: torch.Generator) -> list[torch.Tensor]:
        """``intensity_per: image``: one intensity jitter per image and channel, applied before
        any view is drawn, so every view of the image shares it (DN process/data.py:102-109:
        the plate mean/std jittered once per channel in ``__getitem__``, before ``aug_image``
        makes the 'normal', 'easy' and 'hard' views, :119-132). ``view``: unchanged here.
        """
        a = self.cfg.augment
        if self.cfg.intensity_per != "image":
            return parts
        return [augment.intensity_jitter(p, g, a.intensity, a.shift) for p in parts]

    def _view(self, parts: list[torch.Tensor], g: torch.Generator, *, erase: bool = True,
              hard: bool = False) -> torch.Tensor:
        """One augmented view of the concatenated parts (each scaled and cropped on its own);
        ``erase``: random erasing (DN's 'normal' view; without: 'easy'); ``hard``: and a random
        crop of ``hard_crop`` of the side, drawn per image, resized back (DN's 'hard' view).
        The intensity jitter is drawn here per view (``intensity_per: view``) or was applied
        once to the parts (``image``, :meth:`_jitter_images`).
        """
        crop, a = self.cfg.data.crop, self.cfg.augment
        lo, hi = self.cfg.scale
        x = torch.cat([random_scale_crop(p, crop, (lo, hi), g) for p in parts])
        x = augment.flips_rot90(x, g, flips=a.flips, rot90=a.rot90)
        x = self._ssr(x, g)
        if self.cfg.intensity_per == "view":
            x = augment.intensity_jitter(x, g, a.intensity, a.shift)
        if erase:
            x = random_erasing(x, self.cfg.erasing, g, area=tuple(self.cfg.erasing_area))
        if hard:                # DN process/augmentation.py:225-226: crop U(0.8, 0.99), resized
            x = hard_crops(x, tuple(self.cfg.hard_crop), g)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def loss(self, model, batch, step, g):
        """Classification + ramped consistency and pseudo-label losses, summed over members."""
        cfg = self.cfg
        x = batch["image"]
        y = batch["label"].to(x.device, non_blocking=True)
        parts = [x]
        u_keys: list[str] = []
        if self.unlabelled is not None:
            xu, u_keys = self._next_unlabelled()
            parts.append(xu)
            y = torch.cat([y, torch.full((len(xu),), -1, dtype=y.dtype, device=y.device)])
        labelled = y >= 0
        parts = self._jitter_images(parts, g)
        split = cfg.views == "deepnoise" and cfg.mean_teacher   # stage 1: the 'normal' view
        if split:   # DN main.py:641-643: net(normal[labelled]), net(easy), ema_net(hard)
            normal = self._view(parts, g)[labelled]
            easy = self._view(parts, g, erase=False)
            n_sup = len(normal)
            student_view = easy
            # two passes: each view its own BatchNorm batch statistics; a micro-batch with one
            # labelled row shares the easy views' pass (BatchNorm needs two values per channel)
            if cfg.student_passes == 2 and n_sup > 1:
                sup = model(normal, y[labelled])
                outs = [(torch.cat([s[0], e[0]]), torch.cat([s[1], e[0]]))
                        for s, e in zip(sup, model(easy, None), strict=True)]
            else:
                outs = model(torch.cat([normal, easy]),
                             torch.cat([y[labelled], torch.full_like(y, -1)]))
        else:
            n_sup = 0
            student_view = self._view(parts, g)
            outs = model(student_view, y)
        rampup = (cfg.rampup_epochs * self.steps_per_epoch if cfg.rampup_epochs is not None
                  else cfg.consistency_rampup * cfg.steps)
        ramp = sigmoid_rampup(step, rampup)
        logs = {"ramp": ramp, "labelled_frac": float(labelled.float().mean())}
        deepnoise = cfg.mean_teacher and cfg.pseudo_mode == "deepnoise"
        w_pl, hard = 0.0, None
        if deepnoise:
            # main.py:657-669: hard labels, weight 0.05 after the warm-up, supervised * (1 - w)
            if self._pl_label and step >= cfg.pseudo_warmup_epochs * self.steps_per_epoch:
                w_pl = cfg.pseudo_label
            hard = torch.tensor([-1] * (len(y) - len(u_keys))
                                + [self._pl_label.get(k, -1) for k in u_keys], device=y.device)
            logs["pseudo_weight"] = w_pl
        total = student_view.new_zeros((), dtype=torch.float32)
        if cfg.mean_teacher:
            with torch.no_grad():
                self.teachers.train()   # the teacher's BatchNorm tracks its own views
                t_outs = self.teachers(self._view(parts, g, hard=split), None)
            t_probs = [F.softmax(t[0].float(), dim=1) for t in t_outs]
            pseudo = torch.stack(t_probs).mean(0)
            keep = ~labelled & (pseudo.max(1).values >= cfg.pseudo_threshold)
        for k, (logits, train_logits) in enumerate(outs):
            if split:   # rows: the labelled 'normal' views, then every row's 'easy' view
                sup_train, sup_logits, logits = train_logits[:n_sup], logits[:n_sup], logits[n_sup:]
                train_logits = logits
            else:
                sup_train, sup_logits = train_logits[labelled], logits[labelled]
            if labelled.any():
                cls = F.cross_entropy(sup_train, y[labelled])
                acc = (sup_logits.argmax(1) == y[labelled]).float().mean()
                logs[f"train_top1_{k}"] = float(acc)
            else:
                cls = train_logits.sum() * 0.0
            logs[f"cls_{k}"] = float(cls.detach())
            total = total + (1.0 - w_pl) * cls
            if not cfg.mean_teacher:
                continue
            cons = softmax_mse(logits, t_probs[k])
            logs[f"consistency_{k}"] = float(cons.detach())
            total = total + cfg.consistency * ramp * cons
            if deepnoise:
                on = hard >= 0
                if w_pl > 0 and on.any():
                    pl = F.cross_entropy(logits[on].float(), hard[on])
                    logs[f"pseudo_{k}"] = float(pl.detach())
                    total = total + w_pl * pl
            elif cfg.pseudo_label > 0 and keep.any():
                pl = -(pseudo[keep] * F.log_softmax(logits[keep].float(), dim=1)).sum(1).mean()
                logs[f"pseudo_{k}"] = float(pl.detach())
                total = total + cfg.pseudo_label * ramp * pl
        return total, logs

    def decay_at(self, step: int) -> float:
        """The EMA decay after step ``step`` (:func:`scheduled_decay` of this config)."""
        return scheduled_decay(step, self.steps_per_epoch, self.cfg.ema_schedule,
                               self.cfg.ema_decay)

    def after_step(self, step: int) -> None:
        """Move the teachers towards the students (EMA); refresh DeepNoise pseudo-labels."""
        ema_update(self.teachers, self.students, self.decay_at(step))
        cfg = self.cfg
        if self.unlabelled is None or cfg.pseudo_mode != "deepnoise":
            return
        done = step + 1
        first = max(1, int(round(cfg.pseudo_first_epoch * self.steps_per_epoch)))
        if done > first and runtime.is_dist():
            # validation runs on rank 0 only: every rank refreshes when it asks for it
            self._pl_due = max(runtime.all_gather_floats(float(self._pl_due))) > 0
        if done == first:
            self.refresh_pseudo_labels(1.0, step)      # main.py:571-577: ratio 1.0 first
        elif done > first and self._pl_due:
            self.refresh_pseudo_labels(cfg.pseudo_smoothing, step)  # main.py:588-596

    @torch.no_grad()
    def refresh_pseudo_labels(self, ratio: float, step: int = 0) -> None:
        """New hard labels for every unlabelled key from the teachers (module pseudo_labels);
        the views are seeded by ``step``, so a resumed run repeats them.
        """
        from .. import pseudo_labels

        cfg, d = self.cfg, self.cfg.data
        ds = open_dataset(d.unlabelled, split=d.unlabelled_split, cfg=d, seed=cfg.seed + 2,
                          shuffle=False, rank=0, world_size=1, what="data.unlabelled")
        keys = ds.index["key"].astype(str).tolist()
        row = {k: i for i, k in enumerate(keys)}
        g = torch.Generator().manual_seed(cfg.seed + 7919 * (step + 1))
        logits = np.zeros((len(keys), len(self.info.classes)), dtype=np.float64)
        self.teachers.train()                    # main.py:555: the teacher stays in train mode
        for _ in range(cfg.pseudo_views):
            ds.set_epoch(0)
            for batch in torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size,
                                                     num_workers=0, collate_fn=collate):
                x = self._u_prep(batch["image"], batch["meta"])
                v = self._easy_view(x, g)
                with autocast(v.device, cfg.precision):
                    out = torch.stack([m.head.logits(m(v)).float()
                                       for m in self.teachers.members]).mean(0)
                logits[[row[k] for k in batch["key"]]] += out.cpu().numpy() / cfg.pseudo_views
        idx = ds.index
        if {"plate", "well"} <= set(idx.columns) and idx[["plate", "well"]].notna().all().all():
            wc, wells = pd.factorize(idx["plate"].astype(str) + "/" + idx["well"].astype(str),
                                     sort=True)
        else:                           # no wells: every image its own well
            wc, wells = np.arange(len(keys)), pd.Index(keys)
        sums = np.zeros((len(wells), logits.shape[1]))
        np.add.at(sums, wc, logits)
        well_logits = sums / np.bincount(wc, minlength=len(wells))[:, None]
        prev = self._pl_logits if self._pl_logits is not None \
            and self._pl_logits.shape == well_logits.shape else None
        self._pl_logits = pseudo_labels.smooth(prev, well_logits, ratio)
        plates = ds.index.assign(_w=wc).groupby("_w", sort=True)["plate"].first().astype(str)
        labels, _ = pseudo_labels.balanced_labels(
            self._pl_logits, plates.to_numpy(), list(self.info.classes), self._groups,
            iterations=cfg.pseudo_balance_iterations)
        self._pl_label = {k: int(labels[c]) for k, c in zip(keys, wc, strict=True)}
        self._pl_due = False

    def _easy_view(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """DeepNoise's 'easy' view (process/augmentation.py:205-218): flips, rot90, scale."""
        crop, a = self.cfg.data.crop, self.cfg.augment
        x = random_scale_crop(x, crop, tuple(self.cfg.scale), g)
        return self._ssr(augment.flips_rot90(x, g, flips=a.flips, rot90=a.rot90), g)

    def _ssr(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """:func:`shift_scale_aspect` with this config's ``ssr_*`` values (off at ``ssr_p`` 0)."""
        c = self.cfg
        return shift_scale_aspect(x, g, c.ssr_p, c.ssr_shift, c.ssr_scale, c.ssr_aspect)

    # ------------------------------------------------------------ evaluation
    def predictor(self) -> Ensemble:
        """Return the ensemble that predicts: the students (DeepNoise ``main.py:563-569, 915``
        keeps the student), or the teachers with ``predict_with: teacher``.
        """
        if self.cfg.mean_teacher and self.cfg.predict_with == "teacher":
            return self.teachers
        return self.students

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` normalised crops -> ``(B, K)`` class probabilities (member mean)."""
        net = self.predictor().eval()
        with autocast(x.device, self.cfg.precision):
            return net.proba(x).float()

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, K)`` logits (no margin) averaged over the members."""
        net = self.predictor().eval()
        with autocast(x.device, self.cfg.precision):
            return torch.stack([m.head.logits(m(x)).float() for m in net.members]).mean(0)

    def embedder(self, pool=None):
        """Concatenated pooled features of the predicting members."""
        self._no_pool(pool)
        return _Features(self.predictor())

    @torch.no_grad()
    def validate(self, batches, prep):
        """Top-1/top-5 of the predicting ensemble on the labelled validation rows, and
        DeepNoise's balanced accuracy ``val_balanced_top1`` (:func:`pseudo_labels.
        balanced_accuracy`: each plate restricted to its learned group, column-normalised;
        main.py:88-93), the value ``select: val_balanced_top1`` keeps checkpoints by
        (main.py:297-302, 563-569).

        With DeepNoise pseudo-labels, also the teachers' balanced accuracy
        ``val_teacher_group_top1`` (main.py:553-554); an improvement schedules a pseudo-label
        update (:meth:`after_validation`). ``val_site``: only that site's rows (DN validates on
        site 1, process/data.py:21).
        """
        from ..pseudo_labels import balanced_accuracy

        net = self.predictor()
        deepnoise = self.unlabelled is not None and self.cfg.pseudo_mode == "deepnoise"
        nets = [net] + ([self.teachers] if deepnoise else [])
        was = [m.training for m in nets]
        for m in nets:
            m.eval()
        n, top1, top5 = 0, 0, 0
        k = min(5, len(self.info.classes))
        logits: list[list[np.ndarray]] = [[] for _ in nets]
        labels, plates, has_plates = [], [], True
        for batch in batches:
            y = batch["label"]
            keep = (y >= 0) & self._val_site_rows(batch["meta"], len(y))
            if not keep.any():
                continue
            x = augment.center_crop(prep(batch["image"], batch["meta"]), self.cfg.data.crop)
            with autocast(x.device, self.cfg.precision):
                for i, m in enumerate(nets):
                    out = [mem.head.logits(mem(x)).float().cpu() for mem in m.members]
                    if i == 0:   # the ensemble's probabilities: the members' softmax averaged
                        p = torch.stack([F.softmax(o, dim=1) for o in out]).mean(0)
                    logits[i].append(torch.stack(out).mean(0)[keep].numpy())
            labels.append(y[keep].numpy())
            col = batch["meta"].get("plate")
            has_plates = has_plates and col is not None
            plates += [str(v) for v, on in zip(col if col is not None else [None] * len(y),
                                               keep.tolist(), strict=True) if on]
            best = p[keep].topk(k, dim=1).indices
            top1 += int((best[:, 0] == y[keep]).sum())
            top5 += int((best == y[keep][:, None]).any(1).sum())
            n += int(keep.sum())
        for m, w in zip(nets, was, strict=True):
            m.train(w)
        if not n and self.cfg.val_site is not None:
            raise TrainingError(f"val_site={self.cfg.val_site}: no labelled validation row is of "
                                "that site; name a site the validation rows have, or --set "
                                "val_site=null to validate on every row")
        if not n:
            return {}
        out = {"val_top1": top1 / n, "val_top5": top5 / n, "val_samples": n}
        if not has_plates:   # no plate column: no per-plate accuracy
            return out
        truth, classes, groups = np.concatenate(labels), list(self.info.classes), self._val_groups()
        out["val_balanced_top1"] = balanced_accuracy(np.concatenate(logits[0]), truth, plates,
                                                     classes, groups)
        if deepnoise:
            acc = balanced_accuracy(np.concatenate(logits[1]), truth, plates, classes, groups)
            out["val_teacher_group_top1"] = acc
        return out

    def after_validation(self, row: dict, counts: bool) -> None:
        """An improvement of the teachers' balanced accuracy schedules a pseudo-label update
        (DN main.py:580-596), except at validations that do not count (``select_skip_restarts``:
        DN's ``epoch > 0``, main.py:580).
        """
        acc = row.get("val_teacher_group_top1")
        if acc is None or not counts:
            return
        if acc > self._pl_best:
            self._pl_best = acc
            self._pl_due = bool(self._pl_label)   # only once the first labels exist

    def _val_site_rows(self, meta: dict, n: int) -> torch.Tensor:
        """``(n,)`` bool: the rows of site ``val_site`` (all rows when it is None)."""
        site = self.cfg.val_site
        if site is None:
            return torch.ones(n, dtype=torch.bool)
        values = meta.get("site")
        if values is None:
            raise TrainingError(f"val_site={site}: the validation rows have no 'site' column; "
                                "add one to the manifest (cytodata shard writes it from the "
                                "source's metadata) or validate on every row (--set val_site=null)")

        def number(v) -> int | None:
            try:
                return int(float(v))
            except (TypeError, ValueError):
                return None

        return torch.tensor([number(v) == site for v in values], dtype=torch.bool)

    def _val_groups(self):
        """The plate groups of the training plates (learned once; None where there are none)."""
        if self._groups is None and not self._groups_tried and self.cfg.data.train:
            from ..plate_groups import groups_from_shards

            self._groups_tried = True
            try:
                self._groups = groups_from_shards(self.cfg.data.train, self.cfg.data.label,
                                                  self.cfg.data.storage_options)
            except (ValueError, TrainingError):
                self._groups = None
        return self._groups


class _Features(torch.nn.Module):
    """The members' pooled features, concatenated: ``(B, sum D_m)``."""

    def __init__(self, ensemble: Ensemble):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x):
        return torch.cat([m(x) for m in self.ensemble.members], dim=1)


def _check(cfg: MeanTeacherConfig) -> None:
    """Value checks (each names the key and the valid values)."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise RecipeError(f"mean-teacher config: {msg}")

    need(cfg.head in HEADS, f"head={cfg.head!r}; valid: {', '.join(HEADS.names())}")
    need(cfg.epoch_steps is None or cfg.epoch_steps >= 1,
         f"epoch_steps={cfg.epoch_steps}; must be >= 1 (or null)")
    need(cfg.pseudo_mode in ("soft", "deepnoise"),
         f"pseudo_mode={cfg.pseudo_mode!r}; valid: soft, deepnoise")
    need(cfg.pseudo_views >= 1 and 0 < cfg.pseudo_smoothing <= 1,
         f"pseudo_views={cfg.pseudo_views}, pseudo_smoothing={cfg.pseudo_smoothing}; need "
         ">= 1 and (0, 1]")
    need(all(len(e) == 2 and e[0] >= 0 and 0 <= e[1] < 1 for e in cfg.ema_schedule),
         f"ema_schedule={cfg.ema_schedule!r}; expected [[epoch >= 0, decay in [0, 1)], ...]")
    need(cfg.predict_tta in (1, 2, 4, 8),
         f"predict_tta={cfg.predict_tta}; valid: 1, 2, 4, 8 (8: flips x 90-degree rotations)")
    need(cfg.predict_with in ("student", "teacher"),
         f"predict_with={cfg.predict_with!r}; valid: student, teacher")
    need(0 <= cfg.ema_decay < 1, f"ema_decay={cfg.ema_decay}; use 0 <= decay < 1 (e.g. 0.999)")
    need(cfg.arcface_s > 0 and 0 <= cfg.arcface_m < math.pi / 2,
         f"arcface_s={cfg.arcface_s}, arcface_m={cfg.arcface_m}; need s > 0, 0 <= m < pi/2")
    need(cfg.consistency >= 0 and cfg.pseudo_label >= 0,
         "consistency and pseudo_label weights must be >= 0")
    need(0 <= cfg.consistency_rampup <= 1,
         f"consistency_rampup={cfg.consistency_rampup}; a fraction of the run in [0, 1]")
    need(cfg.unlabelled_ratio >= 0, f"unlabelled_ratio={cfg.unlabelled_ratio}; must be >= 0")
    need(0 <= cfg.erasing <= 1, f"erasing={cfg.erasing}; a probability in [0, 1]")
    need(len(cfg.erasing_area) == 2 and 0 < cfg.erasing_area[0] <= cfg.erasing_area[1] < 1,
         f"erasing_area={cfg.erasing_area}; expected [low, high] fractions, 0 < low <= high < 1")
    need(cfg.views in ("shared", "deepnoise"), f"views={cfg.views!r}; valid: shared, deepnoise")
    need(cfg.intensity_per in ("view", "image"),
         f"intensity_per={cfg.intensity_per!r}; valid: view, image")
    need(cfg.student_passes in (1, 2), f"student_passes={cfg.student_passes}; valid: 1 (one "
         "forward pass for the 'normal' and 'easy' views), 2 (one each)")
    need(cfg.val_site is None or cfg.val_site >= 1,
         f"val_site={cfg.val_site}; a site number (1, 2, ...) or null for every row")
    need(0 <= cfg.ssr_p <= 1 and 0 <= cfg.ssr_shift < 1 and 0 <= cfg.ssr_scale < 1
         and 0 <= cfg.ssr_aspect < 1,
         f"ssr_p={cfg.ssr_p}, ssr_shift={cfg.ssr_shift}, ssr_scale={cfg.ssr_scale}, "
         f"ssr_aspect={cfg.ssr_aspect}; need a probability and ranges in [0, 1)")
    need(len(cfg.hard_crop) == 2 and 0 < cfg.hard_crop[0] <= cfg.hard_crop[1] <= 1,
         f"hard_crop={cfg.hard_crop}; expected [low, high] fractions, 0 < low <= high <= 1")
    need(len(cfg.scale) == 2 and 0 < cfg.scale[0] <= cfg.scale[1],
         f"scale={cfg.scale}; expected [low, high] with 0 < low <= high")
