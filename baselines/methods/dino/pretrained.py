"""Local DINO/timm weights into a DINO backbone and head."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ...models import load_pretrained, read_state_dict
from .head import DINOHead


def is_full_checkpoint(raw: dict) -> bool:
    """A DINO full checkpoint (``*_pretrain_full_checkpoint.pth``): ``student`` and ``teacher``."""
    return isinstance(raw.get("student"), dict) and isinstance(raw.get("teacher"), dict)


def load_dino_pretrained(backbone: nn.Module, head: DINOHead, path: str, in_chans: int,
                         raw: dict | None = None, part: str | None = None) -> None:
    """Load local DINO/timm weights into a backbone (timm's first-conv rule) and head.

    Accepts the official backbone file (``dino_deitsmall8_pretrain.pth``: ViT keys, no prefix),
    a full checkpoint (``part``: its ``student`` or ``teacher`` dict, keys ``module.backbone.*``
    / ``backbone.*`` / ``head.*``) or a timm state dict. A DINO head (``head.mlp.*``,
    ``head.last_layer.*``) is loaded when its shapes fit, else the head stays fresh (a warning
    says so). ``raw``: the file already read (:func:`read_checkpoint`).
    """
    state = read_state_dict(path, key=part, raw=raw)
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


def load_dino_centre(centre: torch.Tensor, raw: dict, path: str) -> bool:
    """Copy a full checkpoint's ``dino_loss.center`` ``(1, K)`` into every model's centre
    ``(M, 1, K)`` (WS-DINO restores it with the weights, WS-DINO_BBBC021.py:355-363).
    """
    loss = raw.get("dino_loss")
    c = loss.get("center") if isinstance(loss, dict) else None
    if not isinstance(c, torch.Tensor):
        return False
    if c.numel() != centre.shape[-1]:
        warnings.warn(f"pretrained={path}: its DINO centre has {c.numel()} prototypes, the head "
                      f"{centre.shape[-1]}; the centre starts at zero", RuntimeWarning, stacklevel=3)
        return False
    with torch.no_grad():
        centre.copy_(c.reshape(1, 1, -1).expand_as(centre))
    return True
