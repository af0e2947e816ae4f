"""timm backbones by name, with local pretrained weights (no model hub is reachable here)."""

from __future__ import annotations

from pathlib import Path

import torch

from cytodata.errors import TrainingError


def create(name: str, *, in_chans: int, num_classes: int, pretrained: str | None = None,
           first_conv: str = "repeat", **kwargs) -> torch.nn.Module:
    """``timm.create_model(name, in_chans=, num_classes=)``, random init unless ``pretrained``.

    ``pretrained`` is a local file (timm/torch ``.pth``/``.bin``/``.safetensors``, or a state dict
    under ``state_dict``/``model``/``teacher``): loaded with ``weights_only=True``, the first conv
    adapted to ``in_chans`` by ``first_conv`` (:func:`adapt_first_conv`), and a classifier of a
    different class count left at its fresh init.
    """
    import timm

    try:
        model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes,
                                  **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise TrainingError(f"model={name!r} is not a timm model; set one with `cytodata train "
                                "CONFIG --set model=NAME` (names: timm.list_models(); tiny ones for "
                                "tests: test_efficientnet, test_vit, resnet10t)") from None
        raise
    if pretrained:
        load_pretrained(model, pretrained, in_chans, first_conv=first_conv)
    return model


def adapt_first_conv(weight: torch.Tensor, in_chans: int, rule: str = "repeat", *,
                     where: str = "pretrained") -> torch.Tensor:
    """A first-conv kernel ``(O, I, kh, kw)`` for ``in_chans`` input channels.

    ``repeat``: timm's ``adapt_input_conv`` (1 channel: the RGB filters summed; more: RGB
    repeated and scaled by ``3 / in_chans``). ``tile``: DeepProfiler's rule (efficientnet.py:148-
    162): channel ``i`` takes the filter of RGB channel ``i % I``, unscaled.
    """
    if weight.ndim != 4:
        raise TrainingError(f"{where}: the first convolution's weight has shape "
                            f"{tuple(weight.shape)}; expected 4 dims (out, in, kh, kw) to adapt it "
                            f"to {in_chans} input channels (another architecture?)")
    found = weight.shape[1]
    if found == in_chans:
        return weight
    if rule == "tile":
        idx = torch.arange(in_chans) % found
        return weight[:, idx].clone()
    if rule != "repeat":
        raise TrainingError(f"first_conv={rule!r}; valid: repeat, tile")
    if found != 3 and in_chans != 1:
        raise TrainingError(f"{where}: the first convolution has {found} input channels "
                            f"(weight shape {tuple(weight.shape)}); first_conv=repeat adapts 3-channel "
                            f"(RGB) filters only. Use --set first_conv=tile, or weights trained on "
                            f"{in_chans} channels")
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight)


def read_checkpoint(path: str) -> dict:
    """A local weights file as a mapping, loaded with ``weights_only=True`` (nothing unpickled).

    DINO's full checkpoints (``*_pretrain_full_checkpoint.pth``) also hold the run's
    ``argparse.Namespace`` under ``args``; that one plain-attribute class is allowed.
    """
    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"pretrained={path}: no such file (pass a local checkpoint; no model "
                            "hub is reachable)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    import argparse

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(f"pretrained={path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise TrainingError(f"pretrained={path}: holds a {type(state).__name__}, not a state dict")
    return state


def read_state_dict(path: str, key: str | None = None, raw: dict | None = None
                    ) -> dict[str, torch.Tensor]:
    """A state dict from a local weights file, loaded without unpickling arbitrary objects.

    The tensors are taken from ``key`` when the file has it (DINO's full checkpoint: ``student``
    or ``teacher``), else from the first of ``state_dict``/``model``/``teacher``/``module``, else
    the top level; ``module.`` (DDP) and ``backbone.`` (DINO's multi-crop wrapper) prefixes are
    stripped as DINO's ``utils.load_pretrained_weights`` does. ``raw``: the file already read.
    """
    state = read_checkpoint(path) if raw is None else raw
    for k in ([key] if key else []) + ["state_dict", "model", "teacher", "module"]:
        if isinstance(state, dict) and isinstance(state.get(k), dict):
            state = state[k]
            break
    if isinstance(state, dict) and "modules" in state and isinstance(state["modules"], dict):
        state = state["modules"].get("model") or next(iter(state["modules"].values()))
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()
             if isinstance(v, torch.Tensor)}
    if not state:
        raise TrainingError(f"pretrained={path}: no tensors found")
    return state


def load_pretrained(model: torch.nn.Module, path: str, in_chans: int,
                    state: dict[str, torch.Tensor] | None = None, first_conv: str = "repeat") -> None:
    """Load local weights into a timm model, adapting the first conv and skipping a new head.

    ``state``: the tensors to load when the caller already read (and split) ``path``'s state dict.
    """
    state = read_state_dict(path) if state is None else dict(state)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first = cfg.get("first_conv")
    for name in [first] if isinstance(first, str) else list(first or []):
        key = f"{name}.weight"
        if key in state and (state[key].ndim != 4 or state[key].shape[1] != in_chans):
            state[key] = adapt_first_conv(state[key], in_chans, first_conv,
                                          where=f"pretrained={path} ({key})")
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    heads = cfg.get("classifier")
    heads = [heads] if isinstance(heads, str) else list(heads or [])
    bad = [k for k in skipped if not any(k.startswith(h) for h in heads)]
    if bad:
        raise TrainingError(f"pretrained={path} does not fit {type(model).__name__}: "
                            f"{bad[:3]} have other shapes (another architecture?)")
    for k in skipped:
        state.pop(k)
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not any(k.startswith(h) for h in heads)]
    if missing or unexpected:
        loaded = [k for k in state if k in own]
        raise TrainingError(
            f"pretrained={path} does not match {type(model).__name__}: {len(unexpected)} unexpected "
            f"key(s) {unexpected[:4]}, {len(missing)} missing {missing[:4]}; {len(loaded)} of "
            f"{len(own)} model tensors would load ({loaded[:3]}{' ...' if len(loaded) > 3 else ''})."
            " Nothing was loaded: pass weights of the same architecture, or set the config's to "
            "theirs (`cytodata train CONFIG --set model=NAME --set patch_size=N`; Python: model=, "
            "patch_size=), e.g. dino_deitsmall8_pretrain.pth for vit_small_patch8_224")
    model.load_state_dict(state, strict=False)   # only a fresh classifier head may be missing
