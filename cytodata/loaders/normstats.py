"""Normalisation statistics: shards.json's per-group, per-channel mean/std as one table.

:class:`NormStats` serves the trainers (``data.normalize``) and the loader transform
``PlateNormalize`` alike; ``cell_type_table`` pools batch statistics per cell type exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import TrainingError


class NormStats:
    """Per-group, per-channel mean/std tables from shards.json, looked up per batch on the device.

    The one normalisation-statistics table of the project: the trainers (``data.normalize``)
    and the loader transform :class:`~cytodata.loaders.transforms.PlateNormalize` both use it.
    ``level``: plate, batch, cell_type (pooled from the batches), controls (each plate's
    negative controls) or all. ``n_channels``: checked against every entry (None: taken from
    the first). Groups without statistics use the whole set's (``fallback="all"``, with one
    warning per group), the group named ``fallback``, or raise ``error`` (``fallback=None``).
    """

    def __init__(self, meta: dict, level: str, n_channels: int | None = None, eps: float = 1e-6, *,
                 fallback: str | None = "all", error: type[Exception] = TrainingError):
        norm = meta.get("normalization") or {}
        self.error = error
        self.level = level
        self.column, self.group_of = level, str   # index column naming a row's group, its map
        table = norm.get(level) or {}
        if level == "cell_type" and not table and norm.get("batch"):
            # shard sets store plate/batch/all moments; cell types pool their batches exactly
            table = cell_type_table(norm["batch"])
            self.column, self.group_of = "batch", cell_type_of
        if level == "controls":
            # each plate's negative-control images; plates without any keep their own statistics
            plates = norm.get("plate") or {}
            bare = sorted(set(plates) - set(table))
            if not table and plates:
                warnings.warn("data.normalize=controls: shards.json has no negative-control "
                              "statistics (no row with control_type 'negcon', or a set written "
                              "before cytodata kept them); every plate is normalised with its own "
                              "all-image statistics, as data.normalize=plate. Re-shard to record "
                              "them, or set data.normalize=plate to silence this", stacklevel=2)
            elif bare:
                warnings.warn(f"data.normalize=controls: {len(bare)} plate(s) have no negative-control "
                              f"images ({', '.join(bare[:5])}); they are normalised with their own "
                              "all-image statistics", stacklevel=2)
            table = {**{p: plates[p] for p in bare}, **table}
            self.column = "plate"
        self._warned: set[str] = set()
        overall = (norm.get("all") or {}).get("all") if fallback == "all" else (
            table.get(fallback) if fallback else None)
        if level != "none" and not table and overall is None:
            raise error(f"shards.json has no normalization statistics at level {level!r} "
                                "(re-shard with a current cytodata, or --set data.normalize=none)")
        self.groups = sorted(table)
        rows = [table[g] for g in self.groups] + ([overall] if overall else [])
        n_channels = len(rows[0]["mean"]) if n_channels is None and rows else n_channels
        self.n_channels = n_channels
        for g, entry in zip(self.groups + ["all"], rows):
            if len(entry["mean"]) != n_channels:
                raise error(f"shards.json {level} {g!r} has {len(entry['mean'])} channel "
                                    f"statistics for {n_channels}-channel images")
            if not np.all(np.isfinite(entry["mean"])) or not np.all(np.isfinite(entry["std"])):
                raise error(f"shards.json {level} {g!r} has NaN/inf statistics; re-shard it")
        self.lookup = {g: i for i, g in enumerate(self.groups)}
        self.fallback = len(self.groups) if overall else None
        self.fallback_is_all = fallback == "all"
        mean = np.array([r["mean"] for r in rows], dtype=np.float32).reshape(len(rows), n_channels)
        std = np.array([r["std"] for r in rows], dtype=np.float32).reshape(len(rows), n_channels)
        self.mean, self.std = torch.from_numpy(mean), torch.from_numpy(np.maximum(std, eps))
        self._dev: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def rows(self, groups: list[str]) -> torch.Tensor:
        ids = []
        for g in groups:
            i = self.lookup.get(g, self.fallback)
            if i is None:
                raise self.error(f"no {self.level} statistics for {g!r} in shards.json and no "
                                    "'all' fallback")
            if g not in self.lookup and g not in self._warned and self.fallback_is_all:
                self._warned.add(g)
                warnings.warn(f"no {self.level} statistics for {g!r} in shards.json; its images "
                              "are normalised with the whole set's ('all') statistics",
                              stacklevel=3)
            ids.append(i)
        return torch.tensor(ids, dtype=torch.long)

    def batch_groups(self, meta: dict, n: int | None = None) -> list[str]:
        """Return the statistics group of each of the ``n`` samples of a batch's ``meta`` lists."""
        if self.level == "all":     # one group, whatever columns the batch carries
            return ["all"] * (n if n is not None else len(next(iter(meta.values()), [])))
        if self.column not in meta:
            raise self.error(f"data.normalize={self.level}: the batches carry no "
                                f"{self.column!r} column (columns: {sorted(meta)}); re-shard with it or choose "
                                "another level")
        return [self.group_of(str(v)) for v in meta[self.column]]

    def apply(self, x: torch.Tensor, groups: list[str]) -> torch.Tensor:
        """``(x - mean[group]) / std[group]`` per sample and channel, on x's device."""
        key = str(x.device)
        if key not in self._dev:
            self._dev[key] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._dev[key]
        ids = self.rows(groups).to(x.device)
        return (x - mean[ids][:, :, None, None]) / std[ids][:, :, None, None]


def cell_type_of(batch: str) -> str:
    """Return the cell type of an experiment named ``<cell type>-<number>`` (RxRx1: ``HEPG2-01``).

    Batches without a ``-`` are their own cell type.
    """
    return batch.split("-", 1)[0]


def cell_type_table(batches: dict) -> dict:
    """Per-cell-type ``{"mean", "std", "pixels"}`` pooled exactly from per-batch entries.

    ``pixels`` weight each batch; the pooled variance adds the spread of batch means
    (Chan et al.): ``var = sum n_b (std_b^2 + (mean_b - mean)^2) / sum n_b``.
    """
    groups: dict[str, list[dict]] = {}
    for name, entry in batches.items():
        groups.setdefault(cell_type_of(str(name)), []).append(entry)
    out = {}
    for cell, entries in sorted(groups.items()):
        n = np.array([float(e.get("pixels") or 1) for e in entries])[:, None]
        mean = np.array([e["mean"] for e in entries], dtype=np.float64)
        std = np.array([e["std"] for e in entries], dtype=np.float64)
        pooled = (n * mean).sum(0) / n.sum()
        var = (n * (std ** 2 + (mean - pooled) ** 2)).sum(0) / n.sum()
        out[cell] = {"channels": entries[0].get("channels"), "mean": pooled.tolist(),
                     "std": np.sqrt(var).tolist(), "pixels": int(n.sum())}
    return out
