"""WS-DINO's sampling: weak-label groups, image ids and (anchor, partner) pairs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cytodata.errors import TrainingError
from cytodata.loaders.partition import rng_for
from cytodata.loaders.samplers import local_first


def group_codes(index: pd.DataFrame, weak_label: str, what: str = "weak_label"
                ) -> tuple[np.ndarray, list[str]]:
    """Per-row weak-label group ids (-1 where any column is NA) and the column names used.

    ``weak_label`` names an index column or several joined with ``+``; a missing column is a
    :class:`TrainingError` naming the columns present.
    """
    cols = [c.strip() for c in str(weak_label).split("+") if c.strip()]
    missing = [c for c in cols if c not in index.columns]
    if not cols or missing:
        raise TrainingError(f"{what}={weak_label!r}: the shard index has no column(s) "
                            f"{missing or cols}; columns: {sorted(map(str, index.columns))}. "
                            "Pass --set weak_label=COLUMN "
                            "(e.g. compound, moa, label, or compound+concentration for treatments)")
    frame = index[cols]
    na = frame.isna().any(axis=1).to_numpy()
    keys = frame.astype("string").fillna("").agg("\x1f".join, axis=1) if len(cols) > 1 \
        else frame[cols[0]].astype("string").fillna("")
    codes, _ = pd.factorize(keys.to_numpy(dtype=object), sort=True)
    codes = np.where(na, -1, codes).astype(np.int64)
    return codes, cols


def image_ids(index: pd.DataFrame, column: str = "auto") -> np.ndarray:
    """Per-row image ids: rows sharing one are the same image (crops of one field never pair)."""
    if column == "auto":
        has_parent = "parent_id" in index.columns and index["parent_id"].notna().all()
        column = "parent_id" if has_parent else "key"
    if column not in index.columns:
        raise TrainingError(f"pair_image_column={column!r} is not an index column; columns: "
                            f"{sorted(map(str, index.columns))}")
    codes, _ = pd.factorize(index[column].astype("string").fillna("").to_numpy(dtype=object))
    return codes.astype(np.int64)


@dataclass
class BalancedWeakLabelPairs:
    """(anchor, partner) pairs for WS-DINO: anchors drawn evenly across weak-label groups.

    Each epoch has as many pairs as labelled rows; every group gets an equal share (largest
    remainder), its rows taken without replacement, whole passes first when the share is larger
    than the group (WS-DINO's inverse-frequency weighted sampler, without its draw noise). The
    partner is uniform over the group's rows of *another image*; an anchor whose group has a
    single image is paired with itself (``self_pairs`` counts them). Rows with an NA label are
    left out. Same 2-D order contract as :class:`cytodata.loaders.WeakLabelPairs`.
    """

    weak_label: str = "label"
    image_column: str = "auto"
    self_pairs: int = field(default=0, init=False)
    lone_images: int = field(default=0, init=False)

    def order(self, index: pd.DataFrame, *, seed: int, epoch: int, world_size: int = 1
              ) -> np.ndarray:
        """Return the ``(n, 2)`` (anchor, partner) rows of ``epoch`` (pure in its inputs)."""
        codes, _ = group_codes(index, self.weak_label)
        images = image_ids(index, self.image_column)
        rng = rng_for("ws-dino-pairs", seed, epoch)
        labelled = np.flatnonzero(codes >= 0)
        if not len(labelled):
            raise TrainingError(f"weak_label={self.weak_label!r}: every training row is NA; choose "
                                "a column with values")
        groups = pd.Series(labelled).groupby(codes[labelled]).apply(np.asarray).to_dict()
        names = sorted(groups)
        total = len(labelled)
        share = np.full(len(names), total // len(names))
        share[rng.permutation(len(names))[: total - share.sum()]] += 1
        pairs, self_pairs, lone = [], 0, 0
        for name, want in zip(names, share, strict=True):
            rows = np.asarray(groups[name], dtype=np.int64)
            full, rest = divmod(int(want), len(rows))
            pos = np.concatenate([np.tile(np.arange(len(rows)), full),
                                  rng.choice(len(rows), size=rest, replace=False)]).astype(np.int64)
            partners = _partners(rows, images[rows], pos, rng)
            if len(np.unique(images[rows])) == 1:
                lone += len(rows)
            self_pairs += int((partners == rows[pos]).sum())
            pairs.append(np.stack([rows[pos], partners], axis=1))
        self.self_pairs, self.lone_images = self_pairs, lone
        return local_first(np.concatenate(pairs), index, seed=seed, epoch=epoch)


def _partners(rows: np.ndarray, images: np.ndarray, pos: np.ndarray, rng: np.random.Generator
              ) -> np.ndarray:
    """For anchors ``rows[pos]``, a partner uniform over the rows with another image (else self).

    Rows are sorted by image so an image's rows form one block ``[start, start + width)``; a
    uniform draw over the ``n - width`` other positions skips it (vectorised, exact).
    """
    n = len(rows)
    order = np.argsort(images, kind="stable")
    inv = np.empty(n, np.int64)
    inv[order] = np.arange(n)
    _, start, width = np.unique(images[order], return_index=True, return_counts=True)
    block = np.repeat(np.arange(len(start)), width)
    s = inv[pos]
    first, wide = start[block[s]], width[block[s]]
    others = n - wide
    draw = np.floor(rng.random(len(pos)) * np.maximum(others, 1)).astype(np.int64)
    at = np.where(draw < first, draw, draw + wide)
    return np.where(others > 0, rows[order][np.minimum(at, n - 1)], rows[pos])


@dataclass
class WeightedWeakLabelPairs:
    """(anchor, partner) pairs as WS-DINO's code draws them (WS-DINO_BBBC021.py).

    Each epoch draws as many anchors as labelled rows *with replacement*, row ``i`` with
    probability proportional to ``1 / (rows of its weak-label group)`` (W:132-147 weights,
    W:245 ``WeightedRandomSampler(weighty, num_samples=len(weighty))``, replacement by default).
    The partner is uniform over the group's rows, the anchor itself included (W:191
    ``same_idx``, W:217 ``random.choice(same_idx)``): ``self_pairs`` counts those. Rows with an NA
    label are left out. Pure in ``(seed, epoch)``, so a resumed run redraws the same epoch.
    """

    weak_label: str = "label"
    image_column: str = "auto"
    self_pairs: int = field(default=0, init=False)

    def order(self, index: pd.DataFrame, *, seed: int, epoch: int, world_size: int = 1
              ) -> np.ndarray:
        """Return the ``(n, 2)`` (anchor, partner) rows of ``epoch`` (pure in its inputs)."""
        codes, _ = group_codes(index, self.weak_label)
        labelled = np.flatnonzero(codes >= 0)
        if not len(labelled):
            raise TrainingError(f"weak_label={self.weak_label!r}: every training row is NA; choose "
                                "a column with values")
        rng = rng_for("ws-dino-weighted-pairs", seed, epoch)
        counts = np.bincount(codes[labelled])
        weights = 1.0 / counts[codes[labelled]]
        anchors = labelled[rng.choice(len(labelled), size=len(labelled), replace=True,
                                      p=weights / weights.sum())]
        # rows grouped by label: a partner is a uniform position inside the anchor's block
        by_label = labelled[np.argsort(codes[labelled], kind="stable")]
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        c = codes[anchors]
        partners = by_label[start[c] + np.floor(rng.random(len(anchors)) * counts[c]).astype(np.int64)]
        self.self_pairs = int((partners == anchors).sum())
        return local_first(np.stack([anchors, partners], axis=1), index, seed=seed, epoch=epoch)
