"""The command line starts light and speaks plainly: no stage (pandas, numpy, torch) loaded for
help, bars only on a terminal, warnings on one line, did-you-mean for names, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from cytodata import cli

#: libraries no command may load for its help or a refusal of a missing path (each costs 0.1-3 s)
HEAVY = ("torch", "torchvision", "timm", "pandas", "numpy", "pyarrow", "dask", "distributed", "zarr",
         "xarray", "sklearn", "scipy", "matplotlib", "fsspec", "tifffile", "PIL", "numcodecs",
         "webdataset", "imagecodecs")


def _light_lines() -> list[str]:
    """``--help`` of the top level, of every command and of every action below a command, plus
    the cheap real invocations (a listing, a refusal of a path that does not exist)."""
    import argparse

    lines = ["--help"]
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, child in sub.choices.items():
        lines.append(f"{name} --help")
        for action in child._actions:
            if isinstance(action, argparse._SubParsersAction):
                lines += [f"{name} {verb} --help" for verb in action.choices]
    return lines + ["verify /nonexistent/set", "train --list", "recipes", *SHOWS, *REFUSALS]


#: ``train --show NAME`` of one config per method kind: reads the config class, not the method
SHOWS = ["train --show classifier-tiny", "train --show deepnoise-stage2", "train --show ws-dino"]


#: refusals of an input path that does not exist: said before the stage loads
REFUSALS = ["manifest describe /nonexistent/m", "qc /nonexistent/m -o /nonexistent/q",
            "shard /nonexistent/m -o /nonexistent/s",
            "cells /nonexistent/m /nonexistent/l.csv --size 8 -o /nonexistent/c",
            "shards describe /nonexistent/s", "publish /nonexistent/s -o /nonexistent/p",
            "evaluate /nonexistent/e.parquet --protocol knn -o /nonexistent/r"]


def test_help_loads_no_stage_library():
    """Each command's help (and each cheap invocation), in one fresh interpreter, leaves every
    library of HEAVY unimported: the command's start stays light whatever the machine's load."""
    lines = _light_lines()
    assert {"shard --help", "evaluate --help", "publish --help", "demo --help",
            "shards describe --help", "manifest build --help"} <= set(lines)
    code = ("import json, sys\nfrom cytodata import cli\nheavy = {}\n"
            f"for line in {lines!r}:\n"
            "    try:\n        cli.main(line.split())\n    except SystemExit:\n        pass\n"
            f"    heavy[line] = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
            "print(json.dumps(heavy))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert heavy == {line: [] for line in lines}, heavy
    assert "shard" in done.stdout and "evaluate" in done.stdout  # every command is listed
    for line in SHOWS:  # each --show printed its config with its method's own keys
        assert f"# {line.split()[-1]} (" in done.stdout, line
    assert "  label_smoothing" in done.stdout and "* pseudo_mode" in done.stdout
    assert "* pair_sampling" in done.stdout
    assert "does not exist" in done.stderr  # the refusals were reached, not skipped
    assert done.stderr.count("no manifest at /nonexistent/m; build one with `cytodata manifest build") == 4
    assert "cytodata shards: error: /nonexistent/s does not exist; write a shard set" in done.stderr
    assert "cytodata publish: error: cannot publish /nonexistent/s: it does not exist" in done.stderr
    assert "cytodata evaluate: error: /nonexistent/e.parquet: no such file" in done.stderr


def test_the_check_sees_a_heavy_import():
    """The subprocess check above can fail: a command whose help loads pandas is caught."""
    code = ("import sys\nimport pandas  # noqa\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pandas" in done.stdout and "numpy" in done.stdout


def test_registry_choices_are_the_registries():
    """The names that --help lists and the parser accepts, read from the source without imports,
    are the names each registry holds once its modules are imported."""
    import argparse

    from cytodata.commands import RegistryNames, registered_names

    found = []

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    walk(child)
            elif isinstance(action.choices, RegistryNames):
                found.append(action.choices)

    walk(cli.build_parser())
    assert {(r.module, r.attr) for r in found} >= {("cytodata.shards", "FORMATS"),
                                                   ("cytodata.shards.codecs", "CODECS"),
                                                   ("cytodata.evaluate.protocols", "PROTOCOLS")}
    for names in found:
        assert list(names) == names.loaded() and len(names.loaded()) >= 3, (names.module, names.attr)
    assert "knn" in RegistryNames("cytodata.evaluate.protocols", "PROTOCOLS")
    assert "no-such" not in RegistryNames("cytodata.evaluate.protocols", "PROTOCOLS")
    assert registered_names(found[0].folder(), "NO_SUCH_REGISTRY") == []


def test_unknown_names_get_a_suggestion(tmp_path, capsys):
    assert cli.main(["shrad", str(tmp_path)]) == 2
    assert "did you mean 'shard'" in capsys.readouterr().err
    assert cli.main(["train", "classifier-tiny", "-o", str(tmp_path / "run"), "--set", "step=30"]) == 2
    assert "'step': did you mean 'steps'?" in capsys.readouterr().err
    assert cli.main(["train", "classifer-tiny", "-o", str(tmp_path / "run")]) == 2
    assert "did you mean 'classifier-tiny'" in capsys.readouterr().err
    assert cli.main(["manifest", "build", "bbbc21", "-o", str(tmp_path / "m")]) == 2
    assert "did you mean 'bbbc021'" in capsys.readouterr().err


def test_verify_names_a_missing_path(tmp_path, capsys):
    assert cli.main(["verify", str(tmp_path / "nonexistent")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nonexistent'} does not exist" in err and "not a cytodata shard set" not in err


def test_warnings_print_one_line_each_and_count_repeats(capsys):
    from cytodata._warnings import one_line_warnings
    from cytodata.evaluate import EvaluationWarning

    with one_line_warnings():
        for _ in range(3):
            warnings.warn("feature column(s) 'emb_1' are constant\n  and carry no information",
                          EvaluationWarning, stacklevel=1)
        warnings.warn("another", UserWarning, stacklevel=1)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "warning: EvaluationWarning: feature column(s) 'emb_1' are constant and carry no information"
    assert err[1] == "warning: UserWarning: another"
    assert len(err) == 3 and "repeated 3 times" in err[2]
    assert not any("warnings.warn(" in line for line in err)  # no source lines


def test_progress_bars_only_on_a_terminal_or_when_asked(monkeypatch):
    from cytodata._progress import FORCE_ENV, bar, shown

    monkeypatch.delenv(FORCE_ENV, raising=False)
    assert not shown(True)  # pytest's stderr is no terminal
    assert bar(range(3), progress=True).disable
    monkeypatch.setenv(FORCE_ENV, "1")
    assert shown(True) and not shown(False)
    with pytest.raises(SystemExit):  # the global flag parses before any command
        cli.main(["--progress", "--help"])
