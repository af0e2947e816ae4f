"""Run one task per shard: in-process, on a dask LocalCluster, or on an existing scheduler."""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable, Sequence


def run_tasks(
    fn: Callable[..., Any],
    arg_lists: Sequence[tuple],
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    progress: bool = True,
    desc: str = "shards",
) -> list[Any]:
    """``[fn(*args) for args in arg_lists]``, in order, executed per ``scheduler``.

    ``scheduler``: None -> a dask ``LocalCluster`` (``n_workers`` processes, 1 thread each:
    decoding/encoding hold the GIL in places); ``"synchronous"`` -> this process (debugging,
    tiny jobs); ``"tcp://HOST:PORT"`` -> an existing dask scheduler.
    """
    if not arg_lists:
        return []
    if scheduler == "synchronous":
        return [fn(*args) for args in _bar(arg_lists, progress, desc)]
    from dask.distributed import Client, as_completed

    cluster = None
    if scheduler is None:
        workers = n_workers or min(os.cpu_count() or 1, len(arg_lists))
        cluster = local_cluster(workers)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        run_id = uuid.uuid4().hex[:8]  # two writes sharing one scheduler must not share task keys
        futures = [client.submit(fn, *args, pure=False, key=f"{desc}-{run_id}-{i}")
                   for i, args in enumerate(arg_lists)]
        position = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        bar = _bar(None, progress, desc, total=len(futures))
        for fut in as_completed(futures):
            results[position[fut.key]] = fut.result()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return results
    finally:
        client.close()
        if cluster is not None:
            try:
                cluster.close(timeout=30)
            except Exception as exc:  # noqa: BLE001 - e.g. a killed worker's nanny: results are in
                import warnings

                warnings.warn(f"the dask LocalCluster did not shut down cleanly ({type(exc).__name__}: "
                              f"{exc}); every task had returned, so the output is complete", stacklevel=2)


def local_cluster(workers: int):
    """A LocalCluster of ``workers`` one-thread processes, without dask's malloc trimming.

    dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; that also pins glibc's mmap
    threshold, so every image-sized buffer is mmapped and page-faulted afresh: shard tasks ran
    ~30% slower with it (benchmarks/sharding.py). Workers of an existing cluster keep their own
    settings (start them with ``MALLOC_TRIM_THRESHOLD_`` unset for the same gain). The workers'
    statistical profiler (a stack sample every 10 ms) is off: shard tasks do not need it.
    """
    import dask
    from dask.distributed import LocalCluster

    environ = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ,
                          "distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)


def _bar(items, progress: bool, desc: str, total: int | None = None):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="shard")
