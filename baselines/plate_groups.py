"""Plate groups: the class sets that share plates, learned from training plates (RxRx1: 4 x 277).

RxRx1's 1,108 siRNAs come in four fixed sets of 277; every plate holds one set, so each siRNA
occurs once per experiment. DeepNoise restricted each test plate to its set before balancing
(authors' ``leaks/plate_groups.csv`` + ``leaks/exp_to_group.csv``, used in ``ensemble.py:164-178``),
which is where most of its 95.5% -> 99.6% comes from. Here the sets are learned, not read:

- :func:`discover_groups`: classes found on two plates of one experiment (controls: on every
  plate) are *shared*; the other classes are linked when they share a training plate, and the
  connected components are the groups.
- :func:`match_groups`: each test plate takes the group under which its wells are most likely
  (``L_g = sum_wells log P(class in group g or shared)``). A plate fits no group, and is
  reported (the caller falls back to the plate prior for it), when the best group is not
  clearly better than the runner-up (``L_best - L_second < min_evidence`` nats, default
  ``log 100``: uninformative predictions, or wells from several groups), or when it has more
  wells than the group has classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class PlateGroups:
    """Groups of classes (each sorted), the shared classes, and each training plate's group."""

    groups: list[list[str]]
    shared: list[str] = field(default_factory=list)
    plates: dict[str, int] = field(default_factory=dict)

    def sizes(self) -> list[int]:
        """Return the number of classes in each group."""
        return [len(g) for g in self.groups]

    def to_dict(self) -> dict:
        """JSON-ready form (``from_dict`` reads it back)."""
        return {"groups": self.groups, "shared": self.shared, "plates": self.plates}

    @classmethod
    def from_dict(cls, data: dict) -> "PlateGroups":
        """Read :meth:`to_dict`'s output."""
        return cls([list(map(str, g)) for g in data["groups"]], list(map(str, data["shared"])),
                   {str(k): int(v) for k, v in data.get("plates", {}).items()})


def _find(parent: dict, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def discover_groups(plates, labels, experiments=None) -> PlateGroups:
    """Learn the plate groups from training rows (``plates``, ``labels``, optional ``experiments``).

    Rows without a label are ignored. Shared classes: with ``experiments``, those on two or more
    plates of one experiment; without, those on every plate (when there are several plates).
    """
    plates = np.asarray([str(p) for p in plates], dtype=object)
    labels = np.asarray([None if pd.isna(v) else str(v) for v in labels], dtype=object)
    if len(plates) != len(labels):
        raise ValueError(f"{len(plates)} plates for {len(labels)} labels")
    keep = np.array([v is not None for v in labels], dtype=bool)
    plates, labels = plates[keep], labels[keep]
    if experiments is not None:
        exps = np.asarray([str(e) for e in experiments], dtype=object)[keep]
    on_plates: dict[str, set[str]] = {}
    for p, c in zip(plates.tolist(), labels.tolist(), strict=True):
        on_plates.setdefault(p, set()).add(c)
    shared: set[str] = set()
    if experiments is not None:
        seen: dict[tuple[str, str], str] = {}
        for p, c, e in zip(plates.tolist(), labels.tolist(), exps.tolist(), strict=True):
            first = seen.setdefault((e, c), p)
            if first != p:
                shared.add(c)
    elif len(on_plates) > 1:
        shared = set.intersection(*on_plates.values())
    parent: dict[str, str] = {}
    for members in on_plates.values():
        own = sorted(members - shared)
        for c in own:
            parent.setdefault(c, c)
        for a, b in zip(own, own[1:]):
            ra, rb = _find(parent, a), _find(parent, b)
            if ra != rb:
                parent[rb] = ra
    comps: dict[str, list[str]] = {}
    for c in parent:
        comps.setdefault(_find(parent, c), []).append(c)
    groups = sorted((sorted(g) for g in comps.values()), key=lambda g: (g[0], len(g)))
    index = {c: i for i, g in enumerate(groups) for c in g}
    plate_group = {p: index[next(iter(sorted(m - shared)))] for p, m in on_plates.items()
                   if m - shared}
    return PlateGroups(groups, sorted(shared), plate_group)


def groups_from_shards(source, label: str = "label", storage_options: dict | None = None
                       ) -> PlateGroups:
    """Learn the groups from a shard set's index (plate, ``label``, batch as the experiment).

    Raises ``ValueError`` naming why when the set cannot be read or lacks the columns.
    """
    from cytodata.loaders import StreamingDataset

    try:
        index = StreamingDataset(source, shuffle=False, rank=0, world_size=1,
                                 storage_options=storage_options).index
    except Exception as exc:  # noqa: BLE001 - any unreadable set is the same user error
        raise ValueError(f"cannot read the training plates {source} ({exc})") from None
    missing = [c for c in ("plate", label) if c not in index.columns]
    if missing:
        raise ValueError(f"the training plates {source} have no {missing} column")
    exps = index["batch"].astype(str).to_numpy() if "batch" in index.columns \
        and index["batch"].notna().all() else None
    return discover_groups(index["plate"].astype(str).to_numpy(), index[label].tolist(), exps)


@dataclass
class GroupMatch:
    """Each test plate's group (``-1``: none fits), the evidence for it and why not."""

    group: dict[str, int]
    evidence: dict[str, float]        # L_best - L_second in nats (log likelihood ratio)
    mass: dict[str, float]            # mean probability of the best group's classes per well
    unmatched: dict[str, str]         # plate -> reason


def group_columns(groups: PlateGroups, classes: list[str]) -> list[np.ndarray]:
    """Class indices (into ``classes``) of each group plus the shared classes."""
    lookup = {c: i for i, c in enumerate(classes)}
    shared = [lookup[c] for c in groups.shared if c in lookup]
    return [np.array(sorted({lookup[c] for c in g if c in lookup} | set(shared)), dtype=np.int64)
            for g in groups.groups]


def match_groups(probs: np.ndarray, plates, classes: list[str], groups: PlateGroups, *,
                 min_evidence: float = math.log(100.0)) -> GroupMatch:
    """Assign each plate of ``probs`` ``(n, K)`` (rows = wells) to its most likely group."""
    probs = np.asarray(probs, dtype=np.float64)
    plates = np.asarray([str(p) for p in plates], dtype=object)
    cols = group_columns(groups, classes)
    masses = np.stack([probs[:, c].sum(1) for c in cols], axis=1) if cols \
        else np.zeros((len(probs), 0))
    out, evidence, mass, unmatched = {}, {}, {}, {}
    for plate in sorted(set(plates.tolist())):
        rows = np.flatnonzero(plates == plate)
        if not cols:
            out[plate], evidence[plate], mass[plate] = -1, 0.0, 0.0
            unmatched[plate] = "no groups were learned"
            continue
        ll = np.log(np.clip(masses[rows], 1e-12, None)).sum(0)
        order = np.argsort(-ll, kind="stable")
        best = int(order[0])
        ev = float(ll[best] - ll[order[1]]) if len(order) > 1 else math.inf
        evidence[plate], mass[plate] = ev, float(masses[rows, best].mean())
        if ev < min_evidence:
            out[plate] = -1
            unmatched[plate] = (f"its best group ({best}) is only {ev:.2f} nats more likely than "
                                f"the next (group {int(order[1])}), below {min_evidence:.2f}")
        elif len(rows) > len(cols[best]):
            out[plate] = -1
            unmatched[plate] = (f"{len(rows)} wells but group {best} has {len(cols[best])} "
                                "classes")
        else:
            out[plate] = best
    return GroupMatch(out, evidence, mass, unmatched)
