"""Per-step schedules as arrays (DINO's ``cosine_scheduler``): computed once, indexed by step."""

from __future__ import annotations

import numpy as np


def cosine_schedule(base: float, final: float, steps: int, warmup_steps: int = 0,
                    start_warmup: float = 0.0) -> np.ndarray:
    """``steps`` values: linear ``start_warmup -> base`` over ``warmup_steps``, then a cosine
    from ``base`` to ``final`` over the rest (the last step is exactly ``final``).
    """
    warmup_steps = min(int(warmup_steps), int(steps))
    warm = np.linspace(start_warmup, base, warmup_steps, endpoint=False) if warmup_steps else np.empty(0)
    rest = steps - warmup_steps
    if rest <= 0:
        return warm[:steps].astype(np.float64)
    if rest == 1:
        return np.concatenate([warm, [final]]).astype(np.float64)
    t = np.arange(rest) / (rest - 1)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t))
    return np.concatenate([warm, cos]).astype(np.float64)


def constant_schedule(base: float, steps: int, warmup_steps: int = 0) -> np.ndarray:
    """Linear warm-up to ``base``, then constant."""
    return cosine_schedule(base, base, steps, warmup_steps)


def step_schedule(base: float, steps: int, milestones: dict[float, float]) -> np.ndarray:
    """Piecewise constant: ``{fraction of the run: lr}`` from that fraction on (DeepNoise)."""
    out = np.full(int(steps), float(base))
    for frac, value in sorted(milestones.items()):
        out[int(round(frac * steps)):] = value
    return out


def cosine_restarts_schedule(base: float, final: float, steps: int, cycles: int,
                             tail_steps: int = 0, tail_lr: float = 0.0) -> np.ndarray:
    """SGDR: ``cycles`` equal cosines ``base -> final`` over ``steps - tail_steps``, then
    ``tail_steps`` at ``tail_lr``.

    Within a cycle of ``L`` steps, step ``j`` (0-based) takes
    ``final + (base - final) (1 + cos(pi (j + 1) / L)) / 2``: the cycle ends exactly at
    ``final`` and the next restarts near ``base`` (DeepNoise ``loss/cyclic_lr.py:51-83``, stepped
    once per epoch there).
    """
    steps, tail_steps, cycles = int(steps), min(int(tail_steps), int(steps)), max(1, int(cycles))
    body = steps - tail_steps
    bounds = np.linspace(0, body, cycles + 1).round().astype(int)
    out = np.empty(steps, dtype=np.float64)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        t = (np.arange(b - a) + 1) / max(1, b - a)
        out[a:b] = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t))
    out[body:] = tail_lr
    return out


def cycle_ends(optim, steps: int) -> set[int]:
    """Steps (counted after the step) at which a ``cosine_restarts`` cycle ends: the ``cycles``
    boundaries of :func:`cosine_restarts_schedule` and, with a tail, the run's end; empty for
    the other schedules.
    """
    if optim.schedule != "cosine_restarts":
        return set()
    steps = int(steps)
    frac = float(optim.tail[0]) if optim.tail else 0.0
    body = steps - min(int(round(frac * steps)), steps)
    bounds = np.linspace(0, body, max(1, int(optim.cycles)) + 1).round().astype(int)
    return {int(b) for b in bounds[1:]} | {steps}


def lr_schedule(optim, steps: int, global_batch: int) -> np.ndarray:
    """The learning-rate array of an :class:`~baselines.config.OptimConfig`."""
    base = optim.lr * (global_batch / 256 if optim.scale_lr_by_batch else 1.0)
    if optim.schedule == "constant":
        return constant_schedule(base, steps, optim.warmup_steps)
    if optim.schedule == "step":  # milestone lrs scale with the base (scale_lr_by_batch)
        scale = base / optim.lr
        out = step_schedule(base, steps, {float(f): float(v) * scale for f, v in optim.milestones})
        if optim.warmup_steps:
            w = min(int(optim.warmup_steps), int(steps))
            out[:w] = np.linspace(0.0, base, w, endpoint=False)
        return out
    if optim.schedule == "cosine_restarts":
        scale = base / optim.lr
        frac, tail_lr = optim.tail if optim.tail else (0.0, 0.0)
        return cosine_restarts_schedule(base, optim.min_lr * scale, steps, optim.cycles,
                                        int(round(float(frac) * steps)), float(tail_lr) * scale)
    return cosine_schedule(base, optim.min_lr, steps, optim.warmup_steps)


def wd_schedule(optim, steps: int) -> np.ndarray:
    """Weight decay per step: constant, or a cosine to ``weight_decay_end`` (DINO)."""
    end = optim.weight_decay if optim.weight_decay_end is None else optim.weight_decay_end
    return cosine_schedule(optim.weight_decay, end, steps)
