"""Engine options any method can use: optimisers, weight-decay modes, schedules, per-sample
normalisation, channel merges, resize, class balance, epochs, first-conv adaptation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cytodata.baselines import load_config
from cytodata.baselines.config import OptimConfig
from cytodata.baselines.data import collate, crop_minmax, image_percentile, merge_channels
from cytodata.baselines.engine import add_keras_l2, build_optimizer, keras_l2_params, steps_for_epochs
from cytodata.baselines.models import adapt_first_conv, create
from cytodata.baselines.schedules import lr_schedule
from cytodata.errors import RecipeError, TrainingError
from cytodata.loaders import ClassBalanced


def _quadratic_steps(opt, w, n=5):
    out = []
    for _ in range(n):
        opt.zero_grad()
        ((w - 3.0) ** 2).sum().backward()
        opt.step()
        out.append(w.detach().clone())
    return out


def test_sgd_nesterov_matches_torch_and_the_keras_update():
    w0 = torch.tensor([1.0, -2.0, 0.5])
    ours_w = w0.clone().requires_grad_()
    ours = build_optimizer(OptimConfig(name="sgd", lr=0.05, momentum=0.9, nesterov=True),
                           [{"params": [ours_w]}])
    ref_w = w0.clone().requires_grad_()
    ref = torch.optim.SGD([ref_w], lr=0.05, momentum=0.9, nesterov=True)
    a, b = _quadratic_steps(ours, ours_w), _quadratic_steps(ref, ref_w)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # Keras SGD(nesterov=True): v = m v - lr g; w += m v - lr g (the same trajectory)
    w, v = w0.clone(), torch.zeros(3)
    for step in a:
        g = 2 * (w - 3.0)
        v = 0.9 * v - 0.05 * g
        w = w + 0.9 * v - 0.05 * g
        assert torch.allclose(w, step, atol=1e-6)
    plain = build_optimizer(OptimConfig(name="sgd", lr=0.05), [{"params": [torch.zeros(1, requires_grad=True)]}])
    assert plain.defaults["nesterov"] is False


def test_adam_epsilon_reaches_the_optimiser():
    for name in ("adam", "adamw"):
        opt = build_optimizer(OptimConfig(name=name, eps=1e-7), [{"params": [torch.zeros(1, requires_grad=True)]}])
        assert opt.defaults["eps"] == 1e-7
    default = build_optimizer(OptimConfig(name="adam"), [{"params": [torch.zeros(1, requires_grad=True)]}])
    assert default.defaults["eps"] == 1e-8


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3)
        self.dw = torch.nn.Conv2d(4, 4, 3, groups=4, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.bn(self.dw(self.conv(x))).mean((-2, -1)))


def _one_step(mode: str, name: str, wd: float = 0.1, lr: float = 0.5):
    torch.manual_seed(0)
    net = _Net()
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    o = OptimConfig(name=name, lr=lr, momentum=0.0, weight_decay=wd, weight_decay_mode=mode)
    groups = [{"params": [p for p in net.parameters() if p.ndim > 1], "weight_decay": wd},
              {"params": [p for p in net.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    opt = build_optimizer(o, groups)
    x = torch.randn(3, 2, 7, 7, generator=torch.Generator().manual_seed(1))
    net(x).pow(2).sum().backward()
    grads = {k: p.grad.detach().clone() for k, p in net.named_parameters()}
    if mode == "keras_l2":
        add_keras_l2(keras_l2_params(net), wd)
    opt.step()
    return before, grads, {k: v.detach() for k, v in net.named_parameters()}


def test_keras_l2_is_coupled_twice_the_coefficient_on_kernels_only():
    wd, lr = 0.1, 0.5
    before, grads, after = _one_step("keras_l2", "sgd", wd, lr)
    for k in before:
        # loss + wd * sum(w^2) -> grad + 2 wd w on conv (not depthwise) and linear kernels
        decayed = k in ("conv.weight", "fc.weight")
        want = before[k] - lr * (grads[k] + (2 * wd * before[k] if decayed else 0))
        assert torch.allclose(after[k], want, atol=1e-6), k
    # torch's coupled decay: grad + wd w on the decayed group (here every >1-D tensor)
    before, grads, after = _one_step("coupled", "sgd", wd, lr)
    want = before["dw.weight"] - lr * (grads["dw.weight"] + wd * before["dw.weight"])
    assert torch.allclose(after["dw.weight"], want, atol=1e-6)


def test_decoupled_decay_shrinks_weights_outside_the_gradient():
    wd, lr = 0.1, 0.01
    before, grads, after = _one_step("decoupled", "adamw", wd, lr)
    b2, g2, plain = _one_step("decoupled", "adamw", 0.0, lr)
    # AdamW: w <- w (1 - lr wd) - lr adam(g); the Adam part is the same with and without decay
    for k in ("conv.weight", "fc.weight"):
        assert torch.allclose(after[k], plain[k] - lr * wd * before[k], atol=1e-6)
    with pytest.raises(RecipeError, match="decoupled.*adamw"):
        load_config("classifier-tiny", {"optim.weight_decay_mode": "decoupled", "optim.name": "adam"})
    with pytest.raises(RecipeError, match="nesterov"):
        load_config("classifier-tiny", {"optim.nesterov": True})


def test_constant_schedule_is_constant():
    lrs = lr_schedule(OptimConfig(lr=0.005, schedule="constant", warmup_steps=0), 50, 32)
    assert lrs.shape == (50,) and np.all(lrs == 0.005)


def test_per_sample_normalisations_match_the_papers_formulas():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 20, generator=g) * 1000 + 50
    y = crop_minmax(x)
    lo, hi = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
    assert torch.allclose(y, (x - lo) / (hi - lo + 1e-7))
    # CytoImageNet preprocessor.normalize, written with numpy
    z = image_percentile(x, 0.1, 99.9)
    for b in range(2):
        for c in range(3):
            img = x[b, c].numpy().astype(np.float64).copy()
            top, bot = np.percentile(img.flatten(), 99.9), np.percentile(img.flatten(), 0.1)
            img[img > top] = top
            img = img - bot
            img[img < 0] = 0
            img = img / img.max()
            np.testing.assert_allclose(z[b, c].numpy(), img, atol=1e-5)
    assert torch.equal(image_percentile(torch.full((1, 1, 4, 4), 7.0)), torch.zeros(1, 1, 4, 4))
    gray = merge_channels(z, "gray_rgb")
    assert gray.shape == (2, 3, 20, 20) and torch.allclose(gray[:, 1], z.mean(1))
    assert merge_channels(z, "gray").shape == (2, 1, 20, 20)


def test_resize_collates_images_of_any_size_and_refuses_a_larger_crop():
    samples = [{"image": torch.full((2, h, w), 100, dtype=torch.uint16), "label": 0, "__key__": f"k{h}",
                "meta": {}} for h, w in ((20, 30), (64, 48), (8, 8))]
    batch = collate(samples, resize=16)
    assert batch["image"].shape == (3, 2, 16, 16) and torch.allclose(batch["image"], torch.tensor(100.0))
    with pytest.raises(Exception, match="shape"):
        collate(samples)
    with pytest.raises(RecipeError, match="data.crop=64 is larger than data.resize=32"):
        load_config("cytoimagenet-tiny", {"data.crop": 64})


def test_median_resampling_reaches_the_median_and_refuses_a_set_without_labels():
    index = pd.DataFrame({"label": ["a"] * 2 + ["b"] * 5 + ["c"] * 9 + [None]})
    sampler = ClassBalanced(column="label", mode="resample_median")
    assert sampler.counts(index) == {"a": 5, "b": 5, "c": 5}
    order = sampler.order(index, seed=0, epoch=0)
    labels = index["label"].to_numpy()[order]
    assert {k: int((labels == k).sum()) for k in "abc"} == {"a": 5, "b": 5, "c": 5}
    small = order[labels == "a"]
    assert set(small.tolist()) <= {0, 1} and len(small) == 5          # upsampled with replacement
    big = order[labels == "c"]
    assert len(set(big.tolist())) == 5                                 # downsampled without
    # the cap rule leaves small classes as they are
    assert ClassBalanced(column="label", mode="median").counts(index) == {"a": 2, "b": 5, "c": 5}
    assert steps_for_epochs(30, sum(sampler.counts(index).values()), 4) == 30 * 4
    with pytest.raises(KeyError, match="no column 'treatment'"):
        ClassBalanced(column="treatment", mode="resample_median").order(index, seed=0, epoch=0)


def test_balanced_training_on_a_set_without_the_label_column(tmp_path):
    from cytodata.baselines import train
    from cytodata.loaders.demo import write_demo_shards

    shards = tmp_path / "s"
    write_demo_shards(shards, n=12, shape=(2, 16, 16))
    with pytest.raises(TrainingError, match="no 'treatment' column"):
        train("cellpainting-cnn-tiny", tmp_path / "run", **{"data.train": str(shards),
              "data.label": "treatment", "data.train_split": None, "data.val_split": None,
              "progress": False})


def test_first_conv_tile_is_deepprofilers_rule_and_repeat_is_timms():
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    tiled = adapt_first_conv(w, 5, "tile")
    hand = torch.stack([w[:, 0], w[:, 1], w[:, 2], w[:, 0], w[:, 1]], dim=1)
    assert torch.equal(tiled, hand)                                   # unscaled
    rep = adapt_first_conv(w, 5, "repeat")
    assert torch.allclose(rep, torch.cat([w, w], 1)[:, :5] * 3 / 5)
    with pytest.raises(TrainingError, match=r"weight shape \(6, 2, 3, 3\)"):
        adapt_first_conv(w[:, :2], 5, "repeat")
    with pytest.raises(TrainingError, match=r"shape \(6, 27\)"):
        adapt_first_conv(w.flatten(1), 5, "tile")


def test_pretrained_file_is_tiled_into_a_five_channel_model(tmp_path):
    src = create("test_efficientnet", in_chans=3, num_classes=10)
    path = tmp_path / "imagenet.pth"
    torch.save(src.state_dict(), path)
    model = create("test_efficientnet", in_chans=5, num_classes=4, pretrained=str(path), first_conv="tile")
    w = src.conv_stem.weight.detach()
    assert torch.equal(model.conv_stem.weight.detach(), w[:, [0, 1, 2, 0, 1]])
    assert torch.equal(model.blocks[1][0].conv_exp.weight, src.blocks[1][0].conv_exp.weight)
    bad = src.state_dict()
    bad["conv_stem.weight"] = bad["conv_stem.weight"][:, :2]
    torch.save(bad, path)
    with pytest.raises(TrainingError, match=r"conv_stem.weight.*weight shape \(\d+, 2, 3, 3\)"):
        create("test_efficientnet", in_chans=5, num_classes=4, pretrained=str(path))
