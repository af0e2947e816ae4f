"""Sharding and QC on a real dask cluster: `dask scheduler` + two `dask worker` processes on
127.0.0.1 (not a LocalCluster), including a worker killed mid-job, and a scheduler that does
not answer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import cytodata
from cytodata.errors import ClusterError
from cytodata.loaders.demo import demo_manifest

REPO = Path(cytodata.__file__).resolve().parents[1]
DASK = Path(sys.executable).parent / "dask"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # own session: killing the process group takes the worker's nanny and its child together
    return subprocess.Popen([str(DASK), *args], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env=_env(), start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for_workers(address: str, n: int, timeout: float = 90) -> dict:
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        if n:
            client.wait_for_workers(n, timeout=timeout)
        return {w["name"]: addr for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not DASK.exists():
        pytest.skip(f"no dask command next to {sys.executable}")
    logs = tmp_path_factory.mktemp("dask-logs")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = {"scheduler": _start(["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], logs / "scheduler.log")}
    try:
        for name in ("wA", "wB"):
            procs[name] = _start(["worker", address, "--name", name, "--nthreads", "1", "--nworkers", "1",
                                  "--no-dashboard", "--host", "127.0.0.1",
                                  "--local-directory", str(logs / name)], logs / f"{name}.log")
        workers = _wait_for_workers(address, 2)
        yield {"address": address, "procs": procs, "workers": workers, "logs": logs}
    finally:
        for proc in reversed(list(procs.values())):
            _stop(proc)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from cytodata.schema import write_manifest

    root = tmp_path_factory.mktemp("cluster-manifest")
    table = demo_manifest(root / "img", 160, (3, 192, 192), n_plates=4)
    (root / "m").mkdir()
    write_manifest(table, root / "m" / "manifest.parquet")
    return root / "m", table


def _open_temp_files(group: int) -> list[str]:
    """Shard temp files held open by the processes of process group ``group`` (Linux /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != group:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if ".tar.tmp-" in target:
                    found.append(target)
        except OSError:  # the process ended or is not ours to inspect
            continue
    return found


def test_qc_runs_on_the_cluster(cluster, manifest, tmp_path):
    from cytodata.curate.qc import run_qc

    folder, table = manifest
    here = run_qc(folder, tmp_path / "local", n_workers=1, progress=False)
    there = run_qc(folder, tmp_path / "cluster", scheduler=cluster["address"], progress=False)
    key = "key" if "key" in here.columns else here.columns[0]
    pd.testing.assert_frame_equal(here.sort_values(key).reset_index(drop=True),
                                  there.sort_values(key).reset_index(drop=True))
    assert len(there) == len(table)


class _GatedImages:
    """A local HTTP server for the manifest's image files that serves ``free`` GET requests and
    then holds every further request open until :meth:`release`: a shard task that reaches the
    gate stops mid-shard (its temp tar open) on a real remote read, however loaded the machine.
    """

    def __init__(self, root: Path, free: int):
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        self.free, self.gets, self.held = free, 0, 0
        self.lock, self.opened = threading.Lock(), threading.Event()
        gate = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's hook name)
                with gate.lock:
                    gate.gets += 1
                    wait = gate.gets > gate.free
                    gate.held += wait
                if wait:
                    gate.opened.wait(timeout=300)
                    with gate.lock:
                        gate.held -= 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self, free: int) -> None:
        """Serve ``free`` more GET requests from now, then hold the rest."""
        with self.lock:
            self.gets, self.free = 0, free
            self.opened.clear()

    def release(self) -> None:
        self.opened.set()

    def stop(self) -> None:
        self.opened.set()
        self.server.shutdown()
        self.server.server_close()


def test_shard_job_survives_a_killed_worker(cluster, manifest, tmp_path):
    """Kill worker wA (nanny and process, SIGKILL) while it writes a shard: the job finishes on
    wB with every row written exactly once, byte-identical to an in-process write.

    The images are read over HTTP from a server that, after five shards' worth of reads, holds
    every read open: both workers stop inside a shard task, so the kill lands mid-shard on every
    run (a watcher polling a seconds-long job races it on a loaded machine).
    """
    from distributed import Client

    from cytodata.schema import conform, write_manifest
    from cytodata.shards import write

    folder, table = manifest
    images = Path(table["channel_paths"].iloc[0][0]).parent
    gate = _GatedImages(images, free=10**9)
    try:
        remote = table.copy()
        remote["channel_paths"] = [[f"{gate.url}/{Path(p).name}" for p in paths] for paths in table["channel_paths"]]
        (tmp_path / "m").mkdir()
        write_manifest(conform(remote), tmp_path / "m" / "manifest.parquet")
        reference = tmp_path / "reference"
        write(tmp_path / "m", reference, samples_per_shard=4, scheduler="synchronous", progress=False)
        n_shards = len(json.loads((reference / "shards.json").read_text())["shards"])
        per_shard = 4 * len(table["channels"].iloc[0])  # one GET per channel file

        out = tmp_path / "cluster"
        gate.close(free=5 * per_shard)
        job = subprocess.Popen([sys.executable, "-m", "cytodata", "shard", str(tmp_path / "m"), "-o", str(out),
                                "--samples-per-shard", "4", "--scheduler", cluster["address"], "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
        victim = cluster["workers"]["wA"]
        group = cluster["procs"]["wA"].pid
        killed_with = None
        with Client(cluster["address"], timeout=30) as watcher:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and job.poll() is None:
                writing = _open_temp_files(group)
                if gate.held >= 2 and writing:  # both workers wait on a read, wA inside a shard
                    done = len(list(out.glob("shard-*.tar.done.json")))
                    assert watcher.processing(workers=[victim]).get(victim), "wA holds no task"
                    os.killpg(group, signal.SIGKILL)
                    killed_with = (done, writing)
                    break
                time.sleep(0.05)
            gate.release()
        output = job.communicate(timeout=300)[0].decode()
    finally:
        gate.stop()
    assert killed_with is not None, f"the workers never reached the held reads:\n{output}"
    assert 3 <= killed_with[0] < n_shards // 2, killed_with  # mid-job: shards were still to be written
    assert job.returncode == 0, output
    cluster["procs"]["wA"].wait(timeout=30)

    got = json.loads((out / "shards.json").read_text())
    want = json.loads((reference / "shards.json").read_text())
    assert got["shards"] == want["shards"]  # same names, sha256, sample counts: nothing lost or doubled
    index = pd.read_parquet(out / "index.parquet")
    assert sorted(index["key"]) == sorted(table["key"]) and index["key"].is_unique
    pd.testing.assert_frame_equal(index, pd.read_parquet(reference / "index.parquet"))
    assert not list(out.glob("*.tmp-*"))  # the killed task's temp file is gone
    assert len(pd.read_parquet(out / "ledger.parquet")) == 0
    log = (cluster["logs"] / "scheduler.log").read_text()
    assert "Remove worker" in log and "wA" in log, log[-2000:]  # the scheduler saw wA go


def test_scheduler_that_does_not_answer(manifest, tmp_path):
    import dask

    from cytodata.shards import write

    folder, _ = manifest
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        with pytest.raises(ClusterError, match=rf"no dask scheduler answered at {address} within 3 s"):
            write(folder, tmp_path / "a", scheduler=address, progress=False)
    assert time.monotonic() - started < 20
    env = dict(_env(), DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s")
    done = subprocess.run([sys.executable, "-m", "cytodata", "shard", str(folder), "-o", str(tmp_path / "b"),
                           "--scheduler", address, "--no-progress"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2 and f"no dask scheduler answered at {address}" in done.stderr
    with pytest.raises(ClusterError, match="is not an address"):
        write(folder, tmp_path / "c", scheduler="127.0.0.1:8786", progress=False)
    done = subprocess.run([sys.executable, "-m", "cytodata", "qc", str(folder), "-o", str(tmp_path / "q"),
                           "--scheduler", address], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and f"no dask scheduler answered at {address}" in done.stderr


def test_scheduler_without_workers(manifest, tmp_path):
    import dask

    from cytodata.shards import write

    folder, _ = manifest
    port = free_port()
    proc = _start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                  tmp_path / "scheduler.log")
    try:
        _wait_for_workers(f"tcp://127.0.0.1:{port}", 0)
        with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
            with pytest.raises(ClusterError, match="has no workers after 3 s"):
                write(folder, tmp_path / "a", scheduler=f"tcp://127.0.0.1:{port}", progress=False)
    finally:
        _stop(proc)
