"""Publish a WebDataset shard set: dataset card, Croissant 1.1, checksums, splits, provenance.

``publish(shards, dest)`` / ``cytodata publish SHARDS -o DEST`` writes into DEST (a folder or an
fsspec URL such as ``s3://bucket/name``)::

    README.md            dataset card: Hugging Face YAML header + Datasheets-for-Datasets sections
    croissant.json       Croissant 1.1 JSON-LD (mlcroissant validates it and reads its records)
    SHA256SUMS           every published file (``sha256sum -c SHA256SUMS`` works locally)
    shard-<split>-<id>-NNNNNN.tar   the samples, one run of shards per split, payload ``npy``
                         (``payload=``: ``portable`` | ``fast`` | a codec; repack.py); with
                         ``in_place=True`` the source's ``shard-*.tar`` referenced where they are
    index.parquet  shards.json    of the published shards (DEST is itself a shard set)
    ledger.parquet       copied from the shard set
    provenance.parquet   per sample: source, image id, plate/well/site, crop, original channel files
    splits/<split>.txt   keys of each split; splits/<split>.parquet: its index rows
    manifest-provenance.json   the manifest's recipe + source file checksums (with ``manifest=``)

Every shard is hashed against ``shards.json`` before anything is published; a mismatch names
the shard. Re-publishing an unchanged set rewrites byte-identical metadata. ``verify(dest)``
re-hashes everything listed in SHA256SUMS and names each missing, truncated or altered file.
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from ..errors import PublishError
from .checksums import SUMS_FILE, format_sums, is_url, parse_sums, stream_sha256, verify
from .collect import Facts, collect, open_fs, open_shard_set, split_counts

__all__ = ["publish", "verify", "PublishWarning"]

MARKER = ".cytodata-publish"  # identity of the set being published into DEST (claimed first)
COPIED_FILES = ("index.parquet", "shards.json", "ledger.parquet")
#: ``publish`` default payload; see docs/publish.md for the measurements behind it
DEFAULT_PAYLOAD = "portable"
REPACK_LAYOUT = "one run of shards per split, v1"  # part of a repacked publication's identity


class PublishWarning(UserWarning):
    """Something the card cannot state (e.g. a source without a known license)."""


def _open(path, storage_options):
    return open_fs(path, storage_options)


def _same_place(src, dst) -> bool:
    (sfs, sroot, slocal), (dfs, droot, dlocal) = src, dst
    if slocal and dlocal:
        return os.path.realpath(sroot) == os.path.realpath(droot)
    return type(sfs) is type(dfs) and sroot == droot


def claim(dfs, droot: str, identity: str, *, same_as_source: bool, overwrite: bool) -> None:
    """Refuse a DEST that holds another dataset (or unrelated files) unless ``overwrite``."""
    import json

    if not dfs.exists(droot):
        return
    names = sorted(posixpath.basename(p.rstrip("/")) for p in dfs.ls(droot, detail=False))
    if not names or same_as_source:
        return
    ours = None
    if MARKER in names:
        ours = dfs.cat_file(f"{droot}/{MARKER}").decode().strip()
    elif "croissant.json" in names:
        try:
            ours = str(json.loads(dfs.cat_file(f"{droot}/croissant.json")).get("identifier", ""))
        except ValueError:
            ours = "(unreadable croissant.json)"
        ours = ours.removeprefix("cytodata:")
    if ours == identity or overwrite:
        return
    what = (f"another dataset (identity {ours[:16]}...)" if ours else
            f"files that are not a cytodata publication ({', '.join(names[:5])}"
            f"{' ...' if len(names) > 5 else ''})")
    raise PublishError(f"{droot} already holds {what}; publish into an empty or new folder, or pass "
                       "overwrite=True (CLI: --overwrite) to replace the published files")


def _published_files(dfs, droot: str) -> set[str]:
    """Paths listed in DEST's current SHA256SUMS (empty when there is none)."""
    try:
        return set(parse_sums(dfs.cat_file(f"{droot}/{SUMS_FILE}").decode("utf-8", "replace"))[0])
    except FileNotFoundError:
        return set()


def _write_bytes(fs, path: str, data: bytes, local: bool) -> None:
    parent = posixpath.dirname(path)
    if local:
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def _parquet_bytes(frame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _transfer_shards(facts: Facts, src, dst, *, in_place: bool, same: bool, workers: int) -> dict:
    """Hash (and copy unless in place) every shard; {name: (sha256, bytes)}. Raises on mismatch."""
    (sfs, sroot, _), (dfs, droot, dlocal) = src, dst
    shards = facts.meta.get("shards", [])
    created: list[str] = []

    def one(entry: dict) -> tuple[str, str | None]:
        name, want = entry["name"], entry["sha256"]
        spath, dpath = f"{sroot}/{name}", f"{droot}/{name}"
        if in_place or same:
            with sfs.open(spath, "rb") as fh:
                got, _ = stream_sha256(fh)
            return name, None if got == want else got
        if dfs.exists(dpath) and dfs.size(dpath) == entry["bytes"]:
            with dfs.open(dpath, "rb") as fh:
                if stream_sha256(fh)[0] == want:  # already published and intact: keep it
                    return name, None
        import hashlib

        sha = hashlib.sha256()
        target = f"{dpath}.tmp-{uuid.uuid4().hex}" if dlocal else dpath
        if dlocal:
            os.makedirs(droot, exist_ok=True)
        with sfs.open(spath, "rb") as fin, dfs.open(target, "wb") as fout:
            for block in iter(lambda: fin.read(1 << 22), b""):
                sha.update(block)
                fout.write(block)
        got = sha.hexdigest()
        if got != want:
            dfs.rm(target)
            return name, got
        if dlocal:
            os.replace(target, dpath)
        created.append(dpath)
        return name, None

    with ThreadPoolExecutor(max(1, workers)) as pool:  # I/O bound; hashlib releases the GIL
        results = list(pool.map(one, shards))
    bad = [(n, got) for n, got in results if got]
    if bad:
        for p in created:  # leave DEST as it was
            dfs.rm(p)
        listed = ", ".join(f"{n} (sha256 {g[:12]}...)" for n, g in bad[:5])
        raise PublishError(
            f"{sroot}: {len(bad)} shard(s) no longer match shards.json: {listed}"
            f"{' ...' if len(bad) > 5 else ''}; the shards changed after writing; re-run "
            "`cytodata shard` on the manifest (it rewrites mismatching shards), then publish")
    return {s["name"]: (s["sha256"], int(s["bytes"])) for s in shards}


def _shard_urls(facts: Facts, src, dst, *, in_place: bool, same: bool) -> dict[str, str]:
    (sfs, sroot, slocal), (_, droot, dlocal) = src, dst
    names = [s["name"] for s in facts.meta.get("shards", [])]
    if same or not in_place:
        return {n: n for n in names}
    if slocal and dlocal:
        rel = os.path.relpath(sroot, droot).replace(os.sep, "/")
        return {n: f"{rel}/{n}" for n in names}
    base = sfs.unstrip_protocol(sroot)  # s3://bucket/set, or file:///abs/set for a remote DEST
    return {n: f"{base}/{n}" for n in names}


def _payload(payload: str | None, shard_set, *, keep: bool) -> str | None:
    """The codec to publish payloads in (None: keep the shards as they are)."""
    from ..errors import ShardError
    from ..shards.codecs import payload_codec

    current = str(shard_set.meta.get("codec"))
    try:
        codec = payload_codec(payload or DEFAULT_PAYLOAD).name if (payload or not keep) else current
    except ShardError as exc:
        raise PublishError(str(exc)) from None
    if keep and codec != current:
        raise PublishError(f"--in-place publishes the shards as written (codec {current!r}); payload "
                           f"{payload!r} needs new shards: drop --in-place, or drop --payload")
    if not keep:  # refuse before any work: a dtype the payload cannot hold, named
        from ..shards.codecs import CODECS

        dtypes = [d for d in shard_set.meta.get("dtypes") or [shard_set.meta.get("dtype")] if d]
        try:
            for dtype in dtypes:
                CODECS.get(codec).check_dtype(dtype, f"{shard_set.source} (shards.json dtypes)")
        except ShardError as exc:
            raise PublishError(str(exc)) from None
    return None if keep else codec


def publish(shards, dest, *, in_place: bool = False, manifest=None, name: str | None = None,
            description: str = "", licenses: dict[str, str] | None = None,
            citations: dict[str, str] | None = None, overwrite: bool = False,
            storage_options: dict | None = None, workers: int = 8, url: str | None = None,
            creator: str | None = None, payload: str | None = None) -> dict:
    """Publish the WebDataset shard set ``shards`` into ``dest``; return a summary dict.

    ``dest``: folder or fsspec URL (``storage_options`` apply to both locations). ``payload``:
    ``"portable"`` (the default: ``npy`` members that webdataset, Hugging Face ``datasets`` and
    numpy decode with no extra code), ``"fast"`` (``blosc-lz4``) or a codec name; the shards are
    rewritten one run per split (``shard-<split>-<id>-NNNNNN.tar``, see :mod:`.repack`).
    ``in_place``: reference the shards where they are instead (as written: no payload change,
    splits mixed in shards). ``manifest``: the manifest folder the shards were written from
    (adds the recipe: split rule, QC rules, per-stage counts). ``licenses`` / ``citations``: per
    source id, override what the recipe and :data:`~cytodata.publish.sources.KNOWN_SOURCES` say.
    A source without a license makes the card say "unknown" and warns (:class:`PublishWarning`).
    ``url`` / ``creator``: the dataset's landing page and publisher, stated in Croissant.
    """
    src = _open(shards, storage_options)
    dst = _open(dest, storage_options)
    same = _same_place(src, dst)
    shard_set = open_shard_set(str(shards), storage_options)
    codec = _payload(payload, shard_set, keep=in_place or same)
    name = name or posixpath.basename(src[1].rstrip("/")) or "cytodata dataset"
    facts = collect(shard_set, name=name, description=description, manifest=manifest,
                    licenses=licenses, citations=citations)
    facts.url, facts.creator = url, creator
    if codec is not None:  # the published set is the source repacked: its own identity
        from ..shards._samples import digest

        facts.identity = digest({"source": facts.identity, "payload": codec, "layout": REPACK_LAYOUT})
    unknown = sorted(n for n, s in facts.sources.items() if s.license is None)
    if unknown:
        warnings.warn(f"no license known for source(s) {unknown}: the dataset card says 'unknown'; "
                      "pass licenses={'SOURCE': 'SPDX-ID'} (CLI: --license SOURCE=SPDX-ID)",
                      PublishWarning, stacklevel=2)
    dfs, droot, dlocal = dst
    claim(dfs, droot, facts.identity, same_as_source=same, overwrite=overwrite)
    previous = _published_files(dfs, droot)
    if dlocal:
        os.makedirs(droot, exist_ok=True)
    marker = f"{droot}/{MARKER}"
    claimed = not same and not dfs.exists(marker)
    if not same:  # claim DEST first: a publish killed mid-copy resumes into it
        _write_bytes(dfs, marker, facts.identity.encode() + b"\n", dlocal)
    try:
        if codec is None:
            facts.shard_urls = _shard_urls(facts, src, dst, in_place=in_place, same=same)
            shard_files = _transfer_shards(facts, src, dst, in_place=in_place, same=same, workers=workers)
        else:
            from .repack import repack

            new_shards, new_index, new_meta = repack(shard_set, dst, codec, tag=facts.identity[:8],
                                                     workers=workers)
            shard_files = {s["name"]: (s["sha256"], int(s["bytes"])) for s in new_shards}
            facts.meta, facts.index = new_meta, new_index
            facts.shard_urls = {n: n for n in shard_files}
            # provenance rows follow the published index (same order, the new shard names)
            prov = facts.provenance.set_index(facts.provenance["key"].astype(str))
            prov = prov.loc[new_index["key"].astype(str).tolist()].reset_index(drop=True)
            facts.provenance = prov.assign(shard=pd.array(new_index["shard"].astype(str), dtype="string"))
    except PublishError:
        if claimed:  # nothing was published: leave DEST as it was
            dfs.rm(marker)
        raise

    import hashlib

    files: dict[str, tuple[str, int]] = {}

    def put(path: str, data: bytes, write: bool = True) -> None:
        if write:
            _write_bytes(dfs, f"{droot}/{path}", data, dlocal)
        files[path] = (hashlib.sha256(data).hexdigest(), len(data))

    sfs, sroot, _ = src
    for fname in COPIED_FILES:
        if codec is not None and fname != "ledger.parquet":
            continue  # the repacked set's own index and shard list, below
        try:
            data = sfs.cat_file(f"{sroot}/{fname}")
        except FileNotFoundError:
            continue
        put(fname, data, write=not same)
    if codec is not None:
        import json

        put("index.parquet", _parquet_bytes(facts.index))
        put("shards.json", (json.dumps(facts.meta, indent=1, sort_keys=True) + "\n").encode())
    if manifest is not None:
        from pathlib import Path

        folder = Path(manifest) if Path(manifest).is_dir() else Path(manifest).parent
        put("manifest-provenance.json", (folder / "provenance.json").read_bytes())
    put("provenance.parquet", _parquet_bytes(facts.provenance))
    index = facts.index
    split_col = index["split"].astype("string").fillna("unassigned") if len(index) else index.get("split")
    for split in split_counts(index):
        rows = index[(split_col == split).to_numpy()]
        put(f"splits/{split}.txt", "".join(f"{k}\n" for k in rows["key"].astype(str)).encode())
        put(f"splits/{split}.parquet", _parquet_bytes(rows.reset_index(drop=True)))

    import json

    from .card import render_card
    from .croissant import build_croissant

    doc = build_croissant(facts, files)
    put("croissant.json", (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode())
    put("README.md", render_card(facts).encode())
    sums = {path: sha for path, (sha, _) in files.items()}
    sums.update({facts.shard_urls[n]: sha for n, (sha, _) in shard_files.items()})
    _write_bytes(dfs, f"{droot}/{SUMS_FILE}", format_sums(sums).encode(), dlocal)
    for stale in sorted(previous - set(sums)):  # files of a replaced publication (--overwrite)
        if not is_url(stale) and not stale.startswith(("/", "..")) and dfs.exists(f"{droot}/{stale}"):
            dfs.rm(f"{droot}/{stale}")
    return {"dest": str(dest), "samples": int(len(index)), "shards": len(shard_files),
            "in_place": bool(in_place or same), "files": len(sums) + 1,
            "codec": str(facts.meta.get("codec")),
            "bytes": sum(b for _, b in shard_files.values()) + sum(b for _, b in files.values()),
            "licenses_unknown": unknown, "splits": split_counts(index)}


# --- CLI ------------------------------------------------------------------------------------
def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise PublishError(f"{flag} {v!r}: expected SOURCE=VALUE, e.g. {flag} rxrx1=CC-BY-NC-SA-4.0")
        out[key] = val
    return out


def _main(args) -> int:
    import json
    import sys

    options = json.loads(args.storage_options) if args.storage_options else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PublishWarning)
        summary = publish(args.shards, args.out, in_place=args.in_place, manifest=args.manifest,
                          name=args.name, description=args.description,
                          licenses=_pairs(args.license, "--license"),
                          citations=_pairs(args.citation, "--citation"),
                          overwrite=args.overwrite, storage_options=options, url=args.url,
                          creator=args.creator, payload=args.payload)
    for w in caught:
        print(f"cytodata publish: warning: {w.message}", file=sys.stderr)
    print(f"published {summary['samples']} samples in {summary['shards']} shards to {summary['dest']} "
          f"({'shards referenced in place' if summary['in_place'] else 'payload ' + summary['codec']}); "
          f"splits: {', '.join(f'{k}={v}' for k, v in summary['splits'].items())}")
    if not args.quiet:
        print(f"wrote README.md, croissant.json, {SUMS_FILE} ({summary['files'] - 1} files listed); "
              f"check with: cytodata verify {summary['dest']}")
    return 0
