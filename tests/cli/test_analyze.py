"""timm-lap analyze: report for a fresh model, for loaded checkpoints (two formats), and clear errors."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import timm
import torch
from timm.data import create_loader

from timm_lap.analysis.measure import energy_profile
from timm_lap.analysis.report import CHECKPOINT_NOTE
from timm_lap.cli.analyze import main
from timm_lap.cli.analyze_args import SMALL_DATASETS, parse_args
from timm_lap.data import create_lap_dataset, dataset_targets

pytest.importorskip("ot")
pytest.importorskip("matplotlib")
threadpoolctl = pytest.importorskip("threadpoolctl")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--model", "resnet10t", "--n", "200", "--max-batches", "2", "-b", "64", "-j", "0", "--device", "cpu"]
DIGITS = ["--dataset", "sklearn/digits"]
CLASS = 3  # the class the "trained" checkpoint always predicts


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Single-threaded BLAS/torch: on a shared, busy CPU, thread spinning makes the PCA many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpoolctl.threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict:
    return main([*FAST, *DIGITS, "--output", str(tmp_path_factory.mktemp("fresh"))])


def _modified_state_dict() -> dict[str, torch.Tensor]:
    """resnet10t weights unlike a fresh init: every residual branch on, and a head that always says CLASS."""
    torch.manual_seed(1)
    model = timm.create_model("resnet10t", in_chans=1, num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(0.5)  # undoes zero_init_last, so layer1.0 moves its points
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[CLASS] = 1.0
    return model.state_dict()


def _train_checkpoint(path: Path, state_dict: dict) -> Path:
    """A file shaped like a timm-lap train checkpoint, whose args name the dataset."""
    args = argparse.Namespace(model="resnet10t", dataset="sklearn/digits", val_split="validation",
                              input_size=[1, 32, 32], mean=[0.5], std=[0.5], num_classes=10, data_dir=None,
                              eval_metric="top1")
    torch.save({"epoch": 3, "arch": "resnet10t", "state_dict": state_dict, "args": args, "metric": 12.5}, path)
    return path


def _energy_rows(report: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"^\| \d+ \| `([^`]+)` \| (\S+) \|", report, re.M)}


def _efficiency_rows(report: str) -> list[list[str]]:
    section = report.split("## Transport efficiency")[1].split("## Trajectories")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]


def _check_report(result: dict) -> str:
    """The report exists, has every section, and its numbers are the returned ones; returns its text."""
    out = Path(result["output_dir"])
    report = (out / "report.md").read_text()
    assert result["report"] == str(out / "report.md")
    for heading in ("# timm-lap analyze: resnet10t", "## Energy profile", "## Transport efficiency",
                    "## Trajectories", "![energy profile](energy_profile.png)", "![trajectories](trajectories.png)"):
        assert heading in report
    for name in ("energy_profile.png", "trajectories.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert "`sklearn/digits`, split `validation`, 450 samples" in report and result["num_samples"] == 450
    assert f"| top-1 accuracy | {result['top1']:.2f} % (450 samples) |" in report
    energies = _energy_rows(report)
    assert list(energies) == list(result["energy_profile"]) == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    for name, value in result["energy_profile"].items():
        assert energies[name] == pytest.approx(value, rel=1e-5, abs=1e-12)
    assert result["total_transport"] == pytest.approx(sum(result["energy_profile"].values()))
    assert float(re.search(r"Total transport: \*\*(\S+)\*\*", report)[1]) == pytest.approx(
        result["total_transport"], rel=1e-5)
    rows = _efficiency_rows(report)
    assert len(rows) == len(result["transport_efficiency"]) >= 1
    for row, stage in zip(rows, result["transport_efficiency"]):
        w2, kinetic, efficiency, n = (float(v) for v in row[2:])
        assert (w2, kinetic) == (pytest.approx(stage["w2_squared"], rel=1e-5, abs=1e-12),
                                 pytest.approx(stage["kinetic"], rel=1e-5, abs=1e-12))
        assert efficiency == pytest.approx(stage["efficiency"], rel=1e-5) and 0.0 <= efficiency <= 1.0
        assert n == stage["n"] == 200
    assert result["trajectories"]["points"] == 256 and "256 points" in report
    return report


def test_fresh_model_report(fresh):
    report = _check_report(fresh)
    assert fresh["checkpoint"] is None and "freshly initialised" in report
    assert fresh["energy_samples"] == 128 and "over 128 samples" in report
    assert "eval mode, mean over 128 samples of `validation`) |" in report
    # resnet10t's only same-width stage is layer1.0 alone: its efficiency of 1 is said to mean nothing.
    assert [row["blocks"] for row in fresh["transport_efficiency"]] == [1]
    assert "Note: `layer1.0` is a single block:" in report and "by construction" in report
    assert CHECKPOINT_NOTE not in report


def test_checkpoints_are_loaded_and_reported(tmp_path, fresh):
    state_dict = _modified_state_dict()
    ckpt = _train_checkpoint(tmp_path / "model_best.pth.tar", state_dict)
    # No --dataset: the training checkpoint's args supply dataset, split, input size, classes.
    loaded = main([*FAST, "--checkpoint", str(ckpt), "--output", str(tmp_path / "train_ckpt")])
    report = _check_report(loaded)
    assert str(ckpt) in report and "epoch 3, saved with eval top1 12.5" in report and "`state_dict`" in report
    assert loaded["checkpoint_epoch"] == 3 and CHECKPOINT_NOTE in report
    assert "dataset" in loaded["inherited"] and "freshly initialised" not in report

    # The head always predicts CLASS, so top-1 is that class's share of the split.
    targets = dataset_targets(create_lap_dataset("sklearn/digits", split="validation"))
    assert loaded["top1"] == pytest.approx(100.0 * targets.count(CLASS) / len(targets))
    # The energies are those of the loaded weights, not of a fresh model.
    model = timm.create_model("resnet10t", in_chans=1, num_classes=10)
    model.load_state_dict(state_dict)
    cfg = loaded["data_config"]
    loader = create_loader(create_lap_dataset("sklearn/digits", split="validation"), input_size=cfg["input_size"],
                           batch_size=64, interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"],
                           crop_pct=cfg["crop_pct"], num_workers=0, use_prefetcher=False)
    direct = energy_profile(model, loader, max_batches=2, progress=False)
    assert loaded["energy_profile"] == pytest.approx(direct, rel=1e-6)
    assert loaded["energy_profile"]["layer1.0"] > 0 == fresh["energy_profile"]["layer1.0"]

    # A plain state_dict file holds the same weights: same numbers.
    plain = tmp_path / "weights.pth"
    torch.save(state_dict, plain)
    again = main([*FAST, *DIGITS, "--checkpoint", str(plain), "--output", str(tmp_path / "plain")])
    assert again["energy_profile"] == pytest.approx(loaded["energy_profile"], rel=1e-6)
    assert again["top1"] == loaded["top1"] and again["inherited"] == []
    assert f"`{plain}` (state_dict)" in Path(again["report"]).read_text()


def test_a_paper_shaped_checkpoint_needs_no_model_flag_and_gets_no_single_block_note(tmp_path):
    # A timm-lap train checkpoint of preact_flat9 trained with --model-kwargs width=8: analyze takes the model
    # and its shape from the saved args (the weights would not fit the default width 32).
    model = timm.create_model("preact_flat9", in_chans=1, num_classes=10, width=8)
    args = argparse.Namespace(model="preact_flat9", model_kwargs={"width": 8}, dataset="sklearn/digits",
                              val_split="validation", input_size=[1, 28, 28], mean=[0.5], std=[0.5], num_classes=10,
                              data_dir=None, eval_metric="top1")
    ckpt = tmp_path / "last.pth.tar"
    torch.save({"epoch": 14, "arch": "preact_flat9", "state_dict": model.state_dict(), "args": args}, ckpt)
    result = main(["--checkpoint", str(ckpt), "--n", "100", "--max-batches", "1", "-b", "64", "-j", "0",
                   "--device", "cpu", "--output", str(tmp_path / "out")])
    report = Path(result["report"]).read_text()
    assert result["model"] == "preact_flat9" and result["model_kwargs"] == {"width": 8}
    assert result["inherited"][0] == "model" and "model_kwargs" in result["inherited"]
    assert "| model | `preact_flat9` with `width=8` (" in report and result["input_size"] == (1, 28, 28)
    nine = [f"blocks.{i}" for i in range(9)]
    assert [row["stage"] for row in result["transport_efficiency"]] == [nine] == [result["trajectories"]["stage"]]
    assert 0.0 < result["transport_efficiency"][0]["efficiency"] < 1.0
    assert "single block" not in report and "by construction" not in report
    assert "(9 blocks) (it carries 100.0% of the total transport)" in report


def test_clear_errors(tmp_path):
    missing = tmp_path / "no" / "last.pth.tar"
    with pytest.raises(SystemExit, match=re.escape(str(missing))) as info:
        main([*FAST, *DIGITS, "--checkpoint", str(missing), "--output", str(tmp_path / "out")])
    assert str(info.value).startswith("timm-lap analyze: ")
    with pytest.raises(SystemExit, match="--dataset is required"):
        main([*FAST, "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--model is required"):
        main([*FAST[2:], *DIGITS, "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="timm-lap analyze: unknown split 'bogus'"):
        main([*FAST, *DIGITS, "--split", "bogus", "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="timm-lap analyze: --dataset 'torch/nope'"):
        main([*FAST, "--dataset", "torch/nope", "--data-dir", str(tmp_path), "--output", str(tmp_path / "out")])
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(SystemExit, match="does not fit the model"):
        main([*FAST, *DIGITS, "--checkpoint", str(wrong), "--output", str(tmp_path / "out")])


def test_flags_live_in_the_light_module():
    from timm_lap.cli import analyze
    from timm_lap.cli.train import DATASET_INPUT_DEFAULTS

    assert analyze.parse_args is parse_args and SMALL_DATASETS == tuple(DATASET_INPUT_DEFAULTS)
    assert parse_args(["--model", "m"]).batch_size == 128


@pytest.mark.parametrize("argv", [["-b", "0"], ["--n", "0"], ["--max-batches", "0"], ["-j", "-1"]])
def test_bad_counts_are_argument_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--model", "resnet10t", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and re.search(r"timm-lap analyze: error: argument \S+: must be >= [01], got -?\d", err)
