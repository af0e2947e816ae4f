"""One CLI style: -o/--out and -q/--quiet on every command, help on every option, loud stage
imports, refusals that say what differs, `cytodata shards describe`."""

from __future__ import annotations

import argparse
import json

import pytest
from test_shards_webdataset import make_manifest, synthetic_rows

from cytodata import cli
from cytodata.errors import ShardError
from cytodata.shards import write


def leaf_parsers(parser: argparse.ArgumentParser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
        return
    for sub in subs:
        for name, child in sub.choices.items():
            yield from leaf_parsers(child, path + (name,))


def test_every_command_has_out_quiet_and_help_on_every_option():
    leaves = dict(leaf_parsers(cli.build_parser()))
    assert {"recipes", "manifest build", "manifest describe", "qc", "shard", "shards describe",
            "evaluate", "demo"} <= set(leaves)
    for name, parser in leaves.items():
        flags = {s for a in parser._actions for s in a.option_strings}
        assert {"-o", "--out", "-q", "--quiet"} <= flags, f"{name}: {sorted(flags)}"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = action.option_strings or action.dest
            assert action.help and action.help.strip(), f"{name}: {what} has no help"


def test_old_spellings_still_parse():
    parser = cli.build_parser()
    args = parser.parse_args(["shard", "m", "-o", "x", "--no-progress"])
    assert args.quiet is True
    args = parser.parse_args(["evaluate", "e.parquet", "--protocol", "knn", "--output", "r"])
    assert args.output == "r"
    args = parser.parse_args(["evaluate", "e.parquet", "--protocol", "knn", "--out", "r2"])
    assert args.output == "r2"


def test_a_broken_stage_fails_loudly(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("cytodata.no_such_stage",))
    with pytest.raises(ModuleNotFoundError, match="no_such_stage"):
        cli.build_parser()


def test_a_stage_with_a_missing_dependency_fails_loudly(tmp_path, monkeypatch, capsys):
    """The case a ``except ModuleNotFoundError`` around stage imports hid: the stage module is
    there, one of its dependencies is not. Its command stays listed, and running it names the
    dependency; the other commands do not load it."""
    (tmp_path / "cytodata_broken_stage.py").write_text(
        "import cytodata_dependency_not_installed  # noqa: F401\n\n"
        "def register(subparsers):\n    subparsers.add_parser('broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, "broken": ("cytodata_broken_stage", "a broken stage")})
    monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("cytodata_broken_stage",))
    with pytest.raises(ModuleNotFoundError, match="cytodata_dependency_not_installed"):
        cli.main(["broken", "--help"])
    with pytest.raises(ModuleNotFoundError, match="cytodata_dependency_not_installed"):
        cli.build_parser()  # the whole parser (every stage) fails loudly too
    assert "usage" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "broken" in capsys.readouterr().out  # listed, not vanished


def test_refusal_says_what_differs(tmp_path):
    rows = synthetic_rows(tmp_path, 3)
    out = tmp_path / "out"
    write(make_manifest(rows), out, scheduler="synchronous", progress=False)
    with pytest.raises(ShardError, match=r"codec: 'blosc-lz4' here, 'zstd' requested") as err:
        write(make_manifest(rows), out, codec="zstd", scheduler="synchronous", progress=False)
    assert "manifest rows" not in str(err.value)  # only what differs
    differs = r"manifest rows \(content sha256\): \w+ here, \w+ requested"
    with pytest.raises(ShardError, match=differs):
        write(make_manifest(rows[:2]), out, scheduler="synchronous", progress=False)
    with pytest.raises(ShardError, match=r"format: webdataset here, zarr requested"):
        write(make_manifest(rows), out, format="zarr", scheduler="synchronous", progress=False)
    # a set written before identity.json existed: shards.json still tells the codec apart
    (out / "identity.json").unlink()
    with pytest.raises(ShardError, match=r"codec: 'blosc-lz4' here, 'zstd' requested"):
        write(make_manifest(rows), out, codec="zstd", scheduler="synchronous", progress=False)


def test_shards_describe(tmp_path, capsys):
    rows = synthetic_rows(tmp_path, 5)
    missing = [str(tmp_path / "missing.tif")] * 2
    rows.append(dict(rows[0], image_id="gone", site=2, channel_paths=missing))
    out = tmp_path / "set"
    write(make_manifest(rows), out, samples_per_shard=2, scheduler="synchronous", progress=False)
    assert cli.main(["shards", "describe", str(out), "-o", str(tmp_path / "s.json")]) == 0
    text = capsys.readouterr().out
    for part in ("webdataset", "samples: 5 in 3 shards", "codec: blosc-lz4", "channels: DNA, RNA",
                 "2x24x24=5", "labels: 3", "plates: 2", "ledger: 1 dropped rows"):
        assert part in text, part
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["samples"] == 5 and summary["ledger"]["rows"] == 1
    assert summary["bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert cli.main(["shards", "describe", str(out), "-q"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert cli.main(["shards", "describe", str(tmp_path)]) == 2
    assert "no shards.json" in capsys.readouterr().err
    # manifest describe points at it
    assert cli.main(["manifest", "describe", str(out)]) == 2
    assert "cytodata shards describe" in capsys.readouterr().err


def test_output_cut_off_by_its_reader_ends_quietly():
    """`cytodata train --show ws-dino | head`: status 141, no BrokenPipeError traceback."""
    import subprocess
    import sys

    script = ("import os, sys\n"
              "r, w = os.pipe(); os.close(r); os.dup2(w, sys.stdout.fileno())\n"
              "from cytodata.cli import main\n"
              "sys.exit(main(['train', '--show', 'ws-dino']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
