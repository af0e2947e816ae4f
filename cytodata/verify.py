"""``cytodata verify PATH``: a shard set (``cytodata.shards.verify``) or a published dataset
(``cytodata.publish.checksums.verify``) checked against its checksums; exit 1 naming each bad
file, shard and key.
"""

from __future__ import annotations


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
    from pathlib import Path

    if "://" not in args.shards and not Path(args.shards).exists():  # said before any stage loads
        print(f"cytodata verify: {args.shards} does not exist", file=sys.stderr)
        return 1
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
