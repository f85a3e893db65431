"""timm-lap train: the training loss is the one timm's recipe builds for the flags (under --lap, wrapped in a
LeastActionLoss whose multiplier is fed that loss), and timm's newer flags reach what they configure (each test
fails if its flag were ignored)."""
import argparse
import logging
import sys
import types
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from timm.layers import DropBlock2d, SplitBatchNorm2d
from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from timm_lap import LeastActionLoss
from timm_lap.cli import train as T
from timm_lap.cli.train_args import parse_args

# Two batches of 16 per epoch on a small timm ResNet: a step takes well under a second on a CPU.
FLAGS = ["--dataset", "sklearn/digits", "--model", "resnet10t", "--train-subset", "32", "-b", "16", "-vb", "512",
         "--lr", "0.05", "--warmup-epochs", "0", "--workers", "0", "--device", "cpu", "--log-interval", "100",
         "--seed", "0"]
CPU = torch.device("cpu")


def _args(*extra):
    return parse_args([*FLAGS, *extra])


def _build(tmp_path, *extra, name="run"):
    """(config, objects) of ``timm-lap train FLAGS extra`` as train() builds them, before any epoch."""
    args, text = _args("--output", str(tmp_path), "--experiment", name, *extra)
    placement = T._start_process(args)
    train_set, eval_set = T._build_datasets(args)
    config = T.resolve_config(args, placement, train_set)
    return config, T.build_objects(config, train_set, eval_set, text)


def _train(tmp_path, *extra, name="run"):
    args, text = _args("--output", str(tmp_path), "--experiment", name, *extra)
    return T.train(args, text, plot=False)


# ------------------------------------------------------------------ 1. the training loss
def _timm_recipe_loss(args: argparse.Namespace) -> nn.Module:
    """timm train.py's "setup loss function" (commit aa4b585, the one tests/fixtures/timm_train_flags.json lists),
    written out independently of timm-lap."""
    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if args.jsd_loss:
        return JsdCrossEntropy(num_splits=args.aug_splits, smoothing=args.smoothing)
    if mixup_active:
        if args.bce_loss:
            return BinaryCrossEntropy(target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum,
                                      pos_weight=args.bce_pos_weight)
        return SoftTargetCrossEntropy()
    if args.smoothing:
        if args.bce_loss:
            return BinaryCrossEntropy(smoothing=args.smoothing, target_threshold=args.bce_target_thresh,
                                      sum_classes=args.bce_sum, pos_weight=args.bce_pos_weight)
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def _settings(loss: nn.Module, soft_targets: bool) -> dict:
    """The class and the settings that change a loss's value."""
    found = {"class": type(loss)}
    for name in ("smoothing", "target_threshold", "sum_classes", "num_splits", "alpha"):
        if hasattr(loss, name):
            found[name] = getattr(loss, name)
    if isinstance(loss, BinaryCrossEntropy):
        found["pos_weight"] = None if loss.pos_weight is None else loss.pos_weight.tolist()
        if soft_targets:  # BCE smooths class indices only; mixup's targets are dense (timm: 0.1, unused)
            found.pop("smoothing")
    if isinstance(loss, JsdCrossEntropy):
        found["clean_split_loss"] = _settings(loss.cross_entropy_loss, soft_targets)
    return found


LOSS_CASES = {
    "label_smoothing_default": ([], LabelSmoothingCrossEntropy),
    "ce": (["--smoothing", "0"], nn.CrossEntropyLoss),
    "label_smoothing_0.2": (["--smoothing", "0.2"], LabelSmoothingCrossEntropy),
    "mixup": (["--mixup", "0.2"], SoftTargetCrossEntropy),
    "cutmix": (["--cutmix", "1.0", "--smoothing", "0"], SoftTargetCrossEntropy),
    "bce": (["--bce-loss"], BinaryCrossEntropy),
    "bce_options": (["--bce-loss", "--bce-target-thresh", "0.2", "--bce-sum", "--bce-pos-weight", "2"],
                    BinaryCrossEntropy),
    "bce_mixup": (["--bce-loss", "--mixup", "0.2", "--bce-target-thresh", "0.2"], BinaryCrossEntropy),
    "jsd": (["--jsd-loss", "--aug-splits", "3"], JsdCrossEntropy),
    "jsd_split_bn": (["--jsd-loss", "--aug-splits", "3", "--split-bn", "--smoothing", "0"], JsdCrossEntropy),
}


@pytest.mark.parametrize("flags, expected", list(LOSS_CASES.values()), ids=list(LOSS_CASES))
def test_lap_wraps_timm_s_loss_and_feeds_the_multiplier_its_value(flags, expected, tmp_path):
    """One real epoch of one batch: lam == lambda0 + tau * (timm's criterion on that step's output and target)."""
    config, objects = _build(tmp_path, "--lap", "--lap-lambda0", "2", "--lap-tau", "0.5", "--train-subset", "16",
                             *flags)
    loss = objects.train_loss
    assert isinstance(loss, LeastActionLoss) and type(loss.criterion) is expected
    reference = _timm_recipe_loss(config.args)
    assert _settings(loss.criterion, config.mixup) == _settings(reference, config.mixup)
    if "--split-bn" in flags:
        assert any(isinstance(m, SplitBatchNorm2d) and m.num_splits == 3 for m in objects.model.modules())
    seen = {}
    loss.register_forward_hook(lambda _, inputs, __: seen.update(output=inputs[0].detach(), target=inputs[1]))
    T.train_one_epoch(config, objects, epoch=0)
    if config.mixup:
        assert seen["target"].shape == (16, 10)  # mixup's soft targets reached the loss
    if config.args.aug_splits:
        assert seen["output"].shape[0] == 16 * 3  # the three augmentation splits of each image, in one batch
    task = reference(seen["output"], seen["target"])
    torch.testing.assert_close(loss.task_loss, task)
    assert objects.multiplier.num_updates == 1
    assert objects.multiplier.lam.item() == pytest.approx(2 + 0.5 * task.item(), rel=1e-6)


def test_bce_loss_without_smoothing_or_mixup_is_still_bce(tmp_path):
    """timm's create_classification_loss: --bce-loss means BCE whatever else is set. (timm's train.py falls back
    to softmax cross-entropy when neither --smoothing nor mixup/cutmix is on: its --bce-loss help says "w/
    Mixup/CutMix use".)"""
    _, objects = _build(tmp_path, "--lap", "--bce-loss", "--smoothing", "0", "--bce-pos-weight", "3")
    criterion = objects.train_loss.criterion
    assert type(criterion) is BinaryCrossEntropy
    assert (criterion.smoothing, criterion.pos_weight.item()) == (0.0, 3.0)


@pytest.mark.parametrize("flags", [[], ["--smoothing", "0"], ["--mixup", "0.2"], ["--bce-loss", "--cutmix", "1"],
                                   ["--jsd-loss", "--aug-splits", "2"]],
                         ids=["label_smoothing", "ce", "mixup", "bce_cutmix", "jsd"])
def test_without_lap_the_training_loss_is_timm_s_criterion_itself(flags, tmp_path):
    config, objects = _build(tmp_path, *flags)
    reference = _timm_recipe_loss(config.args)
    assert not isinstance(objects.train_loss, LeastActionLoss) and objects.multiplier is None
    assert _settings(objects.train_loss, config.mixup) == _settings(reference, config.mixup)
    output = torch.randn(8, 10)
    target = torch.softmax(torch.randn(8, 10), 1) if config.mixup else torch.randint(0, 10, (8,))
    torch.testing.assert_close(objects.train_loss(output, target), reference(output, target))
    assert isinstance(objects.eval_loss, nn.CrossEntropyLoss)  # timm's validate_loss_fn, whatever trains


@pytest.mark.parametrize("flags", [["--no-prefetcher"], ["--no-prefetcher", "--mixup", "0.2"]],
                         ids=["no_prefetcher", "mixup"])
def test_aug_splits_without_the_prefetcher_batch_the_splits_as_timm_s_collate_does(flags, tmp_path):
    """Without timm's prefetching loader torch's collate left the --aug-splits views as a list, which the step
    could not use; they come as timm's fast_collate lays them out: split n of every image in the n-th block."""
    config, objects = _build(tmp_path, "--aug-splits", "2", "--split-bn", "--smoothing", "0", *flags)
    assert not config.prefetcher
    x, y = next(iter(objects.loader_train))
    assert x.shape == (32, 1, 32, 32) and torch.equal(y[:16], y[16:])  # each image's label, once per split
    metrics, updates = T.train_one_epoch(config, objects, epoch=0)  # both splits through the split BatchNorm
    assert updates == 2 and metrics["loss"] > 0


# ------------------------------------------------------------------ 2. timm's newer flags
def _fake_wandb():
    module = types.ModuleType("wandb")
    module.inits, module.logged = [], []

    class Run:
        def log(self, metrics, step=None):
            module.logged.append((step, dict(metrics)))

    def init(**kwargs):
        module.inits.append(kwargs)
        return Run()

    module.init = init
    return module


def test_log_wandb_starts_a_run_with_the_config_and_logs_each_epoch(tmp_path, monkeypatch):
    wandb = _fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    result = _train(tmp_path, "--epochs", "2", "--lap", "--log-wandb", "--wandb-project", "proj", "--wandb-tags",
                    "a", "b", "--train-subset", "16", name="wb")
    (init,) = wandb.inits
    assert (init["project"], init["name"], init["tags"], init["dir"]) == ("proj", "wb", ["a", "b"],
                                                                         result.output_dir)
    assert init["resume"] is None and init["id"] is None
    config = init["config"]
    assert (config["model"], config["lap"], config["lr"], config["num_classes"]) == ("resnet10t", True, 0.05, 10)
    assert [step for step, _ in wandb.logged] == [0, 1]
    for (_, metrics), row in zip(wandb.logged, result.rows):
        assert metrics == {k: v for k, v in row.items() if k != "epoch"}
        assert metrics["lap_lambda"] > 1.0


def test_log_wandb_without_wandb_warns_how_to_install_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with caplog.at_level(logging.WARNING, logger="timm_lap.train"):
        _, objects = _build(tmp_path, "--log-wandb")
    assert objects.wandb_run is None
    assert "--log-wandb" in caplog.text and "pip install wandb" in caplog.text


def test_start_epoch_starts_the_epochs_and_the_schedule_there(tmp_path):
    result = _train(tmp_path, "--epochs", "3", "--start-epoch", "2", "--train-subset", "16", name="late")
    assert [row["epoch"] for row in result.rows] == [2]
    assert result.rows[0]["lr"] == pytest.approx(0.05 * 0.5 * (1 + (-0.5)))  # cosine over 3 epochs, at epoch 2
    assert (Path(result.output_dir) / "checkpoint-2.pth.tar").is_file()


def test_recovery_interval_writes_recovery_checkpoints_during_the_epoch(tmp_path):
    result = _train(tmp_path, "--epochs", "1", "--lap", "--recovery-interval", "1", name="rec")
    out = Path(result.output_dir)
    # Two updates: recovery-<epoch>-<update>; an evaluated epoch writes none of its own.
    assert sorted(p.name for p in out.glob("recovery-*")) == ["recovery-0-0.pth.tar", "recovery-0-1.pth.tar"]
    state = torch.load(out / "recovery-0-1.pth.tar", map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and state["timm_lap"]["multiplier"]["lam"].item() == pytest.approx(result.lam)


def test_tta_scores_the_mean_of_each_run_of_n_outputs():
    args, _ = _args("--tta", "2", "--num-classes", "2")
    config = T.resolve_config(args, T.Placement(CPU, False, 1, 0, 0), train_set=None)
    # Two images, two views each (consecutive rows). One view of each image is wrong on its own; the means are right.
    views = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    loader = [(views, torch.tensor([0, 0, 1, 1]))]
    metrics = T.validate(config, nn.Identity(), loader, nn.CrossEntropyLoss(), nullcontext)
    assert metrics["top1"] == 100.0
    mean = torch.tensor([[1.0, 0.5], [0.5, 1.5]])
    assert metrics["loss"] == pytest.approx(nn.functional.cross_entropy(mean, torch.tensor([0, 1])).item())
    untouched = T.resolve_config(_args("--num-classes", "2")[0], T.Placement(CPU, False, 1, 0, 0), train_set=None)
    assert T.validate(untouched, nn.Identity(), loader, nn.CrossEntropyLoss(), nullcontext)["top1"] == 50.0


def test_model_dtype_with_amp_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"timm-lap train: --model-dtype bfloat16 with --amp: autocast needs "
                                         r"float32 parameters"):
        T.main([*FLAGS, "--output", str(tmp_path), "--model-dtype", "bfloat16", "--amp"])
    # float32 parameters are what autocast needs
    args, _ = _args("--model-dtype", "float32", "--amp", "--num-classes", "10")
    assert T.resolve_config(args, T.Placement(CPU, False, 1, 0, 0), train_set=None).model_dtype == torch.float32


def test_model_dtype_reaches_the_parameters(tmp_path):
    config, objects = _build(tmp_path, "--model-dtype", "bfloat16")
    assert config.model_dtype == torch.bfloat16
    assert {p.dtype for p in objects.model.parameters()} == {torch.bfloat16}


def test_layer_decay_gives_parameter_groups_with_lr_scales(tmp_path):
    _, plain = _build(tmp_path, name="plain")
    assert {g["lr"] for g in plain.optimizer.param_groups} == {0.05}
    _, decayed = _build(tmp_path, "--layer-decay", "0.5", "--layer-decay-min-scale", "0.1", name="decayed")
    groups = decayed.optimizer.param_groups
    scales = {g["lr_scale"] for g in groups}
    assert len(scales) > 2 and max(scales) == 1.0 and min(scales) >= 0.1
    for group in groups:  # timm's scheduler applies the scales
        assert group["lr"] == pytest.approx(0.05 * group["lr_scale"])
    head = next(g for g in groups if any(p is decayed.model.fc.weight for p in g["params"]))
    assert head["lr_scale"] == 1.0  # the last layer learns at the full rate, the stem the least


def test_model_ema_warmup_reaches_model_ema_v3(tmp_path):
    _, objects = _build(tmp_path, "--model-ema", "--model-ema-decay", "0.99", "--model-ema-warmup")
    ema = objects.model_ema
    assert ema.use_warmup and ema.decay == 0.99
    assert ema.get_decay(2) < 0.5  # ramps up over the first updates
    _, plain = _build(tmp_path, "--model-ema", "--model-ema-decay", "0.99", name="plain")
    assert not plain.model_ema.use_warmup and plain.model_ema.get_decay(2) == 0.99


def test_drop_block_and_global_pool_reach_the_model():
    args, _ = _args("--drop-block", "0.2", "--gp", "max")
    model = T._build_model(args, num_classes=10, in_chans=1, lap=False)
    assert model.global_pool.pool_type == "max"
    blocks = [m for m in model.modules() if isinstance(m, DropBlock2d)]
    assert blocks and {m.drop_prob for m in blocks} == {0.2}
    plain = T._build_model(_args()[0], num_classes=10, in_chans=1, lap=False)
    assert plain.global_pool.pool_type == "avg" and not any(isinstance(m, DropBlock2d) for m in plain.modules())


def test_bn_momentum_and_eps_reach_the_model():
    # timm's EfficientNet/MobileNet family reads them (ResNet takes no such arguments, as in timm's train.py).
    args, _ = _args("--model", "mobilenetv3_small_050", "--bn-momentum", "0.2", "--bn-eps", "0.001")
    model = T._build_model(args, num_classes=10, in_chans=1, lap=False)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and {(m.momentum, m.eps) for m in norms} == {(0.2, 0.001)}


def test_epoch_repeats_reaches_timm_s_dataset_factory(monkeypatch):
    import timm.data

    calls = []

    def fake_create_dataset(name, **kwargs):
        calls.append(kwargs)
        return torch.utils.data.TensorDataset(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))

    monkeypatch.setattr(timm.data, "create_dataset", fake_create_dataset)
    args, _ = parse_args(["--dataset", "hfids/some-stream", "--epoch-repeats", "2", "--train-num-samples", "64"])
    T._build_datasets(args)
    train_kwargs, eval_kwargs = calls
    assert (train_kwargs["is_training"], train_kwargs["repeats"], train_kwargs["num_samples"]) == (True, 2.0, 64)
    assert not eval_kwargs["is_training"] and "repeats" not in eval_kwargs
    args, _ = _args("--epoch-repeats", "2")  # a built-in dataset has no use for it: said, not ignored
    with pytest.raises(ValueError, match="--epoch-repeats: read by timm's dataset readers only"):
        T._build_datasets(args)


def test_worker_seeding_reaches_the_loader_workers(tmp_path):
    def seeding(objects):
        loader = getattr(objects.loader_train, "loader", objects.loader_train)  # inside timm's PrefetchLoader
        return loader.worker_init_fn.keywords["worker_seeding"]

    assert seeding(_build(tmp_path, "--worker-seeding", "part")[1]) == "part"
    assert seeding(_build(tmp_path, name="plain")[1]) == "all"
