"""``timm-lap train`` without ``--lap`` against timm's own ``train.py``, step for step (issue 13, part 3).

The fixtures in ``tests/fixtures/timm_traces`` hold timm's traces (every loss handed to ``backward`` and summary.csv's
rows) of three recipes, recorded by ``python -m benchmarks.timm_traces compare`` with timm's train.py (never part of
this repository; its version, commit and sha256 are in each fixture). These tests need no train.py: they record
``timm-lap train`` on the same flags, in a fresh interpreter, as shipped (nothing patched: both seed once per
process), and compare it with the fixture. Everything must agree bit for bit in the recording environment (same
torch, timm, Pillow, NumPy, CPU kernels, one thread); elsewhere only the first epoch is compared, within the
fixture's stated tolerance (see ``benchmarks.timm_traces.check_trace``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import timm_traces as T

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(T.FIXTURE_DIR)


def _fixture(recipe: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{recipe}.json").read_text()))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("sklearn")
    return T.export_digits(str(tmp_path_factory.mktemp("digits")))


def _record_lap(recipe: str, digits: str, work: Path) -> dict[str, Any]:
    """``timm-lap train`` on ``recipe`` through the tool's ``record``, in a fresh interpreter."""
    out = work / f"lap-{recipe}.json"
    cmd = [sys.executable, "-m", "benchmarks.timm_traces", "record", "--script", "lap", "--recipe", recipe,
           "--data-dir", digits, "--work-dir", str(work), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def test_the_fixtures_state_versions_command_and_tolerance():
    for recipe in T.RECIPES:
        fixture = _fixture(recipe)
        assert fixture["recipe"] == recipe and fixture["flags"] == T.recipe_command(recipe)
        assert fixture["train_py"]["version"] == "1.0.29.dev0"
        assert fixture["train_py"]["commit"] == "aa4b5850c1543fa488abf260f18390eda46cf85d"
        assert len(fixture["train_py"]["sha256"]) == 64
        assert fixture["library"]["timm"] and fixture["library"]["torch"]
        assert set(T.ENV_KEYS) <= set(fixture["env"]) and fixture["env"]["threads"] == T.THREADS
        # timm-lap is compared as shipped: no patch named anywhere (a fixture field or a command line)
        assert not {"compare_patches", "deliberate_difference", "patches"} & set(fixture)
        assert "--patch" not in fixture["timm_lap_command"] and "--patch" not in fixture["recorded_with"]
        assert fixture["tolerance"]["same_env"] == 0.0
        assert fixture["tolerance"]["epoch0_other_env"] == T.EPOCH0_TOLERANCE[recipe]
        # 3 epochs of 9 batches; summary.csv: one row per epoch, the last one the final evaluation.
        assert len(fixture["losses"]) == 3 * T.STEPS_PER_EPOCH and len(fixture["summary"]) == 3
        assert fixture["final_eval"] == {k: fixture["summary"][-1][k] for k in ("eval_loss", "eval_top1", "eval_top5")}
        # At recording, timm-lap as shipped matched timm's train.py bit for bit.
        at_recording = fixture["timm_lap_at_recording"]
        assert at_recording["bitwise"] is True and at_recording["max_abs_diff"] == 0.0
        assert set(at_recording["summary_max_abs_diff"].values()) == {0.0}
        assert set(at_recording["final_eval_abs_diff"].values()) == {0.0}


def test_the_tool_records_timm_lap_unpatched():
    """The tool has no hypothesis patches left: ``record`` takes no --patch and runs ``timm-lap train`` as is."""
    assert not hasattr(T, "PATCHES") and not hasattr(T, "COMPARE_PATCHES")
    with pytest.raises(SystemExit):
        T._parser().parse_args(["record", "--script", "lap", "--recipe", "sgd_cosine", "--out", "x.json",
                                "--patch", "seed-once"])
    assert "--patch" not in T.record_command("lap", "sgd_cosine")


def test_check_trace_is_bitwise_in_the_fixture_environment_and_epoch0_elsewhere():
    fixture = _fixture("sgd_cosine")
    same = {"losses": list(fixture["losses"]), "summary": [dict(r) for r in fixture["summary"]], "env": fixture["env"]}
    assert T.check_trace(fixture, same) == []
    ulp = {**same, "losses": [same["losses"][0] * (1 + 2**-23), *same["losses"][1:]]}
    assert "step 0" in T.check_trace(fixture, ulp)[0]
    late = {**same, "summary": [*same["summary"][:-1], {**same["summary"][-1], "eval_top1": 0.0}]}
    assert "eval_top1" in T.check_trace(fixture, late)[0]
    other = {**ulp, "env": {**fixture["env"], "cpu_capability": "OTHER"}}
    assert T.check_trace(fixture, other) == []  # one ulp is within the other-environment tolerance
    off = {**other, "losses": [same["losses"][0] + 0.01, *same["losses"][1:]]}
    assert "first epoch" in T.check_trace(fixture, off)[0]
    assert "backward losses" in T.check_trace(fixture, {**same, "losses": same["losses"][:-1]})[0]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(T.RECIPES))
def test_timm_lap_train_reproduces_timm_train_py(recipe: str, digits: str, tmp_path: Path):
    fixture = _fixture(recipe)
    trace = _record_lap(recipe, digits, tmp_path)
    assert trace["losses"] and trace["env"]["threads"] == T.THREADS
    problems = T.check_trace(fixture, trace)
    differences = T.env_differences(fixture, trace["env"])
    assert not problems, (f"timm-lap train differs from timm's train.py on {recipe}"
                          f"{f' (environment differs: {differences})' if differences else ''}: {problems}")
