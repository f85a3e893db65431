"""The two-moons example runs end to end and LAP moves the points less than vanilla training."""
from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_script

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("ot")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "two_moons.py"


def load_example() -> ModuleType:
    return load_script(EXAMPLE, "example_two_moons")


def test_two_moons_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "moons.png"
    results = load_example().main(["--quick", "--out", str(out)])

    assert out.exists() and out.stat().st_size > 10_000
    for name in ("vanilla", "lap"):
        row = results[name]
        for key in ("accuracy", "transport", "w2_squared", "efficiency"):
            assert math.isfinite(row[key]), f"{name} {key} = {row[key]}"
        assert 0.0 <= row["efficiency"] <= 1.0
        assert row["accuracy"] > 0.9, f"{name} did not learn the moons: {row['accuracy']}"
    assert results["lap"]["transport"] < results["vanilla"]["transport"]
    assert results["transport_ratio"] == pytest.approx(results["lap"]["transport"] / results["vanilla"]["transport"])
    assert results["lap"]["lam"] > 1.0 and results["vanilla"]["lam"] is None
    printed = capsys.readouterr().out
    assert "transport LAP / vanilla" in printed and str(out) in printed
