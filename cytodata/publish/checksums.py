"""``SHA256SUMS`` (the ``sha256sum`` format) and ``verify(dest)``: every published file checked.

Each line is ``<64 hex digits>  <path>`` (two spaces: text mode in ``sha256sum -c``); paths are
relative to the folder holding SHA256SUMS, or absolute paths/URLs for shards published
``--in-place`` elsewhere. ``verify`` also reads the expected sizes from ``croissant.json``
(``contentSize``) so that a short file is reported as truncated rather than merely altered.
"""

from __future__ import annotations

import hashlib
import json
import re

SUMS_FILE = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_BLOCK = 1 << 20


def format_sums(entries: dict[str, str]) -> str:
    """``{path: sha256}`` -> SHA256SUMS text, sorted by path (re-publishing is byte-identical)."""
    for path in entries:
        if "\n" in path or "\\" in path:
            raise ValueError(f"file name {path!r} cannot be listed in {SUMS_FILE} (newline or backslash)")
    return "".join(f"{entries[p]}  {p}\n" for p in sorted(entries))


def parse_sums(text: str, where: str = SUMS_FILE) -> tuple[dict[str, str], list[str]]:
    """SHA256SUMS text -> ``({path: sha256}, problems)`` (a malformed line is a problem)."""
    entries, problems = {}, []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            problems.append(f"{where} line {n} is not '<sha256>  <path>': {line[:80]!r}")
            continue
        entries[m.group(2)] = m.group(1)
    return entries, problems


def stream_sha256(fh) -> tuple[str, int]:
    """sha256 and byte count of an open binary file object, read in 1 MiB blocks."""
    sha, n = hashlib.sha256(), 0
    for block in iter(lambda: fh.read(_BLOCK), b""):
        sha.update(block)
        n += len(block)
    return sha.hexdigest(), n


def is_url(path: str) -> bool:
    """Tell whether ``path`` is a ``scheme://...`` URL (object stores, http)."""
    return "://" in path


def verify(dest, storage_options: dict | None = None, *, workers: int = 8) -> list[str]:
    """Check every file listed in ``DEST/SHA256SUMS``; return the problems (empty: all match).

    ``dest``: a local folder or fsspec URL (``s3://bucket/name``; ``storage_options`` go to
    fsspec). Each problem names one file: ``missing``, ``truncated`` (shorter than published),
    ``altered`` (same size or longer, different sha256), or a malformed SHA256SUMS line.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .collect import open_fs

    fs, root, _ = open_fs(dest, storage_options)
    try:
        text = fs.cat_file(f"{root}/{SUMS_FILE}").decode("utf-8")
    except FileNotFoundError:
        return [f"{SUMS_FILE} missing in {dest}: not a published dataset (cytodata publish writes it)"]
    entries, problems = parse_sums(text)
    sizes = _expected_sizes(fs, root)

    def check(item: tuple[str, str]) -> str | None:
        rel, want = item
        target_fs, path = (open_fs(rel, storage_options)[:2] if is_url(rel)
                           else (fs, rel if rel.startswith("/") else f"{root}/{rel}"))
        try:
            with target_fs.open(path, "rb") as fh:
                got, n = stream_sha256(fh)
        except FileNotFoundError:
            return f"missing: {rel}"
        except OSError as exc:
            return f"unreadable: {rel} ({exc})"
        if got == want:
            return None
        expected = sizes.get(rel)
        if expected is not None and n < expected:
            return f"truncated: {rel} ({n} of {expected} bytes)"
        return f"altered: {rel} (sha256 {got[:12]}..., published {want[:12]}...)"

    with ThreadPoolExecutor(max(1, workers)) as pool:  # hashing releases the GIL; stores are I/O bound
        problems += [p for p in pool.map(check, sorted(entries.items())) if p]
    return problems


def report(dest, storage_options: dict | None = None, *, out=None) -> int:
    """Print :func:`verify`'s verdict for ``dest``; return the exit code (0 all match, 1 not).

    For the ``cytodata verify DEST`` command when DEST holds a SHA256SUMS file.
    """
    import sys

    out = out or sys.stdout
    problems = verify(dest, storage_options)
    if not problems:
        print(f"{dest}: every file listed in {SUMS_FILE} matches", file=out)
        return 0
    for problem in problems:
        print(f"{dest}: {problem}", file=out)
    print(f"{dest}: {len(problems)} problem(s); re-publish (cytodata publish) or restore the "
          "files named above", file=out)
    return 1


def _expected_sizes(fs, root: str) -> dict[str, int]:
    """Read the published size per contentUrl from croissant.json ({} when unreadable)."""
    try:
        doc = json.loads(fs.cat_file(f"{root}/croissant.json"))
    except (FileNotFoundError, ValueError, OSError):
        return {}
    out = {}
    for node in doc.get("distribution", []) if isinstance(doc, dict) else []:
        size = str(node.get("contentSize", "")).split(" ")[0]
        if node.get("contentUrl") and size.isdigit():
            out[node["contentUrl"]] = int(size)
    return out
