"""Batch augmentations (baselines/augment.py): exact pixel checks against torch/numpy references."""

from __future__ import annotations

import math

import pytest
import torch

from cytodata.baselines import augment


def _batch(b=64, c=2, s=8, seed=0):
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed))


def test_rot90_only_rotates_and_reaches_every_quarter_turn():
    """flips=False, rot90=True: each sample is one of its four rotations (never a reflection),
    and all four turns occur over a batch."""
    x = _batch()
    out = augment.flips_rot90(x, torch.Generator().manual_seed(1), flips=False, rot90=True)
    seen = set()
    for i in range(len(x)):
        ks = [k for k in range(4) if torch.equal(out[i], torch.rot90(x[i], k, dims=(-2, -1)))]
        assert ks, f"sample {i} is not a rotation of its input (a reflection?)"
        seen.add(ks[0])
    assert seen == {0, 1, 2, 3}


def test_flips_rot90_covers_the_dihedral_group():
    x = _batch(b=256)
    out = augment.flips_rot90(x, torch.Generator().manual_seed(2), flips=True, rot90=True)
    refs = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    refs += [r.flip(-1) for r in refs]
    found = set()
    for i in range(len(x)):
        hit = [j for j, r in enumerate(refs) if torch.equal(out[i], r[i])]
        assert hit
        found.add(hit[0])
    assert found == set(range(8))
