"""DeepNoise's two recipes held to tables transcribed from the authors' code, and the parts of
stage 2 (cosine restarts, EMA decay by epoch, pseudo-labels) on values worked by hand.

Source: Scu-sen/Recursion-Cellular-Image-Classification-Challenge (DN), file:line beside each.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cytodata.baselines import load_config
from cytodata.baselines.methods.mean_teacher import scheduled_decay
from cytodata.baselines.plate_groups import PlateGroups
from cytodata.baselines.pseudo_labels import balanced_labels, smooth
from cytodata.baselines.schedules import cosine_restarts_schedule, lr_schedule

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
    "scale": [0.9, 1.1],               # DN process/augmentation.py:210-214
    "pretrained": None,                # DN README: xception_large from scratch
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
