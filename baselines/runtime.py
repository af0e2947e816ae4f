"""Devices, precision and torch.distributed, every collective guarded so one CPU process works."""

from __future__ import annotations

import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from cytodata.errors import TrainingError


def is_dist() -> bool:
    """Whether a torch.distributed process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """The rank of this process (0 in one process)."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """Number of ranks (1 in one process)."""
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """Whether this is rank 0 (the one that writes files)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_dist():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (in place); identity in one process."""
    if is_dist():
        dist.all_reduce(t)
        t /= world_size()
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place); identity in one process."""
    if is_dist():
        dist.all_reduce(t)
    return t


def all_gather_floats(value: float) -> list[float]:
    """``value`` from every rank (a one-element list in one process)."""
    if not is_dist():
        return [value]
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return [float(v) for v in out]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; asking for CUDA without one is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"device={name!r} but no CUDA device is available (torch "
                                f"{torch.__version__}, CUDA build {torch.version.cuda}); use "
                                "--set device=cpu or run on a GPU machine")
        if name == "cuda":
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def init_distributed(device: torch.device) -> bool:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on CPU."""
    if is_dist() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    # DistributedDataParallel imports torch._dynamo; imported while a group exists, its module
    # state keeps references to the group until the interpreter's exit, past
    # destroy_process_group (see shutdown_distributed). Imported first, it holds none.
    import torch._dynamo  # noqa: F401

    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def shutdown_distributed() -> None:
    """Leave the process group with its threads joined while the interpreter is fully alive.

    Whatever still references the group when ``destroy_process_group`` runs keeps gloo's worker
    and transport threads running: ``DistributedDataParallel`` and its reducer sit in reference
    cycles that only the cyclic GC frees, and ``torch._dynamo`` imported after the group was
    made keeps references in its module state (:func:`init_distributed` imports it first). A
    group freed during the interpreter's finalisation joins its threads then, and a worker
    still releasing a collective's tensors needs the GIL and aborts the process ("terminate
    called without an active exception"). Collecting the cycles first makes
    ``destroy_process_group`` drop the last reference: the group's destructor joins its threads
    here.
    """
    if not is_dist():
        return
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


def autocast(device: torch.device, precision: str):
    """Autocast per ``precision`` (``auto``: bf16 on CUDA, fp32 on CPU)."""
    dtype = resolve_precision(device, precision)
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(device: torch.device, precision: str):
    """``None`` (fp32) or the autocast dtype."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
