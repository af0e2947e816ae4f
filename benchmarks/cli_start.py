"""Start-up time of the command line: `cytodata --help` and each command's `--help`, as whole
processes, against the eager parser (every stage module imported, as a CLI without its command
table starts) measured in the same run, interleaved.

    python benchmarks/cli_start.py [--repeats 7] [--commands cytodata qc ...]

Prints per command the median wall time of each side, the per-pair ratio eager / ours (median and
range), and the heaviest imports of `cytodata --help` (`python -X importtime`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

#: the commands whose `--help` is timed ("cytodata": the top level)
COMMANDS = ["cytodata", "manifest", "qc", "cells", "shards", "verify", "recipes", "train", "shard", "evaluate"]
EAGER = [sys.executable, "-c", "from cytodata import cli; cli.build_parser()"]


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def heaviest_imports(args: list[str], n: int = 5) -> list[tuple[int, str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "cytodata", *args],
                          capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].strip()))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--commands", nargs="+", default=COMMANDS, metavar="NAME",
                    help="commands whose --help is timed; cytodata = the top level (default: all)")
    args = ap.parse_args()
    wall(EAGER)  # warm the page cache
    print(f"{'command':<22} {'ours (s)':>9} {'eager (s)':>10} {'eager/ours median (range)':>28}")
    for command in args.commands:
        ours_cmd = [sys.executable, "-m", "cytodata", *([] if command == "cytodata" else [command]), "--help"]
        wall(ours_cmd)
        ours, eager, ratios = [], [], []
        for i in range(args.repeats):  # interleaved, the order flipped every repeat
            pair = [(ours_cmd, ours), (EAGER, eager)]
            for cmd, into in (pair if i % 2 == 0 else pair[::-1]):
                into.append(wall(cmd))
            ratios.append(eager[-1] / ours[-1])
        print(f"{command + ' --help':<22} {statistics.median(ours):>9.2f} {statistics.median(eager):>10.2f} "
              f"{statistics.median(ratios):>14.1f}x ({min(ratios):.1f}-{max(ratios):.1f})")
    print("\nheaviest imports of `cytodata --help` (cumulative us, python -X importtime):")
    for us, name in heaviest_imports(["--help"]):
        print(f"  {us:>9}  {name}")


if __name__ == "__main__":
    main()
