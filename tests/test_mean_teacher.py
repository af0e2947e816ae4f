"""Mean teacher (DeepNoise): ArcFace, ramp-up, EMA, the per-plate prior, cell-type statistics,
and a tiny end-to-end train -> predict -> embed on real shard sets (CPU)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cytodata.baselines import checkpoint, load_config, train
from cytodata.baselines.arcface import ArcFace, Softmax, arc_margin
from cytodata.baselines.data import NormStats, cell_type_table
from cytodata.baselines.embedding import embed
from cytodata.baselines.methods.mean_teacher import (
    ema_decay_at,
    ema_update,
    random_erasing,
    sigmoid_rampup,
    softmax_mse,
)
from cytodata.baselines.predict import predict
from cytodata.baselines.prior import apply_prior, assign_exact, balance_iterative
from cytodata.baselines.schedules import lr_schedule
from cytodata.errors import RecipeError, TrainingError
from cytodata.loaders.demo import write_demo_shards

S, M = 30.0, 0.1


# ----------------------------------------------------------------------------- ArcFace
def _head_at(thetas: list[float], target: int = 0) -> tuple[ArcFace, torch.Tensor]:
    """A 2-D ArcFace whose class-0 weight is (1, 0) and features at angles ``thetas`` from it."""
    head = ArcFace(2, 3, s=S, m=M)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]))
    f = torch.tensor([[math.cos(t), math.sin(t)] for t in thetas], dtype=torch.float64).float()
    return head, f


@pytest.mark.parametrize("theta", [1e-4, math.pi / 2, math.pi - 1e-4])
def test_arcface_logits_and_loss_match_hand_computation(theta):
    head, f = _head_at([theta])
    y = torch.tensor([0])
    got = head.train_logits(f, y)[0].detach().double()
    # by hand: cosines to the three unit class weights; margin on class 0
    w = np.array([[1, 0], [0, 1], [-1 / math.sqrt(2), 1 / math.sqrt(2)]])
    cos = w @ np.array([math.cos(theta), math.sin(theta)])
    if theta + M < math.pi:   # theta <= pi - m: cos(theta + m)
        target = math.cos(theta + M)
    else:                     # beyond pi - m: linear penalty cos(theta) - m sin(m)
        target = math.cos(theta) - M * math.sin(M)
    want = S * np.array([target, cos[1], cos[2]])
    assert np.allclose(got.numpy(), want, atol=1e-3)   # fp32 cosines; sin clamped near 0
    loss = F.cross_entropy(got[None], y).item()
    want_loss = -want[0] + math.log(np.exp(want).sum())
    assert loss == pytest.approx(want_loss, rel=1e-4, abs=1e-4)
    # no margin without labels, or for unlabelled rows (-1)
    assert torch.allclose(head.logits(f)[0].detach().double(), torch.tensor(S * cos), atol=1e-3)
    assert torch.allclose(head.train_logits(f, torch.tensor([-1])), head.logits(f))


def test_arcface_gradient_is_finite_at_zero_and_pi_and_fp32_under_autocast():
    cos = torch.tensor([[1.0, 0.2], [-1.0, 0.3], [1.0 + 1e-7, 0.0]], requires_grad=True)
    out = arc_margin(cos, torch.tensor([0, 0, 0]), m=M)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(cos.grad).all()
    assert out[0, 0].item() == pytest.approx(math.cos(M), abs=1e-3)        # theta = 0
    assert out[1, 0].item() == pytest.approx(-1.0 - M * math.sin(M), abs=1e-6)  # theta = pi
    easy = arc_margin(torch.tensor([[-0.5, 0.1]]), torch.tensor([0]), m=M, easy_margin=True)
    assert easy[0, 0].item() == pytest.approx(-0.5)                      # cos <= 0: no margin
    head = ArcFace(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head.train_logits(torch.randn(5, 8).bfloat16(), torch.tensor([0, 1, 2, 3, -1]))
    assert logits.dtype == torch.float32
    assert Softmax(8, 4).train_logits(torch.randn(2, 8), torch.tensor([0, 1])).shape == (2, 4)
    with pytest.raises(ValueError, match="margin"):
        ArcFace(8, 4, m=2.0)


# ----------------------------------------------------------------------------- ramp-up, EMA
def test_sigmoid_rampup_end_points():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(250, 100) == 1.0
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    values = [sigmoid_rampup(t, 100) for t in range(0, 101, 5)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert sigmoid_rampup(0, 0) == 1.0


def test_ema_update_by_hand_and_the_teacher_keeps_its_own_batchnorm_statistics():
    student, teacher = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.copy_(torch.tensor([0.0, 2.0, 4.0]))
    # one step as in CuriousAI/mean-teacher pytorch/main.py:212-231,290: both networks in train
    # mode see their own view, so each BatchNorm tracks its own inputs; the EMA (main.py:189-194)
    # averages parameters only
    student(torch.full((4, 3), 7.0) + torch.arange(4.0)[:, None])
    teacher(torch.full((4, 3), -3.0) + torch.arange(4.0)[:, None])
    teacher_stats = teacher.running_mean.clone()
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, torch.tensor([0.9, 1.1, 1.3]))
    assert torch.equal(teacher.running_mean, teacher_stats)           # its own statistics
    assert not torch.allclose(teacher.running_mean, student.running_mean)
    assert ema_decay_at(0, 0.999) == 0.5                             # Tarvainen's warm-up
    assert ema_decay_at(10_000, 0.999) == 0.999
    ema_update(teacher, student, ema_decay_at(0, 0.999))
    assert torch.allclose(teacher.weight, torch.tensor([0.45, 1.55, 2.65]))


def test_random_erasing_zeroes_one_rectangle_per_image():
    x = torch.ones(6, 2, 20, 20)
    g = torch.Generator().manual_seed(0)
    y = random_erasing(x, 1.0, g)
    zero = (y == 0).all(1)                               # same rectangle in every channel
    for i in range(6):
        rows, cols = torch.nonzero(zero[i], as_tuple=True)
        assert len(rows) > 0
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert torch.equal(random_erasing(x, 0.0, g), x)


def test_consistency_loss_is_the_references_softmax_mse():
    # CuriousAI/mean-teacher pytorch/mean_teacher/losses.py:15-27 (softmax_mse_loss, divided by
    # the number of classes) and main.py:263 (divided by the minibatch size); DeepNoise main.py:14-26
    # and :652 the same
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 11, generator=g), torch.randn(6, 11, generator=g)
    ref = F.mse_loss(F.softmax(a, 1), F.softmax(b, 1), reduction="sum") / 11 / 6
    assert softmax_mse(a, F.softmax(b, 1)).item() == pytest.approx(ref.item(), rel=1e-6)


# ----------------------------------------------------------------------------- the prior
def _toy(seed: int, plates: int = 4, k: int = 12, rows: int = 12, noise: float = 1.0):
    """Plates whose rows hold distinct true classes; probabilities = noisy softmax."""
    rng = np.random.default_rng(seed)
    truth = np.concatenate([rng.permutation(k)[:rows] for _ in range(plates)])
    logits = rng.normal(0, noise, (len(truth), k))
    logits[np.arange(len(truth)), truth] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, np.repeat([f"p{i}" for i in range(plates)], rows), truth


def test_exact_prior_each_class_once_per_plate_and_not_worse_than_argmax():
    gains = []
    for seed in range(8):
        probs, plates, truth = _toy(seed)
        order = np.random.default_rng(seed).permutation(len(truth))   # any row order
        probs, plates, truth = probs[order], plates[order], truth[order]
        res = apply_prior(probs, plates, "exact")
        for p in set(plates):
            got = res.classes[plates == p]
            assert len(set(got)) == len(got)
        before = (probs.argmax(1) == truth).mean()
        after = (res.classes == truth).mean()
        # the joint-likelihood optimum is not a per-instance accuracy guarantee (a very noisy
        # model, argmax ~45%, can lose a few rows); with a useful model (argmax ~80%) it never
        # lost a row over 20 seeds, and it gains on average
        assert after >= before
        gains.append(after - before)
    assert np.mean(gains) > 0.05
    # when the argmax already is one class per plate it is the optimum: nothing changes
    probs = np.full((4, 6), 0.02)
    probs[np.arange(4), [3, 0, 5, 1]] = 0.9
    assert assign_exact(probs).tolist() == [3, 0, 5, 1]
    assert apply_prior(probs, ["a"] * 4).changed == 0


def test_iterative_prior_converges_to_a_balanced_near_optimal_assignment():
    for seed in range(4):
        probs, plates, _ = _toy(seed, plates=1, k=30, rows=24)
        res = balance_iterative(probs, step=1.0, min_step=1e-3)
        assert len(set(res.assignment.tolist())) == 24                    # balanced
        exact = np.log(probs)[np.arange(24), assign_exact(probs)].sum()
        assert res.score <= exact + 1e-9
        assert res.score >= exact - 30 * 1e-3 * 2                       # within K * step
        assert 1 < res.rounds < 20 and res.history[-1] <= res.score
        assert apply_prior(probs, plates, "iterative").classes.tolist() == res.assignment.tolist()


def test_prior_falls_back_to_argmax_on_plates_with_more_rows_than_classes():
    probs, _, _ = _toy(0, plates=1, k=5, rows=5)
    big = np.vstack([probs, probs[:2]])                                   # 7 rows, 5 classes
    plates = np.array(["big"] * 7 + ["ok"] * 5)
    allp = np.vstack([big, probs])
    with pytest.warns(UserWarning, match=r"\['big'\] have more rows than the 5 classes"):
        res = apply_prior(allp, plates)
    assert res.fallback_plates == ["big"]
    assert res.classes[:7].tolist() == big.argmax(1).tolist()
    assert len(set(res.classes[7:].tolist())) == 5
    with pytest.raises(ValueError, match="NaN"):
        apply_prior(np.full((2, 3), np.nan), ["a", "a"])


# ----------------------------------------------------------------------------- statistics, schedule
def test_cell_type_statistics_pool_batches_exactly_and_bad_statistics_are_named():
    rng = np.random.default_rng(0)
    pix = {b: rng.normal(m, s, size=(2, n)) for b, m, s, n in
           [("HEPG2-01", 10, 2, 400), ("HEPG2-02", 14, 3, 100), ("U2OS-01", 50, 5, 300)]}
    batch = {b: {"channels": ["a", "b"], "mean": v.mean(1).tolist(), "std": v.std(1).tolist(),
                 "pixels": v.shape[1]} for b, v in pix.items()}
    table = cell_type_table(batch)
    both = np.concatenate([pix["HEPG2-01"], pix["HEPG2-02"]], axis=1)
    assert np.allclose(table["HEPG2"]["mean"], both.mean(1))
    assert np.allclose(table["HEPG2"]["std"], both.std(1))
    meta = {"normalization": {"batch": batch, "all": {"all": batch["U2OS-01"]}}}
    stats = NormStats(meta, "cell_type", 2)
    assert stats.batch_groups({"batch": ["HEPG2-02", "U2OS-01"]}) == ["HEPG2", "U2OS"]
    x = torch.zeros(1, 2, 2, 2)
    want = (0 - table["HEPG2"]["mean"][0]) / table["HEPG2"]["std"][0]
    assert stats.apply(x, ["HEPG2"])[0, 0, 0, 0].item() == pytest.approx(want, rel=1e-5)
    with pytest.warns(UserWarning, match="no cell_type statistics for 'HUVEC'"):
        stats.apply(x, ["HUVEC"])
    bad = {"normalization": {"plate": {"P1": {"mean": [1.0, float("nan")], "std": [1.0, 1.0]}}}}
    with pytest.raises(TrainingError, match="plate 'P1' has NaN/inf statistics"):
        NormStats(bad, "plate", 2)
    with pytest.raises(TrainingError, match="no normalization statistics at level 'plate'"):
        NormStats({"normalization": {}}, "plate", 2)


def test_step_schedule_deepnoise_milestones():
    cfg = load_config("mean-teacher", {"steps": 160})
    lrs = lr_schedule(cfg.optim, 160, 64)
    assert lrs[0] == pytest.approx(3e-4) and lrs[99] == pytest.approx(3e-4)
    assert lrs[100] == pytest.approx(1e-4) and lrs[139] == pytest.approx(1e-4)
    assert lrs[140] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-5)
    assert cfg.optim.weight_decay == 2e-4 and cfg.optim.name == "adam"
    assert cfg.head == "arcface" and cfg.arcface_m == 0.1 and cfg.arcface_s == 30.0
    assert len(cfg.members) == 2 and cfg.data.normalize == "plate"
    with pytest.raises(RecipeError, match="optim.milestones"):
        load_config("mean-teacher-tiny", {"optim.milestones": [[1.5, 1e-4]]})
    with pytest.raises(RecipeError, match="data.normalize='well'"):
        load_config("mean-teacher-tiny", {"data.normalize": "well"})


# ----------------------------------------------------------------------------- end to end
SHAPE = (3, 28, 28)
TINY = {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 1, "progress": False,
        "data.crop": 20, "data.threads": 1, "members": ["test_efficientnet", "test_resnet"],
        "unlabelled_ratio": 0.5, "ema_decay": 0.9}


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mt")
    out = {"train": root / "train", "unlabelled": root / "unl", "unseen": root / "unseen",
           "other": root / "other"}
    # training set: 4 classes, the first 4 rows without a label (unlabelled rows in the batch)
    write_demo_shards(out["train"], n=32, shape=SHAPE, pixels="cells", samples_per_shard=16,
                      label_na=4)
    # the "test plates": unlabelled in training (their labels are never read), predicted after;
    # 12 wells on 3 plates: 4 per plate <= 4 classes, so the prior can hold everywhere
    write_demo_shards(out["unlabelled"], n=12, shape=SHAPE, pixels="cells", samples_per_shard=12,
                      seed=1)
    out["test"] = out["unlabelled"]
    write_demo_shards(out["unseen"], n=12, shape=SHAPE, pixels="cells", samples_per_shard=12,
                      seed=3, n_labels=6)
    write_demo_shards(out["other"], n=6, shape=(2, 28, 28), pixels="cells", samples_per_shard=6)
    return out


@pytest.fixture(scope="module")
def run(sets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mtrun") / "run"
    train("mean-teacher-tiny", out, **{"data.train": str(sets["train"]),
                                       "data.unlabelled": str(sets["unlabelled"]), **TINY})
    return out


def test_train_mixes_unlabelled_images_and_logs_every_loss(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        for key in ("cls_0", "cls_1", "consistency_0", "consistency_1", "pseudo_0", "pseudo_1"):
            assert math.isfinite(r[key])
        # 4 labelled-set rows (some NA) + 2 from data.unlabelled per micro-batch
        assert r["labelled_frac"] <= 4 / 6 + 1e-6
    assert steps[0]["ramp"] < steps[-1]["ramp"]
    state = checkpoint.load(run)
    assert set(state["modules"]) == {"students", "teachers"}
    assert state["method_state"]["unlabelled"]["samples_seen"] == 4 * 2
    assert state["signature"]["members"] == ["test_efficientnet", "test_resnet"]
    # the teachers' BatchNorm statistics are their own (they saw the teacher views)
    bn = [k for k in state["modules"]["teachers"] if k.endswith("running_mean")]
    assert bn and any(not torch.allclose(state["modules"]["teachers"][k],
                                         state["modules"]["students"][k]) for k in bn)


def test_prediction_uses_the_students_by_default_and_the_teachers_as_an_option(run):
    from cytodata.baselines.embedding import load_method

    method, cfg, _ = load_method(checkpoint.load(run), torch.device("cpu"))
    assert cfg.predict_with == "student"
    x = torch.randn(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    students = method.students.eval().proba(x)
    teachers = method.teachers.eval().proba(x)
    assert not torch.allclose(students, teachers)
    assert torch.allclose(method.predict_proba(x), students)
    method.cfg.predict_with = "teacher"
    assert torch.allclose(method.predict_proba(x), teachers)


def test_resume_repeats_the_uninterrupted_run(run, sets, tmp_path):
    import shutil

    # the run as it was after its step-2 checkpoint (a kill then), resumed to the end
    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    for name in ("step-4.pt", "last.pt"):
        (out / "checkpoints" / name).unlink()
    common = {"data.train": str(sets["train"]), "data.unlabelled": str(sets["unlabelled"]), **TINY}
    train("mean-teacher-tiny", out, resume=True, **common)
    a, b = checkpoint.load(run), checkpoint.load(out)
    assert checkpoint.load(out / "checkpoints" / "step-2.pt")["method_state"]["unlabelled"][
        "samples_seen"] == 2 * 2
    assert a["method_state"] == b["method_state"]
    for name in ("students", "teachers"):
        for k, v in a["modules"][name].items():
            assert torch.equal(v, b["modules"][name][k]), (name, k)


def test_predict_cli_per_well_with_the_plate_prior(run, sets, tmp_path):
    out = tmp_path / "pred.parquet"
    res = subprocess.run([sys.executable, "-m", "cytodata", "predict", str(run), str(sets["test"]),
                          "-o", str(out), "--prior", "plate", "--per", "well", "-q"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "accuracy on 12 labelled rows" in res.stdout
    table = pd.read_parquet(out)
    assert len(table) == 12
    for col in ("key", "plate", "well", "prediction", "probability", "top5", "label"):
        assert col in table.columns
    assert table.groupby("plate")["prediction"].apply(lambda s: s.is_unique).all()
    assert set(table["prediction"]) <= {"l0", "l1", "l2", "l3"}
    pairs = zip(table["top5"], table["prediction_argmax"], strict=True)
    assert all(len(t) == 4 and t[0] == a for t, a in pairs)
    probs = np.stack(table["probabilities"].to_numpy())
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    summary = json.loads((tmp_path / "pred.summary.json").read_text())
    assert summary["fallback_plates"] == [] and 0 <= summary["accuracy"] <= 1
    assert "accuracy_argmax" in summary
    # the iterative balancing gives a valid assignment too; without a prior, plain argmax
    it = predict(run, sets["test"], tmp_path / "it.parquet", per="well", prior_method="iterative",
                 progress=False)
    t2 = pd.read_parquet(tmp_path / "it.parquet")
    assert t2.groupby("plate")["prediction"].apply(lambda s: s.is_unique).all() and it["rows"] == 12
    none = predict(run, sets["test"], tmp_path / "none.parquet", prior="none", progress=False)
    t3 = pd.read_parquet(tmp_path / "none.parquet")
    assert (t3["prediction"] == t3["prediction_argmax"]).all() and none["changed_by_prior"] == 0


def test_predict_bad_inputs_unseen_classes_and_crowded_plates(run, sets, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = predict(run, sets["unseen"], tmp_path / "u.parquet", per="key", progress=False)
    text = " ".join(str(w.message) for w in caught)
    assert "labels the run never trained on" in text and summary["unseen_classes"]
    assert summary["rows_scored"] + summary["rows_unseen_class"] == 12
    # 32 training images on 3 plates: > 4 rows per plate -> argmax kept there, with a warning
    with pytest.warns(UserWarning, match="more rows than the 4 classes"):
        crowded = predict(run, sets["train"], tmp_path / "c.parquet", progress=False)
    assert sorted(crowded["fallback_plates"]) == ["P0", "P1", "P2"]
    with pytest.raises(TrainingError, match="channels"):
        predict(run, sets["other"], tmp_path / "o.parquet", progress=False)
    # --prior group without readable training plates: named, with the way out
    with pytest.raises(TrainingError, match=r"cannot read the training plates .*nowhere.*"
                                            r"--train-plates SHARDS"):
        predict(run, sets["test"], tmp_path / "g.parquet", prior="group", progress=False,
                train_plates=tmp_path / "nowhere")
    # NaN plate statistics in the predicted set: refused, naming the set and the plate
    import shutil

    nan_set = tmp_path / "nan-stats"
    shutil.copytree(sets["test"], nan_set)
    meta = json.loads((nan_set / "shards.json").read_text())
    meta["normalization"]["plate"]["P1"]["mean"][0] = float("nan")
    (nan_set / "shards.json").write_text(json.dumps(meta))
    with pytest.raises(TrainingError, match=r"nan-stats.*plate 'P1' has NaN/inf statistics"):
        predict(run, nan_set, tmp_path / "n.parquet", progress=False)


def test_embed_works_on_mean_teacher_runs(run, sets, tmp_path):
    out = embed(run, sets["test"], tmp_path / "emb.parquet", progress=False)
    table = pd.read_parquet(out)
    emb = [c for c in table.columns if c.startswith("emb_")]
    assert len(table) == 12 and len(emb) > 0 and np.isfinite(table[emb].to_numpy()).all()


def test_unlabelled_set_with_other_channels_is_refused(sets, tmp_path):
    with pytest.raises(TrainingError, match=r"data.unlabelled=.*channels .* differ"):
        train("mean-teacher-tiny", tmp_path / "bad", **{
            "data.train": str(sets["train"]), "data.unlabelled": str(sets["other"]), **TINY})
    with pytest.raises(RecipeError, match="head='cosface'"):
        train("mean-teacher-tiny", tmp_path / "bad2", **{
            "data.train": str(sets["train"]), **TINY, "head": "cosface"})


# ----------------------------------------------------------------------------- DeepNoise's stages
def test_deepnoise_stage2_starts_from_stage1_and_trains_on_balanced_pseudo_labels(sets, tmp_path):
    small = {"batch_size": 4, "data.crop": 20, "data.threads": 1, "progress": False,
             "log_every": 1, "data.train": str(sets["train"])}
    stage1 = train("deepnoise-stage1-tiny", tmp_path / "s1", **small, steps=1,
                   checkpoint_every=1)
    with pytest.raises(TrainingError, match=r"second stage.*--set init_from=RUN1"):
        train_state_at_start(None, sets, checkpoint.load(stage1))
    with pytest.raises(TrainingError, match=r"init_from=.*nowhere: no stage-1 checkpoint.*"
                                            r"deepnoise-stage1"):
        train_state_at_start(tmp_path / "nowhere", sets, checkpoint.load(stage1))
    # labels after epoch 1 (step 2), their weight from epoch 2 (0-based steps 4, 5: logged 5, 6)
    out = train("deepnoise-stage2-tiny", tmp_path / "s2", **small, steps=6, checkpoint_every=6,
                init_from=str(stage1), epoch_steps=2, pseudo_first_epoch=1,
                pseudo_warmup_epochs=2, pseudo_views=1, unlabelled_ratio=1.0, pseudo_balance_iterations=500,
                **{"data.unlabelled": str(sets["unlabelled"])})
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "loss" in r}
    assert [steps[s]["pseudo_weight"] for s in range(1, 7)] == [0, 0, 0, 0, 0.05, 0.05]
    assert "pseudo_0" in steps[5] and "pseudo_0" not in steps[4]
    state = checkpoint.load(out)
    pl = state["method_state"]["pseudo"]
    assert len(pl["keys"]) == 12 and all(0 <= v < 4 for v in pl["labels"])
    # 4 wells per plate and 4 classes: balanced, each class once per plate
    plate_of = dict(zip(*_keys_and_plates(sets["unlabelled"]), strict=True))
    by_plate: dict[str, list[int]] = {}
    for k, v in zip(pl["keys"], pl["labels"], strict=True):
        by_plate.setdefault(plate_of[k], []).append(v)
    assert all(sorted(v) == [0, 1, 2, 3] for v in by_plate.values())
    # the teacher started from stage 1's head; the student's head was fresh (DN main.py:429)
    s1 = checkpoint.load(stage1)["modules"]["students"]
    s2 = train_state_at_start(stage1, sets)
    head = [k for k in s1 if ".head." in k][0]
    assert torch.equal(s2["teachers"][head], s1[head])
    assert not torch.equal(s2["students"][head], s1[head])


def _keys_and_plates(path):
    index = pd.read_parquet(Path(path) / "index.parquet", columns=["key", "plate"])
    return index["key"].astype(str).tolist(), index["plate"].astype(str).tolist()


def train_state_at_start(stage1, sets, st=None):
    """The stage-2 method's modules right after construction from ``stage1`` (a training run)."""
    from cytodata.baselines.data import DataInfo
    from cytodata.baselines.methods.mean_teacher import MeanTeacher

    st = st or checkpoint.load(stage1)
    cfg = load_config("deepnoise-stage2-tiny",
                      {"init_from": None if stage1 is None else str(stage1)})
    info = DataInfo(channels=list(st["channels"]), n_channels=len(st["channels"]), shape=None,
                    classes=list(st["classes"]), n_train=8)
    method = MeanTeacher(cfg, info, torch.device("cpu"))
    return {"students": method.students.state_dict(), "teachers": method.teachers.state_dict()}


def test_select_keeps_the_best_balanced_validation_checkpoint_for_stage2_and_predict(sets, tmp_path):
    # DN main.py:297-302: max_valid_model.pth whenever balance_acc beats its best; stage 2
    # starts from it (main.py:894)
    small = {"batch_size": 4, "data.crop": 20, "data.threads": 1, "progress": False,
             "log_every": 1, "data.train": str(sets["train"]), "select": "val_balanced_top1"}
    with pytest.raises(TrainingError, match=r"select=val_balanced_top1: .* has none; name a "
                                            r"validation set .*--set select=null"):
        train("deepnoise-stage1-tiny", tmp_path / "noval", **small, steps=1,
              **{"data.val_split": None})
    from cytodata.baselines.engine import Engine

    with pytest.raises(TrainingError, match=r"select=val_nothing: validation reports no such "
                                            r"metric \(it reports val_balanced_top1, val_top1\)"):
        engine = Engine(load_config("deepnoise-stage1-tiny", {"select": "val_nothing"}), tmp_path)
        engine._best = {}
        engine._keep_best({"val_top1": 0.5, "val_balanced_top1": 0.5}, None, None, None, None,
                          1, 0, None)
    run = train("deepnoise-stage1-tiny", tmp_path / "s1", **small, steps=4, val_every=1,
                checkpoint_every=4, **{"optim.lr": 0.03})
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if "val_balanced_top1" in r]
    assert [r["step"] for r in vals] == [1, 2, 3, 4]
    scores = [r["val_balanced_top1"] for r in vals]
    first_best = vals[int(np.argmax(scores))]["step"]     # strictly better only: the first max
    best = checkpoint.load(run)                            # a run folder resolves to best.pt
    assert best["step"] == first_best and best["select"]["value"] == max(scores)
    assert checkpoint.resolve(run).name == "best.pt"
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == 4
    assert [r for r in rows if r.get("selected")][0]["step"] == first_best
    # stage 2's teacher starts from the kept checkpoint's head, predict reports which one
    s2 = train_state_at_start(run, sets)
    head = [k for k in best["modules"]["students"] if ".head." in k][0]
    assert torch.equal(s2["teachers"][head], best["modules"]["students"][head])
    summary = predict(run, sets["test"], tmp_path / "p.parquet", per="well", tta=1,
                      progress=False)
    assert summary["checkpoint"].endswith("best.pt") and summary["checkpoint_step"] == first_best


def test_validation_every_n_steps_and_at_epoch_ends_and_cycle_ends_keep_nothing(sets, tmp_path):
    # DN main.py:291-316: do_valid every 1,000 steps and after every epoch (val_every +
    # val_epoch_ends); main.py:557-580: the validation at a cycle's end keeps nothing
    # (select_skip_restarts). 25 training rows / batch 5: epochs of 5 steps; 2 cycles of 3 steps
    run = train("deepnoise-stage1-tiny", tmp_path / "v", **{
        "batch_size": 5, "data.crop": 20, "data.threads": 1, "progress": False, "log_every": 1,
        "data.train": str(sets["train"]), "select": "val_balanced_top1", "steps": 6,
        "checkpoint_every": 6, "val_every": 3, "val_epoch_ends": True,
        "select_skip_restarts": True, "optim.schedule": "cosine_restarts", "optim.cycles": 2,
        "optim.min_lr": 1e-4, "optim.lr": 0.03})
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if "val_balanced_top1" in r]
    assert [r["step"] for r in vals] == [3, 5, 6]                 # 6: once, not twice
    assert [bool(r.get("select_skipped")) for r in vals] == [True, False, True]
    assert checkpoint.load(run)["step"] == 5                      # the one counted validation
