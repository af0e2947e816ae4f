"""Run one task per item (a shard, a QC batch): in-process, on a dask LocalCluster, or on an
existing scheduler (`connect` with a timeout and a ClusterError naming the address).
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable, Sequence

from .errors import ClusterError


def run_tasks(
    fn: Callable[..., Any],
    arg_lists: Sequence[tuple],
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    progress: bool = True,
    desc: str = "shards",
    timeout: float | None = None,
) -> list[Any]:
    """``[fn(*args) for args in arg_lists]``, in order, executed per ``scheduler``.

    ``scheduler``: None -> a dask ``LocalCluster`` (``n_workers`` processes, 1 thread each:
    decoding/encoding hold the GIL in places); ``"synchronous"`` -> this process (debugging,
    tiny jobs); ``"tcp://HOST:PORT"`` -> an existing dask scheduler (see :func:`connect`;
    ``timeout`` in seconds). Raises :class:`ClusterError` when the scheduler does not answer,
    has no workers, or a task keeps killing its workers.
    """
    if not arg_lists:
        return []
    if scheduler == "synchronous":
        return [fn(*args) for args in _bar(arg_lists, progress, desc)]
    from dask.distributed import Client, as_completed
    from distributed import KilledWorker

    cluster = None
    if scheduler is None:
        workers = n_workers or min(os.cpu_count() or 1, len(arg_lists))
        cluster = local_cluster(workers)
        client = Client(cluster)
    else:
        client = connect(scheduler, timeout)
    try:
        run_id = uuid.uuid4().hex[:8]  # two writes sharing one scheduler must not share task keys
        futures = [client.submit(fn, *args, pure=False, key=f"{desc}-{run_id}-{i}")
                   for i, args in enumerate(arg_lists)]
        position = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        bar = _bar(None, progress, desc, total=len(futures))
        # a task on a worker that dies is re-run by the scheduler on another worker; tasks are
        # idempotent (temp file, then rename), so a re-run never duplicates output
        for fut in as_completed(futures):
            try:
                results[position[fut.key]] = fut.result()
            except KilledWorker as exc:
                raise ClusterError(
                    f"{desc} task {position[fut.key]} ({fut.key}) was running on workers that died "
                    f"{dask_config('distributed.scheduler.allowed-failures')} times: {exc}. Usually out "
                    "of memory: give workers more memory (dask worker --memory-limit) or write smaller "
                    "shards; re-running resumes from the finished shards") from None
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


def connect(scheduler: str, timeout: float | None = None):
    """Connect a ``distributed.Client`` to an existing scheduler with at least one worker.

    ``timeout`` (seconds; default dask's ``distributed.comm.timeouts.connect``, 30 s, settable
    with ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=10s``) bounds both the connection and the
    wait for a first worker. Raises :class:`ClusterError` naming the address and the fix.
    """
    from dask.utils import parse_timedelta
    from distributed import Client

    if not isinstance(scheduler, str) or "://" not in scheduler:
        raise ClusterError(f"scheduler {scheduler!r} is not an address: give tcp://HOST:PORT (printed "
                           "by `dask scheduler`), 'synchronous', or no scheduler for a LocalCluster")
    seconds = float(timeout if timeout is not None
                    else parse_timedelta(dask_config("distributed.comm.timeouts.connect"), "s"))
    try:
        client = Client(scheduler, timeout=seconds)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"no dask scheduler answered at {scheduler} within {seconds:g} s ({type(exc).__name__}). "
            "Check the address and port that `dask scheduler` printed, that it is running and "
            "reachable from here (firewall, --host), or omit --scheduler to use a LocalCluster") from None
    try:
        client.wait_for_workers(1, timeout=seconds)
    except (OSError, TimeoutError):
        client.close()
        raise ClusterError(f"the dask scheduler at {scheduler} has no workers after {seconds:g} s; start "
                           f"some with `dask worker {scheduler}` (cytodata importable on them, the "
                           "input and output folders visible at the same paths)") from None
    return client


def dask_config(key: str):
    """Return a dask config value (``distributed.*`` keys need distributed imported first)."""
    import dask
    import distributed  # noqa: F401  (registers the distributed.* defaults)

    return dask.config.get(key)


def local_cluster(workers: int):
    """A LocalCluster of ``workers`` one-thread processes, without dask's malloc trimming.

    dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; that also pins glibc's mmap
    threshold, so every image-sized buffer is mmapped and page-faulted afresh: shard tasks ran
    ~30% slower with it (benchmarks/sharding.py). Workers of an existing cluster keep their own
    settings (start them with ``MALLOC_TRIM_THRESHOLD_`` unset for the same gain). The workers'
    statistical profiler (a stack sample every 10 ms) is off: shard tasks do not need it. No
    dashboard, and the scheduler's HTTP server (which it starts even without a dashboard, on
    8787 by default: "Port 8787 is already in use" when another cluster holds it) takes a free
    port on 127.0.0.1.
    """
    import dask
    from dask.distributed import LocalCluster

    environ = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ,
                          "distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})


def _bar(items, progress: bool, desc: str, total: int | None = None):
    from ._progress import bar, shown

    if not shown(progress):
        return items
    return bar(items, total=total, desc=desc, unit="shard")
