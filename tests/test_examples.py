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


RSB_A3 = EXAMPLES / "recipes" / "rsb_a3_resnet50.yaml"
# Small-CPU overrides on the command line, as one would shrink any timm recipe; the file itself is unchanged.
CPU_OVERRIDES = ["--dataset", "sklearn/digits", "--model", "resnet10t", "--img-size", "32", "-b", "16", "--epochs",
                 "1", "--device", "cpu", "--workers", "0", "--train-subset", "64", "--amp-dtype", "bfloat16"]


def test_the_timm_recipe_example_is_a_full_timm_args_yaml_that_parses_unchanged_with_lap() -> None:
    import yaml

    from timm_lap.cli.train_args import parse_args

    recipe = yaml.safe_load(RSB_A3.read_text())
    assert len(recipe) > 150  # every flag of timm's parser, as timm's train.py writes args.yaml
    args, _ = parse_args(["-c", str(RSB_A3), "--lap"])
    assert args.lap and (args.model, args.opt, args.lr, args.weight_decay) == ("resnet50", "lamb", 8e-3, 0.02)
    assert (args.bce_loss, args.bce_target_thresh, args.mixup, args.cutmix, args.smoothing) == (
        True, 0.2, 0.1, 1.0, 0.0)
    assert (args.aa, args.img_size, args.crop_pct, args.epochs) == ("rand-m6-mstd0.5-inc1", 160, 0.95, 100)


@pytest.mark.slow
def test_the_timm_recipe_example_trains_with_lap_on_timm_s_bce_lamb_and_mixup(tmp_path: Path) -> None:
    from timm.loss import BinaryCrossEntropy
    from timm.optim import Lamb

    from timm_lap import LeastActionLoss
    from timm_lap.cli import train as T
    from timm_lap.cli.train_args import parse_args

    args, text = parse_args(["-c", str(RSB_A3), "--lap", *CPU_OVERRIDES, "--output", str(tmp_path),
                             "--experiment", "rsb", "--train-batches-per-epoch", "2"])
    placement = T._start_process(args)
    train_set, eval_set = T._build_datasets(args)
    config = T.resolve_config(args, placement, train_set)
    objects = T.build_objects(config, train_set, eval_set, text)
    assert isinstance(objects.train_loss, LeastActionLoss)
    assert isinstance(objects.train_loss.criterion, BinaryCrossEntropy)  # the recipe's loss, under LAP
    assert isinstance(objects.optimizer, Lamb) and objects.mixup is not None
    result = T.run_epochs(config, objects, plot=False)
    assert result.lam is not None and result.lam > 1.0  # lam grew by tau * (BCE task loss) each update
    assert math.isfinite(float(result.rows[-1]["eval_loss"]))
