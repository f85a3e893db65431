"""Benchmarks: statistics helpers, resumable results file, and each script's --smoke mode end to end."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name: str):
    """Import benchmarks/<name>.py (benchmarks/ is not a package)."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C = _load("_common")


# --------------------------------------------------------------------------------------------- statistics


def test_t_interval_matches_hand_computation():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    ci = C.t_interval(values)
    # mean 3, sd = sqrt(2.5), t_{0.975, 4} = 2.7764451051977987
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert ci["n"] == 5
    assert ci["mean"] == pytest.approx(3.0)
    assert ci["sd"] == pytest.approx(math.sqrt(2.5))
    assert ci["half"] == pytest.approx(half, rel=1e-9)
    assert (ci["lo"], ci["hi"]) == pytest.approx((3.0 - half, 3.0 + half))


def test_t_interval_edge_cases():
    one = C.t_interval([7.0])
    assert one["mean"] == 7.0 and math.isnan(one["half"])
    with pytest.raises(ValueError):
        C.t_interval([])
    with pytest.raises(ValueError):
        C.t_interval([1.0, 2.0], confidence=1.5)
    assert C.t_interval([2.0, 2.0, 2.0])["half"] == 0.0


def test_paired_difference_uses_pairs_only():
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 99.0}
    b = {0: 9.0, 1: 10.0, 2: 11.0, 9: -5.0}
    diff = C.paired_difference(a, b)
    # pairs: seeds 0, 1, 2 -> differences 1, 2, 0
    expected = C.t_interval([1.0, 2.0, 0.0])
    assert diff == pytest.approx(expected)
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(1.0)
    # t_{0.975, 2} = 4.302652729911275, sd = 1
    assert diff["half"] == pytest.approx(4.302652729911275 / math.sqrt(3))
    with pytest.raises(ValueError):
        C.paired_difference({0: 1.0}, {1: 1.0})


def test_spearman():
    res = C.spearman([1, 2, 3, 4], [10, 20, 30, 40])
    assert res["rho"] == pytest.approx(1.0) and res["n"] == 4
    assert C.spearman([1, 2, 3, 4], [4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        C.spearman([1, 2], [1, 2])


def test_results_file_resume_keys(tmp_path):
    path = tmp_path / "runs.jsonl"
    rf = C.ResultsFile(str(path), ("a", "b"))
    assert rf.rows() == [] and rf.done() == set()
    rf.append({"a": 1, "b": None, "x": 0.5})
    with open(path, "a") as f:
        f.write('{"a": 2, "b"')  # a run killed mid-write
    assert rf.rows() == [{"a": 1, "b": None, "x": 0.5}]
    assert rf.key({"a": 1, "b": None, "y": 3}) in rf.done()
    assert rf.key({"a": 1, "b": 0}) not in rf.done()
    with pytest.raises(KeyError):
        rf.key({"a": 1})


# --------------------------------------------------------------------------------------------- smoke runs


def _smoke(name: str, tmp_path, expected_runs: int, fields: tuple[str, ...], plot: str) -> None:
    module = _load(name)
    out = tmp_path / name
    argv = ["--smoke", "--out-dir", str(out), "--threads", "2"]
    first = module.main(argv)
    rows = [json.loads(line) for line in open(first["results"]) if line.strip()]
    assert first["counts"] == {"ran": expected_runs, "skipped": 0, "left": 0}
    assert len(rows) == expected_runs
    for row in rows:
        for key in fields + ("test_top1", "test_transport", "seconds"):
            assert key in row, key
        assert 0.0 <= row["test_top1"] <= 100.0
        assert row["test_transport"] >= 0.0
    assert (out / "summary.md").stat().st_size > 0
    json.loads((out / "summary.json").read_text())
    assert (out / plot).stat().st_size > 0
    start = time.perf_counter()
    second = module.main(argv)
    assert second["counts"] == {"ran": 0, "skipped": expected_runs, "left": 0}
    assert len([line for line in open(first["results"]) if line.strip()]) == expected_runs
    assert time.perf_counter() - start < 15.0


@pytest.mark.slow
def test_lowdata_smoke_and_resume(tmp_path):
    _smoke("lowdata", tmp_path, 3, ("dataset", "size", "method", "seed", "epochs"), "accuracy_vs_size.png")
    out = tmp_path / "lowdata"
    summary = json.loads((out / "summary.json").read_text())
    assert {e["method"] for e in summary} == {"vanilla", "lap", "fixed"}
    assert all("diff_vs_vanilla" in e for e in summary if e["method"] != "vanilla")
    # W was chosen on a part of the training split (269 of digits' 1347 images), never on the 450 test images.
    selection = [json.loads(line) for line in open(out / "selection.jsonl")]
    assert sorted(r["weight"] for r in selection) == [0.1, 1.0]
    assert {r["eval_images"] for r in selection} == {269}
    module = _load("lowdata")
    best = module.choose_weights(module.selection_table(selection))[("sklearn/digits", 100)]
    tests = [json.loads(line) for line in open(out / "runs.jsonl")]
    assert {r["eval_images"] for r in tests} == {450}
    assert [r["weight"] for r in tests if r["method"] == "fixed"] == [best]
    assert "chosen W" in (out / "summary.md").read_text()


def test_weight_choice_prefers_accuracy_then_smaller_weight():
    module = _load("lowdata")
    rows = [{"dataset": "d", "size": 100, "weight": w, "test_top1": acc}
            for w, acc in [(0.01, 80.0), (0.1, 85.0), (1.0, 85.0), (0.1, 87.0), (1.0, 83.0)]]
    table = module.selection_table(rows)
    assert table[("d", 100)] == {0.01: 80.0, 0.1: 86.0, 1.0: 84.0}
    assert module.choose_weights({("d", 1): {0.1: 50.0, 1.0: 50.0}}) == {("d", 1): 0.1}


@pytest.mark.slow
def test_sensitivity_smoke_and_resume(tmp_path):
    _smoke("sensitivity", tmp_path, 3, ("tau", "lambda0", "seed"), "sensitivity.png")


@pytest.mark.slow
def test_energy_bias_smoke_and_resume(tmp_path):
    _smoke("energy_bias", tmp_path, 3, ("lr", "weight_decay", "init_gain", "zero_init_last", "drop_path"),
           "transport_vs_accuracy.png")
    summary = json.loads((tmp_path / "energy_bias" / "summary.json").read_text())
    assert summary["runs"] == 3 and summary["spearman"] is not None


def test_stop_after_leaves_sweep_resumable(tmp_path):
    """A zero-minute limit launches nothing and reports every run as left."""
    module = _load("lowdata")
    res = module.main(["--smoke", "--out-dir", str(tmp_path), "--stop-after", "0"])
    # the W selection launched nothing, so the fixed-weight run is not even planned yet: vanilla and LAP are left
    assert res["counts"]["ran"] == 0 and res["counts"]["left"] == 2
    assert not (tmp_path / "selection.jsonl").exists()


def test_energy_bias_grid_varies_init_gain_lr_and_weight_decay():
    module = _load("energy_bias")
    cells = module.build_cells(module.PRESETS["quick"])
    assert len(cells) >= 12
    for key in ("init_gain", "lr", "weight_decay"):
        assert len({cell[key] for cell, _ in cells}) > 1, key
    flags = {cell["init_gain"]: extra for cell, extra in cells}
    assert flags[2.0][:2] == ["--init-gain", "2.0"] and "--init-gain" not in flags[1.0]
