"""``timm-lap train`` under torchrun (2 CPU processes, gloo) against timm's own ``train.py``.

The fixtures in ``tests/fixtures/timm_traces_dist/`` are traces of timm's script (1.0.29.dev0, recorded with
``python -m benchmarks.timm_traces_dist compare``): every loss each rank handed to backward, and rank 0's
summary.csv. Here only timm-lap runs, under the same launcher; timm's script is never needed.

timm-lap runs as shipped, nothing patched: like timm it seeds once per process, before building the model, and
every per-rank loss is timm's, bit for bit (DDP, the distributed samplers, --dist-bn, the reduced metrics included).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import timm_traces_dist as D
from benchmarks.timm_traces import environment, export_digits

FIXTURES = Path(D.FIXTURE_DIR)
# summary.csv's train_loss is the epoch's mean loss reduced over the ranks: timm averages in a Python float and
# all-reduces a float32 tensor, timm-lap sums in float64 and all-reduces that. Same losses, last-bit rounding.
TRAIN_LOSS_ROUNDING = 1e-6


def _fixture(case: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{case}.json").read_text()))


def _bitwise_expected(fixture: dict[str, Any]) -> bool:
    """Bits are only comparable on the machine kind and torch build the fixture was recorded with."""
    here = environment()
    return all(here[k] == fixture["env"][k] for k in ("torch", "cpu_capability", "machine"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> str:
    return export_digits(str(tmp_path_factory.mktemp("digits")))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("traces"))


@pytest.fixture(scope="module")
def reduce_run(digits: str, work: str) -> dict[str, Any]:
    """timm-lap with --dist-bn reduce, 2 gloo processes, BatchNorm statistics probed around each --dist-bn."""
    trace = D.record("lap", "dist_bn_reduce", digits, work, probe_bn=True)
    assert "error" not in trace, trace["error"]
    return trace


def _probes(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [torch.load(trace["bn_probe"][str(rank)]) for rank in range(D.NPROC)]


def _check_reproduces(trace: dict[str, Any], fixture: dict[str, Any]) -> None:
    assert sorted(trace["losses"]) == sorted(fixture["losses"]) == ["0", "1"]
    for rank, expected in fixture["losses"].items():
        got = trace["losses"][rank]
        assert len(got) == len(expected) == 8, rank  # 150 images per rank, batches of 32 (last dropped), 2 epochs
        if _bitwise_expected(fixture):
            assert got == expected, f"rank {rank}: first difference at step " + str(
                next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            )
        else:
            assert got == pytest.approx(expected, abs=1e-3), rank
    assert len(trace["summary"]) == len(fixture["summary"]) == 2
    for row, expected in zip(trace["summary"], fixture["summary"]):
        assert row["epoch"] == expected["epoch"] and row["lr"] == expected["lr"]
        assert row["train_loss"] == pytest.approx(expected["train_loss"], abs=TRAIN_LOSS_ROUNDING)
        for key in ("eval_loss", "eval_top1", "eval_top5"):
            if _bitwise_expected(fixture):
                assert row[key] == expected[key], key
            else:
                assert row[key] == pytest.approx(expected[key], abs=1e-2 if key == "eval_loss" else 1.0), key


@pytest.mark.slow
def test_dist_bn_reduce_reproduces_timms_trace(reduce_run: dict[str, Any]) -> None:
    fixture = _fixture("dist_bn_reduce")
    assert fixture["outcome"] == {"ok": True}
    _check_reproduces(reduce_run, fixture)
    assert reduce_run["final_eval"] == pytest.approx(fixture["final_eval"], abs=0 if _bitwise_expected(fixture) else 1)


@pytest.mark.slow
def test_dist_bn_reduce_averages_the_running_statistics_over_the_ranks(reduce_run: dict[str, Any]) -> None:
    probes = _probes(reduce_run)
    assert [len(p["calls"]) for p in probes] == [2, 2]  # after each of the 2 epochs
    assert all(p["converted"] == [] for p in probes)  # no --sync-bn
    differed = 0
    for call0, call1 in zip(probes[0]["calls"], probes[1]["calls"]):
        assert call0["dist_bn"] == "reduce" and not call0["sync_bn"]
        assert set(call0["bn_classes"]) == {"BatchNorm2d"}
        assert call0["before"].keys() == call0["after"].keys() == call1["before"].keys()
        assert any(k.endswith("running_mean") for k in call0["before"])
        for name in call0["before"]:
            before0, before1 = call0["before"][name], call1["before"][name]
            differed += not torch.equal(before0, before1)
            assert torch.equal(call0["after"][name], call1["after"][name]), name  # the same on both ranks
            # the mean of what each rank had (all_reduce SUM of two values, then / 2: exact)
            torch.testing.assert_close(call0["after"][name], (before0 + before1) / 2, rtol=0, atol=0)
    # each rank's own batches gave it its own statistics: the averaging did something
    assert differed > 0


@pytest.mark.slow
def test_dist_bn_empty_keeps_each_ranks_statistics(digits: str, work: str, reduce_run: dict[str, Any]) -> None:
    trace = D.record("lap", "dist_bn_none", digits, work, probe_bn=True)
    assert "error" not in trace, trace["error"]
    probes = _probes(trace)
    assert [len(p["calls"]) for p in probes] == [2, 2]
    differed = 0
    for call0, call1 in zip(probes[0]["calls"], probes[1]["calls"]):
        assert call0["dist_bn"] == ""
        for name in call0["before"]:
            for call in (call0, call1):
                assert torch.equal(call["before"][name], call["after"][name]), name  # untouched
            differed += not torch.equal(call0["after"][name], call1["after"][name])
    assert differed > 0  # kept per rank
    # Training reads batch statistics only (and DDP broadcasts rank 0's buffers before each forward): the losses
    # are those of --dist-bn reduce, bit for bit; the evaluation, on each rank's own statistics, is not.
    assert trace["losses"] == reduce_run["losses"]
    assert trace["summary"][-1]["eval_loss"] != reduce_run["summary"][-1]["eval_loss"]


def test_sync_bn_converts_batchnorm_and_stops_on_the_cpu_as_timm_does(digits: str, work: str) -> None:
    """torch's SyncBatchNorm trains on GPUs only: under DDP on the CPU both scripts stop with torch's error
    before the first step. timm-lap converts the model first, as timm does."""
    fixture = _fixture("sync_bn")
    assert fixture["outcome"]["ok"] is False and fixture["outcome"]["steps"] == {"0": 0, "1": 0}
    timm_errors = fixture["outcome"]["rank_errors"]
    trace = D.record("lap", "sync_bn", digits, work, probe_bn=True)
    assert trace["returncode"] != 0
    assert {rank: len(losses) for rank, losses in trace["losses"].items()} == {"0": 0, "1": 0}
    for rank, timm_error in timm_errors.items():
        torch_message = timm_error.split(": ", 1)[1]  # "ValueError: SyncBatchNorm layers only work with GPU ..."
        assert trace["rank_errors"][rank] == f"SystemExit: timm-lap train: {torch_message}"
    for probe in _probes(trace):
        (converted,) = probe["converted"]
        assert converted["before"] and set(converted["before"]) == {"BatchNorm2d"}
        assert converted["after"] == ["SyncBatchNorm"] * len(converted["before"])
        assert probe["calls"] == []  # no epoch ran


# --------------------------------------------------------------------------------------------- without torchrun
def test_timm_lap_runs_unpatched() -> None:
    """The tool has no hypothesis patches: neither the launcher, the worker's command line nor the fixtures name
    one, so the traces are those of ``timm-lap train`` as shipped."""
    assert "patches" not in inspect.signature(D.record).parameters
    assert "patches" not in inspect.signature(D.worker).parameters
    parser = D._parser()
    for argv in (["worker", "--script", "lap", "--trace-dir", "T"], ["record", "--script", "lap", "--case",
                                                                      "dist_bn_reduce", "--out", "x.json"]):
        parser.parse_args(argv)
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--patch", "seed-once"])
    for case in D.FIXTURE_CASES:
        fixture = _fixture(case)
        assert not {"timm_lap_patches", "patches", "compare_patches"} & set(fixture), case
        assert "--patch" not in fixture["command"] and "--patch" not in fixture["recorded_with"], case


def test_fixtures_name_their_versions_and_commands() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=D.ROOT, capture_output=True, text=True).stdout.split()
    copies = {
        hashlib.sha256((Path(D.ROOT) / p).read_bytes()).hexdigest()
        for p in tracked
        if p.endswith("train.py") and (Path(D.ROOT) / p).is_file()
    }
    for case in D.FIXTURE_CASES:
        fixture = _fixture(case)
        assert fixture["train_py"]["version"] == "1.0.29.dev0"
        assert fixture["train_py"]["commit"].startswith("aa4b5850")
        assert fixture["train_py"]["sha256"] not in copies  # timm's script is not in the repository
        assert fixture["timm_version"] and fixture["torch_version"] == fixture["env"]["torch"]
        assert (fixture["nproc"], fixture["backend"], fixture["threads_per_process"]) == (2, "gloo", 1)
        assert fixture["command"].endswith(D.case_command(case))
        assert "--nproc-per-node=2" in fixture["command"] and "--nproc-per-node=2" in fixture["timm_command"]
        at_recording = fixture["timm_lap_at_recording"]
        assert at_recording["outcome"]["ok"] == fixture["outcome"]["ok"]
        if fixture["outcome"]["ok"]:
            assert at_recording["bitwise"] and at_recording["max_abs_diff"] == 0.0
