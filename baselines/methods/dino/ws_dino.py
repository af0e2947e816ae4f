"""WS-DINO: DINO whose local crops come from a partner image sharing the weak label."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cytodata.errors import TrainingError

from ...registry import METHODS
from ..dino_config import WSDinoConfig
from .method import Dino
from .sampling import BalancedWeakLabelPairs, WeightedWeakLabelPairs, group_codes, image_ids


@METHODS.register("ws-dino")
class WSDino(Dino):
    """DINO whose local crops come from another image with the same weak label."""

    config_class = WSDinoConfig
    pairs = True

    def __init__(self, cfg: WSDinoConfig, info, device):
        super().__init__(cfg, info, device)
        index = (info.extra or {}).get("train_index")
        self._keys = None
        if index is None:       # cytodata embed: no training index, nothing to pair
            return
        codes, cols = group_codes(index, cfg.weak_label)
        images = image_ids(index, cfg.pair_image_column)
        labelled = codes >= 0
        per_group = pd.Series(images[labelled]).groupby(codes[labelled]).nunique()
        n_images = np.zeros(max(int(codes.max()) + 1, 1), np.int64)
        n_images[per_group.index.to_numpy()] = per_group.to_numpy()
        self._keys = pd.Index(index["key"].astype(str))
        self._codes, self._images, self._n_images = codes, images, n_images
        lone_groups = int((per_group == 1).sum())
        self.lone_images = int(np.isin(codes, per_group.index[per_group == 1]).sum())
        self.na_rows = int((~labelled).sum())
        self.n_groups = len(per_group)
        if self.lone_images or self.na_rows:
            warnings.warn(
                f"ws-dino: weak_label={cfg.weak_label!r} has {self.n_groups} groups over "
                f"{int(labelled.sum())} training rows; {self.lone_images} images in {lone_groups} "
                "group(s) of a single image have no partner and fall back to same-image local "
                f"crops (plain DINO); {self.na_rows} rows with no {'+'.join(cols)} value are not "
                "sampled", RuntimeWarning, stacklevel=2)

    @classmethod
    def make_sampler(cls, cfg):
        if cfg.pair_sampling == "weighted":
            return WeightedWeakLabelPairs(cfg.weak_label, cfg.pair_image_column)
        return BalancedWeakLabelPairs(cfg.weak_label, cfg.pair_image_column)

    def _check_pairs(self, batch: dict) -> dict:
        """Check the pair invariant on a batch and return the same-image fallback fraction.

        Same weak label; another image unless the group has a single image (``balanced``; the
        ``weighted`` draw pairs an anchor with itself as the authors' code does).
        """
        if "partner" not in batch:
            raise TrainingError("ws-dino: the batch has no 'partner' images; the loader must use "
                                "the WS-DINO pair sampler (make_sampler)")
        if self._keys is None:
            return {}
        a = self._keys.get_indexer([str(k) for k in batch["key"]])
        p = self._keys.get_indexer([str(k) for k in batch["partner"]["key"]])
        if (a < 0).any() or (p < 0).any():
            raise TrainingError("ws-dino: a batch key is not in the training index")
        ca, cp = self._codes[a], self._codes[p]
        same_image = self._images[a] == self._images[p]
        bad_label = (ca != cp) | (ca < 0)
        bad_self = same_image & (self._n_images[np.maximum(ca, 0)] > 1)
        if self.cfg.pair_sampling == "weighted":
            bad_self[:] = False
        if bad_label.any() or bad_self.any():
            i = int(np.flatnonzero(bad_label | bad_self)[0])
            raise TrainingError(f"ws-dino pair invariant broken: anchor {batch['key'][i]!r} paired "
                                f"with {batch['partner']['key'][i]!r} ("
                                + ("different weak labels" if bad_label[i] else
                                   "the same image although its group has others") + ")")
        return {"pair_fallback": float(same_image.mean())}
