"""Start-up time of the command line: `cytodata --help`, each command's `--help` and the cheap
invocations, as whole processes, against a baseline measured in the same run, interleaved.

    python benchmarks/cli_start.py [--repeats 7] [--cases "shard --help" ...] [--baseline DIR]

The baseline is the eager parser (every command's module imported, as a CLI without its command
table starts), or, with ``--baseline DIR``, the same command run from another checkout of
cytodata (``git worktree add DIR REV``: the code before a change). This checkout's cytodata runs
first on the path (PYTHONPATH), whatever is installed. Prints per case the min and median wall
time of each side, the per-pair ratio baseline / ours (median and range), and the heaviest
imports of `cytodata --help` (`python -X importtime`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # this checkout
#: the timed invocations: each command's --help, a listing and a refusal of a missing path
CASES = ["--help", "recipes --help", "manifest --help", "manifest build --help", "cells --help", "qc --help",
         "shard --help", "shards --help", "shards describe --help", "verify --help", "evaluate --help",
         "publish --help", "demo --help", "train --help", "embed --help", "predict --help",
         "verify /nonexistent", "train --list", "train --show classifier-tiny", "train --show ws-dino",
         "recipes"]
EAGER = [sys.executable, "-c", "from cytodata import cli; cli.build_parser()"]


def _side(root: Path) -> dict:
    """How a side runs: its checkout first on the path and as the working folder (``python -m``
    puts the working folder first)."""
    return {"env": {**os.environ, "PYTHONPATH": str(root)}, "cwd": str(root)}


def wall(cmd: list[str], side: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, **side)
    return time.perf_counter() - t0


def heaviest_imports(args: list[str], n: int = 5) -> list[tuple[int, str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "cytodata", *args],
                          capture_output=True, text=True, **_side(HERE))
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].strip()))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", nargs="+", default=CASES, metavar="ARGS",
                    help="argument strings after `cytodata` (default: every command's --help and "
                         "the cheap invocations)")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="a checkout of cytodata to compare against (default: the eager parser)")
    args = ap.parse_args()
    ours_env = _side(HERE)
    base_env = _side(Path(args.baseline).resolve()) if args.baseline else ours_env
    base_name = "baseline" if args.baseline else "eager"
    print(f"ours: {HERE}; {base_name}: {args.baseline or 'every command module imported'}; "
          f"{args.repeats} interleaved pairs per case; load average {os.getloadavg()[0]:.1f}")
    width = max(24, *(len(c) for c in args.cases))
    print(f"{'case':<{width}} {'ours min/median (s)':>20} {base_name + ' min/median (s)':>22} "
          f"{base_name + '/ours median (range)':>30}")
    for case in args.cases:
        ours_cmd = [sys.executable, "-m", "cytodata", *case.split()]
        base_cmd = ours_cmd if args.baseline else EAGER
        wall(ours_cmd, ours_env)  # page cache warm for both sides
        wall(base_cmd, base_env)
        ours, base, ratios = [], [], []
        for i in range(args.repeats):  # interleaved, the order flipped every repeat
            pair = [(ours_cmd, ours_env, ours), (base_cmd, base_env, base)]
            for cmd, env, into in (pair if i % 2 == 0 else pair[::-1]):
                into.append(wall(cmd, env))
            ratios.append(base[-1] / ours[-1])
        print(f"{case:<{width}} {min(ours):>9.2f} / {statistics.median(ours):<8.2f} "
              f"{min(base):>11.2f} / {statistics.median(base):<8.2f} "
              f"{statistics.median(ratios):>16.1f}x ({min(ratios):.1f}-{max(ratios):.1f})")
    print("\nheaviest imports of `cytodata --help` (cumulative us, python -X importtime):")
    for us, name in heaviest_imports(["--help"]):
        print(f"  {us:>9}  {name}")


if __name__ == "__main__":
    main()
