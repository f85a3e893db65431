"""Smoke test of the examples: they run end to end and report sane numbers."""
from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_script

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    return load_script(EXAMPLES / f"{name}.py", f"example_{name}")


def test_digits_lap_vs_vanilla_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("digits_lap_vs_vanilla")
    out = tmp_path / "x.png"
    results = example.main(["--quick", "--out", str(out)])

    assert set(results) >= {"vanilla", "lap"}
    for name in ("vanilla", "lap"):
        row = results[name]
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["accuracy"] > 0.2, f"{name} is no better than chance: {row['accuracy']}"
        assert math.isfinite(row["transport"]) and row["transport"] >= 0
        assert math.isfinite(row["train_time"]) and row["train_time"] > 0
    assert results["vanilla"]["lam"] is None
    lam = results["lap"]["lam"]
    assert math.isfinite(lam) and lam > 1.0  # lam0 = 1 grew by tau * task_loss every step
    assert all(math.isfinite(v) and v >= 0 for v in results["lap"]["history"]["transport"])

    assert out.is_file() and out.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "vanilla" in printed and "lap" in printed
    assert str(out) in printed


@pytest.mark.slow
@pytest.mark.parametrize("name, unit, count", [("digits_lap_vs_vanilla", "epoch", 4), ("two_moons", "step", 10)])
def test_examples_into_a_file_print_plain_progress_lines(tmp_path: Path, name: str, unit: str, count: int) -> None:
    """Output to a file or pipe (CI, nohup): one plain line per epoch (ten for the full-batch example), no
    carriage returns from progress bars."""
    import os
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--out", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stdout + done.stderr
    for run in ("vanilla", "lap"):
        lines = re.findall(rf"^{run}\s+{unit} (\d+)/(\d+): ", done.stdout, re.M)
        assert len(lines) == count, done.stdout
        assert lines[-1][0] == lines[-1][1]  # the last line is the end of the run
