"""Command-line flags of ``timm-lap train``: timm train.py's (same names, defaults, meaning) plus LAP's."""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from .parsing import CliParser

__all__ = ["build_parser", "parse_args", "available_cores", "TIMM_FLAGS_NOT_SUPPORTED"]

# timm train.py flags that timm-lap train does not implement: named in the error instead of "unrecognized".
TIMM_FLAGS_NOT_SUPPORTED = frozenset("""
--aug-repeats --aug-splits --bce-loss --bce-pos-weight --bce-sum --bce-target-thresh --bn-eps --bn-momentum
--class-map --color-jitter-prob --cutmix-minmax --dataset-trust-remote-code --device-modules --dist-bn
--distill-loss-weight --drop-block --drop-connect --epoch-repeats --fast-norm --fuser --gaussian-blur-prob --gp
--grayscale-prob --head-init-bias --head-init-scale --input-img-mode --input-key --jsd-loss --kd-distill-type
--kd-loss-type --kd-model-name --kd-student-feature-dim --kd-teacher-feature-dim --kd-temperature
--kd-token-distill-type --layer-decay --layer-decay-min-scale --layer-decay-no-opt-scale --log-wandb
--model-dtype --model-ema-force-cpu --model-ema-warmup --naflex-loader --naflex-loss-scale --naflex-max-seq-len
--naflex-patch-size-probs --naflex-patch-sizes --naflex-patchify-channels-first --naflex-train-seq-lens
--no-ddp-bb --opt-kwargs --pretrained-path --recovery-interval --resplit --save-images --split-bn --start-epoch
--sync-bn --synchronize-step --target-key --task-loss-weight --torchcompile-mode --torchscript
--train-batch-sizes --train-batches-per-epoch --train-crop-mode --train-img-sizes --train-num-samples
--train-size-probs --train-size-random-mix --train-size-schedule --train-size-schedule-spread
--train-steps-per-epoch --tta --use-multi-epochs-loader --val-interval --val-num-samples
--variable-batch-loss-scale --wandb-project --wandb-resume-id --wandb-tags --worker-seeding
""".split())


class _TimmKwargs(argparse.Action):
    """timm's ``ParseKwargs`` (``k=v`` pairs, values as Python literals), imported only when the flag is used."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from timm.utils import ParseKwargs

        ParseKwargs(self.option_strings, self.dest)(parser, namespace, values, option_string)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="timm-lap train",
        usage="timm-lap train [-c FILE] [--lap [--lap-tau T ...]] [timm train.py flags]",
        description="timm training with least-action (LAP) regularisation: timm train.py's flags plus --lap.",
    )
    p.add_argument("-c", "--config", default="", metavar="FILE",
                   help="YAML file whose keys (flag names, '_' for '-') set the defaults; flags given still win")

    g = p.add_argument_group("Least-action training (timm-lap)")
    g.add_argument("--lap", action="store_true", default=False,
                   help="train with the transport penalty: minimise task + transport / lam (off by default)")
    g.add_argument("--lap-tau", type=float, default=1.0, metavar="T", help="multiplier step: lam += T * task_loss")
    g.add_argument("--lap-lambda0", type=float, default=1.0, metavar="L", help="initial multiplier lam")
    g.add_argument("--lap-every", type=int, default=1, metavar="N", help="update lam every N optimizer updates")
    g.add_argument("--lap-p", type=float, default=2.0, metavar="P", help="exponent of |displacement|^P")
    g.add_argument("--lap-sample", type=float, default=None, metavar="FRACTION",
                   help="estimate the transport from a seeded random FRACTION of each batch (unbiased; default: "
                        "the whole batch)")
    g.add_argument("--lap-weight", type=float, default=None, metavar="W",
                   help="fixed-weight regulariser task + W * transport instead of the multiplier (default: off)")
    g.add_argument("--lap-blocks", nargs="+", default=None, metavar="NAME",
                   help="block names or globs to track (default: every residual block, found automatically)")

    g = p.add_argument_group("Dataset")
    g.add_argument("data", nargs="?", metavar="DIR", default=None, help="dataset folder (old form of --data-dir)")
    g.add_argument("--data-dir", metavar="DIR", default=None,
                   help="dataset root folder (default: none; the built-in datasets need none)")
    g.add_argument("--dataset", metavar="NAME", default="",
                   help="'sklearn/digits', 'torch/fashion_mnist', 'torch/mnist', or any timm dataset name "
                        "(default: '' = an ImageFolder under --data-dir)")
    g.add_argument("--train-split", metavar="NAME", default="train", help="split to train on")
    g.add_argument("--val-split", metavar="NAME", default="validation", help="split to evaluate on")
    g.add_argument("--dataset-download", action="store_true", default=False,
                   help="let the dataset download itself when it supports that (needs a network)")
    g.add_argument("--train-subset", type=int, default=None, metavar="N",
                   help="train on a class-balanced, seeded subset of N samples (low-data regime; default: all)")
    g.add_argument("--val-from-train", type=float, default=None, metavar="SIZE",
                   help="validate on a seeded, class-stratified part of the training split (fraction or count), held "
                        "out before --train-subset draws; for tuning without the test set (default: --val-split)")
    g.add_argument("--label-noise", type=float, default=0.0, metavar="P",
                   help="replace a seeded fraction P of the training labels by another class (validation stays clean)")

    g = p.add_argument_group("Model")
    g.add_argument("--model", default="resnet50", metavar="MODEL",
                   help="timm model name; a '*_lap' name implies --lap")
    g.add_argument("--pretrained", action="store_true", default=False,
                   help="start from the model's pretrained weights (timm's hub; needs a network or a filled cache)")
    g.add_argument("--initial-checkpoint", default="", metavar="PATH",
                   help="start from the weights in this file (default: fresh weights)")
    g.add_argument("--init-gain", type=float, default=1.0, metavar="G",
                   help="multiply the fresh initial weights of every conv and linear layer by G")
    g.add_argument("--resume", default="", metavar="PATH",
                   help="continue a run from its checkpoint: weights, optimizer, epoch, lam (default: start afresh)")
    g.add_argument("--no-resume-opt", action="store_true", default=False,
                   help="with --resume, start the optimizer state afresh")
    g.add_argument("--num-classes", type=int, default=None, metavar="N", help="classifier outputs (default: from "
                   "the dataset)")
    g.add_argument("--img-size", type=int, default=None, metavar="N",
                   help="square input size (default: the model's or the dataset's)")
    g.add_argument("--in-chans", type=int, default=None, metavar="N",
                   help="input channels (default: from --input-size, the dataset or 3)")
    g.add_argument("--input-size", default=None, nargs=3, type=int, metavar="N",
                   help="input as C H W, e.g. 3 224 224 (default: the model's or the dataset's)")
    g.add_argument("--crop-pct", default=None, type=float, metavar="PCT",
                   help="centre-crop fraction for evaluation (default: the model's)")
    g.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN",
                   help="per-channel normalisation mean (default: the model's or the dataset's)")
    g.add_argument("--std", type=float, nargs="+", default=None, metavar="STD",
                   help="per-channel normalisation std (default: the model's or the dataset's)")
    g.add_argument("--interpolation", default="", type=str, metavar="NAME",
                   help="resize interpolation for evaluation (default: the model's)")
    g.add_argument("-b", "--batch-size", type=int, default=128, metavar="N", help="training batch size per process")
    g.add_argument("-vb", "--validation-batch-size", type=int, default=None, metavar="N",
                   help="evaluation batch size (default: --batch-size)")
    g.add_argument("--channels-last", action="store_true", default=False,
                   help="keep activations in channels-last memory layout")
    g.add_argument("--grad-accum-steps", type=int, default=1, metavar="N",
                   help="batches whose gradients add up before each optimizer update")
    g.add_argument("--grad-checkpointing", action="store_true", default=False,
                   help="recompute activations in the backward pass to save memory (models that support it)")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=_TimmKwargs, metavar="K=V",
                   help="extra keyword arguments for timm.create_model, e.g. width=16 depth=3 (default: none)")
    g.add_argument("--torchcompile", nargs="?", type=str, default=None, const="inductor", metavar="BACKEND",
                   help="torch.compile the model with BACKEND (the flag alone: inductor; default: eager)")

    g = p.add_argument_group("Device and distributed")
    g.add_argument("--device", default=None, type=str, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--amp", action="store_true", default=False, help="mixed-precision autocast (see --amp-dtype)")
    g.add_argument("--amp-dtype", default="float16", type=str, choices=("float16", "bfloat16"),
                   help="autocast dtype with --amp")
    g.add_argument("--no-prefetcher", action="store_true", default=False,
                   help="turn off timm's CUDA prefetching loader")
    g.add_argument("--pin-mem", action="store_true", default=False, help="pin loader memory (faster CUDA copies)")

    g = p.add_argument_group("Optimizer")
    g.add_argument("--opt", default="sgd", type=str, metavar="OPTIMIZER",
                   help="any timm optimizer name (sgd, adamw, lamb, ...)")
    g.add_argument("--opt-eps", default=None, type=float, metavar="EPSILON",
                   help="optimizer epsilon (default: the optimizer's)")
    g.add_argument("--opt-betas", default=None, type=float, nargs="+", metavar="BETA",
                   help="optimizer betas (default: the optimizer's)")
    g.add_argument("--momentum", type=float, default=0.9, metavar="M", help="SGD-style momentum")
    g.add_argument("--weight-decay", type=float, default=2e-5, metavar="WD", help="weight decay")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM",
                   help="clip gradients at NORM (default: no clipping)")
    g.add_argument("--clip-mode", type=str, default="norm", choices=("norm", "value", "agc"),
                   help="how --clip-grad clips")

    g = p.add_argument_group("Learning-rate schedule")
    g.add_argument("--sched", type=str, default="cosine", metavar="SCHEDULER",
                   help="timm scheduler: cosine, tanh, step, multistep, plateau, poly, none")
    g.add_argument("--sched-on-updates", action="store_true", default=False,
                   help="step the schedule every optimizer update instead of every epoch")
    g.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="learning rate (default: --lr-base scaled by the global batch size)")
    g.add_argument("--lr-base", type=float, default=0.1, metavar="LR",
                   help="learning rate at batch --lr-base-size, when --lr is not given")
    g.add_argument("--lr-base-size", type=int, default=256, metavar="DIV", help="batch size --lr-base refers to")
    g.add_argument("--lr-base-scale", type=str, default="", metavar="SCALE",
                   help="'linear' or 'sqrt' scaling of --lr-base (default: sqrt for adaptive optimizers, else linear)")
    g.add_argument("--lr-noise", type=float, nargs="+", default=None, metavar="PCT",
                   help="epoch fraction(s) between which the learning rate is noised (default: no noise)")
    g.add_argument("--lr-noise-pct", type=float, default=0.67, metavar="PCT", help="size of the learning-rate noise")
    g.add_argument("--lr-noise-std", type=float, default=1.0, metavar="STD", help="std of the learning-rate noise")
    g.add_argument("--lr-cycle-mul", type=float, default=1.0, metavar="MULT", help="cycle length multiplier")
    g.add_argument("--lr-cycle-decay", type=float, default=0.5, metavar="MULT",
                   help="learning-rate factor at each new cycle")
    g.add_argument("--lr-cycle-limit", type=int, default=1, metavar="N", help="number of schedule cycles")
    g.add_argument("--lr-k-decay", type=float, default=1.0, metavar="K", help="k of the k-decay schedule variant")
    g.add_argument("--warmup-lr", type=float, default=1e-5, metavar="LR", help="learning rate at the warm-up start")
    g.add_argument("--min-lr", type=float, default=0, metavar="LR", help="floor of the schedule")
    g.add_argument("--epochs", type=int, default=300, metavar="N", help="epochs to train")
    g.add_argument("--decay-milestones", default=[90, 180, 270], type=int, nargs="+", metavar="EPOCH",
                   help="epochs where the multistep schedule decays")
    g.add_argument("--decay-epochs", type=float, default=90, metavar="N", help="step schedule: decay every N epochs")
    g.add_argument("--warmup-epochs", type=int, default=5, metavar="N", help="epochs of linear warm-up")
    g.add_argument("--warmup-prefix", action="store_true", default=False,
                   help="run the warm-up before the schedule instead of as its first epochs")
    g.add_argument("--cooldown-epochs", type=int, default=0, metavar="N", help="epochs at --min-lr after the schedule")
    g.add_argument("--patience-epochs", type=int, default=10, metavar="N", help="plateau schedule: patience")
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1, metavar="RATE",
                   help="learning-rate factor at each decay")

    g = p.add_argument_group("Augmentation and regularisation")
    g.add_argument("--no-aug", action="store_true", default=False, help="no training augmentation at all")
    g.add_argument("--scale", type=float, nargs="+", default=[0.08, 1.0], metavar="PCT",
                   help="random-resized-crop area range")
    g.add_argument("--ratio", type=float, nargs="+", default=[3.0 / 4.0, 4.0 / 3.0], metavar="RATIO",
                   help="random-resized-crop aspect-ratio range")
    g.add_argument("--hflip", type=float, default=0.5, metavar="PROB", help="horizontal flip probability")
    g.add_argument("--vflip", type=float, default=0.0, metavar="PROB", help="vertical flip probability")
    g.add_argument("--color-jitter", type=float, default=0.4, metavar="PCT", help="colour jitter strength")
    g.add_argument("--aa", type=str, default=None, metavar="NAME",
                   help="auto-augment policy, e.g. rand-m9-mstd0.5 (default: none)")
    g.add_argument("--reprob", type=float, default=0.0, metavar="PCT", help="random-erasing probability")
    g.add_argument("--remode", type=str, default="pixel", metavar="MODE", help="random-erasing fill mode")
    g.add_argument("--recount", type=int, default=1, metavar="N", help="random-erasing count")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="cutmix alpha (0 = off)")
    g.add_argument("--mixup-prob", type=float, default=1.0, metavar="PROB",
                   help="probability of mixing a batch when mixup or cutmix is on")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5, metavar="PROB",
                   help="probability of cutmix rather than mixup when both are on")
    g.add_argument("--mixup-mode", type=str, default="batch", metavar="MODE",
                   help="mix per 'batch', 'pair' or 'elem'")
    g.add_argument("--mixup-off-epoch", default=0, type=int, metavar="N", help="stop mixing at epoch N (0 = never)")
    g.add_argument("--smoothing", type=float, default=0.1, metavar="EPS", help="label smoothing")
    g.add_argument("--train-interpolation", type=str, default="random", metavar="NAME",
                   help="resize interpolation for training")
    g.add_argument("--drop", type=float, default=0.0, metavar="PCT", help="dropout rate before the classifier")
    g.add_argument("--drop-path", type=float, default=None, metavar="PCT",
                   help="stochastic-depth rate (default: the model's)")

    g = p.add_argument_group("Model EMA")
    g.add_argument("--model-ema", action="store_true", default=False,
                   help="keep an exponential moving average of the weights (timm's ModelEmaV3)")
    g.add_argument("--model-ema-decay", type=float, default=0.9998, metavar="DECAY", help="EMA decay per update")

    g = p.add_argument_group("Misc")
    g.add_argument("--seed", type=int, default=42, metavar="S", help="random seed (subsets, initialisation, order)")
    g.add_argument("--log-interval", type=int, default=50, metavar="N", help="log every N batches")
    g.add_argument("--checkpoint-hist", type=int, default=10, metavar="N", help="best checkpoints to keep")
    g.add_argument("-j", "--workers", type=int, default=None, metavar="N",
                   help="data-loading processes per process (default: 4, capped to the CPU cores available)")
    g.add_argument("--output", default="", type=str, metavar="PATH",
                   help="folder for run folders (default: ./output/train)")
    g.add_argument("--experiment", default="", type=str, metavar="NAME",
                   help="run folder name (default: date, model and image size)")
    g.add_argument("--eval-metric", default="top1", type=str, metavar="EVAL_METRIC",
                   help="metric that picks the best checkpoint (top1, top5, loss)")
    g.add_argument("--eval-interval", type=int, default=1, metavar="N",
                   help="evaluate every N epochs and after the last one (other epochs write only a recovery "
                        "checkpoint)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, str]:
    """Parse ``argv`` (a YAML ``--config`` sets defaults); returns (args, args as YAML text)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in TIMM_FLAGS_NOT_SUPPORTED:
            parser.error(f"{flag} is a timm train.py flag that timm-lap train does not support; drop it "
                         "or use timm's own train.py (with `import timm_lap` for the *_lap models).")
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("-c", "--config", default="")
    known, _ = config_parser.parse_known_args(argv)
    if known.config:
        with open(known.config) as f:
            cfg = yaml.safe_load(f) or {}
        unknown = sorted(k for k in cfg if k not in vars(parser.parse_args([])))
        if unknown:
            parser.error(f"config file {known.config} has keys that are not flags of timm-lap train: {unknown}")
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    if args.data and not args.data_dir:
        args.data_dir = args.data
    if args.workers is None:  # more loader processes than cores only slows down (torch warns it may freeze)
        args.workers = min(4, available_cores())
    _validate(parser, args)
    return args, yaml.safe_dump(vars(args), default_flow_style=False)


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.grad_accum_steps < 1:
        parser.error(f"--grad-accum-steps must be >= 1, got {args.grad_accum_steps}")
    if args.train_subset is not None and args.train_subset < 1:
        parser.error(f"--train-subset must be >= 1, got {args.train_subset}")
    if not 0.0 <= args.label_noise < 1.0:
        parser.error(f"--label-noise must be a fraction in [0, 1), got {args.label_noise}")
    if not (math.isfinite(args.init_gain) and args.init_gain > 0):
        parser.error(f"--init-gain must be a finite number > 0, got {args.init_gain}")
    if args.init_gain != 1.0 and (args.pretrained or args.initial_checkpoint):
        parser.error("--init-gain scales a fresh initialisation; drop it with --pretrained/--initial-checkpoint")
    if args.eval_interval < 1:
        parser.error(f"--eval-interval must be >= 1, got {args.eval_interval}")
    if args.val_from_train is not None and not (
            0 < args.val_from_train < 1 or (args.val_from_train >= 1 and args.val_from_train.is_integer())):
        parser.error(f"--val-from-train must be a fraction in (0, 1) or a whole count >= 1, got {args.val_from_train}")
    if args.lap_tau < 0:
        parser.error(f"--lap-tau must be >= 0, got {args.lap_tau}")
    if args.lap_every < 1:
        parser.error(f"--lap-every must be >= 1, got {args.lap_every}")
    if args.lap_lambda0 <= 0:
        parser.error(f"--lap-lambda0 must be > 0, got {args.lap_lambda0}")
    if args.lap_p <= 0:
        parser.error(f"--lap-p must be > 0, got {args.lap_p}")
    if args.lap_sample is not None and not 0 < args.lap_sample <= 1:
        parser.error(f"--lap-sample must be a fraction in (0, 1], got {args.lap_sample}")
    if args.lap_weight is not None and args.lap_weight < 0:
        parser.error(f"--lap-weight must be >= 0, got {args.lap_weight}")
