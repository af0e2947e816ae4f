"""The weak-label classifier: the method of the ``classifier`` (ours), ``cytoimagenet`` and
``cellpainting-cnn`` configs.

Any timm backbone (default EfficientNet-B0) with ``in_chans`` = the shard set's channel count
(or 1/3 after ``data.merge``), cross-entropy over the weak labels (optional label smoothing),
the augmentations of :func:`~baselines.augment.augment_batch` on the device. Embeddings: the
pooled penultimate features, or the spatial mean of any named module (``embed_layer``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cytodata.errors import TrainingError

from .. import augment
from ..data import balanced_sampler, model_channels
from ..models import create
from ..registry import METHODS
from ..runtime import autocast
from .base import Method
from .classifier_config import ClassifierConfig


@METHODS.register("classifier")
class Classifier(Method):
    """Cross-entropy on weak labels; embeddings = pooled penultimate features."""

    config_class = ClassifierConfig
    supports_merge = True       # data.merge: the model is built for the merged channel count

    def __init__(self, cfg: ClassifierConfig, info, device):
        super().__init__(cfg, info, device)
        if cfg.init == "pretrained" and not cfg.pretrained:
            raise TrainingError(f"init=pretrained ({cfg.description or cfg.model}) needs a weights file: "
                                f"--set pretrained=PATH (a local {cfg.model} state dict, e.g. "
                                "ImageNet weights), or --set init=random to train from scratch")
        if info.shape is not None and cfg.data.crop > min(info.shape[1:]):
            raise TrainingError(f"data.crop={cfg.data.crop}: crop {cfg.data.crop} is larger than the "
                                f"images ({info.shape[1]}x{info.shape[2]}); lower data.crop")
        kwargs = dict(cfg.model_kwargs)
        if cfg.drop_rate:
            kwargs["drop_rate"] = cfg.drop_rate
        if cfg.drop_path_rate:
            kwargs["drop_path_rate"] = cfg.drop_path_rate
        self.in_chans = model_channels(info.n_channels, cfg.data.merge)
        self.model = create(cfg.model, in_chans=self.in_chans, num_classes=len(info.classes),
                            pretrained=cfg.pretrained, first_conv=cfg.first_conv, **kwargs).to(device)

    def modules(self):
        return {"model": self.model}

    def trainable(self):
        return self.model

    def signature(self):
        return {"method": "classifier", "model": self.cfg.model, "in_chans": self.in_chans,
                "num_classes": len(self.info.classes), "classes": list(self.info.classes)}

    @classmethod
    def make_sampler(cls, cfg):
        return balanced_sampler(cfg.data.label, cfg.data.balance) if cfg.data.balanced else None

    def loss(self, model, batch, step, g):
        x = augment.augment_batch(batch["image"], self.cfg.augment, self.cfg.data.crop, g)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch["label"].to(x.device, non_blocking=True)
        logits = model(x)
        labelled = y >= 0   # rows without a label (-1) in the training split carry no class
        if not bool(labelled.any()):
            return logits.sum() * 0.0, {"train_top1": 0.0, "labelled": 0.0}
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing,
                               ignore_index=-1)
        acc = (logits.argmax(1) == y)[labelled].float().mean()
        return loss, {"train_top1": acc, "labelled": labelled.float().mean()}

    def embedder(self, pool=None):
        self._no_pool(pool)
        return _Pooled(self.model)

    @torch.no_grad()
    def validate(self, batches, prep):
        self.model.eval()
        n, loss, top1, top5 = 0, 0.0, 0, 0
        k = min(5, len(self.info.classes))
        for batch in batches:
            x = augment.center_crop(prep(batch["image"], batch["meta"]), self.cfg.data.crop)
            y = batch["label"].to(x.device)
            keep = y >= 0  # unlabelled validation rows are not scored
            if not bool(keep.any()):
                continue
            x, y = x[keep], y[keep]
            with autocast(x.device, self.cfg.precision):
                logits = self.model(x).float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            best = logits.topk(k, dim=1).indices
            top1 += int((best[:, 0] == y).sum())
            top5 += int((best == y[:, None]).any(1).sum())
            n += len(y)
        self.model.train()
        if not n:
            return {}
        return {"val_loss": loss / n, "val_top1": top1 / n, "val_top5": top5 / n, "val_samples": n}


class _Pooled(torch.nn.Module):
    """timm backbone -> pooled pre-logits features ``(B, num_features)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
