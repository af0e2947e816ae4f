"""DINO's loss: cross-entropy against a centred, sharpened teacher; the teacher-temperature schedule."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import runtime
from .collapse import monitor_stats


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
                 center_momentum: float = 0.9, sum_models: bool = False):
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        # separate per-channel models: the sum, so each model's gradient is its own loss's
        # (the models share no parameter, so the joint step is each model's separate step)
        self.sum_models = sum_models
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
        per_model = torch.stack(losses)
        loss = per_model.mean()
        stats = monitor_stats(probs.detach(), float(loss.detach()))
        if per_model.numel() > 1:
            stats.update({f"loss_model{m}": float(v) for m, v in enumerate(per_model.detach())})
        self.update_center(teacher)
        return (per_model.sum() if self.sum_models else loss), stats

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """``center = m * center + (1 - m) * mean(teacher over batch and ranks)``."""
        batch = teacher.detach().float().sum(dim=1, keepdim=True)
        runtime.all_reduce_sum(batch)
        batch = batch / (teacher.shape[1] * runtime.world_size())
        self.center.mul_(self.center_momentum).add_(batch, alpha=1 - self.center_momentum)


def teacher_temp_schedule(start: float, end: float, warmup_steps: int, steps: int) -> np.ndarray:
    """Linear ``start -> end`` over ``warmup_steps`` (its last step is ``end``), then ``end``."""
    out = np.full(int(steps), float(end))
    w = min(int(warmup_steps), int(steps))
    if w > 0:
        out[:w] = np.linspace(start, end, w)
    return out
