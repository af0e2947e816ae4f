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


def load_dino_optimizer(optimizer: torch.optim.Optimizer, saved: dict | None, path: str,
                        n_models: int = 1) -> int:
    """Copy a full checkpoint's AdamW moments (``optimizer``) into ``optimizer``'s state.

    WS-DINO restores the optimiser with the weights (WS-DINO_BBBC021.py:355-363). DINO's groups
    (``utils.get_params_groups``: weights, then biases and 1-D tensors) list the student's
    parameters in ``named_parameters`` order, as :meth:`Method.param_groups` does; with
    ``n_models`` per-channel models each group holds the models one after another, and each
    model takes the checkpoint's state (one run per channel, all from the same checkpoint).
    A parameter whose saved moments differ in shape (the 3-channel patch embedding of a
    1-channel model) starts fresh; a warning names it. Returns the parameters restored.
    """
    if not isinstance(saved, dict) or not saved.get("state") or not saved.get("param_groups"):
        return 0
    theirs = [list(g.get("params", [])) for g in saved["param_groups"]]
    ours = [g["params"] for g in optimizer.param_groups]
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) or len(theirs) != len(ours) \
            or any(len(o) != n_models * len(t) for o, t in zip(ours, theirs, strict=True)):
        warnings.warn(f"pretrained={path}: its optimizer state ({[len(t) for t in theirs]} "
                      f"parameters per group) does not fit this run's {type(optimizer).__name__} "
                      f"({[len(o) for o in ours]} over {n_models} model(s)); the optimiser starts "
                      "fresh, the weights are loaded", RuntimeWarning, stacklevel=3)
        return 0
    restored, odd = 0, []
    for o, t in zip(ours, theirs, strict=True):
        for j, p in enumerate(o):
            st = saved["state"].get(t[j % len(t)])
            if not isinstance(st, dict) or not {"exp_avg", "exp_avg_sq"} <= set(st):
                continue
            if any(st[k].shape != p.shape for k in ("exp_avg", "exp_avg_sq")):
                odd.append(f"{tuple(st['exp_avg'].shape)} -> {tuple(p.shape)}")
                continue
            optimizer.state[p] = {
                "step": torch.tensor(float(st.get("step", 0))),
                "exp_avg": st["exp_avg"].to(p.device, p.dtype).clone(),
                "exp_avg_sq": st["exp_avg_sq"].to(p.device, p.dtype).clone()}
            restored += 1
    if odd:
        warnings.warn(f"pretrained={path}: {len(odd)} optimizer moment(s) differ in shape from "
                      f"their parameter ({sorted(set(odd))}) and start fresh; {restored} restored",
                      RuntimeWarning, stacklevel=3)
    return restored
