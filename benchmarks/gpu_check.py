"""Every GPU path in one call: `make gpu-check` on a machine with one CUDA GPU.

Runs, in order of value, each part in a process of its own (forked, its own process group) with
a time budget; a part that fails or runs out of time is recorded with its error and the rest go
on; at the overall limit (``--budget-s``, default 480 s) the parts not reached are recorded as
skipped. Writes ``gpu_check.json`` (schema in docs/gpu.md) and ``gpu_check.md`` (a short
table) to ``--out`` (default ``$OUT``, else ``gpu-check``), the parts' logs to ``logs/``.

Parts (``--only`` takes names or prefixes, comma-separated: ``--only cuda-tests,config:``):

  env                  torch, CUDA, device, memory, bf16 support, versions
  data                 the shard sets the other parts read (5 x 256 px; 6 x 512 px for configs
                       whose crop needs it), written once into the work folder
  cuda-tests           the tests marked ``@pytest.mark.cuda``
  train-ratio          benchmarks/train.py: engine + loader vs device-resident batches
                       (EfficientNet-B0, 5 channels, 224 px, batch 256, bf16)
  config:NAME          every shipped config (baselines/configs, listed at run time): 50 steps in
                       bf16 with channels_last, images/s, data-wait fraction, peak memory, loss
                       finite, then a checkpoint resumed on the device for 10 more steps; full
                       size, else the batch halved until it fits (named in the result)
  dino-vits8           benchmarks/dino_gpu.py: WS-DINO ViT-S/8 at 224/96 px, batch 16
  embed                ``cytodata.baselines.embed`` throughput (EfficientNet-B0, batch 256)
  batches-pinned       ``StreamingDataset.batches`` with pinned memory -> device, vs unpinned
  train-ratio-compile  train-ratio with torch.compile on both sides
  config:NAME-tiny     the CPU recipes, on the device

``--dry-run``: the same parts on the CPU at tiny sizes (the -tiny configs train; full-size
configs are only resolved), in under a minute; the test suite runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCHEMA = "cytodata.gpu_check/1"
STATUSES = ("ok", "failed", "timeout", "skipped")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size the parts use: the GPU run's, or the dry run's tiny ones."""

    device: str
    precision: str
    channels: int = 5
    field: int = 256             # px of the 5-channel shard set (224 crops fit)
    n_images: int = 2048
    big_field: int = 512         # px of the set for configs that need more than ``field`` (crop / prescale)
    big_channels: int = 6        # RxRx1's channels
    n_big: int = 512
    config_steps: int = 50
    resume_steps: int = 10
    log_every: int = 10
    ratio_args: tuple[str, ...] = ()
    dino_args: tuple[str, ...] = ("--steps", "100", "--skip", "30")
    embed_batch: int = 256
    embed_model: str = "efficientnet_b0"
    embed_crop: int = 224
    batches_batch: int = 256
    batches_count: int = 24
    threads: int = 8
    scheduler: str | None = None  # shards.write: None = dask LocalCluster
    train_tiny_only: bool = False
    torch_threads: int | None = None  # torch intra-op threads in each part (None: torch's default)


GPU = Sizes(device="cuda", precision="bf16")
DRY = Sizes(device="cpu", precision="fp32", field=40, n_images=64, big_field=64, n_big=48,
            config_steps=2, resume_steps=1, log_every=1,
            ratio_args=("--tiny", "--steps", "10", "--batch", "8", "--torch-threads", "1"),
            dino_args=("--config", "ws-dino-tiny", "--device", "cpu", "--steps", "2", "--skip", "1",
                       "--model", "test_vit",
                       "--crop", "32", "--local", "16", "--batch", "2", "--out-dim", "64"),
            embed_batch=16, embed_model="test_efficientnet", embed_crop=32, batches_batch=8,
            batches_count=4, threads=2, scheduler="synchronous", train_tiny_only=True,
            torch_threads=1)  # OpenMP threads spin against the decode threads on a small shared CPU


@dataclasses.dataclass
class Context:
    """What a part receives: sizes, folders, and ``save`` for results so far."""

    sizes: Sizes
    out: Path
    work: Path
    result_path: Path

    def save(self, results: dict) -> None:
        """Write the part's results so far (a part killed at its time limit keeps them)."""
        tmp = self.result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"results": results}, default=_plain), encoding="utf-8")
        os.replace(tmp, self.result_path)

    def shards(self, big: bool = False) -> Path:
        """The shard set written by the ``data`` part (5 x field px; ``big``: 6 x big_field px)."""
        s = self.sizes
        name = (f"shards-{s.big_channels}x{s.big_field}-n{s.n_big}" if big
                else f"shards-{s.channels}x{s.field}-n{s.n_images}")
        return self.work / name


@dataclasses.dataclass(frozen=True)
class Part:
    """One measured part: a name, its time budget on the GPU, and the function that runs it."""

    name: str
    budget_s: float
    run: Callable[[Context], dict]
    needs_data: bool = True


# ---------------------------------------------------------------------------------------- parts
def part_env(ctx: Context) -> dict:
    import numpy
    import timm
    import torch

    out = {"python": platform.python_version(), "platform": platform.platform(),
           "torch": torch.__version__, "torch_cuda": torch.version.cuda, "timm": timm.__version__,
           "numpy": numpy.__version__, "cpu_count": os.cpu_count(),
           "cuda_available": torch.cuda.is_available(), "commit": _git_commit()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 2),
                   device_count=torch.cuda.device_count(),
                   bf16_supported=torch.cuda.is_bf16_supported())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            out["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            out["driver"] = None
    elif ctx.sizes.device.startswith("cuda"):
        raise RuntimeError("no CUDA device is visible to torch "
                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                           "run `python benchmarks/gpu_check.py --dry-run` for the CPU check")
    return out


def part_data(ctx: Context) -> dict:
    s, out = ctx.sizes, {}
    sets = [(ctx.shards(), s.channels, s.field, s.n_images),
            (ctx.shards(big=True), s.big_channels, s.big_field, s.n_big)]
    for path, channels, field, n in sets:
        t0 = time.perf_counter()
        write_shard_set(path, n, (channels, field, field), s)
        out[path.name] = {"images": n, "shape": [channels, field, field],
                          "seconds": round(time.perf_counter() - t0, 2)}
        ctx.save(out)
    return out


def part_cuda_tests(ctx: Context) -> dict:
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))
             if "pytest.mark.cuda" in p.read_text(encoding="utf-8")]
    if not files:
        raise RuntimeError("no test file marks a test with @pytest.mark.cuda")
    import pytest

    junit = ctx.out / "logs" / "cuda-tests.xml"
    os.chdir(ROOT)
    # in this (forked) process: torch and the package are imported already
    code = int(pytest.main(["-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                            f"--rootdir={ROOT}", *files]))
    counts = _junit_counts(junit)
    out = {"files": files, "returncode": code, **counts}
    if code not in (0, 5) or counts.get("failed") or counts.get("errors"):
        ctx.save(out)
        raise RuntimeError(f"CUDA tests: {counts} (pytest exit code {code}); see the log")
    return out


def part_train_ratio(ctx: Context, compile_: bool = False) -> dict:
    train_bench = _load_benchmark("train")
    if compile_ and ctx.sizes.train_tiny_only:
        # torch.compile's CPU code generation takes minutes on a small machine: the dry run checks
        # that the benchmark's config takes compile=True, the GPU run measures it
        from cytodata.baselines import load_config

        cfg = load_config(train_bench.TINY_DEFAULTS["config"], {"compile": True})
        return {"compile": cfg.compile, "ran": False,
                "note": "--dry-run resolves the compiled configuration; the GPU run measures it"}
    work = ctx.work / ("ratio-compile" if compile_ else "ratio")
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "shards").exists():       # train.py writes shards into --dir unless they exist
        (work / "shards").symlink_to(ctx.shards(), target_is_directory=True)
    s = ctx.sizes
    args = [*s.ratio_args, "--dir", str(work), "--n", str(s.n_images), "--size", str(s.field),
            "--channels", str(s.channels)]
    return train_bench.main(args + (["--compile"] if compile_ else []))


def part_dino(ctx: Context) -> dict:
    dino = _load_benchmark("dino_gpu")
    # ws-dino resizes fields by its prescale (0.5) before cropping: the larger set holds 224-px crops
    return dino.main([*ctx.sizes.dino_args, "--out", str(ctx.work / "dino-gpu"),
                      "--shards", str(ctx.shards(big=True))])


def part_embed(ctx: Context) -> dict:
    import pandas as pd
    import torch

    from cytodata.baselines import train
    from cytodata.baselines.embedding import embed

    s = ctx.sizes
    shards = ctx.shards()
    run = train("classifier", ctx.work / "embed-run", **{
        "model": s.embed_model, "data.train": str(shards), "data.train_split": None,
        "data.val_split": None, "data.crop": s.embed_crop, "batch_size": 8, "steps": 1,
        "device": s.device, "precision": s.precision, "progress": False, "checkpoint_every": 1})
    out_file = ctx.work / "embed.parquet"
    if s.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    embed(run, shards, out_file, device=s.device, batch_size=s.embed_batch, threads=s.threads,
          progress=False)
    seconds = time.perf_counter() - t0
    n = len(pd.read_parquet(out_file))
    # four centre crops per field when the field holds two crops a side, else one
    views = 4 if s.field >= 2 * s.embed_crop else 1
    return {"model": s.embed_model, "images": n, "views_per_image": views, "batch_size": s.embed_batch,
            "seconds": seconds, "images_per_s": n / seconds, "includes": "reading, decoding, model, parquet"}


def part_batches(ctx: Context) -> dict:
    import torch

    from cytodata.loaders import StreamingDataset

    s = ctx.sizes
    cuda = s.device.startswith("cuda")
    out: dict = {"batch_size": s.batches_batch, "threads": s.threads}
    for pin in (True, False):
        ds = StreamingDataset(ctx.shards(), seed=0, shuffle=True, threads=s.threads)
        n, pinned, t0, t_first = 0, [], time.perf_counter(), None
        for i, batch in enumerate(ds.batches(s.batches_batch, pin_memory=pin and cuda)):
            pinned.append(bool(batch["image"].is_pinned()) if cuda else False)
            x = batch["image"].to(s.device, non_blocking=True)
            if cuda:
                torch.cuda.synchronize()
            if i == 0:
                t_first = time.perf_counter()    # the first batch (thread start-up) is left out
            else:
                n += x.shape[0]
            if i + 1 >= s.batches_count:
                break
        seconds = time.perf_counter() - (t_first or t0)
        key = "pinned" if pin else "unpinned"
        out[key] = {"images_per_s": n / max(seconds, 1e-9), "batches": len(pinned),
                    "all_pinned": all(pinned), "shape": list(x.shape), "dtype": str(x.dtype)}
        ctx.save(out)
    if cuda and not out["pinned"]["all_pinned"]:
        raise RuntimeError("batches(pin_memory=True) yielded unpinned tensors on CUDA")
    out["ratio_pinned_over_unpinned"] = out["pinned"]["images_per_s"] / out["unpinned"]["images_per_s"]
    return out


def part_config(name: str) -> Callable[[Context], dict]:
    def run(ctx: Context) -> dict:
        return check_config(name, ctx)
    return run


def check_config(name: str, ctx: Context) -> dict:
    """Train config ``name`` on the device, then resume its checkpoint there; see the module doc."""
    import torch

    from cytodata.baselines import load_config, train

    s = ctx.sizes
    base = load_config(name)
    need = field_needed(base)
    big = need > s.field
    overrides = _config_overrides(base, ctx.shards(big=big), s)
    cfg = load_config(name, overrides)        # every override is a valid key of this config
    out = {"config": name, "method": cfg.method, "model": cfg.model, "crop": cfg.data.crop,
           "full_batch_size": base.batch_size, "channels": s.big_channels if big else s.channels}
    if s.train_tiny_only and not name.endswith("-tiny"):
        return dict(out, trained=False, note="--dry-run resolves full-size configs, trains the -tiny ones")
    if need > s.big_field:
        raise RuntimeError(f"{name} needs fields of at least {need} px (data.crop / prescale); the "
                           f"check's largest are {s.big_field} px (Sizes.big_field)")
    if getattr(base, "requires_init", False) and not getattr(base, "init_from", None):
        first = _first_stage_run(cfg, ctx.work / "configs")     # a second stage starts from a first
        if first is None:
            raise RuntimeError(f"{name} starts from a first-stage run (init_from) and no run of this check "
                               f"has its method {cfg.method!r} and model {cfg.model!r}; check its "
                               "first-stage config in the same call (--only config:<prefix>)")
        overrides["init_from"] = str(first)
        out["init_from"] = first.name
    cuda = s.device.startswith("cuda")
    batch = base.batch_size
    while True:
        run_dir = ctx.work / "configs" / f"{name}-b{batch}"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            train(name, run_dir, **dict(overrides, batch_size=batch))
            break
        except torch.cuda.OutOfMemoryError as exc:
            out.setdefault("out_of_memory", []).append({"batch_size": batch, "error": str(exc)[:300]})
            ctx.save(out)
            if batch <= 1:
                raise
            batch //= 2
    seconds = time.perf_counter() - t0
    rows = _metric_rows(run_dir)
    timed = rows[1:] or rows                  # the first window holds start-up and warm-up
    out.update(trained=True, batch_size=batch,
               size="full" if batch == base.batch_size else
               f"reduced: batch_size {batch} (full {base.batch_size} ran out of device memory)",
               steps=s.config_steps, seconds=seconds,
               images_per_s=len(timed) / sum(1.0 / r["images_per_s"] for r in timed),
               data_wait=sum(r["data_wait"] for r in timed) / len(timed),
               peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
               loss_first=rows[0]["loss"], loss_last=rows[-1]["loss"],
               loss_finite=all(_finite(r["loss"]) for r in rows))
    ctx.save(out)
    # checkpoint + resume on the device: the same run, continued for resume_steps more steps
    end = s.config_steps + s.resume_steps
    train(name, run_dir, resume=True, **dict(overrides, batch_size=batch, steps=end))
    after = [r for r in _metric_rows(run_dir) if r["step"] > s.config_steps]
    from cytodata.baselines import checkpoint

    last = checkpoint.load(run_dir / "checkpoints" / "last.pt", map_location="cpu")
    out["resume"] = {"from_step": s.config_steps, "to_step": int(last["step"]),
                     "loss": after[-1]["loss"] if after else None,
                     "ok": int(last["step"]) == end and bool(after) and all(_finite(r["loss"]) for r in after)}
    if not out["loss_finite"] or not out["resume"]["ok"]:
        ctx.save(out)
        raise RuntimeError(f"{name}: loss finite {out['loss_finite']}, resume {out['resume']}")
    return out


def field_needed(cfg) -> int:
    """The smallest field side a config trains on: its crop, before a ``prescale`` resize (WS-DINO)."""
    import math

    return math.ceil(cfg.data.crop / float(getattr(cfg, "prescale", 1.0) or 1.0))


def _first_stage_run(cfg, runs: Path) -> Path | None:
    """The newest finished run of this check with ``cfg``'s method and model and no init of its own."""
    import yaml

    found = []
    for run in runs.glob("*/config.yaml"):
        other = yaml.safe_load(run.read_text(encoding="utf-8")) or {}
        if (other.get("method") == cfg.method and other.get("model") == cfg.model
                and not other.get("requires_init") and (run.parent / "checkpoints" / "last.pt").exists()):
            found.append(run.parent)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _config_overrides(base, shards: Path, s: Sizes) -> dict:
    overrides = {"data.train": str(shards), "data.train_split": None, "data.val_split": None,
                 "device": s.device, "precision": s.precision, "channels_last": True,
                 "steps": s.config_steps, "checkpoint_every": s.config_steps,
                 "log_every": s.log_every, "progress": False, "data.threads": s.threads}
    if getattr(base, "epochs", None) is not None:   # a length in epochs would override steps
        overrides["epochs"] = None
    if hasattr(base, "unlabelled_ratio"):     # semi-supervised: the same set serves as unlabelled
        overrides["data.unlabelled"] = str(shards)
    return overrides


PARTS_FIXED_HEAD = (
    Part("env", 20, part_env, needs_data=False),
    Part("data", 60, part_data, needs_data=False),
    Part("cuda-tests", 60, part_cuda_tests, needs_data=False),
    Part("train-ratio", 60, part_train_ratio),
)
PARTS_FIXED_TAIL = (
    Part("dino-vits8", 45, part_dino),
    Part("embed", 30, part_embed),
    Part("batches-pinned", 20, part_batches),
    Part("train-ratio-compile", 100, lambda ctx: part_train_ratio(ctx, compile_=True)),
)


def plan_parts(config_names: list[str]) -> list[Part]:
    """All parts in order of value: env, data, tests, the ratio, full configs, ..., tiny configs."""
    full = [n for n in config_names if not n.endswith("-tiny")]
    tiny = [n for n in config_names if n.endswith("-tiny")]
    return [*PARTS_FIXED_HEAD, *(Part(f"config:{n}", 35, part_config(n)) for n in full),
            *PARTS_FIXED_TAIL, *(Part(f"config:{n}", 12, part_config(n)) for n in tiny)]


def select(parts: list[Part], only: str | None) -> list[Part]:
    """``--only``: names or prefixes; ``env`` always runs, ``data`` when a chosen part reads it."""
    if not only:
        return parts
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    names = [p.name for p in parts]
    unknown = [w for w in wanted if not any(n == w or n.startswith(w) for n in names)]
    if unknown:
        raise SystemExit(f"--only {','.join(unknown)}: no such part; parts: {', '.join(names)}")
    chosen = [p for p in parts if any(p.name == w or p.name.startswith(w) for w in wanted)]
    need_data = any(p.needs_data for p in chosen)
    return [p for p in parts if p in chosen or p.name == "env" or (p.name == "data" and need_data)]


# ------------------------------------------------------------------------------------ the runner
def run_part(part: Part, ctx: Context, timeout: float) -> dict:
    """Fork, run ``part`` in the child (own process group, output to its log), wait up to ``timeout``."""
    slug = part.name.replace(":", "-")
    log = ctx.out / "logs" / f"{slug}.log"
    ctx = dataclasses.replace(ctx, result_path=ctx.out / "logs" / f"{slug}.json")
    ctx.result_path.unlink(missing_ok=True)
    t0 = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                   # the child: never returns
        code = 1
        try:
            os.setpgid(0, 0)
            log_file = open(log, "w", buffering=1, encoding="utf-8")   # noqa: SIM115 - until os._exit
            os.dup2(log_file.fileno(), 1)           # C-level output (libraries, subprocesses)
            os.dup2(log_file.fileno(), 2)
            sys.stdout = sys.stderr = log_file      # Python-level output, even under a capturing caller
            # where the part was when its time ran out: every thread's stack, into its log
            faulthandler.dump_traceback_later(max(timeout - 1.5, 0.5), exit=False)
            if ctx.sizes.torch_threads:
                import torch

                torch.set_num_threads(ctx.sizes.torch_threads)
            results = part.run(ctx)
            ctx.save(results)
            code = 0
        except BaseException as exc:               # noqa: BLE001 - recorded, the parent goes on
            traceback.print_exc()
            _merge_json(ctx.result_path, {"error": f"{type(exc).__name__}: {exc}"[:2000]})
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass                                       # the child already did (or has exited)
    status, timed_out = None, False
    while status is None:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = code
        elif time.monotonic() - t0 > timeout:
            timed_out = True
            _kill_group(pid)
            status = os.waitpid(pid, 0)[1]
        else:
            time.sleep(0.05)
    _kill_group(pid)                               # leftovers of the part (workers, pytest)
    record = _read_json(ctx.result_path)
    exit_code = os.waitstatus_to_exitcode(status)
    entry = {"status": "ok", "budget_s": round(timeout, 1), "seconds": round(time.monotonic() - t0, 2),
             "error": record.get("error"), "results": record.get("results", {}),
             "log": str(log.relative_to(ctx.out))}
    if timed_out:
        entry["status"] = "timeout"
        entry["error"] = f"stopped at its time limit ({timeout:.0f} s); results so far kept"
    elif exit_code != 0:
        entry["status"] = "failed"
        entry["error"] = entry["error"] or f"exit code {exit_code}; log tail: {_tail(log)}"
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check",
                    help="folder for gpu_check.json, gpu_check.md and logs/ (default $OUT, else gpu-check)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="overall wall-time limit in seconds (default 480; --dry-run 420)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (under a minute)")
    ap.add_argument("--only", default=None, help="parts (names or prefixes, comma-separated)")
    ap.add_argument("--work", default=None, help="folder for shards and runs (default: a temporary one, removed)")
    ap.add_argument("--list", action="store_true", help="print the parts in order and exit")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from cytodata.baselines.config import config_names

    sizes = DRY if args.dry_run else GPU
    budget = args.budget_s if args.budget_s is not None else (420.0 if args.dry_run else 480.0)
    parts = select(plan_parts(config_names()), args.only)
    if args.list:
        print("\n".join(f"{p.name:28s} {p.budget_s:5.0f} s" for p in parts))
        return 0
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    # heavy imports once, before forking: each part starts without paying for them again
    import timm  # noqa: F401
    import torch  # noqa: F401

    import cytodata.baselines  # noqa: F401
    import cytodata.loaders  # noqa: F401
    import cytodata.shards  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(args.work).resolve() if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(sizes, out, work, out / "logs" / "part.json")
        report = run_all(parts, ctx, budget, args.dry_run)
    print(f"\n{out / 'gpu_check.json'}\n{out / 'gpu_check.md'}")
    failed = [n for n, p in report["parts"].items() if p["status"] in ("failed", "timeout")]
    return 1 if failed or report["parts"].get("env", {}).get("status") != "ok" else 0


def run_all(parts: list[Part], ctx: Context, budget: float, dry_run: bool) -> dict:
    """Run ``parts`` in order within ``budget`` seconds; write the JSON and table after each."""
    start = time.monotonic()
    report = {"schema": SCHEMA, "dry_run": dry_run, "device": ctx.sizes.device,
              "precision": ctx.sizes.precision, "budget_s": budget,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "sizes": dataclasses.asdict(ctx.sizes), "elapsed_s": 0.0, "stopped_early": False,
              "parts": {}}
    reserve = 3.0                                  # for writing the report at the end
    for part in parts:
        left = budget - (time.monotonic() - start) - reserve
        env_failed = part.name != "env" and report["parts"].get("env", {}).get("status") not in (None, "ok")
        data_failed = part.needs_data and report["parts"].get("data", {}).get("status") not in (None, "ok")
        if left < 2 or env_failed or data_failed:
            why = ("the overall time limit was reached" if left < 2 else
                   "env failed (no usable device)" if env_failed else "the data part did not finish")
            report["parts"][part.name] = {"status": "skipped", "budget_s": part.budget_s, "seconds": 0.0,
                                          "error": why, "results": {}, "log": None}
            report["stopped_early"] = report["stopped_early"] or left < 2
            continue
        timeout = min(part.budget_s if not dry_run else max(part.budget_s, 90.0), left)
        print(f"[{time.monotonic() - start:6.1f} s] {part.name} (budget {timeout:.0f} s) ...", flush=True)
        entry = run_part(part, ctx, timeout)
        report["parts"][part.name] = entry
        print(f"[{time.monotonic() - start:6.1f} s] {part.name}: {entry['status']} in {entry['seconds']:.1f} s"
              + (f" - {entry['error'][:200]}" if entry["error"] else ""), flush=True)
        report["elapsed_s"] = round(time.monotonic() - start, 2)
        write_report(report, ctx.out)
    report["elapsed_s"] = round(time.monotonic() - start, 2)
    write_report(report, ctx.out)
    print(render_table(report))
    return report


def write_report(report: dict, out: Path) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` (atomically, so a killed run leaves the last good pair)."""
    for name, text in (("gpu_check.json", json.dumps(report, indent=1, default=_plain)),
                       ("gpu_check.md", render_table(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out / name)


def render_table(report: dict) -> str:
    """A short Markdown table: one row per part, its status and its headline figure."""
    env = report["parts"].get("env", {}).get("results", {})
    head = (f"gpu_check ({'dry run, CPU' if report['dry_run'] else 'CUDA'}): "
            f"{env.get('device_name', env.get('platform', '?'))}, torch {env.get('torch', '?')}, "
            f"commit {str(env.get('commit') or '?')[:10]}, started {report['started']}, "
            f"{report['elapsed_s']:.0f} of {report['budget_s']:.0f} s")
    lines = [head, "", "| part | status | s | figure |", "|---|---|---|---|"]
    for name, p in report["parts"].items():
        fig = headline(name, p.get("results") or {})
        if p["status"] != "ok" and p.get("error"):
            fig = (fig + "; " if fig else "") + p["error"].replace("|", "/").replace("\n", " ")[:120]
        lines.append(f"| {name} | {p['status']} | {p['seconds']:.0f} | {fig} |")
    return "\n".join(lines)


def headline(name: str, r: dict) -> str:
    """The one figure a reader wants from a part's results."""
    def f(x, spec=".1f"):
        return "n/a" if x is None else format(x, spec)

    if name == "env":
        return f"{r.get('device_name', 'CPU')}, {f(r.get('memory_gib'), '.0f')} GiB, CUDA {r.get('torch_cuda')}"
    if name == "cuda-tests":
        return f"{r.get('passed', 0)} passed, {r.get('failed', 0)} failed, {r.get('skipped', 0)} skipped"
    if name.startswith("train-ratio") and r.get("ran") is False:
        return "resolved, not run (dry run)"
    if name.startswith("train-ratio") and "ratio" in r:
        return (f"ratio {r['ratio']:.3f} (loader {r['loader_images_per_s']:.0f} / bound "
                f"{r['bound_images_per_s']:.0f} images/s), data wait {r['data_wait']:.3f}")
    if name.startswith("config:") and r.get("trained"):
        mem = r.get("peak_memory_gib")
        return (f"{r['size']}, batch {r['batch_size']}: {r['images_per_s']:.0f} images/s, wait "
                f"{r['data_wait']:.2f}, peak {f(mem, '.1f')} GiB, loss {r['loss_first']:.3g}->{r['loss_last']:.3g}, "
                f"resume {'ok' if (r.get('resume') or {}).get('ok') else 'NOT ok'}")
    if name.startswith("config:") and r.get("trained") is False:
        return "resolved, not trained (dry run)"
    if name == "dino-vits8" and "images_per_s" in r:
        return (f"{r['model']}: {r['images_per_s']:.1f} images/s, wait {r['data_wait']:.2f}, "
                f"peak {f(r['peak_memory_gib'])} GiB")
    if name == "embed" and "images_per_s" in r:
        return f"{r['model']}: {r['images_per_s']:.0f} images/s ({r['views_per_image']} views each)"
    if name == "batches-pinned" and "ratio_pinned_over_unpinned" in r and not r["pinned"]["all_pinned"]:
        return f"no CUDA, so nothing pinned: {r['pinned']['images_per_s']:.0f} images/s to the CPU"
    if name == "batches-pinned" and "ratio_pinned_over_unpinned" in r:
        return (f"pinned {r['pinned']['images_per_s']:.0f} vs unpinned {r['unpinned']['images_per_s']:.0f} "
                f"images/s (ratio {r['ratio_pinned_over_unpinned']:.2f})")
    if name == "data":
        return ", ".join(f"{k}: {v['seconds']:.0f} s" for k, v in r.items())
    return ""


# ---------------------------------------------------------------------------------------- helpers
def write_shard_set(out: Path, n: int, shape: tuple[int, int, int], s: Sizes) -> Path:
    """``n`` cell-like fields of ``shape`` as WebDataset shards, with the columns every method reads.

    Fields are drawn by ``cytodata.synthetic.make_cells`` (8 labels = compounds, 4 MOAs, every
    8th field a DMSO negative control, 4 plates, 2 batches, 80/20 train/val) and written as
    16-bit TIFFs by a process pool, then sharded by the real writer. Written to a sibling folder
    and renamed, so a part stopped half-way leaves no half set.
    """
    import multiprocessing
    import shutil

    import pandas as pd

    from cytodata import shards
    from cytodata.schema import conform, make_key

    if (out / "shards.json").exists():
        return out
    images = out.with_name(out.name + "-images")
    images.mkdir(parents=True, exist_ok=True)
    processes = max(1, min(16, os.cpu_count() or 1)) if s.scheduler is None else 1
    chunks = [(str(images), list(range(i, n, processes * 4)), shape) for i in range(processes * 4)]
    if processes > 1:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.map(_write_fields, chunks)
    else:
        for chunk in chunks:
            _write_fields(chunk)
    c = shape[0]
    rows = []
    for i in range(n):
        control = i % 8 == 0
        label = f"l{i % 8}"
        rows.append(dict(source="gpu-check", image_id=f"im{i:05d}", plate=f"P{i % 4}", well=f"W{i:05d}",
                         site=1, batch=f"b{i % 2}", split="train" if i % 5 else "val", label=label,
                         compound="DMSO" if control else f"cpd-{label}", moa=f"moa-{i % 8 % 4}",
                         concentration=1.0, control_type="negcon" if control else "trt",
                         cell_type="HUVEC", parent_id=f"im{i:05d}", channels=[f"ch{k}" for k in range(c)],
                         channel_paths=[str(images / f"f{i:05d}_c{k}.tif") for k in range(c)]))
    table = pd.DataFrame(rows)
    table["key"] = [make_key(a, b) for a, b in zip(table["source"], table["image_id"])]
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    workers = None if s.scheduler else min(8, os.cpu_count() or 1)
    shards.write(conform(table), tmp, codec="blosc-lz4", samples_per_shard=128, scheduler=s.scheduler,
                 n_workers=workers, progress=False)
    os.replace(tmp, out)
    return out


def _write_fields(args: tuple[str, list[int], tuple[int, int, int]]) -> None:
    import numpy as np
    import tifffile

    from cytodata.synthetic import DEFAULT_MOAS, make_cells

    folder, indices, shape = args
    moas = list(DEFAULT_MOAS)
    for i in indices:
        image = make_cells(np.random.default_rng([0, i]), shape, moas[i % len(moas)])
        for k in range(shape[0]):
            tifffile.imwrite(Path(folder) / f"f{i:05d}_c{k}.tif", image[k])


def _load_benchmark(name: str):
    import importlib.util

    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if "loss" in r and "images_per_s" in r]


def _junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    tests, fails, errs, skips = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return {"tests": tests, "passed": tests - fails - errs - skips, "failed": fails, "errors": errs,
            "skipped": skips}


def _finite(x) -> bool:
    import math

    return x is not None and math.isfinite(float(x))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _merge_json(path: Path, extra: dict) -> None:
    data = _read_json(path)
    data.update(extra)
    path.write_text(json.dumps(data, default=_plain), encoding="utf-8")


def _tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _plain(x):
    """JSON for numpy scalars, paths and tuples."""
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
