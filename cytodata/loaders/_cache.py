"""A node-local cache of whole shards of a remote shard set: fetched once, checked, shared, evicted LRU.

Layout under ``cache_dir`` (one folder may serve many sets and every rank and worker of a node)::

    shards/<sha256>.tar                      complete shards, named by the sha256 shards.json lists
    shards/<sha256>.tar.tmp-<bytes>-<uuid>   a fetch being written (counted against the limit)
    locks/<sha256>.lock                      one process fetches a shard; the others wait for it
    sets/<digest of the source URL>.json     the fingerprint each remote set had (identity check)
    cache.lock                               held while the limit is enforced

Why named by content: a shard is served only under the sha256 that the set's current
``shards.json`` lists for it, so a remote set rewritten since the cache was filled is never
answered with an old shard (its changed shards miss and are fetched again; the change is
reported once). A shard is hashed as it arrives and appears under its final name only by an
atomic rename, so no reader ever opens a partial shard. A cached shard that is later found
short or corrupt (size on every use; per-sample XXH3 checks, or the shard's sha256 once per
process when those are off) is fetched again, counted in ``refetched``, and never served.

Eviction is least-recently-used by file mtime (touched on use) under ``limit`` bytes. A
shard evicted while another process still reads it stays readable there (POSIX unlink
semantics: open descriptors keep the data), so the limit can be passed briefly by the shards
in use plus the fetches in flight. A folder that cannot store a shard (full disk, quota,
read-only) turns the cache off for the process with one warning: the shard just fetched is
served from memory and later reads go to the object store.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import threading
import time
import uuid
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable

from ..errors import ShardError

#: errors of a folder that cannot take a shard: stream without caching instead
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
#: a temp file older than this belongs to a process that died mid-fetch
STALE_TMP_S = 600.0
#: touch a cached shard's mtime (its LRU age) at most this often per process
TOUCH_EVERY_S = 2.0

Fetch = Callable[[str], bytes]


class ShardCache:
    """Whole shards of one remote set under ``root`` (see the module docstring).

    ``shards``: the ``shards.json`` entries (name, sha256, bytes). ``limit``: bytes for the
    whole folder (None: no limit). ``check_hits``: sha256-check each shard found in the cache
    once per process before serving it (for readers that skip the per-sample checks).
    Counters of this process: ``hits``, ``fetched``, ``waited`` (another process or thread
    fetched it while this one waited), ``refetched`` (a cached copy was short or corrupt),
    ``evicted``, ``bytes_fetched``.
    """

    def __init__(self, root: str | os.PathLike, *, source: str, fingerprint: str, shards: list[dict],
                 limit: int | None = None, check_hits: bool = False):
        self.root, self.source, self.limit = os.fspath(root), source, limit
        missing = [s["name"] for s in shards if not s.get("sha256")]
        if missing:
            raise ShardError(f"{source}: shards.json lists no sha256 for {missing[:5]} ({len(missing)} shards), "
                             "so a cached copy could not be checked; rewrite the set with `cytodata shard` "
                             "or stream without cache_dir")
        self.sha = {s["name"]: str(s["sha256"]) for s in shards}
        self.size = {s["name"]: int(s["bytes"]) for s in shards}
        if limit is not None:
            biggest = max(shards, key=lambda s: int(s["bytes"]), default=None)
            if int(limit) < 1 or (biggest is not None and int(limit) < int(biggest["bytes"])):
                raise ValueError(f"cache_limit={int(limit)} bytes is smaller than shard {biggest['name']} "
                                 f"({int(biggest['bytes'])} bytes) of {source}: the cache holds whole shards; "
                                 f"use cache_limit >= {int(biggest['bytes'])} (a few windows of shards), "
                                 "or cache_dir=None (`cytodata train`: --set data.cache_limit=N or "
                                 "--set data.cache_dir=null)")
            self.limit = int(limit)
        self.check_hits = bool(check_hits)
        self.hits = self.fetched = self.waited = self.refetched = self.evicted = self.bytes_fetched = 0
        self.disabled: str | None = None
        self._checked: set[str] = set()  # shards whose bytes this process has verified
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        try:
            for sub in ("shards", "locks", "sets"):
                os.makedirs(os.path.join(self.root, sub), exist_ok=True)
            self._check_identity(fingerprint)
        except OSError as exc:
            self._disable(exc)

    # --- pickling (spawn workers): counters and locks are per process ---
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_checked"], state["_touched"] = set(), {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def stats(self) -> dict[str, int]:
        """Counters of this process."""
        return {k: getattr(self, k) for k in ("hits", "fetched", "waited", "refetched", "evicted",
                                              "bytes_fetched")}

    def path(self, name: str) -> str:
        """Where shard ``name`` lives once cached."""
        return os.path.join(self.root, "shards", f"{self.sha[name]}.tar")

    # --- the one entry point ---
    def ensure(self, name: str, fetch: Fetch) -> str | bytes | None:
        """Shard ``name`` from the cache: its path (fetched first when missing, short or corrupt),
        its bytes when the folder could not store it, or None when the cache is off (read remotely).

        ``fetch(name)``: the whole shard from the object store.
        """
        if self.disabled:
            return None
        path = self.path(name)
        if self._usable(name, path):
            self._hit(name, path)
            return path
        with self._shard_lock(name):
            if self._usable(name, path):  # another process or thread fetched it meanwhile
                self.waited += 1
                self._hit(name, path)
                return path
            if os.path.exists(path):  # short or corrupt: never served
                self._count("refetched")
                _unlink(path)
            return self._fetch(name, fetch)

    def repair(self, name: str, fetch: Fetch) -> str | bytes | None:
        """After a payload of ``name`` failed its check: the shard's sha256 decides.

        A cached copy that no longer matches is fetched again (counted in ``refetched``) and
        its new path returned; an intact one is returned as is (the sample itself is bad in the
        set: the caller's retry fails the same way and reports it).
        """
        if self.disabled:
            return None
        path = self.path(name)
        with self._shard_lock(name):
            if os.path.exists(path) and _sha256_file(path) == self.sha[name]:
                return path
            self._count("refetched")
            _unlink(path)
            with self._lock:
                self._checked.discard(name)
            return self._fetch(name, fetch)

    # --- internals ---
    def _usable(self, name: str, path: str) -> bool:
        try:
            if os.stat(path).st_size != self.size[name]:
                return False
        except FileNotFoundError:
            return False
        if self.check_hits and name not in self._checked:
            if _sha256_file(path) != self.sha[name]:
                return False
            with self._lock:
                self._checked.add(name)
        return True

    def _hit(self, name: str, path: str) -> None:
        self._count("hits")
        now = time.monotonic()
        if now - self._touched.get(name, -1e9) > TOUCH_EVERY_S:  # its LRU age, cheaply
            self._touched[name] = now
            _touch(path)

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + n)

    def _fetch(self, name: str, fetch: Fetch) -> str | bytes | None:
        """Fetch, check and store shard ``name`` (the caller holds its lock)."""
        size, want = self.size[name], self.sha[name]
        data = fetch(name)
        got = hashlib.sha256(data).hexdigest()  # releases the GIL: other threads decode meanwhile
        if len(data) != size or got != want:
            raise ShardError(f"{self.source}: shard {name} read from the object store has {len(data)} bytes "
                             f"and sha256 {got[:16]}..., shards.json lists {size} bytes and {want[:16]}...: the "
                             "set was rewritten after it was opened (open the dataset again) or the copy is "
                             "damaged (`cytodata verify` it)")
        self._count("fetched")
        self._count("bytes_fetched", size)
        path = self.path(name)
        tmp = f"{path}.tmp-{size}-{uuid.uuid4().hex}"
        try:
            self._make_room(size)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)  # atomic: readers see the whole shard or none
            _touch(path)
        except OSError as exc:
            _unlink(tmp)
            if exc.errno not in NO_ROOM:
                raise
            self._disable(exc)
            return data
        with self._lock:
            self._checked.add(name)
            self._touched[name] = time.monotonic()
        return path

    def _make_room(self, size: int) -> None:
        """Evict least recently used shards until ``size`` more bytes fit under the limit."""
        if self.limit is None:
            return
        folder = os.path.join(self.root, "shards")
        with _flock(os.path.join(self.root, "cache.lock")):
            done, flight, now = [], {}, time.time()
            for entry in os.scandir(folder):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if ".tmp-" in entry.name:
                    if now - st.st_mtime > STALE_TMP_S:  # left by a process that died mid-fetch
                        _unlink(entry.path)
                        continue
                    final, _, tail = entry.name.partition(".tmp-")
                    try:  # a fetch in flight counts at its final size
                        flight[final] = int(tail.split("-", 1)[0])
                    except ValueError:
                        flight[final] = st.st_size
                    continue
                done.append((st.st_mtime_ns, st.st_size, entry.path))
            # a fetch renamed while the folder was listed shows under both names: count it once
            names = {os.path.basename(p) for _, _, p in done}
            total = sum(n for _, n, _ in done) + sum(n for k, n in flight.items() if k not in names)
            for _, nbytes, victim in sorted(done):
                if total + size <= self.limit:
                    break
                _unlink(victim)
                total -= nbytes
                self._count("evicted")

    def _check_identity(self, fingerprint: str) -> None:
        """Record the set's fingerprint; a changed remote set is reported once (its old shards,
        named by their old sha256, are never served for it).
        """
        key = hashlib.sha256(self.source.encode()).hexdigest()[:24]
        record = os.path.join(self.root, "sets", f"{key}.json")
        try:
            with open(record) as fh:
                before = json.load(fh).get("fingerprint")
        except (FileNotFoundError, ValueError):
            before = None
        if before is not None and before != fingerprint:
            warnings.warn(f"{self.source} changed since {self.root} cached it (fingerprint {before} -> "
                          f"{fingerprint}): its changed shards are fetched again and the old copies are "
                          "never served (they age out of the cache)", stacklevel=4)
        if before != fingerprint:
            tmp = f"{record}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "w") as fh:
                json.dump({"source": self.source, "fingerprint": fingerprint}, fh)
            os.replace(tmp, record)

    def _disable(self, exc: OSError) -> None:
        with self._lock:
            if self.disabled:
                return
            self.disabled = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"shard cache {self.root} cannot store shards ({self.disabled}); streaming {self.source} "
                      "without caching in this process. Free space, or pass another cache_dir", stacklevel=4)

    @contextmanager
    def _shard_lock(self, name: str):
        with _flock(os.path.join(self.root, "locks", f"{self.sha[name]}.lock")):
            yield


@contextmanager
def _flock(path: str):
    """An exclusive lock on ``path`` between processes and between threads (one open file each)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _touch(path: str) -> None:
    """Set ``path``'s mtime (its LRU age) to now, to the nanosecond: the clock the kernel stamps
    writes with ticks in milliseconds, too coarse to order shards fetched back to back.
    """
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:  # evicted meanwhile: the caller's open fails and it asks again
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Prefetch:
    """Fetch the shards a stream needs next on background threads, at most ``max_bytes`` ahead.

    ``names``: the stream's shards in the order it first needs them. :meth:`get` is what the
    reader calls for a shard: it moves the horizon on, then waits for that shard (fetched by a
    prefetch thread, by another process, or inline).
    """

    def __init__(self, cache: ShardCache, fetch: Fetch, names: list[str], max_bytes: int, threads: int = 2):
        self.cache, self.fetch, self.names = cache, fetch, names
        self.at = {n: i for i, n in enumerate(names)}
        self.max_bytes, self.next, self.done = int(max_bytes), 0, -1
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="cytodata-prefetch")

    def get(self, name: str) -> str | bytes | None:
        i = self.at.get(name)
        with self._lock:
            if i is not None and i > self.done:
                self.done = i
            self._schedule()
            fut = self._futures.get(name)
        if fut is not None:
            return fut.result()
        return self.cache.ensure(name, self.fetch)

    def _schedule(self) -> None:
        ahead = sum(self.cache.size[n] for n in self.names[self.done + 1: self.next])
        while self.next < len(self.names) and not self.cache.disabled:
            name = self.names[self.next]
            if self.next > self.done and ahead + self.cache.size[name] > self.max_bytes:
                break
            self._futures[name] = self._pool.submit(self.cache.ensure, name, self.fetch)
            ahead += self.cache.size[name] if self.next > self.done else 0
            self.next += 1
        for n in [n for n in self._futures if self.at[n] < self.done - 1]:  # results no longer needed
            if self._futures[n].done():
                del self._futures[n]

    def close(self) -> None:
        with self._lock:
            for fut in self._futures.values():
                fut.cancel()
        self._pool.shutdown(wait=True)
