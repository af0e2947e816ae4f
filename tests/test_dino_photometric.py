"""DINO's photometric view ops on multi-channel views: each op's effect computed by hand, the
recipes' pipelines (``dino`` applies them per view kind, ``ws-dino`` draws none), horizontal-only
flips, and bad values.
"""

from __future__ import annotations

import math

import pytest
import torch

from cytodata.baselines import load_config
from cytodata.baselines.data import DataInfo
from cytodata.baselines.methods import METHODS
from cytodata.baselines.methods.dino import PhotometricConfig, photometric, resized_crops
from cytodata.baselines.methods.dino.photometric import GLOBAL_1, GLOBAL_2, LOCAL
from cytodata.errors import RecipeError


def _views(b=16, c=3, s=12, seed=0) -> torch.Tensor:
    """Views in arbitrary normalised units: per channel a different offset and spread."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, s, s, generator=g)
    return x * torch.tensor([0.5, 2.0, 7.0])[:c].view(1, c, 1, 1) + torch.tensor([-1.0, 0.0, 30.0])[:c].view(1, c, 1, 1)


def _scaled(x):
    lo = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    return (x - lo) / span, lo, span


def _unit(b=16, c=3, s=12, seed=0) -> torch.Tensor:
    """Views already spanning [0, 1] per channel (the scaling is the identity), with a 0.5 pixel."""
    x = torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed))
    x[..., 0, 0], x[..., 0, 1], x[..., 0, 2] = 0.0, 1.0, 0.5
    return x


def _run(x, seed=1, kind=GLOBAL_1, **cfg):
    g = torch.Generator().manual_seed(seed)
    out = photometric(x, g, PhotometricConfig(**cfg), kind)
    return out, g


def test_solarize_inverts_exactly_the_upper_half_of_each_channels_range():
    x = _views()
    out, _ = _run(x, kind=GLOBAL_2, solarize_p=[0.0, 1.0, 0.0])
    s, lo, span = _scaled(x)
    upper = s >= 0.5
    off_threshold = (s - 0.5).abs() > 1e-4
    expected = torch.where(upper, 1 - s, s) * span + lo
    assert torch.allclose(out, expected, atol=1e-5)
    moved = (out - x).abs() > 1e-5 * span
    assert torch.equal(moved[off_threshold], upper[off_threshold])   # exactly those pixels
    # global view 1 and the local views have p 0 (DINO: global view 2 only): untouched, no draw
    for kind in (GLOBAL_1, LOCAL):
        g = torch.Generator().manual_seed(1)
        before = g.get_state()
        same = photometric(x, g, PhotometricConfig(solarize_p=[0.0, 1.0, 0.0]), kind)
        assert same is x and torch.equal(g.get_state(), before)


def test_blur_impulse_response_is_the_gaussian_and_p0_leaves_views_identical():
    x = torch.zeros(2, 1, 15, 15)
    x[:, :, 7, 7] = 1.0
    out, _ = _run(x, blur_p=[1.0, 1.0, 1.0], blur_sigma=[1.0, 1.0])
    w = [math.exp(-0.5 * t * t) for t in range(-3, 4)]     # truncated at 3 std
    w = [v / sum(w) for v in w]
    for i in range(-3, 4):
        for j in range(-3, 4):
            assert out[0, 0, 7 + i, 7 + j].item() == pytest.approx(w[i + 3] * w[j + 3], abs=1e-6)
    assert out[0, 0, 7, 11].item() == 0.0 and out.sum().item() == pytest.approx(2.0, abs=1e-5)
    views = _views()
    blurred, _ = _run(views, blur_p=[1.0, 0.0, 0.0])
    assert (blurred - views).abs().flatten(1).amax(1).min() > 0        # every view changed
    kept, _ = _run(views, blur_p=[0.0, 0.0, 0.0], solarize_p=[0.0, 0.0, 0.0])
    assert torch.equal(kept, views)
    # the std is drawn per view from U(blur_sigma): a flat view stays flat
    flat, _ = _run(torch.full((2, 3, 8, 8), 4.0), blur_p=[1.0, 1.0, 1.0])
    assert torch.equal(flat, torch.full((2, 3, 8, 8), 4.0))


def test_brightness_is_one_clipped_gain_per_view_for_every_channel():
    x = _unit()
    out, _ = _run(x, jitter_p=1.0, brightness=0.4)
    f = out[..., 0, 2] / 0.5                                   # (B, C): 0.5 * 1.4 < 1, never clipped
    assert torch.allclose(f, f[:, :1].expand_as(f), atol=1e-5)  # one factor for all channels
    assert float(f.min()) >= 0.6 - 1e-5 and float(f.max()) <= 1.4 + 1e-5
    assert float(f[:, 0].std()) > 0.05                          # drawn per view
    assert torch.allclose(out, (x * f[:, :, None, None]).clamp(0, 1), atol=1e-5)


def test_contrast_blends_each_channel_toward_its_own_mean():
    x = _unit()
    out, _ = _run(x, jitter_p=1.0, contrast=0.4)
    m = x.mean(dim=(-2, -1))                                    # (B, C)
    f = (out[..., 0, 2] - m) / (0.5 - m)
    assert torch.allclose(f, f[:, :1].expand_as(f), atol=1e-4)
    fv = f[:, :1, None, None]
    assert torch.allclose(out, (fv * x + (1 - fv) * m[..., None, None]).clamp(0, 1), atol=1e-4)


def test_jitter_probability_and_the_ops_commute_with_per_channel_normalisation():
    x = _views(b=64)
    none, _ = _run(x, jitter_p=0.0, brightness=0.4, contrast=0.4)
    assert torch.equal(none, x)
    some, _ = _run(x, jitter_p=0.8, brightness=0.4, contrast=0.4)
    touched = (some != x).flatten(1).any(1).float().mean().item()
    assert 0.6 < touched < 0.95                                   # p 0.8 of 64 views
    full = load_config("dino").photometric
    a = torch.tensor([3.0, 0.2, 11.0]).view(1, 3, 1, 1)
    c = torch.tensor([5.0, -2.0, 0.5]).view(1, 3, 1, 1)
    for kind in (GLOBAL_1, GLOBAL_2, LOCAL):
        raw = photometric(x, torch.Generator().manual_seed(3), full, kind)
        normed = photometric(a * x + c, torch.Generator().manual_seed(3), full, kind)
        assert torch.allclose(normed, a * raw + c, atol=1e-3)


def test_horizontal_flips_only_never_flip_vertically():
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).expand(32, 1, 8, 8)
    out = resized_crops(x, 8, (1.0, 1.0), torch.Generator().manual_seed(0), flips=True,
                        rot90=False, ratio=(1.0, 1.0), vflip=False)
    same = [torch.allclose(o, x[0], atol=1e-4) for o in out]
    mirrored = [torch.allclose(o, x[0].flip(-1), atol=1e-4) for o in out]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 4 < sum(mirrored) < 28                                # p 0.5


def _method(name: str):
    over = {"model_kwargs": {"depth": 1}, "out_dim": 32, "head_hidden_dim": 16,
            "head_bottleneck_dim": 8, "local_crops": 2}
    cfg = load_config(name, over)
    info = DataInfo(channels=["a", "b", "c"], n_channels=3, shape=(3, 96, 96), classes=[],
                    n_train=64, extra={})
    torch.manual_seed(0)
    return METHODS.get(cfg.method)(cfg, info, torch.device("cpu"))


def _by_hand(m, batch, seed: int, with_ops: bool) -> list[torch.Tensor]:
    """The view pipeline written out: crops (+ flips), then the photometric ops of each kind."""
    cfg = m.cfg
    g = torch.Generator().manual_seed(seed)
    x = m.preprocess(batch["image"])
    local = m.preprocess(batch["partner"]["image"]) if m.pairs else x
    plan = [(x, cfg.data.crop, m.global_scale, GLOBAL_1), (x, cfg.data.crop, m.global_scale, GLOBAL_2)]
    plan += [(local, cfg.local_crop, m.local_scale, LOCAL)] * cfg.local_crops
    out = []
    for src, size, scale, kind in plan:
        v = resized_crops(src, size, scale, g, flips=cfg.augment.flips, rot90=cfg.augment.rot90,
                          ratio=cfg.crop_ratio, mode=cfg.view_interpolation, vflip=cfg.vertical_flip)
        out.append(photometric(v, g, cfg.photometric, kind) if with_ops else v)
    return out


@pytest.mark.parametrize("name", ["dino-tiny", "ws-dino-tiny"])
def test_dino_views_carry_the_ops_of_their_kind_and_ws_dino_draws_none(name):
    m = _method(name)
    assert m.cfg.augment.intensity == 0 and m.cfg.augment.shift == 0
    img = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 0.1
    batch = {"image": img, "partner": {"image": img.flip(-1)}}
    views, n_global = m.views(batch, torch.Generator().manual_seed(5))
    assert n_global == 2 and len(views) == 4
    with_ops = _by_hand(m, batch, 5, with_ops=True)
    bare = _by_hand(m, batch, 5, with_ops=False)
    for got, want in zip(views, with_ops):
        assert torch.equal(got, want)
    if name == "ws-dino-tiny":       # flips only (W:157-181): the bare crops, draw for draw
        assert all(torch.equal(a, b) for a, b in zip(views, bare))
    else:                            # DINO: global view 1 always blurred (M:438)
        assert not torch.equal(views[0], bare[0])


def test_bad_photometric_values_name_the_key():
    with pytest.raises(RecipeError, match=r"photometric\.blur_p=\[1\.0, 0\.5\].*three probabilities"):
        load_config("dino-tiny", {"photometric.blur_p": [1.0, 0.5]})
    with pytest.raises(RecipeError, match=r"photometric\.jitter_p=1\.5"):
        load_config("dino-tiny", {"photometric.jitter_p": 1.5})
    with pytest.raises(RecipeError, match=r"photometric\.blur_sigma"):
        load_config("dino-tiny", {"photometric.blur_sigma": [2.0, 0.1]})
