"""DeepNoise's two recipes held to tables transcribed from the authors' code, and the parts of
stage 2 (cosine restarts, EMA decay by epoch, pseudo-labels) on values worked by hand.

Source: Scu-sen/Recursion-Cellular-Image-Classification-Challenge (DN), file:line beside each.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cytodata.baselines import load_config
from cytodata.baselines.methods.mean_teacher import scheduled_decay
from cytodata.baselines.plate_groups import PlateGroups
from cytodata.baselines.predict import dihedral_views, tta_probabilities
from cytodata.baselines.pseudo_labels import balanced_accuracy, balanced_labels, smooth
from cytodata.baselines.schedules import cosine_restarts_schedule, lr_schedule
from cytodata.errors import TrainingError

STAGE1 = {
    "head": "arcface",                 # DN main.py:926
    "arcface_s": 30.0,                 # DN main.py:927
    "arcface_m": 0.1,                  # DN main.py:928
    "easy_margin": False,              # DN net/archead.py:27-40
    "mean_teacher": False,             # DN main.py:97-316 (run_pretrain: no teacher)
    "batch_size": 64,                  # DN README.md --batch_size=64
    "steps": 160 * (37319 // 64),      # DN main.py:107; process/folds/train_fold_0.csv rows
    "optim.name": "adam",              # DN main.py:208
    "optim.lr": 3e-4,                  # DN main.py:109-110
    "optim.betas": [0.9, 0.999],       # DN main.py:208
    "optim.weight_decay": 2e-4,        # DN main.py:208
    "optim.schedule": "step",          # DN main.py:108-122
    "optim.milestones": [[99 / 160, 1e-4], [139 / 160, 1e-5]],  # ep = epoch + 1 (main.py:238)
    "data.crop": 512,                  # DN main.py:933
    "data.normalize": "plate",         # DN process/data.py:54, 89-109
    "erasing": 0.5,                    # DN process/augmentation.py:220
    "scale": [1.0, 1.0],               # the scale is in the shift/scale/aspect below
    "ssr_p": 0.5,                      # DN process/augmentation.py:162 u=0.5
    "ssr_shift": 0.1, "ssr_scale": 0.1, "ssr_aspect": 0.1,  # DN process/augmentation.py:211-213
    "pretrained": None,                # DN README: xception_large from scratch
    "erasing_area": [0.02, 0.4],       # DN process/augmentation.py:220 sl, sh
    "views": "shared",                 # DN process/data.py:134-135 ('normal' only)
    "select": "val_balanced_top1",     # DN main.py:297-302 (do_valid's balance_acc, :88-93)
    "val_every": 1000,                 # DN main.py:291-294 (i % 1000 == 0)
    "val_epoch_ends": True,            # DN main.py:307-316
    "val_site": 1,                     # DN main.py:155-160, process/data.py:21 (site=1)
    "intensity_per": "image",          # DN process/data.py:102-109 (at normalisation)
    "optim.decay_norm_and_bias": True,  # DN main.py:202-206, 929 (--bias_no_decay False)
    "predict_tta": 8,                  # DN main.py:749-758
}

STAGE2 = {
    "mean_teacher": True,
    "requires_init": True,             # DN main.py:894
    "init_skip_head": True,            # DN main.py:429-430
    "predict_with": "student",         # DN main.py:563-569, 915
    "ema_schedule": [[0, 0.5], [1, 0.9], [10, 0.99], [20, 0.999]],  # DN main.py:693-700
    "consistency": 100.0,              # DN main.py:646
    "rampup_epochs": 5,                # DN main.py:647
    "pseudo_mode": "deepnoise",        # DN main.py:469-497
    "pseudo_label": 0.05,              # DN main.py:661
    "pseudo_first_epoch": 18,          # DN main.py:571 (10 * 2 * 1.0 - 1, 1-based)
    "pseudo_warmup_epochs": 19,        # DN main.py:658
    "pseudo_views": 4,                 # DN main.py:576, 595
    "pseudo_smoothing": 0.9,           # DN main.py:594
    "pseudo_balance_iterations": 500,  # DN main.py:572, 591
    "steps": (4 * 40 + 5) * 96,        # DN main.py:505-520; U2OS wells / 64
    "epoch_steps": 96,
    "optim.name": "sgd",               # DN main.py:503
    "optim.lr": 0.1,                   # DN main.py:502
    "optim.momentum": 0.0,             # DN main.py:503 (SGD default)
    "optim.weight_decay": 2e-4,        # DN main.py:503
    "optim.schedule": "cosine_restarts",  # DN main.py:508-514
    "optim.cycles": 4,                 # DN main.py:506
    "optim.min_lr": 1e-3,              # DN main.py:514
    "optim.tail": [5 / 165, 1e-4],     # DN main.py:516-517
    "arcface_s": 30.0, "arcface_m": 0.1, "head": "arcface",
    "data.crop": 512, "data.normalize": "plate",
    "erasing": 0.5, "erasing_area": [0.02, 0.4],  # DN process/augmentation.py:220
    "views": "deepnoise",              # DN main.py:641-643
    "hard_crop": [0.8, 0.99],          # DN process/augmentation.py:225
    "scale": [1.0, 1.0], "ssr_p": 0.5,  # DN process/augmentation.py:162, 210-214
    "ssr_shift": 0.1, "ssr_scale": 0.1, "ssr_aspect": 0.1,
    "select": "val_balanced_top1",     # DN main.py:563-569
    "val_every": 96,                   # DN main.py:549-555: do_valid once per epoch
    "val_epoch_ends": False,
    "select_skip_restarts": True,      # DN main.py:557, 563, 580 (epoch > 0)
    "val_site": 1,                     # DN main.py:381-394, process/data.py:21
    "student_passes": 2,               # DN main.py:641-642
    "intensity_per": "image",          # DN process/data.py:102-109, 119-132
    "optim.decay_norm_and_bias": True,  # DN main.py:442-446, 929
    "predict_tta": 8,                  # DN main.py:749-758
}


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("name,table", [("deepnoise-stage1", STAGE1),
                                        ("deepnoise-stage2", STAGE2)])
def test_recipe_values_match_the_authors_code(name, table):
    cfg = load_config(name)
    for key, want in table.items():
        got = _get(cfg, key)
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-4), key
        elif isinstance(want, list) and want and not isinstance(want[0], str):
            assert np.allclose(np.array(got, float), np.array(want, float), rtol=1e-4), key
        else:
            assert got == want, key
    assert "paper's recipe" in cfg.description
    # the shipped own recipe stays the project's (its soft pseudo-labels, Adam, no stages)
    own = load_config("mean-teacher")
    assert own.pseudo_mode == "soft" and not own.requires_init
    assert not own.optim.decay_norm_and_bias and own.views == "shared" and own.select is None
    assert cfg.kind == "paper" and own.kind == "ours"      # `cytodata train --list` tells them apart


@pytest.mark.parametrize("name,groups", [("deepnoise-stage1", 1), ("deepnoise-stage2", 1),
                                         ("mean-teacher", 2), ("mean-teacher-tiny", 2)])
def test_weight_decay_reaches_biases_and_norms_only_in_the_deepnoise_recipes(name, groups):
    # DN main.py:206, 208, 446, 503: torch.optim over net.parameters() with weight_decay 2e-4
    from cytodata.baselines.engine import Engine
    from cytodata.baselines.methods.base import Method

    cfg = load_config(name)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    opt = Engine(cfg, "unused")._optimizer(net, Method(cfg, None, torch.device("cpu")))
    assert len(opt.param_groups) == groups
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    everything = {id(p) for p in net.parameters()}
    weights = {id(net[0].weight), id(net[3].weight)}
    assert decayed == (everything if groups == 1 else weights)
    assert all(g["weight_decay"] == pytest.approx(cfg.optim.weight_decay)
               for g in opt.param_groups if g["weight_decay"] > 0)


def test_balanced_validation_accuracy_is_the_authors_column_softmax_in_the_group():
    # DN main.py:88-93 -> ensemble.py:206-248 with iters=0: per plate, the group's columns,
    # exp(logit) normalised over the plate's rows (softmax_np, axis 0), argmax per row
    groups = PlateGroups([["a", "b"], ["c", "d"]])
    logits = np.array([[5.0, 4.0, 0.0, 0.0],     # row argmax a
                       [4.0, 1.0, 0.0, 0.0],     # row argmax a; column-wise: b is its own
                       [0.0, 0.0, 3.0, 9.0],
                       [0.0, 0.0, 1.0, 2.0]])
    plates, classes = ["P1", "P1", "P2", "P2"], ["a", "b", "c", "d"]
    # column softmax on P1: a: e5/(e5+e4) = .73 / .27, b: e4/(e4+e1) = .95 / .05 -> rows b, a
    # P2: c: e3/(e3+e1) = .88 / .12, d: e9/(e9+e2) ~ 1 / 0 -> rows d, c
    assert balanced_accuracy(logits, np.array([1, 0, 3, 2]), plates, classes, groups) == 1.0
    # the row-wise argmax (a, a, d, d) would be right on only two of these rows
    assert balanced_accuracy(logits, logits.argmax(1), plates, classes, groups) == 0.5
    labels, _ = balanced_labels(logits, plates, classes, groups, iterations=0)
    assert labels.tolist() == [1, 0, 3, 2]


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 3, 3), torch.nn.Flatten(),
                               torch.nn.LazyLinear(5)).eval()


def test_eight_test_time_views_are_the_dihedral_group_and_leave_a_symmetric_image_alone():
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    views = dihedral_views(x, 8)
    flat = {tuple(v.flatten().tolist()) for v in views}
    assert len(flat) == 8                                   # 8 distinct views ...
    for v in views:                                         # ... closed under the operations
        assert all(tuple(w.flatten().tolist()) in flat for w in dihedral_views(v, 8))
    # DN main.py:751-758: [hflip, vflip, rot90] in this order
    assert torch.equal(views[1], torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(views[7], torch.rot90(x.flip(-1).flip(-2), 1, dims=(-2, -1)))
    # an image invariant under flips and transposition: 8-view TTA = the single view
    sym = sum(dihedral_views(x, 8)) / 8
    net = _tiny_net()
    with torch.no_grad():
        one = tta_probabilities(net, sym, 1)
        assert torch.allclose(tta_probabilities(net, sym, 8), one, atol=1e-6)
        assert torch.allclose(one, torch.softmax(net(sym), 1), atol=1e-6)
    with pytest.raises(TrainingError, match=r"--tta 3: valid view counts are 1, 2, 4, 8"):
        dihedral_views(x, 3)


def test_test_time_views_average_logits_then_softmax_as_the_authors():
    # DN main.py:805-818: the 8 views' logits averaged (np.mean over views), not probabilities
    x = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    net = _tiny_net()
    with torch.no_grad():
        logits = torch.stack([net(v) * 4 for v in dihedral_views(x, 8)])
        got = tta_probabilities(lambda v: net(v) * 4, x, 8)
    assert torch.allclose(got, torch.softmax(logits.mean(0), 1), atol=1e-6)
    assert not torch.allclose(got, torch.softmax(logits, 2).mean(0), atol=1e-4)


def test_group_prior_without_training_plates_in_the_run_is_refused_with_the_fix():
    from cytodata.baselines.predict import training_groups

    with pytest.raises(TrainingError, match=r"names no data.train.*--train-plates SHARDS"):
        training_groups(load_config("deepnoise-stage2-tiny"))


def test_stage1_step_schedule_changes_lr_at_the_authors_epochs():
    cfg = load_config("deepnoise-stage1", {"steps": 160})      # one step per epoch
    lrs = lr_schedule(cfg.optim, 160, 64)
    assert lrs[98] == pytest.approx(3e-4) and lrs[99] == pytest.approx(1e-4)
    assert lrs[138] == pytest.approx(1e-4) and lrs[139] == pytest.approx(1e-5)


def test_cosine_restarts_as_the_authors_per_epoch_sgdr():
    # DN loss/cyclic_lr.py:51-83 stepped once per epoch (main.py:544) from current_epoch 0:
    # epochs t = 1..T of each cycle take eta_min + (lr - eta_min)(1 + cos(pi t / T)) / 2
    T, lr, lo = 40, 0.1, 1e-3
    got = cosine_restarts_schedule(lr, lo, 4 * T + 5, 4, 5, 1e-4)
    want = [lo + (lr - lo) * (1 + math.cos(math.pi * t / T)) / 2 for t in range(1, T + 1)]
    for c in range(4):
        assert np.allclose(got[c * T:(c + 1) * T], want)
    assert np.allclose(got[4 * T:], 1e-4) and len(got) == 165


def test_ema_decay_by_epoch():
    # DN main.py:693-700: epoch_all (1-based) <= 1: 0.5; <= 10: 0.9; <= 20: 0.99; then 0.999
    sched = [[0, 0.5], [1, 0.9], [10, 0.99], [20, 0.999]]
    at = [scheduled_decay(e * 1000 + 500, 1000, sched, 0.999) for e in range(25)]
    assert at[0] == 0.5 and set(at[1:10]) == {0.9} and set(at[10:20]) == {0.99}
    assert set(at[20:]) == {0.999}
    assert scheduled_decay(0, 10, sched, 0.999) == 0.5        # warm-up cap 1 - 1/2


def test_pseudo_labels_smoothed_restricted_and_balanced_by_hand():
    # two groups {a, b} and {c, d}; plate P1's two wells favour c twice: restricted to the
    # group and balanced, the labels are c and d (as DN main.py:495-496, ensemble.py:206-248)
    groups = PlateGroups([["a", "b"], ["c", "d"]])
    logits = np.log(np.array([[0.01, 0.01, 0.90, 0.08],
                              [0.01, 0.01, 0.60, 0.38],
                              [0.70, 0.28, 0.01, 0.01],
                              [0.40, 0.58, 0.01, 0.01]]))
    labels, chosen = balanced_labels(logits, ["P1", "P1", "P2", "P2"], ["a", "b", "c", "d"],
                                     groups, iterations=100)
    assert chosen == {"P1": 1, "P2": 0}
    assert labels.tolist() == [2, 3, 0, 1]
    old, new = np.ones((2, 2)), np.zeros((2, 2))
    assert np.allclose(smooth(old, new, 0.9), 0.1) and np.allclose(smooth(None, new, 0.9), 0)


def test_the_three_views_normal_erases_easy_does_not_hard_crops_and_resizes():
    # DN process/augmentation.py:193-229: easy = flips/rot90/shift-scale; normal = easy +
    # random erasing (p 0.5, area 0.02-0.4); hard = normal + a random 0.8-0.99 crop resized back
    from cytodata.baselines.data import DataInfo
    from cytodata.baselines.methods.mean_teacher import MeanTeacher

    cfg = load_config("deepnoise-stage2-tiny", {
        "erasing": 1.0, "ssr_p": 0.0, "data.crop": 16, "augment.flips": False,
        "augment.rot90": False, "augment.intensity": 0.0, "augment.shift": 0.0})
    assert cfg.views == "deepnoise" and cfg.erasing_area == [0.02, 0.4]
    info = DataInfo(channels=["a"], n_channels=1, shape=None, classes=["x", "y"], n_train=0)
    method = MeanTeacher(cfg, info, torch.device("cpu"))
    x = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0)) + 1.0
    g = torch.Generator().manual_seed(1)
    normal = method._view([x], g)
    easy = method._view([x], g, erase=False)
    hard = method._view([x], g, hard=True)
    erased = (normal == 0).flatten(1).float().mean(1)
    assert (erased > 0).all() and (erased <= 0.4 + 0.05).all()     # one rectangle per image
    assert torch.equal(easy, x)                                    # nothing but the geometry
    assert hard.shape == x.shape and not torch.equal(hard == 0, normal == 0)   # cropped, resized


def test_shift_scale_aspect_translates_by_whole_pixels_zooms_about_the_centre_and_can_be_off():
    # DN process/augmentation.py:157-190 at rotation 0: dst = sx (p - c) + c + d, borders 0
    from cytodata.baselines.methods.mean_teacher import shift_scale_aspect

    x = torch.rand(8, 1, 20, 20, generator=torch.Generator().manual_seed(3)) + 1.0
    g = torch.Generator().manual_seed(4)
    assert torch.equal(shift_scale_aspect(x, g, 0.0, 0.1, 0.1, 0.1), x)
    moved = shift_scale_aspect(x, g, 1.0, 0.1, 0.0, 0.0)        # shifts only, up to 2 px
    for img, out in zip(x, moved, strict=True):
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                want = torch.zeros_like(img)
                ys, xs = slice(max(dy, 0), 20 + min(dy, 0)), slice(max(dx, 0), 20 + min(dx, 0))
                src_y, src_x = slice(max(-dy, 0), 20 + min(-dy, 0)), slice(max(-dx, 0), 20 + min(-dx, 0))
                want[:, ys, xs] = img[:, src_y, src_x]
                found |= torch.allclose(out, want, atol=1e-5)
        assert found
    # a zoom > 1 about the centre pushes a centred square outwards
    sq = torch.zeros(1, 1, 20, 20)
    sq[..., 6:14, 6:14] = 1.0
    zoomed = shift_scale_aspect(sq.repeat(64, 1, 1, 1), g, 1.0, 0.0, 0.1, 0.1)
    mass = zoomed.flatten(1).sum(1) / 64.0
    # area x s^2, s = scale x sqrt(aspect) in [0.9 x 0.949, 1.1 x 1.049] (bilinear edges: 0.05)
    assert (0.854**2 - 0.05) < mass.min() and mass.max() < (1.154**2 + 0.05) and mass.std() > 0.03


def _method(overrides: dict, classes=("x", "y"), config="deepnoise-stage2-tiny"):
    from cytodata.baselines.data import DataInfo
    from cytodata.baselines.methods.mean_teacher import MeanTeacher

    cfg = load_config(config, overrides)
    info = DataInfo(channels=["a"], n_channels=1, shape=None, classes=list(classes), n_train=0)
    return MeanTeacher(cfg, info, torch.device("cpu"))


def test_hard_crop_ratio_is_drawn_per_image_and_matches_the_crop_and_resize_loop():
    # DN process/augmentation.py:83-97, 225-226: ratio = U(0.8, 0.99) per image, window of
    # int(side x ratio) at a random corner, cv2.resize back (half-pixel centres)
    from cytodata.baselines.methods.mean_teacher import hard_crops

    b, side = 8, 20
    x = torch.rand(b, 2, side, side, generator=torch.Generator().manual_seed(0))
    got = hard_crops(x, (0.8, 0.99), torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)       # the same draws, one image at a time
    r = 0.8 + 0.19 * torch.rand(b, generator=g, dtype=torch.float64)
    s = (side * r).floor().long()
    oy = (torch.rand(b, generator=g, dtype=torch.float64) * (side - s + 1)).floor().long()
    ox = (torch.rand(b, generator=g, dtype=torch.float64) * (side - s + 1)).floor().long()
    for i in range(b):
        win = x[i:i + 1, :, oy[i]:oy[i] + s[i], ox[i]:ox[i] + s[i]]
        want = F.interpolate(win, size=(side, side), mode="bilinear", align_corners=False)
        assert torch.allclose(got[i:i + 1], want, atol=1e-5), i
    assert len(set(s.tolist())) > 1          # two images of one batch: different ratios
    # a horizontal ramp: each output row runs from the window's first to its last pixel
    ramp = torch.arange(side, dtype=torch.float32).expand(b, 1, side, side).contiguous()
    out = hard_crops(ramp, (0.8, 0.99), torch.Generator().manual_seed(1))
    windows = out[..., -1] - out[..., 0] + 1
    assert windows.min() >= 16 - 1e-4 and windows.max() <= 19 + 1e-4 and windows.std() > 0


@pytest.mark.parametrize("per", ["image", "view"])
def test_intensity_jitter_once_per_image_is_shared_by_the_three_views(per):
    # DN process/data.py:102-109: mean/std x (1 + U(-0.1, 0.1)) per channel in __getitem__,
    # before aug_image makes the 'normal', 'easy' and 'hard' views (:119-132)
    method = _method({"intensity_per": per, "erasing": 0.0, "ssr_p": 0.0, "data.crop": 16,
                      "augment.flips": False, "augment.rot90": False})
    x = torch.ones(4, 3, 16, 16)
    g = torch.Generator().manual_seed(2)
    parts = method._jitter_images([x], g)
    normal, easy = method._view(parts, g), method._view(parts, g, erase=False)
    hard = method._view(parts, g, hard=True)
    level = normal.mean((2, 3))                               # a constant image stays constant
    assert not torch.allclose(level[0], level[1])             # each image its own draw
    assert not torch.allclose(level, torch.ones_like(level))
    shared = torch.allclose(normal, easy) and torch.allclose(hard.mean((2, 3)), level)
    assert shared == (per == "image")


@pytest.mark.parametrize("passes", [1, 2])
def test_student_sees_normal_and_easy_views_in_one_or_two_passes(passes):
    # DN main.py:641-642: net(input[indexs_supervised], truth) then net(input_easy): two passes,
    # so each view has its own BatchNorm batch statistics
    method = _method({"student_passes": passes, "data.crop": 16, "pseudo_mode": "soft"})
    calls = []
    method.students.members[0].backbone.register_forward_hook(
        lambda m, i, o: calls.append(len(i[0])))
    batch = {"image": torch.rand(6, 1, 16, 16), "label": torch.tensor([0, 1, -1, 0, 1, -1]),
             "meta": {}}
    loss, logs = method.loss(method.students, batch, 0, torch.Generator().manual_seed(0))
    assert calls == ([4 + 6] if passes == 1 else [4, 6])      # labelled 'normal' + all 'easy'
    assert torch.isfinite(loss) and "consistency_0" in logs and "cls_0" in logs
    loss.backward()


def test_validation_on_site_1_only_and_a_missing_site_column_named():
    # DN main.py:155-160, 381-394: the valid_loader reads site 1 (process/data.py:21)
    def batches(meta):
        return [{"image": torch.rand(4, 1, 16, 16), "label": torch.tensor([0, 1, 0, -1]),
                 "meta": meta}]

    meta = {"plate": ["P1"] * 4, "site": [1, 2, "1", 1]}
    prep = lambda img, meta: img   # noqa: E731
    one = _method({"val_site": 1, "data.crop": 16})
    assert one.validate(batches(meta), prep)["val_samples"] == 2   # labelled rows of site 1
    assert _method({"data.crop": 16}).validate(batches(meta), prep)["val_samples"] == 3
    with pytest.raises(TrainingError, match=r"val_site=1: the validation rows have no 'site' "
                                            r"column.*--set val_site=null"):
        one.validate(batches({"plate": ["P1"] * 4}), prep)
    with pytest.raises(TrainingError, match=r"val_site=2: no labelled validation row"):
        _method({"val_site": 2, "data.crop": 16}).validate(
            batches({"plate": ["P1"] * 4, "site": [1, 1, 1, 2]}), prep)


def test_stage2_cycle_ends_are_the_authors_skipped_validations():
    # DN main.py:526-537, 549-580: 4 cycles of 40 epochs + 5 at 1e-4; the validation opening
    # each cycle (epoch == 0) is skipped, and the run returns before validating the tail's end
    from cytodata.baselines.schedules import cycle_ends

    cfg = load_config("deepnoise-stage2")
    assert cycle_ends(cfg.optim, cfg.steps) == {e * cfg.epoch_steps for e in (40, 80, 120, 160, 165)}
    assert cfg.steps % cfg.val_every == 0 and cfg.val_every == cfg.epoch_steps
    assert cycle_ends(load_config("deepnoise-stage1").optim, 100) == set()
    # a skipped validation schedules no pseudo-label refresh; a counted one does
    method = _method({})
    method._pl_label = {"k": 0}
    method.after_validation({"val_teacher_group_top1": 0.5}, counts=False)
    assert method._pl_best == -1.0 and not method._pl_due
    method.after_validation({"val_teacher_group_top1": 0.5}, counts=True)
    assert method._pl_best == 0.5 and method._pl_due
