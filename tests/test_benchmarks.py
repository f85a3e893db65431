"""Benchmarks: statistics helpers, resumable results file, and each script's --smoke mode end to end."""
from __future__ import annotations

import json
import math
import time

import pytest

# The repository root is on sys.path (pyproject's pytest ``pythonpath``): the scripts import as a package.
import benchmarks.energy_bias
import benchmarks.lowdata
import benchmarks.paper_regime
import benchmarks.per_tensor_ab
import benchmarks.sensitivity
from benchmarks import common as C

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


def _smoke(module, tmp_path, expected_runs: int, fields: tuple[str, ...], plot: str) -> None:
    out = tmp_path / module.NAME
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


def _compare_smoke(module, tmp_path, sub: str, expected_runs: int) -> list[dict]:
    """A preset over timm-lap compare: its --smoke runs, then a rerun that runs nothing."""
    argv = ["--smoke", "--out-dir", str(tmp_path), "--threads", "2"]
    first = module.main(argv)
    assert first["counts"] == {"ran": expected_runs, "skipped": 0, "left": 0}
    rows = [json.loads(line) for line in open(first["results"][sub])]
    assert len(rows) == expected_runs and all(0.0 <= r["test_top1"] <= 100.0 for r in rows)
    for name_ in ("summary.md", "summary.json", "accuracy_vs_size.png"):
        assert (tmp_path / sub / name_).stat().st_size > 0
    assert module.main(argv)["counts"] == {"ran": 0, "skipped": expected_runs, "left": 0}
    return rows


@pytest.mark.slow
def test_lowdata_preset_smoke_and_resume(tmp_path):
    rows = _compare_smoke(benchmarks.lowdata, tmp_path, "digits", 2 + 3)  # W selection (2 weights), then 3 methods
    selection = [r for r in rows if r["phase"] == "selection"]
    # W was chosen on a part of the training split (269 of digits' 1347 images), never on the 450 test images.
    assert sorted(r["weight"] for r in selection) == [0.1, 1.0] and {r["eval_images"] for r in selection} == {269}
    tests = [r for r in rows if r["phase"] == "test"]
    assert {r["eval_images"] for r in tests} == {450} and {r["label"] for r in tests} == {"vanilla", "lap", "fixed"}
    best = max(selection, key=lambda r: (r["test_top1"], -r["weight"]))["weight"]
    assert [r["weight"] for r in tests if r["method"] == "fixed"] == [best]
    assert "chosen" in (tmp_path / "digits" / "summary.md").read_text()


@pytest.mark.slow
def test_sensitivity_preset_smoke_and_resume(tmp_path):
    rows = _compare_smoke(benchmarks.sensitivity, tmp_path, "digits", 3)
    assert {r["label"] for r in rows} == {"vanilla", "lap:lambda0=0.1", "lap"}


@pytest.mark.slow
def test_energy_bias_smoke_and_resume(tmp_path):
    _smoke(benchmarks.energy_bias, tmp_path, 3, ("lr", "weight_decay", "init_gain", "zero_init_last", "drop_path"),
           "transport_vs_accuracy.png")
    summary = json.loads((tmp_path / "energy_bias" / "summary.json").read_text())
    assert summary["runs"] == 3 and summary["spearman"] is not None


def test_stop_after_leaves_sweep_resumable(tmp_path):
    """A zero-minute limit launches nothing and reports every run of the first pass as left."""
    module = benchmarks.lowdata
    res = module.main(["--smoke", "--out-dir", str(tmp_path), "--stop-after", "0"])
    # selection (2 weights) plus vanilla and LAP are left; the fixed-weight run waits for the selection
    assert res["counts"]["ran"] == 0 and res["counts"]["left"] == 4
    assert not (tmp_path / "digits" / "runs.jsonl").exists()


def test_energy_bias_grid_varies_init_gain_lr_and_weight_decay():
    module = benchmarks.energy_bias
    cells = module.build_cells(module.PRESETS["quick"])
    assert len(cells) >= 12
    for key in ("init_gain", "lr", "weight_decay"):
        assert len({cell[key] for cell, _ in cells}) > 1, key
    flags = {cell["init_gain"]: extra for cell, extra in cells}
    assert flags[2.0][:2] == ["--init-gain", "2.0"] and "--init-gain" not in flags[1.0]


@pytest.mark.slow
def test_paper_regime_parts_smoke(tmp_path):
    """benchmarks.paper_regime: each part's --smoke (digits, 1 epoch) end to end."""
    module = benchmarks.paper_regime
    common = ["--smoke", "--out-dir", str(tmp_path), "--jobs", "1"]
    study = module.main(["study", *common])
    labels = {r["label"] for r in map(json.loads, open(study["results"])) if r["phase"] == "test"}
    assert labels == {"vanilla", "lap", "lap:tau=0.1", "lap:tau=10", "fixed"}
    bias = module.main(["energy-bias", *common])
    assert bias["runs"] == 4 and set(bias["by_lr"]) == {"0.03", "0.3"}
    assert (tmp_path / "energy_bias" / "transport_vs_accuracy.png").stat().st_size > 0
    adapt = module.main(["adapt", *common])
    assert set(adapt) == {"0", "0.2", "0.4"} and all(v["lam"] > 1.0 for v in adapt.values())
    assert all(v["diff_vs_vanilla"]["n"] == 2 for v in adapt.values())
    assert (tmp_path / "adapt" / "adapt.png").stat().st_size > 0
    noisy = [json.loads(line) for line in open(tmp_path / "adapt" / "noise_0.4" / "runs.jsonl")]
    assert all("--label-noise 0.4" in r["flags"] for r in noisy)
    sampled = module.main(["sample", *common])
    assert set(sampled) == {"100"} and sampled["100"]["seeds"] == 2
    assert "sampled - exact" in (tmp_path / "sample" / "sample_vs_exact.md").read_text()
    rows = map(json.loads, open(tmp_path / "sample" / "runs.jsonl"))
    argv = [r["argv"] for r in rows if r["label"] == "lap:sample=0.25"]
    assert argv and all("--lap-sample" in a for a in argv)


def test_per_tensor_ab_times_both_paths_and_restores_the_threshold():
    from timm_lap.ops import grouped_energy

    before = grouped_energy.PER_TENSOR_MIN_NUMEL
    ratios = benchmarks.per_tensor_ab.main("flat9", repeats=2, warmup=0)
    assert set(ratios) == {"vanilla", "foreach", "block_by_block"} and ratios["vanilla"] == 1.0
    assert all(r > 0 for r in ratios.values())
    assert grouped_energy.PER_TENSOR_MIN_NUMEL == before


# --------------------------------------------------------------------------------------------- quickstart times


def test_quickstart_times_times_a_command_and_records_the_machine(tmp_path):
    from benchmarks import quickstart_times as Q

    run = Q.time_command("hello", "python -c \"print('first'); print('done')\"", str(tmp_path))
    assert (run["returncode"], run["last_line"]) == (0, "done") and run["seconds"] >= 0
    assert Q.time_command("fail", "python -c 'raise SystemExit(3)'", str(tmp_path))["returncode"] == 3
    machine = Q.machine()
    assert machine["cores"] >= 1 and machine["cpu"] and machine["torch"]


def test_the_readme_states_the_committed_quickstart_times():
    """The README's times are the ones in the committed results file (rounded to seconds), with the machine."""
    from pathlib import Path

    from benchmarks import quickstart_times as Q

    report = json.loads(Path(Q.DEFAULT_OUT).read_text())
    readme = (Path(Q.ROOT) / "README.md").read_text()
    assert report["measured_by"] in readme and f"{report['machine']['cores']}-core" in readme
    for run in report["runs"]:
        assert run["returncode"] == 0, run
        assert f"{round(run['seconds'])} s" in readme, run["name"]
