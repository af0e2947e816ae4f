"""benchmarks/gpu_check.py (`make gpu-check`): its CPU dry run, its runner, and a CUDA test."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PART_KEYS = {"status", "budget_s", "seconds", "error", "results", "log"}


def test_dry_run_writes_the_documented_report(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=560)
    report = json.loads((out / "gpu_check.json").read_text())
    failed = {n: p["error"] for n, p in report["parts"].items() if p["status"] != "ok"}
    assert proc.returncode == 0 and not failed, failed
    assert report["schema"] == "cytodata.gpu_check/1" and report["dry_run"] is True
    assert {"device", "precision", "budget_s", "started", "sizes", "elapsed_s", "stopped_early"} <= set(report)
    parts = report["parts"]
    configs = sorted(p.stem for p in (ROOT / "baselines" / "configs").glob("*.yaml"))
    expected = ["env", "data", "cuda-tests", "train-ratio", "dino-vits8", "embed", "batches-pinned",
                "train-ratio-compile"] + [f"config:{c}" for c in configs]
    assert sorted(parts) == sorted(expected)
    for name, part in parts.items():
        assert set(part) == PART_KEYS and part["status"] == "ok", (name, part["error"])
        assert (out / part["log"]).exists()
    # every -tiny config trained, resumed from its checkpoint, and kept a finite loss
    for c in configs:
        r = parts[f"config:{c}"]["results"]
        if c.endswith("-tiny"):
            assert r["trained"] and r["loss_finite"] and r["resume"]["ok"], r
            assert r["resume"]["to_step"] == r["resume"]["from_step"] + 1 == 3 and r["images_per_s"] > 0
            assert 0 <= r["data_wait"] <= 1 and r["size"] == "full"
        else:
            assert r["trained"] is False and r["method"]       # full size: resolved, not trained
    assert math.isfinite(parts["train-ratio"]["results"]["ratio"])
    assert parts["train-ratio-compile"]["results"]["compile"] is True
    assert parts["embed"]["results"]["images"] == 64 and parts["embed"]["results"]["images_per_s"] > 0
    assert parts["batches-pinned"]["results"]["pinned"]["batches"] == 4
    assert parts["cuda-tests"]["results"]["tests"] >= 3 and parts["cuda-tests"]["results"]["failed"] == 0
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} | ok |" in table for name in parts)


def test_runner_records_a_failure_and_a_timeout_and_goes_on(benchmark_module, tmp_path):
    gc = benchmark_module("gpu_check")

    def boom(ctx):
        raise ValueError("part broke")

    def slow(ctx):
        ctx.save({"first": 1})             # results so far survive the kill
        time.sleep(30)
        return {"never": True}

    parts = [gc.Part("boom", 10, boom, needs_data=False), gc.Part("slow", 1.5, slow, needs_data=False),
             gc.Part("fine", 10, lambda ctx: {"x": 1}, needs_data=False),
             gc.Part("late", 10, lambda ctx: {"x": 2}, needs_data=False)]
    (tmp_path / "logs").mkdir()
    ctx = gc.Context(gc.DRY, tmp_path, tmp_path, tmp_path / "logs" / "part.json")
    t0 = time.monotonic()
    report = gc.run_all(parts, ctx, budget=60, dry_run=False)
    assert time.monotonic() - t0 < 20
    p = report["parts"]
    assert p["boom"]["status"] == "failed" and "ValueError: part broke" in p["boom"]["error"]
    assert "Traceback" in (tmp_path / p["boom"]["log"]).read_text()
    assert p["slow"]["status"] == "timeout" and p["slow"]["results"] == {"first": 1}
    assert "Thread" in (tmp_path / p["slow"]["log"]).read_text()      # the stacks at the time limit
    assert p["fine"]["status"] == "ok" and p["fine"]["results"] == {"x": 1}
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert on_disk["parts"]["slow"]["status"] == "timeout"
    # the overall limit: parts not reached are skipped, with the reason
    short = gc.run_all([parts[2], gc.Part("slow", 30, slow, needs_data=False), parts[3]], ctx, budget=6,
                       dry_run=False)
    assert short["parts"]["late"]["status"] == "skipped" and short["stopped_early"]
    assert short["parts"]["slow"]["status"] == "timeout"
    assert gc.select(gc.plan_parts(["a", "a-tiny"]), "config:a-")[-1].name == "config:a-tiny"
    with pytest.raises(SystemExit, match="no such part"):
        gc.select(gc.plan_parts(["a"]), "nope")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_engine_trains_and_resumes_on_cuda_in_bf16_channels_last(tmp_path):
    from cytodata.baselines import checkpoint, train
    from cytodata.loaders.demo import write_demo_shards

    write_demo_shards(tmp_path / "set", 48, (3, 40, 40), samples_per_shard=16)
    kw = {"data.train": str(tmp_path / "set"), "data.train_split": None, "data.val_split": None,
          "device": "cuda", "precision": "bf16", "channels_last": True, "steps": 6,
          "checkpoint_every": 3, "log_every": 1, "progress": False}
    run = train("classifier-tiny", tmp_path / "run", **kw)
    train("classifier-tiny", run, resume=True, **dict(kw, steps=9))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 9 and all(math.isfinite(v) for v in losses)
    assert checkpoint.load(run / "checkpoints" / "last.pt", map_location="cpu")["step"] == 9
