"""ArcFace head (Deng et al. 2019) and the plain softmax head, as DeepNoise used them.

ArcFace: features and class weights are L2-normalised, so the logits are cosines
``cos(theta_k)``; the target class gets an additive angular margin, ``cos(theta_y + m)``, and
everything is multiplied by the scale ``s`` (DeepNoise: m = 0.1, s = 30). Near ``theta = pi`` the
margin would make ``cos(theta + m)`` rise again (the angle wraps past pi), so beyond
``theta > pi - m`` the target logit is ``cos(theta) - m * sin(m)`` (insightface's threshold
rule), or with ``easy_margin`` the margin only applies where ``cos(theta) > 0``. ``sin(theta)``
is ``sqrt(1 - cos^2)`` clamped away from 0 so the gradient stays finite at ``theta = 0`` and
``pi``. The head computes in float32 even under autocast (cosines near 1 need the mantissa).

Both heads give ``logits(features)`` (no margin: prediction, consistency, pseudo-labels) and
``train_logits(features, labels)`` (margin on the target of rows whose label is >= 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cytodata._registry import Registry

#: heads by name (``head: arcface | softmax`` in the mean-teacher config)
HEADS: Registry[type] = Registry("classification head")

#: ``1 - cos^2`` is clamped to at least this inside the square root (finite gradients)
SIN_EPS = 1e-7


def arc_margin(cos: torch.Tensor, labels: torch.Tensor, *, m: float, easy_margin: bool = False
               ) -> torch.Tensor:
    """Cosines ``(B, K)`` with the additive angular margin on each row's target class.

    ``labels`` ``(B,)`` long; rows with a negative label (unlabelled) are returned unchanged.
    Computes in float32; ``cos`` is clamped to [-1, 1] first (rounding can exceed it).
    """
    cos = cos.float().clamp(-1.0, 1.0)
    sin = torch.sqrt((1.0 - cos * cos).clamp(min=SIN_EPS))
    phi = cos * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        phi = torch.where(cos > 0, phi, cos)
    else:
        # beyond theta = pi - m, cos(theta + m) would increase again: use a linear penalty
        th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
        phi = torch.where(cos > th, phi, cos - mm)
    target = F.one_hot(labels.clamp(min=0), cos.shape[1]).bool() & (labels >= 0)[:, None]
    return torch.where(target, phi, cos)


@HEADS.register("arcface")
class ArcFace(torch.nn.Module):
    """``(B, D)`` features -> ``(B, K)`` logits ``s * cos`` (margin ``m`` in training)."""

    def __init__(self, in_features: int, n_classes: int, *, s: float = 30.0, m: float = 0.1,
                 easy_margin: bool = False):
        super().__init__()
        if not 0 <= m < math.pi / 2:
            raise ValueError(f"arcface margin m={m}; use 0 <= m < pi/2 (DeepNoise: 0.1)")
        if s <= 0:
            raise ValueError(f"arcface scale s={s}; must be > 0 (DeepNoise: 30)")
        self.s, self.m, self.easy_margin = float(s), float(m), bool(easy_margin)
        self.weight = torch.nn.Parameter(torch.empty(n_classes, in_features))
        torch.nn.init.xavier_uniform_(self.weight)

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` float32 cosines between the features and each class weight."""
        with torch.autocast(features.device.type, enabled=False):
            return F.linear(F.normalize(features.float(), dim=1),
                            F.normalize(self.weight.float(), dim=1))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``s * cos(theta)`` (no margin): prediction, consistency and pseudo-label logits."""
        return self.s * self.cosine(features)

    def train_logits(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``s * cos(theta + m)`` on each labelled row's target, ``s * cos(theta)`` elsewhere."""
        with torch.autocast(features.device.type, enabled=False):
            return self.s * arc_margin(self.cosine(features), labels, m=self.m,
                                       easy_margin=self.easy_margin)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return :meth:`logits`."""
        return self.logits(features)


@HEADS.register("softmax")
class Softmax(torch.nn.Module):
    """A linear classifier (the ablation's "softmax" row): the same logits in training."""

    def __init__(self, in_features: int, n_classes: int, **_):
        super().__init__()
        self.fc = torch.nn.Linear(in_features, n_classes)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` float32 logits."""
        with torch.autocast(features.device.type, enabled=False):
            return self.fc(features.float())

    def train_logits(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return :meth:`logits` (no margin)."""
        return self.logits(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return :meth:`logits`."""
        return self.logits(features)
