"""timm-lap train: timm's flags, --lap, outputs, resume, DDP, data errors; timm-lap demo."""
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from timm_lap.cli.build import read_checkpoint
from timm_lap.cli.train import SUMMARY_COLUMNS, main, read_summary, train
from timm_lap.cli.train_args import available_cores, parse_args
from timm_lap.tracker import get_tracker

DIGITS = ["--dataset", "sklearn/digits", "--model", "resnet10t", "--train-subset", "120", "-b", "32",
          "--lr", "0.05", "--warmup-epochs", "0", "--workers", "0", "--device", "cpu", "--log-interval", "100"]


def _run(tmp_path, name, *extra, stop_after=None):
    args, text = parse_args([*DIGITS, "--output", str(tmp_path), "--experiment", name, *extra])
    return train(args, text, stop_after_epochs=stop_after)


def test_realistic_timm_command_line_keeps_timm_meaning():
    args, _ = parse_args([
        "--data-dir", "/data", "--dataset", "torch/cifar10", "--model", "resnet50", "-b", "64", "-vb", "128",
        "--opt", "adamw", "--opt-betas", "0.9", "0.99", "--weight-decay", "0.05", "--sched", "step",
        "--decay-milestones", "10", "20", "--lr-base", "0.2", "--warmup-epochs", "2", "--mixup", "0.2",
        "--cutmix", "1.0", "--smoothing", "0.0", "--model-ema", "--model-ema-decay", "0.999", "--amp",
        "--amp-dtype", "bfloat16", "--channels-last", "--grad-accum-steps", "2",
        "--model-kwargs", "zero_init_last=False",
        "-j", "2", "--input-size", "3", "32", "32", "--mean", "0.5", "0.5", "0.5", "--drop-path", "0.1",
    ])
    assert (args.data_dir, args.batch_size, args.validation_batch_size) == ("/data", 64, 128)
    assert args.opt_betas == [0.9, 0.99] and args.decay_milestones == [10, 20]
    assert args.model_kwargs == {"zero_init_last": False} and args.input_size == [3, 32, 32]
    assert args.workers == 2 and args.amp and args.amp_dtype == "bfloat16" and args.grad_accum_steps == 2
    # timm train.py's defaults for what was not given
    defaults, _ = parse_args([])
    assert (defaults.model, defaults.batch_size, defaults.opt, defaults.momentum, defaults.weight_decay) == (
        "resnet50", 128, "sgd", 0.9, 2e-5)
    assert (defaults.sched, defaults.lr, defaults.lr_base, defaults.lr_base_size, defaults.warmup_lr) == (
        "cosine", None, 0.1, 256, 1e-5)
    assert (defaults.epochs, defaults.warmup_epochs, defaults.decay_milestones, defaults.smoothing) == (
        300, 5, [90, 180, 270], 0.1)
    assert (defaults.seed, defaults.log_interval, defaults.checkpoint_hist) == (42, 50, 10)
    assert defaults.workers == min(4, available_cores())  # timm's 4, but never more loader processes than cores
    assert (defaults.model_ema_decay, defaults.eval_metric, defaults.train_split, defaults.val_split) == (
        0.9998, "top1", "train", "validation")
    assert (defaults.lap, defaults.lap_tau, defaults.lap_lambda0, defaults.lap_every, defaults.lap_p) == (
        False, 1.0, 1.0, 1, 2.0)


def test_config_file_sets_defaults(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("batch_size: 16\nlap: true\n")
    args, _ = parse_args(["-c", str(cfg), "--epochs", "3"])
    assert (args.batch_size, args.lap, args.epochs) == (16, True, 3)
    cfg.write_text("no_such_flag: 1\n")
    with pytest.raises(SystemExit):
        parse_args(["-c", str(cfg)])


@pytest.mark.parametrize("flag", ["--kd-model-name=resnet50", "--naflex-loader"])
def test_unsupported_timm_flag_is_rejected_by_name(flag, capsys):
    with pytest.raises(SystemExit):
        parse_args([flag])
    err = capsys.readouterr().err
    assert flag.split("=")[0] in err and "does not support" in err


@pytest.mark.parametrize("flags,match", [(["--lap-tau", "-1"], "--lap-tau must be >= 0"),
                                         (["--lap-every", "0"], "--lap-every must be >= 1"),
                                         (["--train-subset", "0"], "--train-subset must be >= 1"),
                                         (["--lap-sample", "0"], "--lap-sample must be a fraction in (0, 1]"),
                                         (["--lap-sample", "1.5"], "--lap-sample must be a fraction in (0, 1]")])
def test_bad_lap_flags(flags, match, capsys):
    with pytest.raises(SystemExit):
        parse_args(flags)
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_two_epoch_lap_run_writes_every_output(tmp_path):
    result = _run(tmp_path, "run", "--epochs", "2", "--lap", "--checkpoint-hist", "2")
    out = Path(result.output_dir)
    for name in ("args.yaml", "summary.csv", "last.pth.tar", "model_best.pth.tar", "checkpoint-0.pth.tar",
                 "checkpoint-1.pth.tar", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob("tmp*"))  # checkpoints were written atomically (temp file renamed)
    rows = read_summary(out / "summary.csv")
    assert list(rows[0]) == list(SUMMARY_COLUMNS) and len(rows) == 2
    assert float(rows[1]["lap_lambda"]) > float(rows[0]["lap_lambda"]) > 1.0
    assert float(rows[1]["transport"]) > 0
    ckpt = torch.load(out / "last.pth.tar", map_location="cpu", weights_only=False)
    assert ckpt["timm_lap"]["multiplier"]["lam"].item() == pytest.approx(result.lam)
    assert ckpt["epoch"] == 1


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    flags = ("--epochs", "4", "--lap", "--lap-tau", "0.5")
    full = _run(tmp_path / "a", "run", *flags)
    part = _run(tmp_path / "b", "run", *flags, stop_after=2)
    resumed = _run(tmp_path / "b", "run", *flags, "--resume", str(Path(part.output_dir) / "last.pth.tar"))
    a = (Path(full.output_dir) / "summary.csv").read_text()
    b = (Path(resumed.output_dir) / "summary.csv").read_text()
    assert a == b
    assert resumed.lam == full.lam


@pytest.mark.slow
def test_sampled_transport_with_other_p_resumes_exactly(tmp_path):
    """--lap-sample draws restart from (seed, epoch) every epoch, so a resume repeats them; --lap-p reaches the loss."""
    flags = ("--epochs", "3", "--lap", "--lap-sample", "0.25", "--lap-p", "1.5")
    full = _run(tmp_path / "a", "run", *flags)
    tracker = get_tracker(full.model)
    assert (tracker.sample, tracker.p) == (0.25, 1.5)
    part = _run(tmp_path / "b", "run", *flags, stop_after=1)
    resumed = _run(tmp_path / "b", "run", *flags, "--resume", str(Path(part.output_dir) / "last.pth.tar"))
    a = (Path(full.output_dir) / "summary.csv").read_text()
    assert a == (Path(resumed.output_dir) / "summary.csv").read_text()
    exact = _run(tmp_path / "c", "run", "--epochs", "3", "--lap", "--lap-p", "1.5")
    assert read_summary(Path(exact.output_dir) / "summary.csv")[0]["transport"] != read_summary(
        Path(full.output_dir) / "summary.csv")[0]["transport"]


@pytest.mark.slow
def test_val_from_train_and_eval_interval(tmp_path):
    result = _run(tmp_path, "carved", "--epochs", "3", "--val-from-train", "0.2", "--eval-interval", "2")
    n_eval = len(result.loader_eval.dataset)
    assert n_eval == round(0.2 * 1347)  # a fifth of the digits training split, not the 450-image held-out split
    rows = result.rows
    assert math.isnan(rows[0]["eval_top1"]) and not math.isnan(rows[1]["eval_top1"])
    assert not math.isnan(rows[2]["eval_top1"])  # the last epoch is always evaluated
    out = Path(result.output_dir)
    assert (out / "recovery-0-0.pth.tar").is_file() and (out / "checkpoint-1.pth.tar").is_file()
    eval_indices = set(result.loader_eval.dataset.indices)
    train_ds = result.loader_train.dataset  # the --train-subset drawn from what was kept
    train_indices = {train_ds.dataset.indices[i] for i in train_ds.indices}
    assert len(train_ds) == 120 and not train_indices & eval_indices


def test_init_gain_scales_conv_and_linear_weights_only():
    from timm_lap.cli.train import _build_model

    args, _ = parse_args([*DIGITS, "--init-gain", "2"])
    base_args, _ = parse_args(DIGITS)
    torch.manual_seed(0)
    base = _build_model(base_args, 10, 1, lap=False)
    torch.manual_seed(0)
    scaled = _build_model(args, 10, 1, lap=False)
    for (name, p), q in zip(base.named_parameters(), scaled.parameters()):
        factor = 2.0 if name.endswith("weight") and p.dim() > 1 else 1.0  # conv/linear weights; not BN, not biases
        torch.testing.assert_close(q, p * factor, msg=name)


@pytest.mark.parametrize("flags,match", [(["--init-gain", "0"], "--init-gain must be a finite number > 0"),
                                         (["--init-gain", "2", "--pretrained"], "fresh initialisation"),
                                         (["--eval-interval", "0"], "--eval-interval must be >= 1"),
                                         (["--val-from-train", "1.5"], "--val-from-train must be a fraction")])
def test_bad_eval_flags(flags, match, capsys):
    with pytest.raises(SystemExit):
        parse_args([*DIGITS, *flags])
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_without_lap_training_is_plain_timm(tmp_path):
    vanilla = _run(tmp_path, "vanilla", "--epochs", "1")
    assert get_tracker(vanilla.model) is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in vanilla.model.modules())
    zero = _run(tmp_path, "zero", "--epochs", "1", "--lap", "--lap-weight", "0")
    for key in ("train_loss", "eval_loss", "eval_top1"):
        assert vanilla.rows[0][key] == zero.rows[0][key]  # the regulariser at weight 0 changes nothing


@pytest.mark.slow
def test_lap_model_name_implies_lap_and_works_with_amp_ema_accum_checkpointing(tmp_path):
    result = _run(tmp_path, "all", "--model", "resnet10t_lap", "--epochs", "1", "--amp", "--amp-dtype", "bfloat16",
                  "--model-ema", "--grad-accum-steps", "2", "--grad-checkpointing", "--channels-last",
                  "--mixup", "0.2")
    row = result.rows[0]
    assert row["lap_lambda"] > 1.0 and row["transport"] > 0
    assert get_tracker(result.model) is not None


@pytest.mark.slow
def test_fashion_mnist_from_idx_files(tmp_path):
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("Debian package dataset-fashion-mnist is not installed (CI installs it)")
    args, text = parse_args(["--dataset", "torch/fashion_mnist", "--model", "resnet10t", "--train-subset", "100",
                             "-b", "50", "-vb", "500", "--epochs", "1", "--lr", "0.05", "--warmup-epochs", "0",
                             "--workers", "0", "--device", "cpu", "--output", str(tmp_path), "--experiment", "f",
                             "--lap", "--log-interval", "1000"])
    result = train(args, text)
    assert result.rows[0]["eval_top1"] > 10.0  # above chance after one epoch on 100 images
    assert len(result.loader_eval.dataset) == 10000


def test_missing_dataset_gives_the_documented_error(tmp_path, monkeypatch):
    import timm_lap.data.idx as data

    monkeypatch.setattr(data, "DEBIAN_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match=r"(?s)timm-lap train: .*" + re.escape(str(tmp_path)) + ".*--data-dir"):
        main(["--dataset", "torch/mnist", "--data-dir", str(tmp_path), "--device", "cpu", "--output", str(tmp_path)])


@pytest.mark.slow
def test_torchrun_two_processes_hold_the_same_lam(tmp_path):
    torchrun = shutil.which("torchrun")
    cmd = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    done = subprocess.run(
        [*cmd, "--standalone", "--nproc-per-node", "2", "-m", "timm_lap.cli.train", *DIGITS, "--epochs", "1",
         "--lap", "--output", str(tmp_path), "--experiment", "ddp"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lams = re.findall(r"rank (\d): final lam (\S+)", done.stdout + done.stderr)
    assert sorted(r for r, _ in lams) == ["0", "1"]
    assert lams[0][1] == lams[1][1]
    assert (tmp_path / "ddp" / "summary.csv").is_file()


@pytest.mark.slow
def test_demo_quick_prints_both_rows(tmp_path, capsys):
    from timm_lap.cli.demo import main as demo

    results = demo(["--quick", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"^vanilla\s+\d", out, re.M) and re.search(r"^lap\s+\d", out, re.M)
    assert results["lap"].lam > 1.0 and results["vanilla"].lam is None
    assert (tmp_path / "demo.png").is_file()


def test_cli_dispatch(capsys):
    from timm_lap.cli import main as cli

    assert cli(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert cli(["nope"]) == 2


def test_fewer_samples_than_one_batch_is_a_clear_error(tmp_path):
    # timm drops the last partial training batch: 120 images at -b 128 would train nothing, silently.
    with pytest.raises(ValueError, match=r"fewer than one batch \(-b 128\).*use -b 120 or less"):
        _run(tmp_path, "tiny", "--epochs", "1", "-b", "128")


def test_label_noise_corrupts_training_labels_only(tmp_path):
    result = _run(tmp_path, "noisy", "--epochs", "1", "--label-noise", "0.25")
    train_ds = result.loader_train.dataset
    clean = [train_ds.dataset.targets[i] for i in train_ds.indices]
    assert sum(a != b for a, b in zip(clean, train_ds.targets)) == 30  # 25 % of 120, each moved to another class
    assert [train_ds[i][1] for i in range(5)] == train_ds.targets[:5]  # what the loader yields
    assert not hasattr(result.loader_eval.dataset, "indices")  # the evaluation split is untouched


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_bad_label_noise(value, capsys):
    with pytest.raises(SystemExit):
        parse_args([*DIGITS, "--label-noise", value])
    assert "--label-noise must be a fraction in [0, 1)" in capsys.readouterr().err


FIXTURE_0_1_0 = Path(__file__).parents[1] / "fixtures" / "checkpoint_0.1.0" / "last.pth.tar"


def test_a_checkpoint_from_0_1_0_loads_the_same_multiplier():
    import timm_lap

    state = torch.load(FIXTURE_0_1_0, map_location="cpu", weights_only=False)["timm_lap"]["multiplier"]
    model = torch.nn.Linear(2, 2)
    loss = timm_lap.LeastActionLoss(torch.nn.CrossEntropyLoss(), timm_lap.track(
        torch.nn.Sequential(_FixtureBlock()), blocks=["0"]))
    multiplier = timm_lap.MultiplierScheduler(torch.optim.SGD(model.parameters(), lr=0.1), loss)
    multiplier.load_state_dict(state)
    assert multiplier.lam.dtype == torch.float64 and multiplier.lam.item() == 3.380574345588684
    assert (multiplier.tau, multiplier.every, multiplier.num_updates) == (0.5, 1, 2)


class _FixtureBlock(torch.nn.Module):
    def forward(self, x):
        return x + 1


@pytest.mark.slow
def test_a_run_from_0_1_0_resumes_with_its_multiplier(tmp_path):
    flags = ["--dataset", "sklearn/digits", "--model", "preact_flat9", "--model-kwargs", "width=4", "depth=2",
             "--train-subset", "64", "-b", "32", "--epochs", "2", "--lap", "--lap-tau", "0.5", "--workers", "0",
             "--device", "cpu", "--seed", "0", "--output", str(tmp_path), "--experiment", "resumed",
             "--resume", str(FIXTURE_0_1_0)]
    args, text = parse_args(flags)
    result = train(args, text)
    rows = read_summary(Path(result.output_dir) / "summary.csv")
    assert [int(r["epoch"]) for r in rows] == [1]  # epoch 0 came from the checkpoint
    # Two more updates of tau * task_loss (task loss well above 0.5 this early) on top of the stored lam; starting
    # again from lambda0 = 1 would end near 3.3.
    assert result.lam > 3.380574345588684 + 2 * 0.5 * 0.5


def test_curves_leave_the_callers_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from timm_lap.cli.train import plot_curves

    summary = tmp_path / "summary.csv"
    summary.write_text("epoch,task_loss,transport,lap_lambda,eval_top1\n0,2.0,1.0,1.5,50\n1,1.5,0.8,2.5,60\n")
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend the caller chose
    try:
        out = plot_curves(str(summary), str(tmp_path / "curves.png"))
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert out and (tmp_path / "curves.png").stat().st_size > 0 and not list(tmp_path.glob("*.tmp*"))


def test_train_result_keeps_the_dict_access_of_0_1(tmp_path):
    from timm_lap.cli.train import TrainResult

    fields = {name: object() for name in TrainResult.__dataclass_fields__}
    result = TrainResult(**fields)
    for key in ("output_dir", "best_metric", "best_epoch", "rows", "lam", "num_epochs", "model", "loader_train",
                "loader_eval"):
        assert result[key] is fields[key]
    with pytest.raises(KeyError):
        result["no_such_key"]



def test_args_yaml_records_the_files_read_and_still_loads_with_c(tmp_path, caplog):
    import yaml

    with caplog.at_level("INFO"):
        result = _run(tmp_path, "prov", "--epochs", "1", "--train-batches-per-epoch", "1")
    args_yaml = Path(result.output_dir) / "args.yaml"
    recorded = yaml.safe_load(args_yaml.read_text())["data_sources"]
    assert set(recorded) == {"train", "eval"}
    (train_source,) = recorded["train"]
    assert train_source["path"].endswith("digits.csv.gz") and os.path.isfile(train_source["path"])
    import hashlib
    assert train_source["sha256"] == hashlib.sha256(Path(train_source["path"]).read_bytes()).hexdigest()
    assert train_source["bytes"] == Path(train_source["path"]).stat().st_size
    assert f"data (train): sklearn-bundled {train_source['path']}" in caplog.text  # also in the run log
    args, _ = parse_args(["-c", str(args_yaml)])  # a recorded run's args.yaml is still a recipe
    assert args.dataset == "sklearn/digits" and args.train_subset == 120


def test_pretrained_path_loads_a_local_file_and_drops_its_classifier(tmp_path):
    import timm

    from timm_lap.cli.train import _build_model

    source = timm.create_model("resnet10t", num_classes=7)
    weights = tmp_path / "weights.pth"
    torch.save(source.state_dict(), weights)
    args, _ = parse_args([*DIGITS, "--pretrained-path", str(weights)])
    model = _build_model(args, num_classes=10, in_chans=3, lap=False)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)  # the file's weights, not a new init
    assert model.get_classifier().out_features == 10  # the 7-class head of the file was dropped, as in timm
    args, _ = parse_args([*DIGITS, "--pretrained-path", str(tmp_path / "missing.pth")])
    with pytest.raises(ValueError, match="no such file"):
        _build_model(args, num_classes=10, in_chans=3, lap=False)


@pytest.mark.parametrize("flags, size", [
    ([], [1, 32, 32]),                        # the dataset's own size and channels
    (["--img-size", "48"], [1, 48, 48]),      # a recipe's --img-size keeps the dataset's single channel
    (["--in-chans", "3"], None),              # the user's channels: timm resolves the size from the model
])
def test_small_dataset_input_defaults_keep_one_channel_at_any_img_size(flags, size):
    from timm_lap.cli.train import dataset_input_defaults

    args, _ = parse_args(["--dataset", "sklearn/digits", "--model", "resnet10t", *flags])
    input_size, mean, std = dataset_input_defaults(args)
    assert input_size == size
    assert (mean, std) == (([0.5], [0.5]) if size else (None, None))


@pytest.mark.slow
def test_resume_with_augmentation_mixup_and_workers_continues_the_random_streams(tmp_path):
    """Seeded once, as timm seeds: the checkpoint's random-number state makes the resumed epochs the same draws."""
    flags = ("--epochs", "3", "--mixup", "0.3", "--hflip", "0.5", "--scale", "0.6", "1.0", "--workers", "1")
    full = _run(tmp_path / "a", "run", *flags)
    part = _run(tmp_path / "b", "run", *flags, stop_after=1)
    resumed = _run(tmp_path / "b", "run", *flags, "--resume", str(Path(part.output_dir) / "last.pth.tar"))
    a = (Path(full.output_dir) / "summary.csv").read_text()
    assert a == (Path(resumed.output_dir) / "summary.csv").read_text()
    reseeded = _run(tmp_path / "c", "run", *flags, "--seed", "1")  # the seed matters: the draws are not fixed
    assert (Path(reseeded.output_dir) / "summary.csv").read_text() != a


def test_a_checkpoint_without_random_state_reseeds_and_says_so(tmp_path, caplog):
    import logging

    part = _run(tmp_path, "run", "--epochs", "2", stop_after=1)
    path = Path(part.output_dir) / "last.pth.tar"
    checkpoint = read_checkpoint(str(path), flag="--resume")
    states = checkpoint["timm_lap"]["rng_states"]
    assert len(states) == 1 and set(states[0]) == {"python", "numpy", "torch"}  # one process, CPU
    del checkpoint["timm_lap"]["rng_states"]  # as a checkpoint of an earlier release
    old = tmp_path / "old.pth.tar"
    torch.save(checkpoint, old)
    with caplog.at_level(logging.INFO, logger="timm_lap"):
        resumed = _run(tmp_path, "resumed", "--epochs", "2", "--resume", str(old))
    assert "holds no random-number state" in caplog.text and "reseeded from (seed, epoch 1)" in caplog.text
    assert len(resumed.rows) == 1 and math.isfinite(resumed.rows[0]["train_loss"])


@pytest.mark.slow
def test_torchrun_resume_restores_each_ranks_random_state(tmp_path):
    """Rank 0 writes the checkpoint with every rank's generator state; each rank resumes its own."""
    torchrun = shutil.which("torchrun")
    cmd = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]

    def run(name, *extra):
        done = subprocess.run(
            [*cmd, "--standalone", "--nproc-per-node", "2", "-m", "timm_lap.cli.train", *DIGITS, "--epochs", "2",
             "--hflip", "0.5", "--mixup", "0.3", "--output", str(tmp_path), "--experiment", name, *extra],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert done.returncode == 0, done.stderr[-4000:]
        return read_summary(str(tmp_path / name / "summary.csv"))

    full = run("full")
    checkpoint = read_checkpoint(str(tmp_path / "full" / "checkpoint-0.pth.tar"), flag="--resume")
    states = checkpoint["timm_lap"]["rng_states"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    resumed = run("resumed", "--resume", str(tmp_path / "full" / "checkpoint-0.pth.tar"))
    assert [row["epoch"] for row in resumed] == ["1"]
    assert resumed[0] == full[1]
