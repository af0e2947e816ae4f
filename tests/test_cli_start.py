"""The command line starts light and speaks plainly: no stage (pandas, numpy, torch) loaded for
help, bars only on a terminal, warnings on one line, did-you-mean for names, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from cytodata import cli

LIGHT = ["--help", "recipes --help", "manifest --help", "manifest build --help", "qc --help", "cells --help",
         "shards --help", "verify --help", "train --help", "embed --help", "predict --help"]


def test_help_loads_no_stage_library():
    """Each help above, in one fresh interpreter, leaves pandas, numpy and torch unimported."""
    code = ("import json, sys\nfrom cytodata import cli\nheavy = {}\n"
            f"for line in {LIGHT!r}:\n"
            "    try:\n        cli.main(line.split())\n    except SystemExit:\n        pass\n"
            "    heavy[line] = sorted(m for m in ('pandas', 'numpy', 'torch') if m in sys.modules)\n"
            "print(json.dumps(heavy))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert heavy == {line: [] for line in LIGHT}, heavy
    assert "shard" in done.stdout and "evaluate" in done.stdout  # every command is listed


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
