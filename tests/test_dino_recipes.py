"""The DINO recipes named after papers hold the values of the authors' code (tables transcribed
from crosszamirski/WS-DINO and facebookresearch/dino), the project's own configs say so, views
keep cells at embed's scale, per-channel models train as separate models, DINO checkpoints
load from local files, and a collapsed run says so in its summary.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cytodata.baselines import load_config, train
from cytodata.baselines.config import CONFIG_DIR
from cytodata.baselines.data import DataInfo
from cytodata.baselines.methods import METHODS
from cytodata.baselines.methods.dino import DinoModels
from cytodata.baselines.methods.dino.method import preprocess
from cytodata.baselines.methods.dino.views import cell_zoom
from cytodata.errors import RecipeError, TrainingError

# ----------------------------------------------------------------------------- source tables
#: crosszamirski/WS-DINO, transcribed: key -> (value, where). W = WS-DINO_BBBC021.py,
#: E = Eval_BBBC021.py, P = preprocessing/BBBC021_IlluminationApply.cppipe, V = vision_transformer.py
WS_DINO_CODE = {
    "model": ("vit_small_patch8_224", "W:44 vit_small, W:49 patch 8"),
    "drop_path_rate": (0.1, "W:104"),
    "weak_label": ("compound", "W:129 Unique_Compounds"),
    "per_channel": (True, "W:4, W:155 one channel per run"),
    "out_dim": (65536, "W:54"),
    "head_hidden_dim": (2048, "V:250"),
    "head_bottleneck_dim": (256, "V:250"),
    "head_layers": (3, "V:250"),
    "norm_last_layer": (False, "W:56"),
    "freeze_last_layer": (1.0, "W:92"),
    "student_temp": (0.07, "W:464"),
    "teacher_temp": (0.04, "W:70"),
    "warmup_teacher_temp": (0.04, "W:67"),
    "warmup_teacher_temp_epochs": (10, "W:73"),
    "center_momentum": (0.8, "W:465"),
    "momentum_teacher": (0.99, "W:60"),
    "local_crops": (8, "W:111"),
    "local_crop": (96, "W:179"),
    "global_scale": ([0.1, 0.2], "W:161, W:169"),
    "local_scale": ([0.04, 0.08], "W:179"),
    "crop_ratio": ([1.0, 1.0], "W:161, W:169, W:179"),
    "view_interpolation": ("bicubic", "W:161 cv2.INTER_CUBIC"),
    "prescale": (0.5, "P:47"),
    "intensity_clip": (10000, "W:195, W:160"),
    "warmup_epochs": (10, "W:98"),
    "embed_crop": (224, "E:353, E:357"),
    "embed_boxes": ([[64, 32, 320, 256], [320, 32, 544, 256], [64, 256, 320, 480],
                     [320, 256, 544, 480]], "E:351-357 Crop(x_min, y_min, x_max, y_max)"),
    "pair_sampling": ("weighted", "W:132-147, W:245 WeightedRandomSampler; W:217 random.choice"),
    "batch_size": (16, "W:89"),
    "precision": ("fp32", "W:77"),
    "steps": (400 * (2528 // 16), "W:91 400 epochs of BBBC021_annotated.csv"),
    "data.crop": (224, "W:161"),
    "data.normalize": ("none", "W:160, W:195"),
    "augment.flips": (True, "W:158-159"),
    "vertical_flip": (True, "W:159, W:167, W:177"),
    "photometric.jitter_p": (0.0, "W:157-181 no ColorJitter"),
    "photometric.brightness": (0.0, "W:157-181"),
    "photometric.contrast": (0.0, "W:157-181"),
    "photometric.blur_p": ([0.0, 0.0, 0.0], "W:157-181 no GaussianBlur"),
    "photometric.solarize_p": ([0.0, 0.0, 0.0], "W:157-181 no Solarization"),
    "augment.rot90": (False, "W:157-161"),
    "augment.intensity": (0.0, "W:157-161"),
    "augment.shift": (0.0, "W:157-161"),
    "optim.name": ("adamw", "W:102"),
    "optim.lr": (4e-6, "W:95"),
    "optim.scale_lr_by_batch": (False, "W:338"),
    "optim.min_lr": (3e-6, "W:100"),
    "optim.weight_decay": (0.0, "W:81"),
    "optim.weight_decay_end": (0.0, "W:83"),
    "optim.clip_grad": (None, "W:86"),
}

#: facebookresearch/dino: M = main_dino.py, U = utils.py, V = vision_transformer.py, R = README.md
DINO_CODE = {
    "model": ("vit_small_patch8_224", "M:45, R:36-45 ViT-S/8"),
    "drop_path_rate": (0.1, "M:105"),
    "per_channel": (False, "one model"),
    "out_dim": (65536, "M:55"),
    "head_hidden_dim": (2048, "V:258"),
    "head_bottleneck_dim": (256, "V:258"),
    "head_layers": (3, "V:258"),
    "norm_last_layer": (True, "M:57"),
    "freeze_last_layer": (1.0, "M:93"),
    "student_temp": (0.1, "M:365"),
    "teacher_temp": (0.04, "M:71"),
    "warmup_teacher_temp": (0.04, "M:68"),
    "warmup_teacher_temp_epochs": (0, "M:74"),
    "center_momentum": (0.9, "M:366"),
    "momentum_teacher": (0.996, "M:61"),
    "local_crops": (8, "M:112 (the ViT-S/8 release's args.txt is not in the repository)"),
    "local_crop": (96, "M:452"),
    "crop_ratio": ([0.75, 4 / 3], "M:436"),
    "view_interpolation": ("bicubic", "M:436"),
    "warmup_epochs": (10, "M:99"),
    "batch_size": (64, "M:90"),
    "data.crop": (224, "M:436"),
    "augment.flips": (True, "M:422"),
    "vertical_flip": (False, "M:422 RandomHorizontalFlip only"),
    "augment.rot90": (False, "M:421-428"),
    "augment.intensity": (0.0, "M:424 brightness is photometric.brightness"),
    "photometric.jitter_p": (0.8, "M:425"),
    "photometric.brightness": (0.4, "M:424"),
    "photometric.contrast": (0.4, "M:424"),
    "photometric.blur_p": ([1.0, 0.1, 0.5], "M:438, M:445, M:454"),
    "photometric.blur_sigma": ([0.1, 2.0], "U:40"),
    "photometric.solarize_p": ([0.0, 0.2, 0.0], "M:446"),
    "optim.name": ("adamw", "M:103"),
    "optim.lr": (5e-4, "M:96"),
    "optim.scale_lr_by_batch": (True, "M:239"),
    "optim.min_lr": (1e-6, "M:101"),
    "optim.weight_decay": (0.04, "M:82"),
    "optim.weight_decay_end": (0.4, "M:84"),
    "optim.clip_grad": (3.0, "M:87"),
    "optim.clip_mode": ("per_tensor", "M:332, U:132-141"),
}

#: the tiny recipes shrink the model, the views and the run; nothing else
TINY_SIZES = {"model", "out_dim", "head_hidden_dim", "head_bottleneck_dim", "local_crop",
              "embed_crop", "embed_boxes", "steps", "batch_size", "data.crop", "precision"}


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize(("name", "table"), [("ws-dino", WS_DINO_CODE), ("dino", DINO_CODE),
                                              ("ws-dino-tiny", WS_DINO_CODE),
                                              ("dino-tiny", DINO_CODE)])
def test_recipe_holds_the_authors_values(name, table):
    cfg = load_config(name)
    tiny = name.endswith("-tiny")
    for key, (value, where) in table.items():
        if tiny and key in TINY_SIZES:
            continue
        got = _get(cfg, key)
        if isinstance(value, list) and not isinstance(value[0], list):
            assert got == pytest.approx(value), f"{name} {key}: {got} != {value} ({where})"
        else:
            assert got == value, f"{name} {key}: {got!r} != {value!r} ({where})"
    if not tiny:   # every transcribed top-level value carries its source on its line
        text = (CONFIG_DIR / f"{name}.yaml").read_text()
        for key in table:
            leaf = key.split(".")[-1]
            if "." in key and key.split(".")[0] == "augment":
                continue
            line = next(x for x in text.splitlines() if re.match(rf"\s*{leaf}:", x))
            assert re.search(r"# .*([WEPVMUR]:\d+|release|one model|own)", line), line


def test_dino_changes_only_the_view_geometry():
    cfg = load_config("dino")
    assert cfg.global_scale is None and cfg.local_scale is None   # derived: native resolution
    assert cfg.prescale == 1.0 and cfg.intensity_clip is None


def test_project_configs_are_described_as_ours():
    for name in ("dino-cells", "ws-dino-cells", "dino-cells-tiny", "ws-dino-cells-tiny",
                 "dino-cells-demo", "ws-dino-cells-demo"):
        cfg = load_config(name)
        assert cfg.description.startswith("ours:") and cfg.kind == "ours", name
        assert cfg.global_scale is None and cfg.local_scale is None, name
    for name in ("dino", "ws-dino", "dino-tiny", "ws-dino-tiny"):
        cfg = load_config(name)
        assert not cfg.description.startswith("ours") and cfg.kind == "paper", name


# ----------------------------------------------------------------------------- geometry
def _method(name: str, shape=(3, 1024, 1280), **over):
    small = {"model": "test_vit", "patch_size": 8, "model_kwargs": {"depth": 1}, "out_dim": 64,
             "head_hidden_dim": 32, "head_bottleneck_dim": 16, "pretrained": None}
    cfg = load_config(name, {**small, **over})
    info = DataInfo(channels=[f"c{i}" for i in range(shape[0])], n_channels=shape[0], shape=shape,
                    classes=[], n_train=64, extra={})
    return METHODS.get(cfg.method)(cfg, info, torch.device("cpu"))


def _zooms(m) -> tuple[float, float, float]:
    """Mean cell scale (output px per raw px) of global views, local views and embed's crops."""
    cfg = m.cfg
    h, w = m.view_shape()
    g = cell_zoom(cfg.data.crop, h, w, m.global_scale, cfg.crop_ratio) * cfg.prescale
    lo = cell_zoom(cfg.local_crop, h, w, m.local_scale, cfg.crop_ratio) * cfg.prescale
    return g, lo, cfg.prescale        # embed: crops without resampling after the prescale


@pytest.mark.parametrize("name", ["dino", "dino-cells", "ws-dino-cells"])
def test_native_views_keep_cells_at_embeds_scale_on_a_1024x1280_field(name):
    g, lo, emb = _zooms(_method(name))
    for zoom in (g, lo):
        assert 1 / 1.25 <= zoom / emb <= 1.25, (name, g, lo, emb)


def test_ws_dino_geometry_implies_the_documented_cell_scales():
    """The authors' views of 0.5x fields: global ~0.52x, local ~0.35x of raw pixels; embed 0.5x."""
    g, lo, emb = _zooms(_method("ws-dino"))
    assert g == pytest.approx(0.52, abs=0.01) and lo == pytest.approx(0.35, abs=0.01)
    assert emb == 0.5 and g / emb == pytest.approx(1.04, abs=0.02)
    assert lo / emb == pytest.approx(0.70, abs=0.02)
    assert _method("ws-dino").embed_crop() == 448   # 224 px of the 0.5x field


#: Eval_BBBC021.py:351-357, albumentations Crop(x_min, y_min, x_max, y_max) on the 0.5x field
E_BOXES = [(64, 32, 320, 256), (320, 32, 544, 256), (64, 256, 320, 480), (320, 256, 544, 480)]


def test_ws_dino_embeds_the_authors_four_crop_boxes():
    """ws-dino's crops view takes E's boxes (two 224x256, two 224x224) of the 0.5x field; the
    other recipes keep four centre squares."""
    from cytodata.baselines.embedding import box_views, center_views

    m = _method("ws-dino")
    boxes = m.embed_boxes()
    assert [tuple(v // 2 for v in b) for b in boxes] == E_BOXES      # stored px = 2 x prescaled
    field = torch.arange(1024 * 1280, dtype=torch.float32).reshape(1, 1, 1024, 1280) / 2**21
    views = box_views(field, boxes)
    shown = [m.preprocess(v).shape[-2:] for v in views]           # the model's input sizes
    assert shown == [(224, 256), (224, 224), (224, 256), (224, 224)]
    for v, (x0, y0, x1, y1) in zip(views, E_BOXES, strict=True):
        assert torch.equal(v, field[..., 2 * y0: 2 * y1, 2 * x0: 2 * x1])
    # the prescaled crop equals E's box of the prescaled field away from the box's border
    half = m.preprocess(field)
    inner = m.preprocess(views[0])[..., 4:-4, 4:-4]
    assert torch.allclose(inner, half[..., 32 + 4: 256 - 4, 64 + 4: 320 - 4], atol=1e-5)
    assert _method("dino").embed_boxes() is None                  # centre crops elsewhere
    assert _method("ws-dino-cells").embed_boxes() is None
    assert len(center_views(field, 448)) == 4
    with pytest.raises(TrainingError, match=r"does not fit 512x640 images"):
        box_views(field[..., :512, :640], boxes)
    with pytest.raises(RecipeError, match=r"embed_boxes: \[64, 32, 20, 256\]"):
        load_config("ws-dino", {"embed_boxes": [[64, 32, 20, 256]]})


def test_ws_dino_tiny_embeds_the_authors_centre_squares_at_its_scale():
    """E's boxes are the 2 x 2 squares of the global-view side around the 512 x 640 field's
    centre, the left two widened to 256; ws-dino-tiny's four centre crops are those squares at
    its scale (global view 24 px after the halving) on its square fields."""
    from cytodata.baselines.embedding import center_views

    h, w, side = 512, 640, 224
    squares = sorted((w // 2 - side + dx, h // 2 - side + dy, w // 2 + dx, h // 2 + dy)
                     for dx in (0, side) for dy in (0, side))
    unwidened = sorted((max(x0, x1 - side), y0, x1, y1) for x0, y0, x1, y1 in E_BOXES)
    assert unwidened == squares and sorted(b[2] - b[0] for b in E_BOXES) == [224, 224, 256, 256]
    cfg = load_config("ws-dino-tiny")
    assert cfg.embed_boxes is None and cfg.embed_crop == cfg.data.crop == 24
    crop = round(cfg.embed_crop / cfg.prescale)                      # 48 stored px
    field = torch.arange(128 * 128, dtype=torch.float32).reshape(1, 1, 128, 128)
    views = center_views(field, crop)
    expected = [field[..., 64 - crop + dy: 64 + dy, 64 - crop + dx: 64 + dx]
                for dy in (0, crop) for dx in (0, crop)]
    assert len(views) == 4 and all(torch.equal(a, b) for a, b in zip(views, expected, strict=True))


def test_weighted_pairs_draw_as_the_authors_sampler():
    """W:132-147 weights 1/count with replacement (each group equally likely, rows uniform
    inside it); W:217 the partner is any row of the group, the anchor itself included."""
    from cytodata.baselines.methods.dino.sampling import WeightedWeakLabelPairs

    sizes = {"a": 2, "b": 6, "c": 12}
    labels = [k for k, n in sizes.items() for _ in range(n)] + [None]
    index = pd.DataFrame({"key": [f"k{i}" for i in range(len(labels))],
                          "compound": pd.array(labels, dtype="string"),
                          "shard": ["s0"] * 10 + ["s1"] * 11})
    sampler = WeightedWeakLabelPairs("compound")
    epochs = [sampler.order(index, seed=1, epoch=e) for e in range(300)]
    assert all(o.shape == (20, 2) for o in epochs)                 # num_samples = labelled rows
    allp = np.concatenate(epochs)
    lab = index["compound"].to_numpy(dtype=object)
    assert (lab[allp[:, 0]] == lab[allp[:, 1]]).all() and 20 not in allp   # NA row never drawn
    n = len(allp)
    row_freq = np.bincount(allp[:, 0], minlength=21)[:20] / n
    w = np.array([1 / sizes[x] for x in labels[:20]])              # W:139, W:147 weighty
    expected = w / w.sum()
    sd = np.sqrt(expected * (1 - expected) / n)
    assert (np.abs(row_freq - expected) < 5 * sd).all()
    group = pd.Series(lab[allp[:, 0]]).value_counts(normalize=True)
    assert np.allclose(group.sort_index().to_numpy(), 1 / 3, atol=0.03)
    self_rate = (allp[:, 0] == allp[:, 1]).mean()
    want = np.mean([1 / sizes[x] for x in lab[allp[:, 0]]])        # E[1 / group size]
    assert abs(self_rate - want) < 0.03 and self_rate > 0.1
    assert sampler.self_pairs == int((epochs[-1][:, 0] == epochs[-1][:, 1]).sum())
    assert any(len(np.unique(o[:, 0])) < len(o) for o in epochs)   # with replacement
    assert np.array_equal(epochs[7], sampler.order(index, seed=1, epoch=7))     # resumable
    assert not np.array_equal(epochs[7], sampler.order(index, seed=2, epoch=7))
    cells = METHODS.get("ws-dino").make_sampler(load_config("ws-dino-cells"))
    assert type(cells).__name__ == "BalancedWeakLabelPairs"
    assert type(METHODS.get("ws-dino").make_sampler(load_config("ws-dino-tiny"))) is WeightedWeakLabelPairs
    with pytest.raises(RecipeError, match=r"pair_sampling='uniform'; valid: balanced, weighted"):
        load_config("ws-dino", {"pair_sampling": "uniform"})


def test_explicit_far_geometry_warns_and_impossible_geometry_is_an_error():
    with pytest.warns(RuntimeWarning, match="global_scale=.*scales cells by"):
        _method("dino-cells", global_scale=[0.4, 1.0])
    with pytest.raises(TrainingError, match=r"data.crop \(global crop\)=224 is larger than the "
                                            r"training images \(128x160\); lower it to at most 128"):
        _method("dino-cells", shape=(3, 128, 160))
    with pytest.raises(TrainingError, match=r"larger than the training images \(256x320 after "
                                            r"prescale=0.5\)"):
        _method("ws-dino", shape=(1 * 3, 512, 640), **{"data.crop": 384})
    with pytest.raises(TrainingError, match=r"local_crop=96 is larger than the training images "
                                            r"\(64x80\); lower it to at most 64"):
        _method("dino-cells", shape=(3, 64, 80), **{"data.crop": 32})


def test_per_channel_with_one_channel_and_clip_with_normalisation_are_errors():
    with pytest.raises(TrainingError, match=r"one channel \(c0\).*per_channel=false"):
        _method("ws-dino", shape=(1, 1024, 1280))
    with pytest.raises(RecipeError, match="intensity_clip=10000.*data.normalize=none"):
        load_config("ws-dino", {"data.normalize": "plate"})


# ----------------------------------------------------------------------------- preprocessing
def test_preprocess_clips_at_10000_scales_to_unit_and_halves_fields():
    raw = torch.tensor([0, 5000, 10000, 30000], dtype=torch.float32).view(1, 1, 2, 2)
    x = preprocess(raw / 65535.0, 1.0, 10000)      # as data.normalize: none delivers it
    assert torch.allclose(x.flatten(), torch.tensor([0.0, 0.5, 1.0, 1.0]), atol=1e-6)
    field = torch.rand(2, 3, 64, 80)
    assert preprocess(field, 0.5, None).shape == (2, 3, 32, 40)


def test_one_channel_repeated_three_times_equals_summed_rgb_filters():
    """WS-DINO feeds one channel x3 to the RGB ViT (W:208-209); in_chans=1 with timm's first-conv
    rule (RGB filters summed) computes the same patch embedding."""
    from timm.models import adapt_input_conv

    torch.manual_seed(0)
    w = torch.randn(16, 3, 8, 8, dtype=torch.float64)
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    three = torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), w, stride=8)
    one = torch.nn.functional.conv2d(x, adapt_input_conv(1, w), stride=8)
    assert torch.allclose(three, one, rtol=1e-6, atol=1e-5)   # timm sums in float32


def test_joint_per_channel_step_is_each_channels_separate_step():
    """The per-channel models share no parameter and the loss is their sum: each model's
    gradient is exactly the gradient of its own loss (so AdamW, per parameter, steps it as a
    separately trained model); centres are per model."""
    m = _method("ws-dino", shape=(2, 64, 64), **{"data.crop": 16, "local_crop": 8,
                                                   "local_crops": 2, "embed_crop": 16})
    assert isinstance(m.student, DinoModels) and len(m.student.nets) == 2
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 64, 64) * 0.2
    views, n_global = m.views({"image": x, "partner": {"image": x}}, g)
    out = m.student(views)
    with torch.no_grad():
        t = m.teacher(views[:n_global])
    m.criterion.center.zero_()
    loss, stats = m.criterion(out, t, 0.04, len(views), n_global)
    loss.backward()
    joint = [p.grad.clone() for p in m.student.nets[1].parameters() if p.grad is not None]
    assert "loss_model1" in stats
    m.student.zero_grad()
    single = m.student.nets[1]([v[:, 1:2] for v in views])[None]
    m.criterion.center.zero_()
    own, _ = m.criterion.__class__(m.cfg.out_dim, 1, m.cfg.student_temp, m.cfg.center_momentum)(
        single, t[1:2], 0.04, len(views), n_global)
    own.backward()
    alone = [p.grad for p in m.student.nets[1].parameters() if p.grad is not None]
    assert len(joint) == len(alone) > 0
    for a, b in zip(joint, alone, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- pretrained
def _official_backbone(depth: int = 1) -> dict[str, torch.Tensor]:
    """A state dict with dino_deitsmall8_pretrain.pth's key names and shapes (ViT-S/8, 224 px:
    785 position embeddings), cut to ``depth`` blocks."""
    d = 384
    s = {"cls_token": torch.randn(1, 1, d), "pos_embed": torch.randn(1, 785, d),
         "patch_embed.proj.weight": torch.randn(d, 3, 8, 8), "patch_embed.proj.bias": torch.randn(d),
         "norm.weight": torch.ones(d), "norm.bias": torch.zeros(d)}
    for i in range(depth):
        b = f"blocks.{i}."
        s.update({b + "norm1.weight": torch.ones(d), b + "norm1.bias": torch.zeros(d),
                  b + "attn.qkv.weight": torch.randn(3 * d, d) * 0.02,
                  b + "attn.qkv.bias": torch.zeros(3 * d),
                  b + "attn.proj.weight": torch.randn(d, d) * 0.02, b + "attn.proj.bias": torch.zeros(d),
                  b + "norm2.weight": torch.ones(d), b + "norm2.bias": torch.zeros(d),
                  b + "mlp.fc1.weight": torch.randn(4 * d, d) * 0.02,
                  b + "mlp.fc1.bias": torch.zeros(4 * d),
                  b + "mlp.fc2.weight": torch.randn(d, 4 * d) * 0.02, b + "mlp.fc2.bias": torch.zeros(d)})
    return s


VIT_S8 = {"model": "vit_small_patch8_224", "model_kwargs": {"depth": 1}, "out_dim": 64,
          "head_hidden_dim": 32, "head_bottleneck_dim": 16, "local_crops": 2}


def _load(name: str, path: Path, shape=(3, 1024, 1280), **over):
    cfg = load_config(name, {**VIT_S8, "pretrained": str(path), **over})
    info = DataInfo(channels=[f"c{i}" for i in range(shape[0])], n_channels=shape[0], shape=shape,
                    classes=[], n_train=64, extra={})
    return METHODS.get(cfg.method)(cfg, info, torch.device("cpu"))


def test_official_backbone_file_loads_into_every_channel_model(tmp_path):
    state = _official_backbone()
    torch.save(state, tmp_path / "dino_deitsmall8_pretrain.pth")
    m = _load("ws-dino", tmp_path / "dino_deitsmall8_pretrain.pth")
    rgb_sum = state["patch_embed.proj.weight"].sum(1, keepdim=True)
    for net in list(m.student.nets) + list(m.teacher.nets):
        assert torch.equal(net.backbone.pos_embed, state["pos_embed"])
        assert torch.allclose(net.backbone.patch_embed.proj.weight, rgb_sum)
        assert torch.equal(net.backbone.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def _official_head(head_k: int) -> dict:
    """A DINOHead state dict with DINO's key names (3-layer MLP, weight-normed last layer)."""
    return {"mlp.0.weight": torch.randn(32, 384), "mlp.0.bias": torch.zeros(32),
            "mlp.2.weight": torch.randn(32, 32), "mlp.2.bias": torch.zeros(32),
            "mlp.4.weight": torch.randn(16, 32), "mlp.4.bias": torch.zeros(16),
            "last_layer.weight_g": torch.full((head_k, 1), 2.0),
            "last_layer.weight_v": torch.randn(head_k, 16)}


def test_full_checkpoint_loads_student_teacher_and_centre(tmp_path):
    """The full checkpoint (DDP student ``module.backbone.*``, teacher ``backbone.*``, heads with
    DINO's weight-norm names, the centre, and the run's argparse.Namespace) with weights_only."""
    back, head_k = _official_backbone(), 64
    head = _official_head(head_k)
    student = {f"module.backbone.{k}": v + 1 for k, v in back.items()}
    student.update({f"module.head.{k}": v for k, v in head.items()})
    teacher = {f"backbone.{k}": v for k, v in back.items()}
    teacher.update({f"head.{k}": v for k, v in head.items()})
    centre = torch.randn(1, head_k)
    torch.save({"student": student, "teacher": teacher, "optimizer": {}, "epoch": 800,
                "args": argparse.Namespace(arch="vit_small", patch_size=8),
                "dino_loss": {"center": centre}}, tmp_path / "full.pth")
    m = _load("dino", tmp_path / "full.pth")
    s, t = m.student.nets[0], m.teacher.nets[0]
    assert torch.equal(t.backbone.cls_token, back["cls_token"])
    assert torch.equal(s.backbone.cls_token, back["cls_token"] + 1)      # its own student
    assert torch.equal(t.head.last_layer.parametrizations.weight.original0, head["last_layer.weight_g"])
    assert m.centre_loaded and torch.allclose(m.criterion.center[0], centre)


def _official_optimizer(back: dict, head: dict) -> tuple[dict, list[str]]:
    """DINO's AdamW ``state_dict`` over the student as utils.get_params_groups builds it:
    parameters in named_parameters order (ViT: cls_token, pos_embed, patch_embed, blocks, norm;
    head: mlp, last_layer weight_g, weight_v), weights then biases / 1-D tensors."""
    blocks = [k for k in back if k.startswith("blocks.")]      # norm1, attn, norm2, mlp order
    names = (["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
             + blocks + ["norm.weight", "norm.bias"])
    shapes = {f"backbone.{k}": back[k].shape for k in names}
    shapes.update({f"head.{k}": v.shape for k, v in head.items()})
    ordered = list(shapes)
    decay = [n for n in ordered if not (n.endswith(".bias") or len(shapes[n]) == 1)]
    rest = [n for n in ordered if n not in decay]
    ids = {n: i for i, n in enumerate(decay + rest)}
    state = {ids[n]: {"step": 3750, "exp_avg": torch.randn(shapes[n]),
                      "exp_avg_sq": torch.rand(shapes[n])} for n in ordered}
    groups = [{"params": [ids[n] for n in decay], "lr": 1e-4, "weight_decay": 0.04},
              {"params": [ids[n] for n in rest], "lr": 1e-4, "weight_decay": 0.0}]
    return {"state": state, "param_groups": groups}, decay + rest


def test_full_checkpoint_restores_the_optimizer_moments(tmp_path):
    """W:355-363 restores the optimizer with student, teacher and centre: AdamW moments land on
    the matching parameters of every per-channel model; a 3-channel patch-embedding moment
    does not fit a 1-channel model and starts fresh, with a warning."""
    from cytodata.baselines.engine import build_optimizer

    back, head_k = _official_backbone(), 64
    head = _official_head(head_k)
    optim, ids = _official_optimizer(back, head)
    student = {f"module.backbone.{k}": v for k, v in back.items()}
    student.update({f"module.head.{k}": v for k, v in head.items()})
    teacher = {f"backbone.{k}": v for k, v in back.items()}
    teacher.update({f"head.{k}": v for k, v in head.items()})
    torch.save({"student": student, "teacher": teacher, "optimizer": optim, "epoch": 800,
                "args": argparse.Namespace(arch="vit_small"),
                "dino_loss": {"center": torch.zeros(1, head_k)}}, tmp_path / "full.pth")
    saved = {n: optim["state"][i] for i, n in enumerate(ids)}

    def fresh_optimizer(m):
        return build_optimizer(m.cfg.optim, m.param_groups(m.trainable()))

    m = _load("ws-dino", tmp_path / "full.pth", per_channel=False)   # one 3-channel model
    opt = fresh_optimizer(m)
    m.init_optimizer(opt)
    net = m.student.nets[0]
    assert m.optimizer_restored == len(ids)
    for name, p in (("backbone.cls_token", net.backbone.cls_token),
                    ("backbone.patch_embed.proj.weight", net.backbone.patch_embed.proj.weight),
                    ("backbone.norm.bias", net.backbone.norm.bias),
                    ("head.last_layer.weight_v",
                     net.head.last_layer.parametrizations.weight.original1)):
        assert torch.equal(opt.state[p]["exp_avg"], saved[name]["exp_avg"]), name
        assert torch.equal(opt.state[p]["exp_avg_sq"], saved[name]["exp_avg_sq"]), name
        assert float(opt.state[p]["step"]) == 3750
    before = net.backbone.cls_token.detach().clone()
    for p in m.student.parameters():
        p.grad = torch.ones_like(p)
    opt.step()                                                    # the restored state steps
    assert float(opt.state[net.backbone.cls_token]["step"]) == 3751
    assert not torch.equal(before, net.backbone.cls_token)

    ws = _load("ws-dino", tmp_path / "full.pth")                  # 3 models of 1 channel
    opt = fresh_optimizer(ws)
    with pytest.warns(RuntimeWarning, match=r"3 optimizer moment\(s\) differ in shape.*"
                                            r"\(384, 3, 8, 8\) -> \(384, 1, 8, 8\)"):
        ws.init_optimizer(opt)
    assert ws.optimizer_restored == 3 * (len(ids) - 1)
    for net in ws.student.nets:
        assert torch.equal(opt.state[net.backbone.pos_embed]["exp_avg"],
                           saved["backbone.pos_embed"]["exp_avg"])
        assert net.backbone.patch_embed.proj.weight not in opt.state
    # norm_last_layer=true freezes weight_g: one parameter fewer than the checkpoint's groups;
    # like torch's load_state_dict in utils.restart_from_checkpoint (dino utils.py:172-176),
    # the optimiser then starts fresh
    plain = _load("dino", tmp_path / "full.pth")
    plain_opt = fresh_optimizer(plain)
    with pytest.warns(RuntimeWarning, match=r"\(\[12, 14\] parameters per group\) does not fit"):
        plain.init_optimizer(plain_opt)
    assert plain.optimizer_restored == 0 and not plain_opt.state


def test_unexpected_keys_name_the_first_few_and_what_would_load(tmp_path):
    state = _official_backbone()
    state.update({"extra.adapter.weight": torch.zeros(3), "extra.adapter.bias": torch.zeros(3)})
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(TrainingError, match=r"2 unexpected key\(s\) \['extra.adapter.weight', "
                                            r"'extra.adapter.bias'\].*model tensors would load"):
        _load("dino", tmp_path / "odd.pth")
    # many unexpected keys and a missing one: the first four of each are named, with the counts,
    # the tensors that would have loaded, and that nothing was loaded (the fix: same architecture)
    state = _official_backbone()
    del state["norm.weight"]
    state.update({f"adapter.{i}.weight": torch.zeros(2) for i in range(7)})
    torch.save(state, tmp_path / "many.pth")
    with pytest.raises(TrainingError) as err:
        _load("dino", tmp_path / "many.pth")
    msg = str(err.value)
    assert "7 unexpected key(s) ['adapter.0.weight', 'adapter.1.weight', 'adapter.2.weight', " \
           "'adapter.3.weight']" in msg and "adapter.4.weight" not in msg
    assert "1 missing ['norm.weight']" in msg
    n_own = len(state) - 7 + 1                        # the model's tensors: the file's, norm.weight
    assert f"{n_own - 1} of " in msg and "model tensors would load (['cls_token'," in msg
    assert "Nothing was loaded" in msg and "dino_deitsmall8_pretrain.pth" in msg


# ----------------------------------------------------------------------------- runs
def _field_shards(out: Path, n: int = 24, shape=(3, 64, 64)) -> Path:
    from cytodata.loaders.demo import demo_manifest
    from cytodata.shards import write

    table = demo_manifest(out.parent / f"{out.name}-img", n, shape, pixels="cells")
    import pandas as pd

    table["compound"] = pd.array([f"c{i % 4}" for i in range(n)], dtype="string")
    write(table, out, samples_per_shard=12, scheduler="synchronous", progress=False)
    return out


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> Path:
    return _field_shards(tmp_path_factory.mktemp("recipes") / "shards")


def test_tiny_recipes_train_and_record_their_outcome(fields, tmp_path):
    common = {"steps": 4, "log_every": 2, "progress": False, "checkpoint_every": 100,
              "data.train": str(fields), "data.train_split": None, "data.threads": 1,
              "batch_size": 8, "model_kwargs": {"depth": 1}}
    torch.set_num_threads(1)
    with pytest.warns(RuntimeWarning):     # c0..c3 over 24 images: some groups are small
        ws = train("ws-dino-tiny", tmp_path / "ws", **common)
    summary = json.loads((ws / "summary.json").read_text())
    assert isinstance(summary["collapsed"], bool) and "kl_over_ln_k" in summary["collapse_evidence"]
    rows = [json.loads(x) for x in (ws / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["summary"] and rows[-1]["collapsed"] == summary["collapsed"]
    assert "loss_model2" in rows[0]                     # three channel models
    # a run forced into the uniform collapse (teacher as flat as the student) says so
    flat = train("dino-tiny", tmp_path / "flat", **{**common, "steps": 6, "teacher_temp": 50.0,
                                                    "warmup_teacher_temp": 50.0, "student_temp": 50.0,
                                                    "collapse_patience": 3})
    out = json.loads((flat / "summary.json").read_text())
    assert out["collapsed"] is True and out["collapse"] == "uniform"
    assert out["collapse_evidence"]["teacher_entropy_over_ln_k"] > 0.9
    assert np.isfinite(out["collapse_evidence"]["loss_over_ln_k"])


def test_a_run_from_a_full_checkpoint_starts_from_its_optimizer_moments(fields, tmp_path):
    """The engine hands a fresh run's optimiser to the method (W:355-363): after one step the
    restored AdamW step counts continue from the checkpoint's."""
    from cytodata.baselines import checkpoint

    over = {"model_kwargs": {"depth": 1}, "per_channel": False}
    cfg = load_config("ws-dino-tiny", over)
    info = DataInfo(channels=["a", "b", "c"], n_channels=3, shape=(3, 64, 64), classes=[],
                    n_train=24, extra={})
    net = METHODS.get("ws-dino")(cfg, info, torch.device("cpu")).student.nets[0]
    official = {k.replace("parametrizations.weight.original0", "weight_g")
                 .replace("parametrizations.weight.original1", "weight_v"): v
                for k, v in net.state_dict().items()}
    trained = [n.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v")
               for n, p in net.named_parameters() if p.requires_grad]
    decay = [n for n in trained if not (n.endswith(".bias") or official[n].ndim == 1)]
    order = decay + [n for n in trained if n not in decay]
    optim = {"state": {i: {"step": 10, "exp_avg": torch.zeros_like(official[n]),
                           "exp_avg_sq": torch.ones_like(official[n])} for i, n in enumerate(order)},
             "param_groups": [{"params": list(range(len(decay)))},
                              {"params": list(range(len(decay), len(order)))}]}
    torch.save({"student": {f"module.{k}": v for k, v in official.items()}, "teacher": official,
                "optimizer": optim, "dino_loss": {"center": torch.zeros(1, cfg.out_dim)}},
               tmp_path / "full.pth")
    torch.set_num_threads(1)
    with pytest.warns(RuntimeWarning, match=r"3 optimizer moment\(s\) differ in shape"):
        run = train("ws-dino-tiny", tmp_path / "run", steps=1, progress=False, batch_size=8,
                    model_kwargs={"depth": 1}, pretrained=str(tmp_path / "full.pth"),
                    **{"data.train": str(fields), "data.train_split": None, "data.threads": 1})
    saved = checkpoint.load(checkpoint.newest(run / "checkpoints"))["optimizer"]["state"]
    steps = sorted(float(s["step"]) for s in saved.values())
    # patch embeddings start fresh; the last layer (weight_g, weight_v) is frozen in epoch 0
    # (W:92), so its restored step count is not advanced; every other parameter stepped once
    assert steps == [1.0] * 3 + [10.0] * 6 + [11.0] * (3 * (len(order) - 3))
