"""Gradient clipping modes every method can use (``optim.clip_grad`` + ``optim.clip_mode``).

- ``global``: one coefficient for all parameters, ``min(1, max_norm / ||all gradients||)``
  (``torch.nn.utils.clip_grad_norm_``).
- ``per_tensor``: each parameter tensor's gradient norm clipped on its own,
  ``g_i *= max_norm / (||g_i|| + 1e-6)`` where that is below 1 (DINO's ``utils.clip_gradients``,
  facebookresearch/dino utils.py:132-141, applied with ``--clip_grad 3.0``, main_dino.py:87).
"""

from __future__ import annotations

from typing import Iterable

import torch

#: valid ``optim.clip_mode`` values
CLIP_MODES = ("global", "per_tensor")


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float, mode: str = "global"
                   ) -> float:
    """Clip gradients in place; returns the total gradient norm before clipping (float)."""
    params = [p for p in parameters if p.grad is not None]
    if mode == "global":
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if mode != "per_tensor":
        raise ValueError(f"clip_mode={mode!r}; valid: {', '.join(CLIP_MODES)}")
    if not params:
        return 0.0
    grads = [p.grad for p in params]
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    coefs = [torch.clamp(max_norm / (n + 1e-6), max=1.0).to(g.dtype) for n, g in zip(norms, grads, strict=True)]
    torch._foreach_mul_(grads, coefs)
    return float(total)
