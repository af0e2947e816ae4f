"""DINO and WS-DINO on the engine: hand-computed loss/centre/EMA/schedules, the frozen last layer,
WS-DINO pairs, the collapse monitor, bad input and 2-rank gloo DDP, on tiny real shard sets.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cytodata.baselines import checkpoint, embed, load_config, train
from cytodata.baselines.data import DataInfo
from cytodata.baselines.methods.dino import (
    BalancedWeakLabelPairs,
    Dino,
    DINOLoss,
    WSDino,
    collapse_kind,
    dino_cross_entropy,
    resized_crops,
)
from cytodata.errors import RecipeError, TrainingError

# a 1-block test_vit with 8-px patches: 16-px global crops (4 tokens), 8-px local crops (1 token)
TINY = {"steps": 12, "batch_size": 8, "log_every": 1, "progress": False, "checkpoint_every": 100,
        "data.crop": 16, "local_crop": 8, "local_crops": 2, "model_kwargs": {"depth": 1},
        "data.threads": 1, "optim.warmup_steps": 0}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine more threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def labelled_shards(out: Path, n: int = 48, shape=(3, 32, 32)) -> Path:
    """Demo cell images; ``label`` l0..l3 plus one training image alone in group ``solo``,
    ``compound`` = c<i % 3> on every row."""
    from cytodata.loaders.demo import demo_manifest
    from cytodata.shards import write

    table = demo_manifest(out.parent / f"{out.name}-images", n, shape, pixels="cells")
    table.loc[1, "label"] = "solo"        # row 1 is in the train split (every 5th row is val)
    table["compound"] = pd.array([f"c{i % 3}" for i in range(n)], dtype="string")
    write(table, out, samples_per_shard=12, scheduler="synchronous", progress=False)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return labelled_shards(tmp_path_factory.mktemp("dino") / "shards")


def info(n_channels=3, shape=(3, 32, 32), n_train=64, **extra) -> DataInfo:
    return DataInfo(channels=[f"c{i}" for i in range(n_channels)], n_channels=n_channels,
                    shape=shape, classes=[], n_train=n_train, extra=extra)


def method(config="dino-cells-tiny", inf=None, **overrides) -> Dino:
    from cytodata.baselines.methods import METHODS

    cfg = load_config(config, {**{k: v for k, v in TINY.items()}, **overrides})
    torch.manual_seed(0)
    return METHODS.get(cfg.method)(cfg, inf or info(), torch.device("cpu"))


# ----------------------------------------------------------------------------- loss, centre, EMA
def _softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def test_dino_loss_on_a_three_view_toy_batch_matches_the_hand_computation():
    # one image, K=3, views: global 0, global 1, local 2; teacher on the globals; centre c
    s = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 2.0, 0.0]]
    t = [[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    c = [0.5, 0.25, 0.0]
    tt, ts = 0.5, 0.25
    p = [_softmax([(t[q][k] - c[k]) / tt for k in range(3)]) for q in range(2)]
    logs = [[math.log(x) for x in _softmax([v / ts for v in s[v]])] for v in range(3)]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]          # teacher view q x student view v != q
    expected = sum(-sum(p[q][k] * logs[v][k] for k in range(3)) for q, v in pairs) / 4

    crit = DINOLoss(3, student_temp=ts, center_momentum=0.9)
    crit.center.copy_(torch.tensor(c).view(1, 1, 3))
    loss, stats = crit(torch.tensor(s)[None], torch.tensor(t)[None], tt, n_views=3)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    probs = torch.tensor(p)
    direct = dino_cross_entropy(torch.tensor(s), probs, n_views=3, n_global=2, student_temp=ts)
    assert float(direct) == pytest.approx(expected, rel=1e-6)
    h = -sum(sum(pk * math.log(pk) for pk in p[q]) for q in range(2)) / 2
    assert stats["teacher_entropy"] == pytest.approx(h, rel=1e-5)
    assert stats["kl_teacher_student"] == pytest.approx(expected - h, rel=1e-4)
    assert stats["loss_over_ln_k"] == pytest.approx(expected / math.log(3), rel=1e-6)
    # the loss call updated the centre after using it: 0.9 c + 0.1 mean(teacher)
    mean_t = [(t[0][k] + t[1][k]) / 2 for k in range(3)]
    want = [0.9 * c[k] + 0.1 * mean_t[k] for k in range(3)]
    assert crit.center.flatten().tolist() == pytest.approx(want)


def test_centre_update_is_an_ema_of_the_teacher_batch_mean():
    crit = DINOLoss(3, n_models=2, center_momentum=0.9)
    teacher = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]], [[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]])
    crit.update_center(teacher)
    assert crit.center[0, 0].tolist() == pytest.approx([0.2, 0.3, 0.4])
    assert crit.center[1, 0].tolist() == pytest.approx([0.1, 0.1, 0.1])
    crit.update_center(teacher)
    want = [0.9 * 0.2 + 0.2, 0.9 * 0.3 + 0.3, 0.9 * 0.4 + 0.4]
    assert crit.center[0, 0].tolist() == pytest.approx(want)
    frozen = DINOLoss(3, center_momentum=1.0)     # 1.0 = no centring
    frozen.update_center(teacher[:1])
    assert frozen.center.abs().sum() == 0


def test_ema_teacher_update_and_schedule_end_points():
    m = method(steps=20, momentum_teacher=0.99, warmup_teacher_temp=0.04, teacher_temp=0.07,
               warmup_teacher_temp_epochs=2.0, batch_size=16)
    assert m.steps_per_epoch == 4                   # 64 rows // (16 x 1 x 1 rank)
    assert m.momentum[0] == pytest.approx(0.99) and m.momentum[-1] == 1.0
    assert np.all(np.diff(m.momentum) >= 0)
    assert m.teacher_temp[0] == pytest.approx(0.04) and m.teacher_temp[7] == pytest.approx(0.07)
    assert 0.04 < m.teacher_temp[3] < 0.07 and m.teacher_temp[-1] == pytest.approx(0.07)
    with torch.no_grad():
        for p in m.student.parameters():
            p.fill_(1.0)
        for p in m.teacher.parameters():
            p.fill_(0.0)
    m.after_step(0)
    assert all(torch.allclose(p, torch.full_like(p, 0.01)) for p in m.teacher.parameters())
    m.after_step(19)                                 # momentum 1 at the end: no change
    assert all(torch.allclose(p, torch.full_like(p, 0.01)) for p in m.teacher.parameters())
    # lr warm-up in epochs: 1 epoch = 4 steps from 0 to the base lr
    m = method(steps=20, warmup_epochs=1.0, batch_size=16, **{"optim.lr": 1e-3})
    lrs, _ = m.schedules(20, 16)
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(1e-3) and lrs[3] < 1e-3


def test_resized_crops_identity_flip_and_transpose():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    same = resized_crops(x, 8, (1.0, 1.0), g, flips=False, rot90=False, ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-4)
    seen = set()
    for seed in range(12):
        out = resized_crops(x, 8, (1.0, 1.0), torch.Generator().manual_seed(seed), ratio=(1.0, 1.0))
        for i in range(2):
            for name, y in {"id": x[i], "h": x[i].flip(-1), "v": x[i].flip(-2),
                            "hv": x[i].flip(-1, -2),
                            "t": x[i].transpose(-1, -2), "ht": x[i].transpose(-1, -2).flip(-1),
                            "vt": x[i].transpose(-1, -2).flip(-2),
                            "hvt": x[i].transpose(-1, -2).flip(-1, -2)}.items():
                if torch.allclose(out[i], y, atol=1e-4):
                    seen.add(name)
    assert len(seen) == 8                            # every symmetry of the square, exactly
    small = resized_crops(x, 4, (0.05, 0.4), g)
    assert small.shape == (2, 3, 4, 4)
    assert float(small.min()) >= 0 and float(small.max()) <= float(x.max())


# ----------------------------------------------------------------------------- the engine path
@pytest.fixture(scope="module")
def healthy(shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("healthy") / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train("dino-cells-tiny", run, **{**TINY, "steps": 100, "log_every": 10,
                                   "data.train": str(shards)})
    return run, [str(w.message) for w in caught]


def test_healthy_tiny_run_has_no_collapse_warning_and_logs_the_monitor(healthy):
    run, caught = healthy
    assert not [m for m in caught if "collapse" in m], caught
    logged = [r for r in rows(run) if "loss" in r]
    assert len(logged) == 10
    for r in logged:
        assert {"teacher_entropy", "teacher_marginal_entropy", "kl_teacher_student",
                "loss_over_ln_k", "teacher_temp", "teacher_momentum"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss_over_ln_k"] * math.log(256), rel=1e-4)
    assert logged[-1]["teacher_momentum"] > logged[0]["teacher_momentum"]


def test_last_layer_frozen_in_epoch_zero(shards, tmp_path):
    spe = 38 // 8                                   # 38 training rows, global batch 8 -> 4 steps
    run = train("dino-cells-tiny", tmp_path / "frozen",
                **{**TINY, "steps": spe + 1, "checkpoint_every": 1, "keep_checkpoints": 10,
                   "data.train": str(shards)})

    def state(step):
        return checkpoint.load(run / "checkpoints" / f"step-{step}.pt")["modules"]["student"]

    last = "nets.0.head.last_layer.parametrizations.weight.original1"
    body = "nets.0.backbone.patch_embed.proj.weight"
    s1, s_end0, s_next = state(1), state(spe), state(spe + 1)
    assert torch.equal(s1[last], s_end0[last])          # frozen through epoch 0
    assert not torch.equal(s1[body], s_end0[body])       # while the backbone learns
    assert not torch.equal(s_end0[last], s_next[last])   # and it trains from epoch 1 on


def test_embed_writes_teacher_cls_per_image(healthy, shards, tmp_path):
    run, _ = healthy
    out = embed(run, shards, tmp_path / "emb.parquet", device="cpu", progress=False)
    table = pd.read_parquet(out)
    feats = [c for c in table.columns if c.startswith("emb_")]
    assert len(feats) == 64 and len(table) == 48        # test_vit width, every image
    assert {"key", "label", "plate"} <= set(table.columns)
    assert np.isfinite(table[feats].to_numpy()).all()


def test_embed_pools_cls_patch_mean_or_both(healthy, shards, tmp_path):
    from cytodata.baselines.embedding import center_views, load_method
    from cytodata.loaders import StreamingDataset

    run, _ = healthy
    tables = {pool: pd.read_parquet(embed(run, shards, tmp_path / f"{pool}.parquet", device="cpu",
                                          progress=False, pool=pool))
              for pool in ("cls", "avg", "cls+avg")}
    cols = {p: [c for c in t.columns if c.startswith("emb_")] for p, t in tables.items()}
    assert len(cols["cls"]) == len(cols["avg"]) == 64 and len(cols["cls+avg"]) == 128
    default = pd.read_parquet(embed(run, shards, tmp_path / "default.parquet", device="cpu", progress=False))
    np.testing.assert_array_equal(default[cols["cls"]].to_numpy(), tables["cls"][cols["cls"]].to_numpy())
    both = tables["cls+avg"][cols["cls+avg"]].to_numpy()
    np.testing.assert_allclose(both[:, :64], tables["cls"][cols["cls"]].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(both[:, 64:], tables["avg"][cols["avg"]].to_numpy(), atol=1e-5)
    # avg is the mean of the teacher's final (normed) patch tokens, CLS and registers left out
    method, cfg, _ = load_method(checkpoint.load(run), torch.device("cpu"))
    backbone = method.teacher.nets[0].backbone
    ds = StreamingDataset(shards, shuffle=False)
    sample = next(iter(ds))
    from cytodata.baselines.data import NormStats
    stats = NormStats(ds.shards.meta, cfg.data.normalize, 3)
    x = stats.apply(sample["image"].float()[None], stats.batch_groups({"plate": [sample["meta"]["plate"]]}))
    with torch.no_grad():  # per view the patch-token mean, then WS-DINO's median over the views
        means = [backbone.forward_features(v)[0, backbone.num_prefix_tokens:].mean(0)
                 for v in center_views(x, cfg.data.crop)]
    want = (means[0] if len(means) == 1 else torch.stack(means).median(dim=0).values).numpy()
    got = tables["avg"].set_index("key").loc[sample["__key__"], cols["avg"]].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert not np.allclose(got, tables["cls"].set_index("key").loc[sample["__key__"], cols["cls"]].to_numpy(
        dtype=np.float32), atol=1e-3)
    with pytest.raises(TrainingError, match="pool='max'.*cls, avg, cls\\+avg"):
        embed(run, shards, tmp_path / "bad.parquet", device="cpu", progress=False, pool="max")


def _stats(loss_over_ln_k, kl, out_dim=256, marginal=None, n=16):
    ln_k = math.log(out_dim)
    h = loss_over_ln_k * ln_k - kl
    return {"teacher_entropy": h, "kl_teacher_student": kl, "loss_over_ln_k": loss_over_ln_k,
            "teacher_marginal_entropy": h if marginal is None else marginal, "n_samples": n}


@pytest.mark.parametrize("loss_over_ln_k, kl, kind", [
    (0.99, 0.08, "uniform"),    # the demo's 150-step ws-dino-tiny run: KL 1.4% of ln K, no signal
    (0.937, 0.01, "uniform"),   # a 250-step DINO run: teacher at 94% of ln K, student copies it
    (1.0, 0.001, "uniform"),    # textbook uniform collapse
    (0.80, 0.455, None),        # healthy: the student still learns (KL 8% of ln K)
    (0.93, 0.40, None),         # flat-ish teacher, but a real teacher-student gap
])
def test_collapse_kind_uniform_thresholds(loss_over_ln_k, kl, kind):
    assert collapse_kind(_stats(loss_over_ln_k, kl), 256) == kind


def test_collapse_kind_one_prototype():
    sharp_same = {"teacher_entropy": 0.01, "kl_teacher_student": 3.0, "loss_over_ln_k": 0.6,
                  "teacher_marginal_entropy": 0.02, "n_samples": 16}
    sharp_spread = dict(sharp_same, teacher_marginal_entropy=2.5)   # sharp but diverse: healthy
    assert collapse_kind(sharp_same, 256) == "one-prototype"
    assert collapse_kind(sharp_spread, 256) is None


def test_broken_config_warns_of_collapse(shards, tmp_path):
    with pytest.warns(RuntimeWarning, match=r"collapse.*Remedies"):
        train("dino-cells-tiny", tmp_path / "broken",
              **{**TINY, "steps": 80, "log_every": 40, "teacher_temp": 1.0,
                 "warmup_teacher_temp": 1.0, "center_momentum": 1.0, "data.train": str(shards)})


# ----------------------------------------------------------------------------- WS-DINO pairs
def test_balanced_pairs_invariants():
    # groups: a (3 images, one with 2 crops), b (2 images), solo (1 image, 2 crops), NA
    index = pd.DataFrame({
        "key": [f"k{i}" for i in range(10)],
        "parent_id": ["i0", "i0", "i1", "i2", "i3", "i4", "i5", "i5", "i6", "i7"],
        "compound": ["a", "a", "a", "a", "b", "b", "solo", "solo", None, "b"],
        "shard": ["s0"] * 5 + ["s1"] * 5})
    index["compound"] = index["compound"].astype("string")
    sampler = BalancedWeakLabelPairs("compound")
    order = sampler.order(index, seed=3, epoch=0)
    assert order.shape == (9, 2)                          # one pair per labelled row
    label, image = index["compound"].to_numpy(), index["parent_id"].to_numpy()
    for a, p in order:
        assert label[a] == label[p]
        if label[a] == "solo":
            assert p == a                                 # no partner: same-image fallback
        else:
            assert image[a] != image[p]                   # never two crops of one image
    counts = pd.Series(label[order[:, 0]]).value_counts()
    assert sorted(counts.tolist()) == [3, 3, 3]           # even across groups
    assert sampler.self_pairs == 3 and sampler.lone_images == 2
    again = sampler.order(index, seed=3, epoch=0)
    assert np.array_equal(order, again)
    assert not np.array_equal(order, sampler.order(index, seed=3, epoch=1))
    treatment = BalancedWeakLabelPairs("compound+parent_id").order(index, seed=0, epoch=0)
    assert (treatment[:, 0] == treatment[:, 1]).sum() >= 7   # most "treatments" are one image here
    with pytest.raises(TrainingError, match=r"weak_label='moa'.*no column"):
        BalancedWeakLabelPairs("moa").order(index, seed=0, epoch=0)


def test_ws_dino_run_reports_fallbacks_and_checks_pairs(shards, tmp_path):
    with pytest.warns(RuntimeWarning, match=r"1 images in 1 group\(s\) of a single image"):
        run = train("ws-dino-cells-tiny", tmp_path / "ws", **{**TINY, "steps": 10, "weak_label": "label",
                                                         "data.train": str(shards)})
    fallback = [r["pair_fallback"] for r in rows(run) if "pair_fallback" in r]
    assert len(fallback) == 10 and 0 < max(fallback) < 1
    # the in-trainer invariant: a partner with another label is an error naming the keys
    from cytodata.baselines.data import open_dataset
    cfg = load_config("ws-dino-cells-tiny", {**TINY, "data.train": str(shards)})
    ds = open_dataset(str(shards), split="train", cfg=cfg.data, seed=0, shuffle=True)
    idx = ds.index
    m = WSDino(cfg, info(n_train=len(idx), train_index=idx), torch.device("cpu"))
    l0 = idx.index[idx["label"] == "l0"][:2]
    l3 = idx.index[idx["label"] == "l3"][:1]
    good = {"key": [idx["key"][l0[0]]], "partner": {"key": [idx["key"][l0[1]]]}}
    assert m._check_pairs(good) == {"pair_fallback": 0.0}
    bad = {"key": [idx["key"][l0[0]]], "partner": {"key": [idx["key"][l3[0]]]}}
    with pytest.raises(TrainingError, match="pair invariant broken.*different weak labels"):
        m._check_pairs(bad)
    same = {"key": [idx["key"][l0[0]]], "partner": {"key": [idx["key"][l0[0]]]}}
    with pytest.raises(TrainingError, match="same image although its group has others"):
        m._check_pairs(same)


def test_ws_dino_missing_weak_label_column_is_a_clear_error(shards, tmp_path):
    with pytest.raises(TrainingError,
                       match=r"weak_label='treatment'.*no column.*--set weak_label="):
        train("ws-dino-cells-tiny", tmp_path / "x", **{**TINY, "weak_label": "treatment",
                                                  "data.train": str(shards)})


# ----------------------------------------------------------------------------- per channel, weights
def test_per_channel_models_and_pretrained_weights(tmp_path):
    import timm

    src = timm.create_model("test_vit", num_classes=0, patch_size=8, depth=1, in_chans=3)
    head = method().student.nets[0].head.state_dict()
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    for k, v in head.items():                   # DINO's own naming of the weight-normed layer
        k = k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        state[f"head.{k}"] = v + 1.0
    path = tmp_path / "dino.pth"
    torch.save({"teacher": state}, path)
    m = method(per_channel=True, pretrained=str(path))
    assert len(m.student.nets) == 3 and m.signature()["in_chans"] == 1
    rgb = src.patch_embed.proj.weight
    for net in list(m.student.nets) + list(m.teacher.nets):
        assert torch.allclose(net.backbone.patch_embed.proj.weight, rgb.sum(1, keepdim=True))
        assert torch.allclose(net.head.mlp[0].weight, head["mlp.0.weight"] + 1.0)
    x = torch.randn(4, 3, 16, 16)
    feats = m.embedder().eval()(x)
    assert feats.shape == (4, 3 * 64)
    assert torch.allclose(feats.norm(dim=1), torch.ones(4), atol=1e-5)
    with pytest.warns(RuntimeWarning, match="head does not fit"):
        method(pretrained=str(path), out_dim=128)


# ----------------------------------------------------------------------------- bad input
def test_bad_sizes_and_out_dim_are_clear_errors():
    with pytest.raises(TrainingError,
                       match=r"local_crop=48 is larger than the training images \(32x32\)"):
        method(local_crop=48)
    with pytest.raises(TrainingError, match=r"local_crop=12.*not a multiple of the patch size 8"):
        method(local_crop=12)
    with pytest.raises(RecipeError, match="out_dim=1"):
        load_config("dino-cells-tiny", {"out_dim": 1})
    with pytest.raises(RecipeError, match="local_scale"):
        load_config("dino-cells-tiny", {"local_scale": [0.5, 0.1]})


def test_resume_with_a_changed_out_dim_is_refused(shards, tmp_path):
    run = train("dino-cells-tiny", tmp_path / "r", **{**TINY, "steps": 2, "data.train": str(shards)})
    with pytest.raises(TrainingError, match="out_dim"):
        train("dino-cells-tiny", run, resume=True, **{**TINY, "steps": 4, "out_dim": 128,
                                                 "data.train": str(shards)})
    sig = checkpoint.load(run)["signature"]
    assert sig["out_dim"] == 256 and sig["method"] == "dino"


# ----------------------------------------------------------------------------- DDP
#: ``cytodata train`` under torchrun, then the threads each rank still runs once it returned
#: (the cyclic GC off, so that nothing depends on when it would have run)
_DDP_DRIVER = """
import gc, json, os, sys
gc.disable()
from cytodata.cli import main
rc = main(sys.argv[1:])
left = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
print("THREADS " + json.dumps({"rank": int(os.environ["RANK"]), "threads": left}), flush=True)
sys.exit(rc)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names from /proc (Linux)")
def test_torchrun_two_ranks_share_one_centre_and_leave_no_gloo_thread(shards, tmp_path):
    run = tmp_path / "ddp"
    driver = tmp_path / "driver.py"
    driver.write_text(_DDP_DRIVER)
    args = []
    for k, v in {**TINY, "steps": 4, "batch_size": 4, "data.train": shards}.items():
        args += ["--set", f"{k}={json.dumps(v) if isinstance(v, dict) else v}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as s:      # a free port (torchrun's --master_port 0 can hang here)
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", port, str(driver),
                          "train", "dino-cells-tiny", "-o", str(run), "-q", *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    logged = [r for r in rows(run) if "loss" in r]
    assert len(logged) == 4 and all(r["center_rank_spread"] == 0.0 for r in logged)
    centre = checkpoint.load(run)["modules"]["dino_loss"]["center"]
    assert centre.abs().sum() > 0
    # the process group is gone when train returns: gloo's threads were joined then, not left
    # to the interpreter's exit, where a worker needing the GIL aborts the rank
    left = [json.loads(line.split(" ", 1)[1]) for line in res.stdout.splitlines()
            if line.startswith("THREADS ")]
    assert sorted(x["rank"] for x in left) == [0, 1]
    for x in left:
        assert not [t for t in x["threads"] if "gloo" in t], x


def test_resume_repeats_the_uninterrupted_run_exactly(shards, tmp_path):
    common = {**TINY, "steps": 6, "checkpoint_every": 3, "data.train": str(shards)}
    full = train("ws-dino-cells-tiny", tmp_path / "full", **common)
    part = tmp_path / "part"          # the same run stopped after its step-3 checkpoint
    shutil.copytree(full, part)
    for name in ("step-6.pt", "last.pt"):
        (part / "checkpoints" / name).unlink()
    train("ws-dino-cells-tiny", part, resume=True, **common)
    a, b = checkpoint.load(full), checkpoint.load(part)
    assert a["step"] == b["step"] == 6
    for name in ("student", "teacher", "dino_loss"):
        for k, v in a["modules"][name].items():
            assert torch.equal(v, b["modules"][name][k]), (name, k)


def test_views_far_from_native_resolution_warn_with_the_native_scales():
    # 16-px global crops from 0.4-1 of a 128x128 field: cells shrunk ~5x vs embed's native crops
    with pytest.warns(RuntimeWarning, match=r"global_scale=\[0.4, 1.0\].*scales cells by ~0\.16x") as rec:
        method(inf=info(shape=(3, 128, 128)), global_scale=[0.4, 1.0], local_scale=[0.05, 0.4])
    text = " ".join(str(w.message) for w in rec)
    assert "global_scale=[0.0141, 0.0172]" in text            # (16/128)^2 -+ 10%
    assert "local_scale" in text                                # 8-px local crops too
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # native views: no warning
        method(inf=info(shape=(3, 128, 128)), global_scale=[0.0141, 0.0172],
               local_scale=[0.00352, 0.0043])
