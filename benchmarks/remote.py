"""Streaming from an object store: cytodata against MosaicML streaming and litdata over real S3 requests.

A local S3 server (moto, in a process of its own) sits behind a loopback proxy (another process)
that holds each request for 0, 20 or 50 ms before passing it on, as a remote region would. Every
library reads the same images (5 x 256 x 256 uint16 cell-like samples, random crop 224 + flips,
batch 32) and runs two epochs from a cold start (fresh caches):
  cyto-global        StreamingDataset (shard blocks, each shuffled inside), ranged reads, no cache
  cyto-global-cache  the same through a local shard cache (cache_dir=)
  cyto-window        shuffle_window=4 (samples shuffled within windows of 4 shards), no cache
  cyto-window-cache  shuffle_window=4 through the cache
  mds                MosaicML streaming, MDS raw ndarray shards, remote= + local= cache, 2 workers
  litdata            litdata raw chunks, StreamingDataset("s3://..."), its cache, 2 workers
cytodata runs in its threaded layout (DataLoader(ds.batches(32), num_workers=0), 2 decode threads)
with per-sample checks on; the peers run unchecked (their shards are written without hashes, as
benchmarks/loader.py writes them). Reported per pipeline and latency: first- and second-epoch
images/s (the whole epoch, from the start of iteration), the first batch's latency (epoch 1: from
constructing the dataset), requests and MB the proxy saw per epoch, and the S3 server's CPU
seconds per epoch (its process, so a saturated server shows). Repeats are interleaved (every
pipeline once per latency per repeat, the order alternating), ratios are per repeat.

--quality measures what shard-window shuffling costs in shuffle quality (no S3): the rate of
same-label pairs within batches of 32 relative to a global per-sample shuffle (1.00: as mixed),
and the distinct labels per batch, on index layouts where labels cluster in shards.

Usage: python benchmarks/remote.py [--n 1000] [--delays 0,20,50] [--repeats 3] [--only cyto-window-cache,mds]
                                   [--quality] [--dir DIR]
Needs moto[server] and s3fs (the `test` extra) and, for the peers, the `bench` extra
(`make bench-peers` runs it in .venv-bench).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import Mapped, augment, prepare, prepare_peers  # noqa: E402  (the same images as loader.py)

BATCH = 32
METHODS = (b"GET", b"HEAD", b"PUT", b"POST", b"DELETE")
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the latency proxy (a process of its own, so its work is not charged to the loader) ---

def _proxy(listen: int, target: int, delay_ms, requests, down) -> None:
    async def up(reader, writer):
        while data := await reader.read(1 << 16):
            if data.split(b" ", 1)[0] in METHODS:  # a new request: held for the latency
                requests.value += 1
                if delay_ms.value:
                    await asyncio.sleep(delay_ms.value / 1000)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def downstream(reader, writer):
        while data := await reader.read(1 << 20):
            down.value += len(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(up(client_r, server_w), downstream(server_r, client_w), return_exceptions=True)

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", listen, backlog=512)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Proxy:
    """A loopback TCP proxy adding ``delay_ms`` to every HTTP request; counts requests and bytes down."""

    def __init__(self, target: int):
        ctx = mp.get_context("spawn")
        self.port = free_port()
        self.delay_ms, self.requests, self.down = ctx.Value("i", 0, lock=False), ctx.Value("q", 0, lock=False), \
            ctx.Value("q", 0, lock=False)
        self.proc = ctx.Process(target=_proxy, args=(self.port, target, self.delay_ms, self.requests, self.down),
                                daemon=True)
        self.proc.start()
        _wait_port(self.port)

    def counts(self) -> tuple[int, int]:
        return self.requests.value, self.down.value

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join()


def _wait_port(port: int, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_s3() -> tuple[subprocess.Popen, int]:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_port(port)
    return proc, port


# --- pipelines: each returns an object whose epoch(e) yields batches ---

class Cyto:
    def __init__(self, url: str, options: dict, cache: str | None, window: int | None):
        from cytodata.loaders import StreamingDataset

        extra = {k: v for k, v in (("cache_dir", cache), ("shuffle_window", window)) if v is not None}
        # (only the options set: the global path also runs on a cytodata without them, for a baseline)
        self.ds = StreamingDataset(url, storage_options=options, transform=augment(), threads=2, verify=True,
                                   batch_size_hint=BATCH, **extra)

    def epoch(self, e: int):
        from torch.utils.data import DataLoader

        self.ds.set_epoch(e)
        return DataLoader(self.ds.batches(BATCH, pin_memory=False), batch_size=None, num_workers=0)


class Mds:
    def __init__(self, url: str, local: str):
        from streaming import StreamingDataset as MDSDataset
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
        self.ds = MDSDataset(remote=url, local=local, shuffle=True, shuffle_seed=0, batch_size=BATCH)

    def epoch(self, e: int):
        from torch.utils.data import DataLoader

        return DataLoader(Mapped(self.ds), batch_size=BATCH, num_workers=2)


class Lit:
    def __init__(self, url: str, cache: str, endpoint: str):
        from litdata import StreamingDataset as LitDataset
        from litdata.streaming import downloader

        # litdata builds its obstore client without allow_http, so a plain-HTTP endpoint (this
        # local server) is refused; that option is added, nothing else is changed
        downloader._OBSTORE_CLIENT_OPTIONS = {**downloader._OBSTORE_CLIENT_OPTIONS, "allow_http": "true"}
        self.ds = LitDataset(url, shuffle=True, seed=0, cache_dir=cache,
                             storage_options={"endpoint_url": endpoint})

    def epoch(self, e: int):
        from torch.utils.data import DataLoader

        self.ds.set_epoch(e + 1)
        return DataLoader(Mapped(self.ds), batch_size=BATCH, num_workers=2)


def measure(make, proxy: Proxy, server, epochs: int = 2) -> list[dict]:
    """Per epoch: images/s (whole epoch), first batch latency, requests, MB down, server CPU s."""
    import psutil

    srv = psutil.Process(server.pid)
    out = []
    t_make = time.perf_counter()
    pipeline = make()
    for e in range(epochs):
        r0, b0 = proxy.counts()
        c0 = sum(srv.cpu_times()[:2])
        t0 = time.perf_counter()
        it = iter(pipeline.epoch(e))
        first = next(it)
        t_first = time.perf_counter() - (t_make if e == 0 else t0)
        count = len(first["image"])
        for b in it:
            count += len(b["image"])
        elapsed = time.perf_counter() - t0
        r1, b1 = proxy.counts()
        out.append({"rate": count / elapsed, "first": t_first, "requests": r1 - r0, "mb": (b1 - b0) / 1e6,
                    "server_cpu": sum(srv.cpu_times()[:2]) - c0, "n": count, "seconds": elapsed})
    return out


def upload(folder: Path, shards: Path, peers: dict[str, Path], endpoint: str) -> dict[str, str]:
    import boto3
    import s3fs

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="bench")
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
    urls = {}
    for name, local in [("cyto", shards)] + sorted(peers.items()):
        fs.put(str(local) + "/", f"bench/{name}/", recursive=True)
        urls[name] = f"s3://bench/{name}"
    return urls


# --- shuffle quality of shard windows (no S3) ---

def same_label_rate(labels: np.ndarray, order: np.ndarray, batch: int = BATCH) -> tuple[float, float]:
    """(fraction of same-label pairs within batches, mean distinct labels per batch)."""
    n = len(order) // batch * batch
    b = labels[order[:n]].reshape(-1, batch)
    same, distinct = [], []
    for row in b:
        _, counts = np.unique(row, return_counts=True)
        same.append((counts * (counts - 1)).sum() / (batch * (batch - 1)))
        distinct.append(len(counts))
    return float(np.mean(same)), float(np.mean(distinct))


def quality(seeds=(0, 1, 2)) -> None:
    from cytodata.loaders.partition import epoch_order, window_order

    n, per_shard, n_labels = 100_000, 100, 100
    rng = np.random.default_rng(0)
    layouts = {
        # labels in runs of 1,000 rows (10 shards): a set written in label order, the worst case
        "sorted by label": np.repeat(np.arange(n_labels), n // n_labels),
        # runs of 4 rows (4 sites per well, a compound per well): a set written in plate/well order
        "plate/well order": np.repeat(rng.integers(0, n_labels, n // 4), 4),
    }
    sizes = [per_shard] * (n // per_shard)
    print(f"shuffle quality: {n} samples in shards of {per_shard}, {n_labels} labels, batches of {BATCH}; "
          f"same-label pair rate within batches relative to a global per-sample shuffle (1.00 = as mixed), "
          f"distinct labels per batch; seeds {list(seeds)} (median, range)")
    orders = {"global (per sample)": lambda s: epoch_order(n, seed=s, epoch=0, block_size=1),
              "shard blocks (default)": lambda s: epoch_order(n, seed=s, epoch=0, shard_sizes=sizes)}
    for k in (1, 4, 16, 64):
        orders[f"window {k} shards"] = lambda s, k=k: window_order(sizes, seed=s, epoch=0, window=k)
    for layout, labels in layouts.items():
        base = [same_label_rate(labels, orders["global (per sample)"](s))[0] for s in seeds]
        print(f"  {layout}: global same-label pair rate {np.median(base):.4f}")
        for name, make in orders.items():
            got = [same_label_rate(labels, make(s)) for s in seeds]
            rel = np.array([g[0] / b for g, b in zip(got, base)])
            dist = np.array([g[1] for g in got])
            print(f"    {name:>24}: {np.median(rel):6.2f}x (range {rel.min():.2f}-{rel.max():.2f}); "
                  f"{np.median(dist):5.1f} distinct labels per batch")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--dir", default="/tmp/cytodata-bench-cells")
    ap.add_argument("--delays", default="0,20,50", help="ms the proxy adds to each request")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--window", type=int, default=4, help="shuffle_window of the cyto-window pipelines")
    ap.add_argument("--only", default="", help="comma-separated pipelines")
    ap.add_argument("--quality", action="store_true", help="also measure the shuffle quality of shard windows")
    args = ap.parse_args(argv)
    if args.quality:
        quality()
    folder = Path(args.dir)
    shards, paths = prepare(folder, args.n)
    peers = prepare_peers(folder, shards, paths)
    peers = {k: v for k, v in peers.items() if k in ("mds", "litdata-raw")}
    server, s3_port = start_s3()
    proxy = None
    tmp = Path(tempfile.mkdtemp(prefix="cytodata-remote-"))
    try:
        proxy = Proxy(s3_port)
        urls = upload(folder, shards, peers, f"http://127.0.0.1:{s3_port}")
        endpoint = f"http://127.0.0.1:{proxy.port}"
        os.environ.update(CREDS, S3_ENDPOINT_URL=endpoint, AWS_ENDPOINT_URL=endpoint)
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                   "client_kwargs": {"region_name": "us-east-1"}}
        w = args.window

        def fresh(name: str) -> str:
            path = tmp / f"{name}-{time.perf_counter_ns()}"
            return str(path)

        pipelines = {
            "cyto-global": lambda: Cyto(urls["cyto"], options, None, None),
            "cyto-global-cache": lambda: Cyto(urls["cyto"], options, fresh("c"), None),
            "cyto-window": lambda: Cyto(urls["cyto"], options, None, w),
            "cyto-window-cache": lambda: Cyto(urls["cyto"], options, fresh("c"), w),
        }
        if "mds" in peers:
            pipelines["mds"] = lambda: Mds(urls["mds"], fresh("mds"))
        if "litdata-raw" in peers:
            pipelines["litdata"] = lambda: Lit(urls["litdata-raw"] + "/", fresh("lit"), endpoint)
        if args.only:
            pipelines = {k: v for k, v in pipelines.items() if k in set(args.only.split(","))}
        delays = [int(d) for d in args.delays.split(",")]
        mb = sum(p.stat().st_size for p in shards.glob("*.tar")) / 1e6
        print(f"data: {args.n} samples (5, 256, 256) uint16, {mb:.0f} MB of shards; {os.cpu_count()} cores; "
              f"S3: moto server (pid {server.pid}) behind a latency proxy; window {args.window} shards")
        runs: dict[tuple[str, int], list[list[dict]]] = {(k, d): [] for k in pipelines for d in delays}
        names = list(pipelines)
        for rep in range(args.repeats):
            for d in delays:
                proxy.delay_ms.value = d
                for name in (names if rep % 2 == 0 else names[::-1]):
                    runs[(name, d)].append(measure(pipelines[name], proxy, server))
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.mkdir(exist_ok=True)
        report(runs, names, delays)
    finally:  # the server and the proxy never outlive the run
        if proxy is not None:
            proxy.stop()
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _med(x) -> str:
    x = np.asarray(x, dtype=float)
    return f"{np.median(x):.0f} ({x.min():.0f}-{x.max():.0f})"


def report(runs, names, delays) -> None:
    print("| pipeline | delay ms | epoch 1 img/s | epoch 2 img/s | first batch s | requests e1 / e2 | MB e1 / e2 "
          "| S3 server CPU s e1 | S3 requests/s e1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in delays:
        for name in names:
            rs = runs[(name, d)]
            if not rs:
                continue
            e1, e2 = [r[0] for r in rs], [r[1] for r in rs]
            first = np.array([r["first"] for r in e1])
            print(f"| {name} | {d} | {_med([r['rate'] for r in e1])} | {_med([r['rate'] for r in e2])} | "
                  f"{np.median(first):.2f} ({first.min():.2f}-{first.max():.2f}) | "
                  f"{np.median([r['requests'] for r in e1]):.0f} / {np.median([r['requests'] for r in e2]):.0f} | "
                  f"{np.median([r['mb'] for r in e1]):.0f} / {np.median([r['mb'] for r in e2]):.0f} | "
                  f"{np.median([r['server_cpu'] for r in e1]):.1f} | "
                  f"{np.median([r['requests'] / r['seconds'] for r in e1]):.0f} |")
    peers = [p for p in ("mds", "litdata") if p in names]
    for mine in ("cyto-window-cache", "cyto-global-cache", "cyto-global"):
        if mine not in names:
            continue
        for d in delays:
            for e in (0, 1):
                for p in peers:
                    r = np.array([a[e]["rate"] / b[e]["rate"] for a, b in zip(runs[(mine, d)], runs[(p, d)])])
                    if len(r):
                        print(f"{mine} / {p}, {d} ms, epoch {e + 1}: {np.median(r):.2f}x (range {r.min():.2f}-"
                              f"{r.max():.2f}, {len(r)} interleaved repeats)")


if __name__ == "__main__":
    main()
