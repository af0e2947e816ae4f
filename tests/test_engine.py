"""The training engine and the weak-label classifier on tiny real shard sets (CPU)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cytodata.baselines import checkpoint, embed, load_config, train
from cytodata.errors import RecipeError, TrainingError
from cytodata.loaders.demo import write_demo_shards

TINY = {"steps": 12, "batch_size": 8, "checkpoint_every": 4, "log_every": 1, "progress": False,
        "data.crop": 24, "data.threads": 2, "optim.warmup_steps": 2}


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rows(run) if "loss" in r}


def phenotype_shards(out: Path, n: int = 48, shape=(3, 32, 32), n_classes: int = 3) -> Path:
    """Demo shards whose label is the cells' phenotype (learnable), ``n_classes`` of them."""
    from cytodata.loaders.demo import demo_manifest
    from cytodata.shards import write
    from cytodata.synthetic import DEFAULT_MOAS

    table = demo_manifest(out.parent / f"{out.name}-images", n, shape, pixels="cells")
    # sample i shows phenotype DEFAULT_MOAS[i % 5]; keep the first n_classes phenotypes
    phen = np.arange(n) % len(DEFAULT_MOAS)
    table = table[phen < n_classes].reset_index(drop=True)
    table["label"] = pd.array([f"p{p}" for p in phen[phen < n_classes]], dtype="string")
    table["split"] = pd.array(["val" if j % 4 == 3 else "train" for j in range(len(table))], dtype="string")
    write(table, out, samples_per_shard=12, scheduler="synchronous", progress=False)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return phenotype_shards(tmp_path_factory.mktemp("engine") / "shards", n=80)


def cli(*args: str, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cytodata", *args], capture_output=True, text=True,
                          env=env, **kw)


def sets(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += ["--set", f"{k}={v}"]
    return out


def test_loss_decreases_and_run_folder_layout(shards, tmp_path):
    run = train("classifier-tiny", tmp_path / "run", **{**TINY, "steps": 40, "data.train": str(shards),
                                                         "optim.lr": 3e-3})
    assert (run / "config.yaml").exists()
    ckpts = run / "checkpoints"
    assert (ckpts / "last.pt").exists() and (ckpts / "step-40.pt").exists()
    assert len(list(ckpts.glob("step-*.pt"))) == 3  # keep_checkpoints
    loss = losses(run)
    first, last = np.mean([loss[s] for s in range(1, 6)]), np.mean([loss[s] for s in range(36, 41)])
    assert last < 0.8 * first, (first, last)
    train_rows = [r for r in rows(run) if "loss" in r]
    assert all(0.0 <= r["data_wait"] <= 1.0 and r["images_per_s"] > 0 and "lr" in r for r in train_rows)
    val = [r for r in rows(run) if "val_top1" in r]
    assert val and all(0.0 <= r["val_top1"] <= r["val_top5"] <= 1.0 for r in val)
    index = pd.read_parquet(shards / "index.parquet")
    assert val[-1]["val_samples"] == int((index["split"] == "val").sum())
    # the resolved config round-trips through the typed loader
    assert load_config(str(run / "config.yaml")).steps == 40
    state = checkpoint.load(run)
    assert state["step"] == 40 and state["classes"] == ["p0", "p1", "p2"]


def test_kill_and_resume_reproduces_the_uninterrupted_run(shards, tmp_path):
    # both runs in processes of their own with one torch thread: float32 sums in one order
    overrides = {**TINY, "data.train": str(shards), "log_keys": True, "torch_threads": 1}
    full = tmp_path / "full"
    res = cli("train", "classifier-tiny", "-o", str(full), "-q", *sets(overrides))
    assert res.returncode == 0, res.stderr
    # a real kill: SIGKILL the training process once its first checkpoint exists
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "cytodata", "train", "classifier-tiny", "-o", str(run),
                             "-q", *sets(overrides)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step-4.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped = checkpoint.load(run)["step"]
    assert stopped < 12, "the run finished before it was killed; nothing was resumed"
    done = cli("train", "classifier-tiny", "-o", str(run), "--resume", "-q", *sets(overrides))
    assert done.returncode == 0, done.stderr
    a, b = losses(full), losses(run)
    assert sorted(a) == sorted(b) == list(range(1, 13))  # no duplicated or missing metric rows
    for s in range(stopped + 1, 13):
        # same arithmetic; a process of its own may sum float32 in another order (~1e-6)
        assert a[s] == pytest.approx(b[s], rel=2e-5, abs=1e-7), (s, a[s], b[s])
    wa = checkpoint.load(full)["modules"]["model"]
    wb = checkpoint.load(run)["modules"]["model"]
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-5, atol=1e-6), k
    ka = (full / "keys" / "rank-0.jsonl").read_text()
    kb = (run / "keys" / "rank-0.jsonl").read_text()
    assert ka == kb  # the same samples in the same steps


def test_resume_refuses_a_changed_config_and_other_checkpoints(shards, tmp_path):
    base = {**TINY, "steps": 4, "data.train": str(shards)}
    run = train("classifier-tiny", tmp_path / "run", **base)
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        train("classifier-tiny", run, **base)
    with pytest.raises(TrainingError, match=r"optim\.lr"):
        train("classifier-tiny", run, resume=True, **{**base, "optim.lr": 0.1})
    # another architecture / channel count: refused with what differs
    state = checkpoint.load(run)
    with pytest.raises(TrainingError, match="model: checkpoint 'resnet10t' vs this run 'test_efficientnet'"):
        checkpoint.check_signature(state["signature"], dict(state["signature"], model="test_efficientnet"), "ckpt")
    other = tmp_path / "two-channel"
    write_demo_shards(other, n=12, shape=(2, 32, 32), pixels="cells", samples_per_shard=12, n_labels=3)
    with pytest.raises(TrainingError, match="channels"):
        embed(run, other, tmp_path / "emb.parquet", progress=False)


def test_steps_may_grow_on_resume(shards, tmp_path):
    run = train("classifier-tiny", tmp_path / "run", **{**TINY, "steps": 4, "data.train": str(shards)})
    # steps is not a result-changing key for the finished part, but the schedule is per run length
    train("classifier-tiny", run, resume=True, **{**TINY, "steps": 6, "data.train": str(shards)})
    assert checkpoint.load(run)["step"] == 6
    assert sorted(losses(run)) == list(range(1, 7))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['stepz'\]"):
        load_config("classifier-tiny", {"stepz": 3})
    with pytest.raises(RecipeError, match="expected an integer"):
        load_config("classifier-tiny", {"batch_size": "big"})
    with pytest.raises(RecipeError, match=r"data\.normalize"):
        load_config("classifier-tiny", {"data.normalize": "sometimes"})
    with pytest.raises(RecipeError, match="shipped: .*classifier, classifier-tiny"):
        load_config("no-such-config")
    with pytest.raises(RecipeError, match=r"method: unknown training method 'magic'"):
        load_config({"method": "magic"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_config(str(bad))


def test_bad_data_is_refused_with_the_fix(shards, tmp_path):
    with pytest.raises(TrainingError, match="data.train is not set"):
        train("classifier-tiny", tmp_path / "a", **TINY)
    with pytest.raises(TrainingError, match="not a shard set"):
        train("classifier-tiny", tmp_path / "b", **{**TINY, "data.train": str(tmp_path)})
    unlabelled = tmp_path / "unlabelled"
    write_demo_shards(unlabelled, n=10, shape=(3, 32, 32), samples_per_shard=10, label_na=10)
    with pytest.raises(TrainingError, match="supervised"):
        train("classifier-tiny", tmp_path / "c", **{**TINY, "data.train": str(unlabelled)})
    # validation classes the training split never saw
    val = tmp_path / "val"
    phenotype_shards(val, n=20, n_classes=5)
    with pytest.raises(TrainingError, match=r"classes \['p3', 'p4'\] have no training samples"):
        train("classifier-tiny", tmp_path / "d", **{**TINY, "data.train": str(shards), "data.val": str(val),
                                                    "data.val_split": None})
    other = tmp_path / "two-channel"
    write_demo_shards(other, n=10, shape=(2, 32, 32), samples_per_shard=10, n_labels=3)
    with pytest.raises(TrainingError, match="channels differ between data.train"):
        train("classifier-tiny", tmp_path / "e", **{**TINY, "data.train": str(shards), "data.val": str(other),
                                                    "data.val_split": None})
    with pytest.raises(TrainingError, match="crop 64 is larger than the images"):
        train("classifier-tiny", tmp_path / "f", **{**TINY, "data.train": str(shards), "data.crop": 64})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_requested_without_a_gpu_is_an_error(shards, tmp_path):
    res = cli("train", "classifier-tiny", "-o", str(tmp_path / "run"), "-q",
              *sets({**TINY, "data.train": shards, "device": "cuda"}))
    assert res.returncode == 2
    assert "no CUDA device is available" in res.stderr and "device=cpu" in res.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nan_loss_stops_with_step_and_hint(shards, tmp_path):
    with pytest.raises(TrainingError) as info:
        train("classifier-tiny", tmp_path / "run", **{**TINY, "data.train": str(shards), "optim.name": "sgd",
                                                      "optim.lr": 1e12, "optim.warmup_steps": 0})
    msg = str(info.value)
    assert "loss is" in msg and ("nan" in msg or "inf" in msg)
    assert "last finite loss" in msg and "optim.lr" in msg


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    overrides = {**TINY, "steps": 8, "data.train": str(shards)}
    train("classifier-tiny", run, **{**overrides, "steps": 4})
    size = (run / "checkpoints" / "step-4.pt").stat().st_size
    before = (run / "checkpoints" / "step-4.pt").read_bytes()

    def limit():  # a real EFBIG from the kernel once a file would pass half a checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    res = subprocess.run([sys.executable, "-m", "cytodata", "train", "classifier-tiny", "-o", str(run), "--resume",
                          "-q", *sets(overrides)], capture_output=True, text=True, preexec_fn=limit)
    assert res.returncode == 2, res.stderr
    assert "could not write checkpoint" in res.stderr and "step-4.pt is intact" in res.stderr
    assert (run / "checkpoints" / "step-4.pt").read_bytes() == before
    assert checkpoint.load(run)["step"] == 4
    assert not list((run / "checkpoints").glob(".*tmp*"))
    # with space again, the resume completes
    assert cli("train", "classifier-tiny", "-o", str(run), "--resume", "-q", *sets(overrides)).returncode == 0
    assert checkpoint.load(run)["step"] == 8


def test_checkpoints_load_weights_only(shards, tmp_path):
    run = train("classifier-tiny", tmp_path / "run", **{**TINY, "steps": 2, "data.train": str(shards)})
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["format"] == checkpoint.FORMAT
    # a pickle with arbitrary objects is refused, not executed
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": pd.Timestamp("2020-01-01")}, evil)
    with pytest.raises(TrainingError, match="not a readable checkpoint"):
        checkpoint.load(evil)


def test_embed_writes_one_row_per_key_and_resumes_per_shard(shards, tmp_path):
    run = train("classifier-tiny", tmp_path / "run", **{**TINY, "steps": 3, "data.train": str(shards)})
    out = embed(run, shards, tmp_path / "emb.parquet", progress=False, batch_size=16)
    table = pd.read_parquet(out)
    index = pd.read_parquet(shards / "index.parquet")
    assert sorted(table["key"]) == sorted(index["key"]) and table["key"].is_unique
    emb = [c for c in table.columns if c.startswith("emb_")]
    assert len(emb) > 8 and np.isfinite(table[emb].to_numpy()).all()
    assert {"label", "plate", "split"} <= set(table.columns)
    assert not (tmp_path / "emb.parquet.parts").exists()
    # resumable: finished shard parts are reused, the result is the same
    parts = tmp_path / "emb2.parquet.parts"
    parts.mkdir()
    first = pd.read_parquet(out)
    shard0 = sorted(index["shard"].unique())[0]
    keys0 = index.loc[index["shard"] == shard0, "key"]
    first[first["key"].isin(keys0)][["key"] + emb].to_parquet(parts / "part-000000.parquet")
    again = pd.read_parquet(embed(run, shards, tmp_path / "emb2.parquet", progress=False))
    pd.testing.assert_frame_equal(first.sort_values("key").reset_index(drop=True),
                                  again.sort_values("key").reset_index(drop=True), atol=1e-5)
    # the CLI
    res = cli("embed", str(run), str(shards), "-o", str(tmp_path / "cli.parquet"), "-q")
    assert res.returncode == 0, res.stderr
    assert len(pd.read_parquet(tmp_path / "cli.parquet")) == len(index)


def test_pretrained_local_weights_adapt_the_first_conv(tmp_path):
    import timm

    from cytodata.baselines.models import create

    rgb = timm.create_model("test_efficientnet", num_classes=10, in_chans=3)
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    model = create("test_efficientnet", in_chans=5, num_classes=4, pretrained=str(path))
    first = model.pretrained_cfg["first_conv"] + ".weight"
    assert model.state_dict()[first].shape[1] == 5
    # same filters up to timm's channel repetition/scaling rule, classifier left fresh
    w_rgb = rgb.state_dict()[first]
    assert torch.allclose(model.state_dict()[first][:, :3].sum(1), (w_rgb * 3 / 5).sum(1), atol=1e-5)
    with pytest.raises(TrainingError, match="another architecture"):
        create("resnet10t", in_chans=3, num_classes=4, pretrained=str(path))
    with pytest.raises(TrainingError, match="no such file"):
        create("test_efficientnet", in_chans=3, num_classes=4, pretrained=str(tmp_path / "missing.pth"))


@pytest.mark.timeout(600)
def test_torchrun_ddp_two_ranks_stay_equal_and_cover_each_sample_once(shards, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # 48 rows, ~38 training rows / (2 ranks x batch 4): ~5 steps per epoch
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "cytodata", "train", "classifier-tiny", "-o", str(run),
                          "-q", *sets({**TINY, "data.train": shards, "steps": 6, "batch_size": 4,
                                       "log_keys": True, "data.threads": 1})],
                         capture_output=True, text=True, env=env, timeout=560)
    assert res.returncode == 0, res.stderr[-3000:]
    sums = next(r["params_checksum_ranks"] for r in rows(run) if "params_checksum_ranks" in r)
    assert len(sums) == 2 and sums[0] == sums[1]
    seen = []
    for r in (0, 1):
        for line in (run / "keys" / f"rank-{r}.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["epoch"] == 0:
                seen += row["keys"]
    index = pd.read_parquet(shards / "index.parquet")
    train_keys = sorted(index.loc[index["split"] == "train", "key"])
    assert sorted(seen) == train_keys  # every training sample exactly once in epoch 0


def test_classifier_skips_training_rows_without_a_label(tmp_path):
    """Rows with no label (NA -> -1) in the training split are not a class: they are skipped."""
    from cytodata.loaders.demo import demo_manifest
    from cytodata.shards import write

    table = demo_manifest(tmp_path / "img", 30, (3, 32, 32), pixels="cells", label_na=8)
    table["split"] = pd.array(["train"] * 30, dtype="string")
    write(table, tmp_path / "shards", samples_per_shard=10, scheduler="synchronous", progress=False)
    run = train("classifier-tiny", tmp_path / "run", **{**TINY, "steps": 4, "data.train": str(tmp_path / "shards"),
                                                         "data.val_split": None})
    assert all(np.isfinite(v) for v in losses(run).values())
    assert "" not in checkpoint.load(run)["classes"]


@pytest.mark.parametrize("level", ["all", "batch", "none"])
def test_every_advertised_normalisation_level_trains_and_embeds(shards, tmp_path, level):
    # data.normalize=all must train past the first batch (the batches carry no 'all' column)
    run = train("classifier-tiny", tmp_path / level,
                **{**TINY, "steps": 2, "data.train": str(shards), "data.normalize": level})
    out = embed(run, shards, tmp_path / f"{level}.parquet", progress=False)
    emb = pd.read_parquet(out)
    assert len(emb) == len(pd.read_parquet(shards / "index.parquet"))
    assert np.isfinite(emb[[c for c in emb.columns if c.startswith("emb_")]].to_numpy()).all()


def test_normalise_all_uses_the_whole_sets_statistics():
    from cytodata.baselines.data import NormStats

    meta = {"normalization": {"plate": {"P1": {"mean": [9.0], "std": [9.0]}},
                              "all": {"all": {"mean": [2.0], "std": [4.0]}}}}
    stats = NormStats(meta, "all", 1)
    groups = stats.batch_groups({"plate": ["P1", "P2"]})       # any batch, no 'all' column
    x = torch.full((2, 1, 1, 1), 10.0)
    assert stats.apply(x, groups).flatten().tolist() == [2.0, 2.0]   # (10 - 2) / 4, not plate P1's


def test_normalise_controls_uses_each_plates_negcon_statistics():
    from cytodata.baselines.data import NormStats

    meta = {"normalization": {"plate": {"P1": {"mean": [9.0], "std": [9.0]},
                                        "P2": {"mean": [5.0], "std": [1.0]}},
                              "controls": {"P1": {"mean": [2.0], "std": [4.0]}},
                              "all": {"all": {"mean": [0.0], "std": [1.0]}}}}
    with pytest.warns(UserWarning, match="1 plate.*no negative-control images.*P2"):
        stats = NormStats(meta, "controls", 1)
    x = torch.full((2, 1, 1, 1), 10.0)
    got = stats.apply(x, stats.batch_groups({"plate": ["P1", "P2"]})).flatten().tolist()
    assert got == [2.0, 5.0]   # P1 by its DMSO images (10 - 2) / 4; P2 (no DMSO) by its own images
    with pytest.warns(UserWarning, match="no negative-control statistics.*own all-image"):
        bare = NormStats({"normalization": {"plate": meta["normalization"]["plate"]}}, "controls", 1)
    assert bare.apply(x, bare.batch_groups({"plate": ["P1", "P2"]})).flatten().tolist() == pytest.approx([1 / 9, 5.0])


EMBED_UNDER_DDP = r"""
import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from cytodata.baselines import embed

def work(rank, run, shards, out, store):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        embed(run, shards, f"{out}-{rank}.parquet", progress=False, batch_size=16)
    finally:
        dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(work, args=tuple(sys.argv[1:5]), nprocs=2)
"""


def test_embed_inside_a_process_group_embeds_every_row_on_every_rank(shards, tmp_path):
    # reading with the group's rank would embed half of every shard on each rank and the inner
    # merge would drop the other half
    run = train("classifier-tiny", tmp_path / "run", **{**TINY, "steps": 2, "data.train": str(shards)})
    alone = pd.read_parquet(embed(run, shards, tmp_path / "alone.parquet", progress=False))
    script = tmp_path / "embed_ddp.py"  # spawned children re-import it: a file, not -c
    script.write_text(EMBED_UNDER_DDP)
    res = subprocess.run([sys.executable, str(script), str(run), str(shards),
                          str(tmp_path / "ddp"), str(tmp_path / "store")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in (0, 1):
        got = pd.read_parquet(tmp_path / f"ddp-{rank}.parquet")
        assert len(got) == len(alone)
        pd.testing.assert_frame_equal(got.sort_values("key").reset_index(drop=True),
                                      alone.sort_values("key").reset_index(drop=True), atol=1e-5)


def test_embeddings_carry_the_manifest_columns_protocols_need(tmp_path, capsys):
    """Shards written from a manifest folder record its path and sha256; embed joins the
    manifest columns the index lacks (concentration), so `evaluate --protocol bbbc021-ando` on
    the embeddings alone has what it needs; without them the error names --metadata."""
    from cytodata.cli import main
    from cytodata.loaders.demo import demo_manifest
    from cytodata.schema import write_manifest
    from cytodata.shards import write

    table = demo_manifest(tmp_path / "img", 24, (3, 32, 32))
    table["compound"] = pd.array(["dmso" if i % 3 == 0 else f"c{i % 4}" for i in range(24)], dtype="string")
    table["concentration"] = [0.0 if i % 3 == 0 else 0.1 * (i % 2 + 1) for i in range(24)]
    table["moa"] = pd.array([None if i % 3 == 0 else f"m{i % 4}" for i in range(24)], dtype="string")
    (tmp_path / "m").mkdir()
    write_manifest(table, tmp_path / "m" / "manifest.parquet")
    write(tmp_path / "m", tmp_path / "shards", samples_per_shard=12, scheduler="synchronous", progress=False)
    run = train("classifier-tiny", tmp_path / "run", **{**TINY, "steps": 1, "data.train": str(tmp_path / "shards")})
    emb = pd.read_parquet(embed(run, tmp_path / "shards", tmp_path / "emb.parquet", progress=False))
    got = emb.set_index("key")["concentration"].sort_index()
    assert np.allclose(got.to_numpy(), table.set_index("key")["concentration"].sort_index().to_numpy())
    assert "channel_paths" not in emb.columns
    emb.drop(columns=["concentration"]).to_parquet(tmp_path / "bare.parquet")
    rc = main(["evaluate", str(tmp_path / "bare.parquet"), "--protocol", "bbbc021-ando", "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "['concentration']" in err and "--metadata MANIFEST_DIR" in err


def test_train_on_a_zarr_set_or_without_splits_gives_the_cli_way_out(tmp_path):
    from cytodata.loaders.demo import demo_manifest
    from cytodata.schema import write_manifest
    from cytodata.shards import write

    table = demo_manifest(tmp_path / "img", 12, (3, 32, 32))
    (tmp_path / "m").mkdir()
    write_manifest(table, tmp_path / "m" / "manifest.parquet")
    write(tmp_path / "m", tmp_path / "zarr", format="zarr", scheduler="synchronous", progress=False)
    with pytest.raises(TrainingError, match=rf"is a cytodata-zarr set.*`cytodata shard {tmp_path / 'm'} -o OUT`"):
        train("classifier-tiny", tmp_path / "run", **{**TINY, "data.train": str(tmp_path / "zarr")})
    # a set whose split column is empty: the way out is named
    table["split"] = pd.array([None] * len(table), dtype="string")
    write(table, tmp_path / "nosplit", samples_per_shard=12, scheduler="synchronous", progress=False)
    with pytest.raises(TrainingError, match=r"splits present: \[\]; .*--set data.train_split=null"):
        train("classifier-tiny", tmp_path / "run2", **{**TINY, "data.train": str(tmp_path / "nosplit")})
    # the loaders' own refusals name the command that writes the other format (no circle)
    from cytodata.errors import ShardError
    from cytodata.loaders import StreamingDataset, ZarrDataset

    with pytest.raises(ShardError, match=r"`cytodata shard MANIFEST_DIR -o OUT`"):
        StreamingDataset(tmp_path / "zarr")
    with pytest.raises(ShardError, match=r"`cytodata shard MANIFEST_DIR -o OUT --format zarr`"):
        ZarrDataset(tmp_path / "nosplit")
