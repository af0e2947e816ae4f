"""The DINO head and the backbone + head networks (one per channel or one joint)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DINOHead(nn.Module):
    """MLP (``layers`` Linear, GELU between) -> bottleneck -> L2 norm -> weight-normed Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if layers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            mods: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(layers - 2):
                mods += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            mods.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*mods)
        self.apply(self._init)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad = not norm_last_layer

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class DinoNet(nn.Module):
    """Backbone + head over a list of views; views of one size share a backbone call (DINO)."""

    def __init__(self, backbone: nn.Module, head: DINOHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Map views ``[(B, C, s, s), ...]`` to ``(len(views) * B, out_dim)`` (view-major)."""
        feats, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-1] == views[start].shape[-1]:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))
            start = end
        return self.head(torch.cat(feats))


class DinoModels(nn.Module):
    """One :class:`DinoNet` over all channels, or one per channel (``per_channel``)."""

    def __init__(self, nets: list[DinoNet], per_channel: bool):
        super().__init__()
        self.nets, self.per_channel = nn.ModuleList(nets), per_channel

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        """-> ``(n_models, len(views) * B, out_dim)``."""
        if not self.per_channel:
            return self.nets[0](views)[None]
        return torch.stack([net([v[:, i: i + 1] for v in views])
                            for i, net in enumerate(self.nets)])
