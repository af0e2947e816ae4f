"""``cytodata verify PATH``: a shard set (``cytodata.shards.verify``) or a published dataset
(``cytodata.publish.checksums.verify``) checked against its checksums; exit 1 naming each bad
file, shard and key.
"""

from __future__ import annotations


# --- CLI ------------------------------------------------------------------------------------
def register(subparsers) -> None:
    """``cytodata verify SHARDS [--deep]``."""
    p = subparsers.add_parser(
        "verify", help="check a shard set or a published dataset against its checksums (exit 1 "
                       "naming each bad file, shard and key)",
        description="A shard set: check every shard's size and sha256 against shards.json and "
                    "index.parquet against both; with --deep also every sample's XXH3-64 checksum "
                    "(reads the whole set once). A published dataset (a folder or URL holding "
                    "SHA256SUMS, written by `cytodata publish`): check every listed file; with "
                    "--deep also the shard set inside it.")
    p.add_argument("shards", help="shard set or published folder, or URL (s3://bucket/set)")
    p.add_argument("--deep", action="store_true", help="also check every sample's checksum")
    p.add_argument("-o", "--out", default=None, metavar="FILE",
                   help="also write the problems found as JSON lines to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print only problems and the verdict")
    p.set_defaults(func=_main)


def _published(path: str) -> bool:
    """Whether ``path`` is a published dataset (holds SHA256SUMS)."""
    import fsspec

    from .publish.checksums import SUMS_FILE

    fs, root = fsspec.core.url_to_fs(str(path))
    return fs.exists(f"{root.rstrip('/')}/{SUMS_FILE}")


def _main(args) -> int:
    import json
    import sys
    import warnings

    from .shards.integrity import verify

    if _published(args.shards):
        from .publish.checksums import report
        from .publish.checksums import verify as verify_published

        code = report(args.shards)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                for p in verify_published(args.shards):
                    f.write(json.dumps({"problem": p}) + "\n")
        return code
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problems = verify(args.shards, deep=args.deep)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for p in problems:
                f.write(json.dumps({"shard": p.shard, "key": p.key, "problem": p.what}) + "\n")
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    if len(problems) == 1 and problems[0].shard is None and problems[0].key is None:
        print(f"cytodata verify: {problems[0].what}", file=sys.stderr)  # nothing to list per shard
        return 1
    for p in problems:
        print(f"BAD {p}", file=sys.stderr)
    if problems:
        bad_shards = sorted({p.shard for p in problems if p.shard})
        bad_keys = sorted({p.key for p in problems if p.key})
        print(f"{args.shards}: {len(problems)} problem(s); bad shards: {bad_shards}; bad keys: {bad_keys}",
              file=sys.stderr)
        return 1
    what = "every shard sha256" + (" and every sample checksum" if args.deep and not caught else "")
    print(f"{args.shards}: ok ({what} verified)")
    return 0
