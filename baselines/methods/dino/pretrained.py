"""Local DINO/timm weights into a DINO backbone and head."""

from __future__ import annotations

import warnings

import torch.nn as nn

from ...models import load_pretrained, read_state_dict
from .head import DINOHead


def load_dino_pretrained(backbone: nn.Module, head: DINOHead, path: str, in_chans: int) -> None:
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
