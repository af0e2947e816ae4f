"""Batch augmentations (baselines/augment.py): exact pixel checks against torch/numpy references."""

from __future__ import annotations

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


def test_rotation_angles_cover_the_circle_and_a_quarter_turn_matches_rot90():
    angles = augment.rotation_angles(4096, torch.Generator().manual_seed(3), 360.0) % 360
    counts = torch.histc(angles.float(), bins=12, min=0, max=360)
    assert counts.min() > 4096 / 12 * 0.7        # every 30-degree sector is drawn, roughly uniformly
    # the resampling itself: +-90 degrees equals an exact quarter turn (bilinear at pixel centres)
    x = _batch(b=4, s=9)
    out = augment.rotate(x, torch.Generator().manual_seed(0), 90.0)
    theta = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64).repeat(4, 1, 1)
    quarter = augment._sample_affine(x, theta, "reflection")
    turns = [k for k in (1, 3) if torch.allclose(quarter, torch.rot90(x, k, dims=(-2, -1)), atol=1e-5)]
    assert turns, "a 90-degree affine map is not a quarter turn"
    assert out.shape == x.shape and torch.isfinite(out).all()
    # reflected corners: a rotated constant image stays constant
    ones = torch.ones(3, 1, 16, 16)
    assert torch.allclose(augment.rotate(ones, torch.Generator().manual_seed(1), 360.0), ones, atol=1e-5)


def test_scale_jitter_keeps_the_size_and_zooms_in():
    # a horizontal ramp: a window of side s resized back to 32 px has slope s / 32 per pixel
    ramp = torch.arange(32, dtype=torch.float32).repeat(32, 1)[None, None].repeat(64, 1, 1, 1)
    out = augment.scale_jitter(ramp, torch.Generator().manual_seed(0), p=0.5, min_fraction=0.8)
    assert out.shape == ramp.shape
    slope = (out[:, 0, 16, 20] - out[:, 0, 16, 10]) / 10
    same = torch.isclose(slope, torch.ones(64))
    assert 16 < int(same.sum()) < 48                       # about half left as they were (p 0.5)
    zoomed = slope[~same]
    # side U{int(0.8 * 32) = 25, ..., 31} -> slope in [25/32, 31/32]
    assert (zoomed > 25 / 32 - 1e-4).all() and (zoomed < 31 / 32 + 1e-4).all()
    assert len(set(torch.round(zoomed * 32).tolist())) >= 4      # several window sides drawn
    assert torch.equal(augment.scale_jitter(ramp, torch.Generator(), p=0.0, min_fraction=0.8), ramp)


def test_brightness_contrast_match_tf_formulas():
    x = _batch(b=8, c=3, s=6)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = augment.brightness_contrast(x, g1, 0.1, 0.2)
    add = 0.1 * (2 * torch.rand(8, 3, 1, 1, generator=g2) - 1)
    fac = 1 + 0.2 * (2 * torch.rand(8, 3, 1, 1, generator=g2) - 1)
    y = x + add
    mean = y.mean(dim=(-2, -1), keepdim=True)
    assert torch.allclose(out, (y - mean) * fac + mean)
    assert (add.abs() <= 0.1).all() and ((fac >= 0.8) & (fac <= 1.2)).all()


def test_resize_is_bilinear_to_the_target_side():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = augment.resize(x, 8)
    assert out.shape == (1, 1, 8, 8)
    ref = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(out, ref)
    assert augment.resize(x, 4) is x
