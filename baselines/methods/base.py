"""The hooks a training method gives the engine."""

from __future__ import annotations

import torch

from cytodata.errors import TrainingError

from ..config import TrainConfig
from ..schedules import lr_schedule, wd_schedule


class Method:
    """Base class: one model trained by cross-entropy-like losses on device batches.

    The engine owns the loop (devices, DDP, precision, accumulation, schedules, checkpoints,
    logging); a method owns its modules, its loss and what embeddings mean for it.
    """

    config_class = TrainConfig
    supervised = True           # needs class labels in the training shards

    def __init__(self, cfg: TrainConfig, info, device: torch.device):
        self.cfg, self.info, self.device = cfg, info, device

    # --- what the engine checkpoints and optimises ---
    def modules(self) -> dict[str, torch.nn.Module]:
        """Every module whose state is checkpointed (student, teacher, heads...)."""
        raise NotImplementedError

    def trainable(self) -> torch.nn.Module:
        """The module the optimiser updates (wrapped in DDP under torchrun)."""
        raise NotImplementedError

    def signature(self) -> dict:
        """What must match for a checkpoint to load: architecture, channels, classes..."""
        raise NotImplementedError

    @classmethod
    def make_sampler(cls, cfg: TrainConfig):
        """An epoch-order sampler for the training StreamingDataset (None: shard shuffle)."""
        return None

    def param_groups(self, module: torch.nn.Module) -> list[dict]:
        """Optimiser groups: no weight decay on biases and norm parameters (timm, DINO); one
        group decaying every parameter with ``optim.decay_norm_and_bias: true``.
        """
        if self.cfg.optim.decay_norm_and_bias:
            return [{"params": [p for p in module.parameters() if p.requires_grad]}]
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay_scale": 0.0}]

    # --- per step ---
    def loss(self, model: torch.nn.Module, batch: dict, step: int, g: torch.Generator
             ) -> tuple[torch.Tensor, dict]:
        """The loss of one micro-batch (``batch["image"]`` float, normalised, on the device)."""
        raise NotImplementedError

    def schedules(self, steps: int, global_batch: int):
        """Per-step ``(learning rate, weight decay)`` arrays (default: from ``cfg.optim``)."""
        return lr_schedule(self.cfg.optim, steps, global_batch), wd_schedule(self.cfg.optim, steps)

    def before_step(self, module: torch.nn.Module, step: int) -> None:
        """Called after the backward passes, before clipping and the optimiser step (e.g. DINO
        drops the last layer's gradients during its first epoch).
        """

    def after_step(self, step: int) -> None:
        """Called after each optimiser step (EMA teachers, frozen layers...)."""

    def after_validation(self, row: dict, counts: bool) -> None:
        """Called on the validating rank after each validation with its metrics; ``counts``
        false where the run's ``select_skip_restarts`` excludes this validation from
        improvements (e.g. DeepNoise's pseudo-label refresh).
        """

    def state(self) -> dict:
        """Extra non-module state to checkpoint (tensors, numbers)."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state`."""

    def summary(self) -> dict:
        """Outcome of the finished run (JSON-able), written to RUN_DIR/summary.json and as the
        last metrics row (DINO: ``collapsed`` and its evidence); empty: no summary.
        """
        return {}

    # --- evaluation ---
    def embedder(self, pool: str | None = None) -> torch.nn.Module:
        """``(B, C, h, w)`` float -> ``(B, D)`` features used by ``cytodata embed``.

        ``pool``: which features, for methods that offer a choice (DINO: ``cls``, ``avg``,
        ``cls+avg``); ``None`` is the method's published default.
        """
        raise NotImplementedError

    def _no_pool(self, pool: str | None) -> None:
        if pool is not None:
            raise TrainingError(f"embed pool={pool!r}: {self.cfg.method} runs have one embedding "
                                "(their pooled backbone features); pool= applies to DINO runs")

    def backbone(self) -> torch.nn.Module:
        """The network whose named modules ``cytodata embed --layer NAME`` can read."""
        model = getattr(self, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise TrainingError(f"embed --layer: {self.cfg.method} runs name no single backbone; "
                                "embed without --layer")
        return model

    def embed_crop(self) -> int:
        """The crop side embeddings are computed at (the training crop)."""
        return self.cfg.data.crop

    def init_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once on a fresh run's optimiser (not on resume): e.g. restore saved moments."""

    def embed_boxes(self) -> list[tuple[int, int, int, int]] | None:
        """Fixed crop boxes ``(x_min, y_min, x_max, y_max)`` in stored pixels for embed's
        ``crops`` view, or None for centre crops of :meth:`embed_crop`.
        """
        return None

    def validate(self, batches, prep) -> dict:
        """Metrics on the validation batches (empty dict if the method has none)."""
        return {}
