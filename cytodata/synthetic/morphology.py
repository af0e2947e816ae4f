"""Hard-screen phenotypes: what a treatment does to cell *morphology and arrangement*.

A cell has one state per morphological axis; DMSO (and a non-responding cell) has the first
state of every axis. A mechanism of action (MOA) moves one or two axes of its *responding* cells
to another state, by a per-cell ``strength`` in [0, 1]:

=============  =========================================================================
axis           states (first = DMSO)
=============  =========================================================================
nucleus        round, lobed, fragmented (micronuclei), condensed (mitotic arrest: a
               metaphase bar in a rounded cell)
microtubules   filamentous (radial fibres), punctate, bundled (peripheral bundles)
actin          mesh, stress fibres (parallel cables), cortical (ring at the membrane)
organelles     dispersed, clustered (one perinuclear cluster)
=============  =========================================================================

No state changes how bright a channel is or how big a cell is: the renderer maps every
channel of every cell to one reference intensity distribution and draws every cell's area from
one distribution (:mod:`cytodata.synthetic.hard_cells`).
"""

from __future__ import annotations

import zlib

import numpy as np

#: axis -> its states; the first state of every axis is the DMSO (non-responding) one
AXES: dict[str, tuple[str, ...]] = {
    "nucleus": ("round", "lobed", "fragmented", "condensed"),
    "microtubules": ("filamentous", "punctate", "bundled"),
    "actin": ("mesh", "stress_fibres", "cortical"),
    "organelles": ("dispersed", "clustered"),
}

#: MOA -> the states its responding cells move to (axes not named stay at the DMSO state)
MOA_STATES: dict[str, dict[str, str]] = {
    "Actin disruptors": {"actin": "cortical", "organelles": "clustered"},
    "Microtubule destabilizers": {"microtubules": "punctate", "nucleus": "condensed"},
    "Microtubule stabilizers": {"microtubules": "bundled", "nucleus": "condensed"},
    "DNA damage": {"nucleus": "fragmented", "actin": "stress_fibres"},
    "Protein synthesis": {"organelles": "clustered", "nucleus": "lobed"},
    "Aurora kinase inhibitors": {"nucleus": "lobed", "microtubules": "bundled"},
    "Kinase inhibitors": {"actin": "stress_fibres"},
    "Eg5 inhibitors": {"nucleus": "condensed"},
    "Cholesterol-lowering": {"organelles": "clustered"},
    "Epithelial": {"actin": "cortical"},
    "DNA replication": {"nucleus": "fragmented"},
    "Protein degradation": {"organelles": "clustered", "microtubules": "punctate"},
}

#: oracle feature names: one per non-DMSO state, ``<axis>:<state>``
ORACLE_FEATURES: tuple[str, ...] = tuple(f"{axis}:{state}" for axis, states in AXES.items()
                                         for state in states[1:])


def moa_states(name: str) -> dict[str, str]:
    """States of ``name``'s responding cells: a known MOA's, else one or two drawn from the name.

    Unknown names (siRNAs, other MOAs) get states seeded by the CRC32 of the name, so the same
    name always looks the same.
    """
    if name in MOA_STATES:
        return dict(MOA_STATES[name])
    rng = np.random.default_rng(zlib.crc32(("hard:" + name).encode("utf-8")))
    axes = list(AXES)
    chosen = rng.choice(len(axes), size=int(rng.integers(1, 3)), replace=False)
    return {axes[i]: AXES[axes[i]][int(rng.integers(1, len(AXES[axes[i]])))] for i in chosen}


def state_key(states: dict[str, str]) -> tuple[str, ...]:
    """The full state of every axis (DMSO's where ``states`` names none), in :data:`AXES` order."""
    return tuple(states.get(axis, values[0]) for axis, values in AXES.items())


def check_moas(moas: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming two MOAs of one morphology (no feature could separate them).

    No MOA can look like DMSO: :func:`moa_states` moves at least one axis.
    """
    seen: dict[tuple[str, ...], str] = {}
    for moa in moas:
        key = state_key(moa_states(moa))
        if key in seen:
            raise ValueError(f"moas: {moa!r} and {seen[key]!r} have the same morphology "
                             f"({moa_states(moa)}); no feature could tell them apart")
        seen[key] = moa


def draw_cell_states(rng: np.random.Generator, n: int, states: dict[str, str],
                     respond: float, strength: float, spontaneous: float) -> dict[str, np.ndarray]:
    """Latents of ``n`` cells: ``responding`` (bool), ``strength`` (0-1), one state index per axis.

    A cell responds with probability ``respond``, its strength ``strength * U(0.6, 1)``; every
    cell also shows, with probability ``spontaneous``, one random non-DMSO state of a random
    axis at strength ``U(0.5, 1)`` (spontaneous mitoses, odd nuclei: so DMSO wells vary too).
    """
    out = {axis: np.zeros(n, dtype=np.int64) for axis in AXES}
    cell_strength = np.zeros(n)
    responding = rng.random(n) < respond
    s = strength * rng.uniform(0.6, 1.0, n)
    for axis, state in states.items():
        out[axis][responding] = AXES[axis].index(state)
    cell_strength[responding] = s[responding]
    axes = list(AXES)
    odd = (rng.random(n) < spontaneous) & ~responding
    which = rng.integers(0, len(axes), n)
    odd_strength = rng.uniform(0.5, 1.0, n)
    for i in np.flatnonzero(odd):
        axis = axes[which[i]]
        out[axis][i] = 1 + int(rng.integers(0, len(AXES[axis]) - 1))
        cell_strength[i] = odd_strength[i]
    out["responding"] = responding
    out["strength"] = cell_strength
    return out


def oracle_vector(latents: dict[str, np.ndarray]) -> np.ndarray:
    """Per-field oracle features: mean over cells of ``strength * [state == s]`` per non-DMSO state.

    Ordered as :data:`ORACLE_FEATURES`; zeros for a field without cells.
    """
    n = len(latents["strength"])
    out = []
    for axis, states in AXES.items():
        for k in range(1, len(states)):
            hit = latents[axis] == k
            out.append(float((latents["strength"] * hit).sum() / n) if n else 0.0)
    return np.asarray(out)


__all__ = ["AXES", "MOA_STATES", "ORACLE_FEATURES", "check_moas", "draw_cell_states",
           "moa_states", "oracle_vector", "state_key"]
