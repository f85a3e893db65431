"""timm_lap.cli.runs: the resumable, parallel run engine behind timm-lap compare."""
from __future__ import annotations

import json

import pytest

from timm_lap.cli.runs import ResultsFile, run_cell, run_cells

FLAGS = ["--dataset", "sklearn/digits", "--model", "preact_flat9", "--model-kwargs", "width=4", "depth=2",
         "--train-subset", "60", "-b", "20", "--epochs", "1", "--lr", "0.05", "--warmup-epochs", "0", "-j", "0",
         "--device", "cpu"]


def test_results_file_skips_a_truncated_line(tmp_path):
    rf = ResultsFile(str(tmp_path / "r.jsonl"), ("a",))
    rf.append({"a": 1, "x": 2})
    with open(rf.path, "a") as f:
        f.write('{"a": 2, "x"')  # killed mid-write
    assert rf.rows() == [{"a": 1, "x": 2}] and rf.done() == {(json.dumps(1),)}
    with pytest.raises(KeyError):
        rf.key({"b": 1})


def test_run_cell_reports_the_final_epoch_and_curves():
    row = run_cell(FLAGS + ["--lap", "--epochs", "2", "--eval-interval", "2"], threads=1, transport_images=64)
    assert 0.0 <= row["test_top1"] <= 100.0 and row["test_transport"] > 0
    assert row["lam"] > 1.0 and len(row["curves"]["lap_lambda"]) == 2 and row["curves"]["lap_lambda"][-1] == row["lam"]
    assert row["threads"] == 1 and row["device"] == "cpu" and row["eval_images"] == 450


def test_run_cells_resumes_and_parallel_matches_serial(tmp_path):
    cells = [{"seed": s, "label": "vanilla", "argv": FLAGS + ["--seed", str(s)]} for s in (0, 1)]
    serial = ResultsFile(str(tmp_path / "serial.jsonl"), ("seed",))
    assert run_cells(cells[:1], serial, jobs=1, threads=1) == {"ran": 1, "skipped": 0, "left": 0}
    assert run_cells(cells, serial, jobs=1, threads=1) == {"ran": 1, "skipped": 1, "left": 0}
    parallel = ResultsFile(str(tmp_path / "parallel.jsonl"), ("seed",))
    assert run_cells(cells, parallel, jobs=2, threads=1)["ran"] == 2
    by_seed = {r["seed"]: r for r in serial.rows()}
    for r in parallel.rows():  # same flags, same seed, same thread count: the same run in another process
        assert r["test_top1"] == by_seed[r["seed"]]["test_top1"]
        assert r["test_transport"] == pytest.approx(by_seed[r["seed"]]["test_transport"], rel=1e-6)


def test_run_cells_deadline_leaves_the_rest_for_later(tmp_path):
    rf = ResultsFile(str(tmp_path / "r.jsonl"), ("seed",))
    cells = [{"seed": s, "argv": FLAGS + ["--seed", str(s)]} for s in (0, 1)]
    assert run_cells(cells, rf, deadline=0.0) == {"ran": 0, "skipped": 0, "left": 2}
    with pytest.raises(ValueError, match="jobs"):
        run_cells(cells, rf, jobs=0)
