"""timm-lap compare: method/size/seed parsing, pairing, W selection, the summary, and a tiny run end to end."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from timm_lap.cli import compare
from timm_lap.cli.compare import Method, choose_weights, parse_method, parse_seeds, parse_size, summarise

TINY = ["--dataset", "sklearn/digits", "--model", "preact_flat9", "--model-kwargs", "width=4", "depth=3",
        "-b", "25", "--lr", "0.05", "--warmup-epochs", "0", "--device", "cpu"]


def test_parse_methods():
    assert parse_method("vanilla") == Method("vanilla")
    lap = parse_method("lap:tau=0.1,every=5")
    assert lap.label == "lap:tau=0.1,every=5"
    assert lap.flags() == ["--lap", "--lap-tau", "0.1", "--lap-lambda0", "1", "--lap-every", "5"]
    assert parse_method("lap:tau=1").label == "lap"  # defaults are not part of the label
    sampled = parse_method("lap:sample=0.25")
    assert sampled.label == "lap:sample=0.25" and sampled.flags()[-2:] == ["--lap-sample", "0.25"]
    assert parse_method("lap:sample=1").label == "lap" and "--lap-sample" not in parse_method("lap:sample=1").flags()
    assert parse_method("fixed").weight is None
    assert parse_method("fixed:w=0.5").flags() == ["--lap", "--lap-weight", "0.5"]
    for bad, match in [("sgd", "unknown method"), ("lap:beta=1", "unknown parameter"), ("lap:tau", "NAME=NUMBER"),
                       ("lap:every=0.5", "whole every"), ("vanilla:tau=1", "no parameters"), ("fixed:w=-1", ">= 0"),
                       ("lap:sample=0", "0 < sample <= 1"), ("lap:sample=2", "0 < sample <= 1")]:
        with pytest.raises(ValueError, match=match):
            parse_method(bad)


def test_parse_sizes_and_seeds():
    assert parse_size("100") == (100, None) and parse_size("300:50") == (300, 50)
    assert parse_seeds(["0-3", "7"]) == [0, 1, 2, 3, 7]
    for bad in ("0", "10:0", "x"):
        with pytest.raises(ValueError, match="--sizes"):
            parse_size(bad)
    with pytest.raises(ValueError, match="repeated"):
        parse_seeds(["0-2", "1"])


@pytest.mark.parametrize("argv, match", [
    (["--sizes", "100", *TINY, "--seed", "3"], "--seed is set by compare"),
    (["--sizes", "100", *TINY, "--lap"], "--lap is set by compare"),
    (["--sizes", "100", "--seeds", "0-2", "--select-seeds", "2", *TINY], "also appear in --seeds"),
    (["--sizes", "100", *TINY[:2], "--model", "resnet10t_lap"], "give the base model"),
    (["--sizes", "100:x", *TINY], "--sizes"),
    (["--sizes", "100", "--methods", "lap", "lap:tau=1", *TINY], "repeated method"),
    (["--sizes", "100", *TINY, "--lap-tau=2"], "--lap-tau is set by compare"),
    (["--sizes", "100", "--method", "lap", *TINY], "unrecognized arguments: --method (neither a compare option"),
])
def test_bad_command_lines_say_what_to_change(argv, match, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--dry-run", *argv])  # a missed error must not start a training
    assert match in capsys.readouterr().err


def test_plan_pairs_methods_on_the_same_subset_and_seed(capsys):
    cells = compare.main(["--dry-run", "--sizes", "100:3", "200", "--seeds", "0-1", "--methods", "vanilla", "lap",
                          "fixed", *TINY, "--epochs", "7"])["cells"]
    selection = [c for c in cells if c["phase"] == "selection"]
    tests = [c for c in cells if c["phase"] == "test"]
    assert len(selection) == 2 * 3 and all("--val-from-train" in c["argv"] for c in selection)
    assert {c["seed"] for c in selection} == {1000}
    assert len(tests) == 2 * 2 * 2  # fixed waits for its W
    for seed in (0, 1):
        for n, epochs in ((100, 3), (200, 7)):
            group = [c for c in tests if c["seed"] == seed and c["n_train"] == n]
            assert {c["label"] for c in group} == {"vanilla", "lap"} and {c["epochs"] for c in group} == {epochs}
            for c in group:
                argv = c["argv"]
                assert argv[argv.index("--seed") + 1] == str(seed) and argv[argv.index("--train-subset") + 1] == str(n)
    assert [c["seed"] for c in tests] == sorted(c["seed"] for c in tests)  # seed-major: partial sweeps stay paired
    assert "runs" in capsys.readouterr().out


def test_choose_weights_by_mean_validation_accuracy_ties_to_smaller():
    rows = [{"n_train": 100, "epochs": 5, "weight": w, "test_top1": acc}
            for w, acc in [(0.1, 60.0), (0.1, 70.0), (1.0, 65.0), (0.01, 65.0)]]
    chosen = choose_weights(rows)[(100, 5)]
    assert chosen["weight"] == 0.01 and chosen["by_weight"] == {0.01: 65.0, 0.1: 65.0, 1.0: 65.0}


def _row(label, seed, top1, n=100, lam=None, weight=None):
    return {"phase": "test", "dataset": "d", "model": "m", "flags": "f", "n_train": n, "epochs": 2, "label": label,
            "seed": seed, "test_top1": top1, "test_transport": 1.0 + seed, "lam": lam, "weight": weight}


def test_summary_pairs_by_seed_and_reports_detectable_difference():
    rows = [_row("vanilla", s, 50.0 + s) for s in range(4)] + [_row("lap", s, 51.0 + s + 0.5 * (s % 2), lam=3.0)
                                                            for s in range(5)]
    entries = {e["label"]: e for e in summarise(rows, ["vanilla", "lap"])}
    diff = entries["lap"]["diff_vs_vanilla"]
    assert diff["n"] == 4 and diff["mean"] == pytest.approx(1.25)  # seed 4 has no vanilla partner
    assert diff["detectable"] > diff["half"] > 0
    assert entries["lap"]["lam"]["mean"] == 3.0 and entries["vanilla"]["lam"] is None
    assert len(entries["lap"]["seeds"]) == 5 and "diff_vs_vanilla" not in entries["vanilla"]


def test_report_counts_fixed_runs_only_with_the_chosen_weight(tmp_path):
    sel = [{**_row("fixed", 1000, acc, weight=w), "phase": "selection"} for w, acc in [(0.1, 80.0), (1.0, 70.0)]]
    tests = [_row("vanilla", s, 50.0) for s in range(2)] + [_row("fixed", s, 99.0, weight=1.0) for s in range(2)] + \
        [_row("fixed", s, 52.0, weight=0.1) for s in range(2)]
    files = compare.write_report(sel + tests, str(tmp_path))
    summary = json.load(open(files["summary_json"]))
    fixed = [e for e in summary["summary"] if e["label"] == "fixed"][0]
    assert fixed["weights"] == [0.1] and fixed["acc"]["mean"] == 52.0
    assert "| 100 | 2 | 80.00 | 70.00 | 0.1 |" in open(files["summary_md"]).read()


@pytest.mark.slow
def test_tiny_comparison_end_to_end_and_resume(tmp_path):
    """The CI smoke: 2 seeds, 1 size, 1 epoch, digits, every method kind, through the command line."""
    argv = ["compare", "--methods", "vanilla", "lap", "lap:tau=10", "fixed", "--weights", "0.1", "1",
            "--sizes", "60:1", "--seeds", "0-1", "--select-seeds", "7", "--jobs", "2", "--threads", "1",
            "--transport-images", "128", "--out-dir", str(tmp_path), *TINY]
    start = time.perf_counter()
    first = subprocess.run([sys.executable, "-m", "timm_lap.cli", *argv], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert time.perf_counter() - start < 60
    rows = [json.loads(line) for line in open(tmp_path / "runs.jsonl")]
    assert len(rows) == 2 + 2 * 4  # W selection (2 weights x 1 seed) + 2 seeds x 4 methods
    for r in rows:
        for field in ("model", "dataset", "n_train", "method", "seed", "epochs", "test_top1", "test_transport",
                      "seconds", "threads", "device"):
            assert field in r, field
        assert (r["lam"] is not None) == (r["method"] == "lap") and r["model"] == "preact_flat9"
    assert {r["tau"] for r in rows if r["method"] == "lap"} == {1.0, 10.0}
    md = (tmp_path / "summary.md").read_text()
    assert "| 60 | 1 | lap:tau=10 |" in md and "detectable" in md and (tmp_path / "accuracy_vs_size.png").stat().st_size
    again = subprocess.run([sys.executable, "-m", "timm_lap.cli", *argv], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and len(open(tmp_path / "runs.jsonl").readlines()) == len(rows)  # nothing re-run


def test_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "timm_lap.cli", "compare", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    for flag in ("--methods", "--sizes", "--seeds", "--weights", "--val-from-train", "--jobs", "--threads"):
        assert flag in out.stdout
