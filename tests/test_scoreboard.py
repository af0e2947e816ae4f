"""benchmarks/scoreboard.py: recipes found by listing, the table's counts, intervals and chance."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "baselines" / "configs"


@pytest.fixture(scope="module")
def board(benchmark_module):
    return benchmark_module("scoreboard")


def test_every_tiny_config_is_found_by_listing(board):
    found = board.tiny_configs()
    assert found == sorted(p.stem for p in CONFIGS.glob("*-tiny.yaml"))
    assert "classifier-tiny" in found and all(n.endswith("-tiny") for n in found)


def _score(correct: int, total: int, chance: float = 0.1) -> dict:
    return {"nsc": {"accuracy": correct / total, "correct": correct, "total": total,
                    "chance": chance},
            "map": {"values": [0.5, 0.7], "chance": 0.2}}


def test_table_counts_seeds_that_beat_random_init(board):
    runs = [{"config": "classifier-tiny", "seed": s, "cpu_seconds": 120.0,
             "train_cpu_seconds": 60.0, "steps": 700 + s, "budget_min": 1.0,
             "rows": {"classifier-tiny (trained)": _score(trained, 40),
                      "classifier-tiny (random init)": _score(10, 40)}}
            for s, trained in ((0, 20), (1, 8), (2, 30))]
    reference = {"oracle (ground-truth latents)": {"seeds": {"-": _score(40, 40)}},
                 "_cpu_seconds": 30.0}
    rows, cpu, beats, steps = board.collect(runs, reference)
    assert beats == {"classifier-tiny (trained)": "2/3"}        # seed 1 lost: 8 < 10
    assert cpu["classifier-tiny (trained)"] == "1.0 / 2.0"
    assert steps["classifier-tiny (random init)"] == "700-702 (1.0)"
    text = board.table(rows, cpu, beats, steps)
    line = next(t for t in text.splitlines() if t.startswith("| classifier-tiny (trained)"))
    # mean of 0.5, 0.2, 0.75 and the Wilson interval of the pooled 58/120 matches
    assert "| 0.48 [0.40, 0.57] |" in line and "| 0,1,2 |" in line and "| 2/3 |" in line
    assert "0.10 / - / 0.20" in line                           # chance NSC / NSCB / mAP
    assert text.splitlines()[2].startswith("| oracle (ground-truth latents) | - | - | 1.00")


def test_second_stage_recipes_start_from_their_first_stage(board):
    """deepnoise-stage2-tiny requires a stage-1 run: the scoreboard pairs it with stage 1."""
    assert board.first_stage("deepnoise-stage2-tiny") == "deepnoise-stage1-tiny"
    assert board.first_stage("deepnoise-stage1-tiny") is None
    assert board.first_stage("classifier-tiny") is None


def test_a_second_stage_waits_for_its_first_stage(board, tmp_path):
    needs = {"deepnoise-stage2-tiny": "deepnoise-stage1-tiny", "classifier-tiny": None}
    job = ("deepnoise-stage2-tiny", 1)
    assert board._ready(("classifier-tiny", 0), needs, tmp_path, [], [])
    assert not board._ready(job, needs, tmp_path, [], [])              # stage 1 has not run
    done = tmp_path / "runs" / "deepnoise-stage1-tiny-seed1"
    done.mkdir(parents=True)
    (done / "result.json").write_text("{}")
    assert board._ready(job, needs, tmp_path, [], [])
    assert board._ready(job, needs, tmp_path, [], [("deepnoise-stage1-tiny", 1)])  # to be skipped


def test_the_cpu_budget_sets_the_length_of_every_recipe(board, tmp_path):
    """Recipes measured in epochs (cellpainting-cnn-tiny: 3) train the budget's steps instead."""
    from cytodata.baselines import load_config

    for name in board.tiny_configs():
        kw = board._overrides(name, tmp_path, 0)
        cfg = load_config(name, overrides={**kw, "steps": 123})
        assert cfg.epochs is None and cfg.steps == 123, name


def test_field_prescaling_recipes_train_on_cells_at_their_own_scale(board, tmp_path):
    """ws-dino-tiny halves whole fields (prescale 0.5); the scoreboard's 40-px cells are not halved."""
    from cytodata.baselines import load_config

    assert load_config("ws-dino-tiny").prescale == 0.5
    assert board._overrides("ws-dino-tiny", tmp_path, 0)["prescale"] == 1.0
    assert "prescale" not in board._overrides("dino-tiny", tmp_path, 0)
