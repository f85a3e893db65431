"""timm-lap demo: light flags (no torch for --help and errors), one line per epoch into a pipe, and the table's
val transport is what timm-lap analyze reports for the run's last.pth.tar."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from timm_lap.cli import demo_args

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, **kwargs)


def test_the_argument_modules_import_no_torch():
    done = _python("import sys, timm_lap.cli.demo_args, timm_lap.cli.analyze_args\n"
                   "print(sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["demo", "analyze"])
def test_help_and_errors_answer_without_torch(command):
    code = ("import sys\nfrom timm_lap.cli import main\n"
            f"for argv in (['{command}', '--help'], ['{command}', '--seed', 'x']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        print('exit', e.code)\n"
            "print('torch' in sys.modules)")
    start = time.perf_counter()
    done = _python(code)
    assert time.perf_counter() - start < 10  # generous on a busy CI machine; about 0.2 s on an idle one
    assert done.stdout.splitlines()[-3:] == ["exit 0", "exit 2", "False"], done.stderr
    assert f"timm-lap {command}: error: argument --seed: invalid int value: 'x'" in done.stderr
    assert "  --seed S" in done.stderr  # the flag's own help line comes with the error


def test_every_flag_has_help_and_the_defaults_show():
    parser = demo_args.build_parser()
    assert all(action.help for action in parser._actions)
    text = " ".join(parser.format_help().split())  # unwrapped
    assert "(default: preact_flat9)" in text and "(default: preact_flat9_digits)" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["--train-subset", "0"], "argument --train-subset: must be >= 1, got 0"),
    (["--lap-tau", "-1"], "argument --lap-tau: must be >= 0, got -1.0"),
    (["--recipe", "nope"], "argument --recipe: no recipe 'nope'; shipped recipes: preact_flat9_digits"),
])
def test_bad_values_are_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        demo_args.parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_quick_caps_epochs_and_images():
    args = demo_args.parse_args(["--quick", "--epochs", "2"])
    assert (args.epochs, args.train_subset, args.model) == (2, 200, "preact_flat9")
    assert demo_args.parse_args(["--quick"]).epochs == 3


def test_epoch_lines_pass_the_epoch_lines_only_and_restore_the_logger():
    from timm_lap.cli.demo import TRAIN_LOGGER, epoch_lines

    logger = logging.getLogger(TRAIN_LOGGER)
    before = (logger.level, logger.propagate, list(logger.handlers))
    stream = io.StringIO()
    with epoch_lines("lap", stream):
        logger.info("timm-lap train: preact_flat9 with LAP, ...")
        logger.info("train 0 [9/9] loss=1.2")
        logger.info("epoch 0: train loss 1.2000, eval loss 1.1000, top1 50.00")
        logger.info("rank 0: final lam 3.0")
    assert stream.getvalue() == "lap      epoch 0: train loss 1.2000, eval loss 1.1000, top1 50.00\n"
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


def test_the_table_names_the_best_epoch_and_the_notes_say_which_checkpoint_analyze_should_read():
    from timm_lap.cli.demo import DemoRun, _notes, _table

    rows = [{"epoch": 0, "eval_top1": 90.0}, {"epoch": 1, "eval_top1": 97.0}, {"epoch": 2, "eval_top1": 96.5}]
    runs = {"vanilla": DemoRun("out/vanilla", rows, 97.0, None, 10.77, 60.0, best_epoch=1, val_samples=450),
            "lap": DemoRun("out/lap", rows, 97.0, 164.0, 5.0049, 61.0, best_epoch=1, val_samples=450)}
    table = _table(runs).splitlines()
    assert table[0].split() == ["method", "val", "top-1", "(%)", "best", "top-1", "best", "epoch", "val", "transport",
                                "final", "lam", "time", "(s)"]
    assert table[3].split() == ["lap", "96.50", "97.00", "1", "5.0049", "164", "61.0"]
    notes = _notes(runs)
    assert "final model (epoch 2, last.pth.tar)" in notes and "best top-1, best epoch: model_best.pth.tar" in notes
    assert "on model_best.pth.tar it reports the best epoch's, the same only when that is the last epoch" in notes
    # The printed command reads the checkpoint the table measured; the model comes from the checkpoint.
    assert notes.splitlines()[-1] == f"  timm-lap analyze --checkpoint {os.path.join('out/lap', 'last.pth.tar')} " \
                                     f"--output {os.path.join('out', 'analyze-lap')}"


@pytest.mark.slow
def test_demo_into_a_pipe_prints_one_line_per_epoch_and_agrees_with_analyze(tmp_path):
    pytest.importorskip("sklearn")
    done = subprocess.run([sys.executable, "-m", "timm_lap.cli", "demo", "--quick", "--epochs", "2",
                           "--output", str(tmp_path)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **ONE_THREAD})
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert "\r" not in out + done.stderr
    for run in ("vanilla", "lap"):
        epochs = re.findall(rf"^{run}\s+epoch (\d+): train loss", out, re.M)
        assert epochs == ["0", "1"], out
    assert not re.search(r"^\S+\s+train \d+ \[", out, re.M)  # per-batch progress stays out of the log
    row = re.search(r"^lap\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert row, out
    command = re.search(r"timm-lap analyze --checkpoint (\S+last\.pth\.tar)", out)
    assert command, out

    pytest.importorskip("ot")
    from timm_lap.cli.analyze import main as analyze

    common = ["-j", "0", "--device", "cpu", "--n", "100"]
    result = analyze(["--checkpoint", command[1], *common, "--output", str(tmp_path / "analyze")])
    assert result["model"] == "preact_flat9" and result["input_size"] == (1, 28, 28)  # from the checkpoint
    assert result["num_samples"] == 450 and result["checkpoint_epoch"] == 1
    assert result["top1"] == pytest.approx(float(row[1]), abs=0.006)  # the table's val top-1 (2 decimals)
    assert result["total_transport"] == pytest.approx(float(row[4]), abs=6e-5)  # the table's val transport
    # model_best.pth.tar is the best epoch's model: its top-1 is the table's best top-1, and its transport is the
    # table's only when the best epoch is the last.
    best = analyze(["--checkpoint", command[1].replace("last.pth.tar", "model_best.pth.tar"), *common,
                    "--output", str(tmp_path / "analyze-best")])
    assert best["checkpoint_epoch"] == int(row[3]) and best["top1"] == pytest.approx(float(row[2]), abs=0.006)
    if int(row[3]) == 1:
        assert best["total_transport"] == pytest.approx(result["total_transport"], rel=1e-6)
    assert "This is `model_best.pth.tar`, the model of epoch" in Path(best["report"]).read_text()
