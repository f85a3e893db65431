"""Command-line flags of ``timm-lap train``: timm train.py's (same names, defaults, meaning) plus LAP's."""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import yaml
from timm.utils import ParseKwargs

__all__ = ["build_parser", "parse_args", "TIMM_FLAGS_NOT_SUPPORTED"]

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="timm-lap train",
        description="timm training with least-action (LAP) regularisation: timm train.py's flags plus --lap.",
    )
    p.add_argument("-c", "--config", default="", metavar="FILE", help="YAML file whose keys set the defaults")

    g = p.add_argument_group("Dataset")
    g.add_argument("data", nargs="?", metavar="DIR", default=None, help="dataset path (deprecated, use --data-dir)")
    g.add_argument("--data-dir", metavar="DIR", default=None, help="dataset root directory")
    g.add_argument("--dataset", metavar="NAME", default="",
                   help="'sklearn/digits', 'torch/fashion_mnist', 'torch/mnist', any timm dataset "
                        "('' = ImageFolder under --data-dir)")
    g.add_argument("--train-split", metavar="NAME", default="train")
    g.add_argument("--val-split", metavar="NAME", default="validation")
    g.add_argument("--dataset-download", action="store_true", default=False)
    g.add_argument("--train-subset", type=int, default=None, metavar="N",
                   help="train on a class-balanced, seeded subset of N samples (low-data regime)")
    g.add_argument("--val-from-train", type=float, default=None, metavar="SIZE",
                   help="validate on a seeded, class-stratified part of the training split (a fraction in (0, 1) "
                        "or a count) held out before --train-subset draws; --val-split is then not used. For "
                        "choosing hyperparameters without touching the test set")
    g.add_argument("--label-noise", type=float, default=0.0, metavar="P",
                   help="replace a seeded fraction P of the training labels by another class (a harder task; "
                        "validation labels stay clean). Default 0")

    g = p.add_argument_group("Model")
    g.add_argument("--model", default="resnet50", metavar="MODEL",
                   help="timm model name ('resnet18_lap' implies --lap)")
    g.add_argument("--pretrained", action="store_true", default=False)
    g.add_argument("--initial-checkpoint", default="", metavar="PATH")
    g.add_argument("--init-gain", type=float, default=1.0, metavar="G",
                   help="multiply the fresh initial weights of every conv and linear layer by G (timm-lap)")
    g.add_argument("--resume", default="", metavar="PATH")
    g.add_argument("--no-resume-opt", action="store_true", default=False)
    g.add_argument("--num-classes", type=int, default=None, metavar="N", help="default: from the dataset")
    g.add_argument("--img-size", type=int, default=None, metavar="N")
    g.add_argument("--in-chans", type=int, default=None, metavar="N")
    g.add_argument("--input-size", default=None, nargs=3, type=int, metavar="N")
    g.add_argument("--crop-pct", default=None, type=float, metavar="N")
    g.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN")
    g.add_argument("--std", type=float, nargs="+", default=None, metavar="STD")
    g.add_argument("--interpolation", default="", type=str, metavar="NAME")
    g.add_argument("-b", "--batch-size", type=int, default=128, metavar="N")
    g.add_argument("-vb", "--validation-batch-size", type=int, default=None, metavar="N")
    g.add_argument("--channels-last", action="store_true", default=False)
    g.add_argument("--grad-accum-steps", type=int, default=1, metavar="N")
    g.add_argument("--grad-checkpointing", action="store_true", default=False)
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs)
    g.add_argument("--torchcompile", nargs="?", type=str, default=None, const="inductor")

    g = p.add_argument_group("Device and distributed")
    g.add_argument("--device", default=None, type=str, help="default: cuda if available, else cpu")
    g.add_argument("--amp", action="store_true", default=False)
    g.add_argument("--amp-dtype", default="float16", type=str, choices=("float16", "bfloat16"))
    g.add_argument("--no-prefetcher", action="store_true", default=False)
    g.add_argument("--pin-mem", action="store_true", default=False)

    g = p.add_argument_group("Optimizer")
    g.add_argument("--opt", default="sgd", type=str, metavar="OPTIMIZER")
    g.add_argument("--opt-eps", default=None, type=float, metavar="EPSILON")
    g.add_argument("--opt-betas", default=None, type=float, nargs="+", metavar="BETA")
    g.add_argument("--momentum", type=float, default=0.9, metavar="M")
    g.add_argument("--weight-decay", type=float, default=2e-5)
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM")
    g.add_argument("--clip-mode", type=str, default="norm", choices=("norm", "value", "agc"))

    g = p.add_argument_group("Learning-rate schedule")
    g.add_argument("--sched", type=str, default="cosine", metavar="SCHEDULER")
    g.add_argument("--sched-on-updates", action="store_true", default=False)
    g.add_argument("--lr", type=float, default=None, metavar="LR")
    g.add_argument("--lr-base", type=float, default=0.1, metavar="LR")
    g.add_argument("--lr-base-size", type=int, default=256, metavar="DIV")
    g.add_argument("--lr-base-scale", type=str, default="", metavar="SCALE")
    g.add_argument("--lr-noise", type=float, nargs="+", default=None)
    g.add_argument("--lr-noise-pct", type=float, default=0.67)
    g.add_argument("--lr-noise-std", type=float, default=1.0)
    g.add_argument("--lr-cycle-mul", type=float, default=1.0)
    g.add_argument("--lr-cycle-decay", type=float, default=0.5)
    g.add_argument("--lr-cycle-limit", type=int, default=1)
    g.add_argument("--lr-k-decay", type=float, default=1.0)
    g.add_argument("--warmup-lr", type=float, default=1e-5, metavar="LR")
    g.add_argument("--min-lr", type=float, default=0, metavar="LR")
    g.add_argument("--epochs", type=int, default=300, metavar="N")
    g.add_argument("--decay-milestones", default=[90, 180, 270], type=int, nargs="+", metavar="MILESTONES")
    g.add_argument("--decay-epochs", type=float, default=90, metavar="N")
    g.add_argument("--warmup-epochs", type=int, default=5, metavar="N")
    g.add_argument("--warmup-prefix", action="store_true", default=False)
    g.add_argument("--cooldown-epochs", type=int, default=0, metavar="N")
    g.add_argument("--patience-epochs", type=int, default=10, metavar="N")
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1, metavar="RATE")

    g = p.add_argument_group("Augmentation and regularisation")
    g.add_argument("--no-aug", action="store_true", default=False)
    g.add_argument("--scale", type=float, nargs="+", default=[0.08, 1.0], metavar="PCT")
    g.add_argument("--ratio", type=float, nargs="+", default=[3.0 / 4.0, 4.0 / 3.0], metavar="RATIO")
    g.add_argument("--hflip", type=float, default=0.5)
    g.add_argument("--vflip", type=float, default=0.0)
    g.add_argument("--color-jitter", type=float, default=0.4, metavar="PCT")
    g.add_argument("--aa", type=str, default=None, metavar="NAME")
    g.add_argument("--reprob", type=float, default=0.0, metavar="PCT")
    g.add_argument("--remode", type=str, default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--mixup", type=float, default=0.0)
    g.add_argument("--cutmix", type=float, default=0.0)
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--mixup-mode", type=str, default="batch")
    g.add_argument("--mixup-off-epoch", default=0, type=int, metavar="N")
    g.add_argument("--smoothing", type=float, default=0.1)
    g.add_argument("--train-interpolation", type=str, default="random")
    g.add_argument("--drop", type=float, default=0.0, metavar="PCT")
    g.add_argument("--drop-path", type=float, default=None, metavar="PCT")

    g = p.add_argument_group("Model EMA")
    g.add_argument("--model-ema", action="store_true", default=False)
    g.add_argument("--model-ema-decay", type=float, default=0.9998)

    g = p.add_argument_group("Misc")
    g.add_argument("--seed", type=int, default=42, metavar="S")
    g.add_argument("--log-interval", type=int, default=50, metavar="N")
    g.add_argument("--checkpoint-hist", type=int, default=10, metavar="N")
    g.add_argument("-j", "--workers", type=int, default=4, metavar="N")
    g.add_argument("--output", default="", type=str, metavar="PATH", help="default: ./output/train")
    g.add_argument("--experiment", default="", type=str, metavar="NAME")
    g.add_argument("--eval-metric", default="top1", type=str, metavar="EVAL_METRIC")
    g.add_argument("--eval-interval", type=int, default=1, metavar="N",
                   help="evaluate every N epochs and after the last one (timm-lap; other epochs write only a "
                        "recovery checkpoint)")

    g = p.add_argument_group("Least-action training (timm-lap)")
    g.add_argument("--lap", action="store_true", default=False, help="train with the transport penalty")
    g.add_argument("--lap-tau", type=float, default=1.0, help="multiplier step: lam += tau * task_loss")
    g.add_argument("--lap-lambda0", type=float, default=1.0, help="initial multiplier")
    g.add_argument("--lap-every", type=int, default=1, help="update lam every N optimizer updates")
    g.add_argument("--lap-p", type=float, default=2.0, help="exponent of |displacement|^p")
    g.add_argument("--lap-sample", type=float, default=None, metavar="FRACTION",
                   help="estimate the transport from a seeded random FRACTION of each batch (unbiased; default: "
                        "exact)")
    g.add_argument("--lap-weight", type=float, default=None,
                   help="fixed-weight regulariser task + w * transport instead of the multiplier")
    g.add_argument("--lap-blocks", nargs="+", default=None, metavar="NAME",
                   help="block names or globs (default: found automatically)")
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
