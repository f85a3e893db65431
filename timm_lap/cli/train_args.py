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

__all__ = ["build_parser", "parse_args", "available_cores", "TIMM_FLAGS_NOT_SUPPORTED", "DATA_SOURCES_KEY"]

# timm train.py flags timm-lap train does not implement, each with the reason the error gives.
_KD = ("knowledge distillation runs through timm's distillation task objects, which own the forward pass and the "
       "loss; LAP needs the student's own forward and task loss, which that path does not expose yet")
_NAFLEX = ("the NaFlex loader yields dicts of variable-length patch sequences for NaFlex ViTs; timm-lap train's step "
           "and its transport measurement take image tensors")
TIMM_FLAGS_NOT_SUPPORTED: dict[str, str] = {
    **{flag: _KD for flag in (
        "--kd-model-name", "--kd-distill-type", "--kd-loss-type", "--distill-loss-weight", "--task-loss-weight",
        "--kd-temperature", "--kd-student-feature-dim", "--kd-teacher-feature-dim", "--kd-token-distill-type")},
    **{flag: _NAFLEX for flag in (
        "--naflex-loader", "--naflex-train-seq-lens", "--naflex-max-seq-len", "--naflex-patch-sizes",
        "--naflex-patch-size-probs", "--naflex-loss-scale", "--naflex-patchify-channels-first")},
}


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
    g.add_argument("--train-num-samples", type=int, default=None, metavar="N",
                   help="samples per epoch of an iterable (streamed) training set (default: the set's own count)")
    g.add_argument("--val-num-samples", type=int, default=None, metavar="N",
                   help="samples of an iterable validation set (default: the set's own count)")
    g.add_argument("--class-map", default="", type=str, metavar="FILE",
                   help="file mapping folder/class names to indices (default: sorted class names)")
    g.add_argument("--input-img-mode", default=None, type=str, metavar="MODE",
                   help="PIL mode images are converted to (default: RGB for 3 channels, L for 1)")
    g.add_argument("--input-key", default=None, type=str, metavar="KEY",
                   help="image field of dict-style datasets (Hugging Face, WebDataset; default: the reader's)")
    g.add_argument("--target-key", default=None, type=str, metavar="KEY",
                   help="label field of dict-style datasets (default: the reader's)")
    g.add_argument("--dataset-trust-remote-code", action="store_true", default=False,
                   help="allow Hugging Face datasets to run their own loading code")
    g.add_argument("--epoch-repeats", type=float, default=0.0, metavar="N",
                   help="repeat an iterable training set N times per epoch (0 = once)")

    g = p.add_argument_group("Model")
    g.add_argument("--model", default="resnet50", metavar="MODEL",
                   help="timm model name; a '*_lap' name implies --lap")
    g.add_argument("--pretrained", action="store_true", default=False,
                   help="start from the model's pretrained weights (timm's hub; needs a network or a filled cache)")
    g.add_argument("--initial-checkpoint", default="", metavar="PATH",
                   help="start from the weights in this file (default: fresh weights)")
    g.add_argument("--pretrained-path", default=None, type=str, metavar="PATH",
                   help="with --pretrained: read the pretrained weights from this local file instead of the hub; "
                        "the classifier adapts to --num-classes (default: the hub)")
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
    g.add_argument("--torchcompile-mode", type=str, default=None, metavar="MODE",
                   help="torch.compile mode, e.g. max-autotune (default: torch's)")
    g.add_argument("--torchscript", action="store_true", default=False,
                   help="train a torch.jit.script'ed model (not with --lap: scripting drops the hooks LAP measures "
                        "with)")
    g.add_argument("--gp", default=None, type=str, metavar="POOL",
                   help="global pool type: fast, avg, max, avgmax, avgmaxc (default: the model's)")
    g.add_argument("--drop-connect", type=float, default=None, metavar="PCT",
                   help="old name of --drop-path, kept by timm (default: unset)")
    g.add_argument("--drop-block", type=float, default=None, metavar="PCT",
                   help="DropBlock rate, for models that have it (default: the model's)")
    g.add_argument("--bn-momentum", type=float, default=None, metavar="M",
                   help="BatchNorm momentum (default: the model's)")
    g.add_argument("--bn-eps", type=float, default=None, metavar="EPS", help="BatchNorm epsilon (default: the model's)")
    g.add_argument("--head-init-scale", default=None, type=float, metavar="S",
                   help="multiply the classifier's initial weight and bias by S (default: unchanged)")
    g.add_argument("--head-init-bias", default=None, type=float, metavar="B",
                   help="set the classifier's initial bias to B (default: unchanged)")
    g.add_argument("--model-dtype", default=None, type=str, choices=("float32", "float16", "bfloat16"),
                   help="dtype of the model's weights and inputs (not with --amp; default: float32)")
    g.add_argument("--fast-norm", action="store_true", default=False,
                   help="timm's fast (lower-precision) normalisation layers")
    g.add_argument("--fuser", default="", type=str, metavar="FUSER",
                   help="TorchScript fuser: te, old or nvfuser (default: torch's)")

    g = p.add_argument_group("Device and distributed")
    g.add_argument("--device", default=None, type=str, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--amp", action="store_true", default=False, help="mixed-precision autocast (see --amp-dtype)")
    g.add_argument("--amp-dtype", default="float16", type=str, choices=("float16", "bfloat16"),
                   help="autocast dtype with --amp")
    g.add_argument("--no-prefetcher", action="store_true", default=False,
                   help="turn off timm's prefetching loader (on by default on every device, as in timm's train.py)")
    g.add_argument("--pin-mem", action="store_true", default=False, help="pin loader memory (faster CUDA copies)")
    g.add_argument("--local_rank", "--local-rank", default=0, type=int, metavar="N",
                   help="set by the old torch.distributed.launch; under torchrun the LOCAL_RANK variable counts")
    g.add_argument("--device-modules", default=None, type=str, nargs="+", metavar="MODULE",
                   help="Python modules to import first, e.g. a device backend plug-in (default: none)")
    g.add_argument("--synchronize-step", action="store_true", default=False,
                   help="wait for the device after every update (honest step times; slower)")
    g.add_argument("--sync-bn", action="store_true", default=False,
                   help="torchrun: synchronised BatchNorm across processes (replaces --dist-bn)")
    g.add_argument("--dist-bn", type=str, default="reduce", choices=("broadcast", "reduce", ""),
                   help="torchrun: after each epoch, 'reduce' averages BatchNorm statistics over processes, "
                        "'broadcast' copies rank 0's, '' leaves them")
    g.add_argument("--split-bn", action="store_true", default=False,
                   help="separate BatchNorm statistics per augmentation split (with --aug-splits or --resplit)")
    g.add_argument("--no-ddp-bb", action="store_true", default=False,
                   help="torchrun: do not broadcast buffers (BatchNorm statistics) at every forward")

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
    g.add_argument("--layer-decay", type=float, default=None, metavar="RATE",
                   help="layer-wise learning-rate decay (fine-tuning; default: off)")
    g.add_argument("--layer-decay-min-scale", type=float, default=0, metavar="SCALE",
                   help="floor of the layer-decay learning-rate scale")
    g.add_argument("--layer-decay-no-opt-scale", type=float, default=None, metavar="SCALE",
                   help="layers whose layer-decay scale falls below SCALE are frozen (default: none frozen)")
    g.add_argument("--opt-kwargs", nargs="*", default={}, action=_TimmKwargs, metavar="K=V",
                   help="extra keyword arguments for the optimizer (default: none)")

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
    g.add_argument("--start-epoch", default=None, type=int, metavar="N",
                   help="epoch to start at, also over a --resume checkpoint's (default: 0 or the checkpoint's)")

    g = p.add_argument_group("Augmentation and regularisation")
    g.add_argument("--no-aug", action="store_true", default=False, help="no training augmentation at all")
    g.add_argument("--train-crop-mode", type=str, default=None, metavar="MODE",
                   help="training crop: rrc (random resized), rkrc, rkrr (default: rrc)")
    g.add_argument("--scale", type=float, nargs="+", default=[0.08, 1.0], metavar="PCT",
                   help="random-resized-crop area range")
    g.add_argument("--ratio", type=float, nargs="+", default=[3.0 / 4.0, 4.0 / 3.0], metavar="RATIO",
                   help="random-resized-crop aspect-ratio range")
    g.add_argument("--hflip", type=float, default=0.5, metavar="PROB", help="horizontal flip probability")
    g.add_argument("--vflip", type=float, default=0.0, metavar="PROB", help="vertical flip probability")
    g.add_argument("--color-jitter", type=float, default=0.4, metavar="PCT", help="colour jitter strength")
    g.add_argument("--color-jitter-prob", type=float, default=None, metavar="PROB",
                   help="apply colour jitter with this probability (default: always)")
    g.add_argument("--grayscale-prob", type=float, default=None, metavar="PROB",
                   help="random greyscale probability (default: never)")
    g.add_argument("--gaussian-blur-prob", type=float, default=None, metavar="PROB",
                   help="random Gaussian blur probability (default: never)")
    g.add_argument("--aa", type=str, default=None, metavar="NAME",
                   help="auto-augment policy, e.g. rand-m9-mstd0.5 (default: none)")
    g.add_argument("--reprob", type=float, default=0.0, metavar="PCT", help="random-erasing probability")
    g.add_argument("--remode", type=str, default="pixel", metavar="MODE", help="random-erasing fill mode")
    g.add_argument("--recount", type=int, default=1, metavar="N", help="random-erasing count")
    g.add_argument("--resplit", action="store_true", default=False,
                   help="no random erasing on the first (clean) augmentation split")
    g.add_argument("--aug-repeats", type=float, default=0, metavar="N",
                   help="repeated augmentation: each image N times per epoch, spread over processes (0 = off)")
    g.add_argument("--aug-splits", type=int, default=0, metavar="N",
                   help="AugMix-style splits per batch: the clean image plus N-1 augmented copies (0 = off)")
    g.add_argument("--jsd-loss", action="store_true", default=False,
                   help="Jensen-Shannon divergence + cross-entropy over the --aug-splits splits")
    g.add_argument("--bce-loss", action="store_true", default=False,
                   help="binary cross-entropy instead of softmax cross-entropy (the ResNet-strikes-back recipes)")
    g.add_argument("--bce-sum", action="store_true", default=False, help="BCE: sum over classes instead of mean")
    g.add_argument("--bce-target-thresh", type=float, default=None, metavar="T",
                   help="BCE: binarise (soft) targets at T (default: keep soft targets)")
    g.add_argument("--bce-pos-weight", type=float, default=None, metavar="W",
                   help="BCE: weight of the positive term (default: 1)")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="cutmix alpha (0 = off)")
    g.add_argument("--cutmix-minmax", type=float, nargs="+", default=None, metavar="RATIO",
                   help="cutmix box size range as min max fractions; turns cutmix on, overrides --cutmix alpha "
                        "(default: off)")
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
    g.add_argument("--model-ema-force-cpu", action="store_true", default=False,
                   help="keep the EMA on the CPU (it is then not evaluated)")
    g.add_argument("--model-ema-warmup", action="store_true", default=False,
                   help="ramp the EMA decay up over the first updates")

    g = p.add_argument_group("Variable-size training (timm's scheduled batch sampler)")
    g.add_argument("--train-img-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="train on batches of these square sizes, drawn per batch (default: one size)")
    g.add_argument("--train-batch-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="batch size for each of --train-img-sizes (default: scaled to keep pixels per batch)")
    g.add_argument("--train-size-probs", type=float, nargs="+", default=None, metavar="P",
                   help="probability of each of --train-img-sizes (default: in proportion to the batches)")
    g.add_argument("--train-size-schedule", type=str, default="constant", choices=("constant", "progressive"),
                   help="keep the size mix constant, or move from small to large sizes over the epochs")
    g.add_argument("--train-size-schedule-spread", type=float, default=0.65, metavar="F",
                   help="progressive schedule: how widely each epoch spreads over the sizes")
    g.add_argument("--train-size-random-mix", type=float, default=0.1, metavar="F",
                   help="progressive schedule: share of batches drawn from the whole mix")
    g.add_argument("--train-batches-per-epoch", "--train-steps-per-epoch", type=int, default=None, metavar="N",
                   help="batches per epoch of the variable-size loader (default: about one pass over the data)")
    g.add_argument("--variable-batch-loss-scale", type=str, default="none", choices=("none", "linear", "sqrt"),
                   help="scale each batch's loss by its size relative to the mean batch size")

    g = p.add_argument_group("Misc")
    g.add_argument("--seed", type=int, default=42, metavar="S", help="random seed (subsets, initialisation, order)")
    g.add_argument("--log-interval", type=int, default=50, metavar="N", help="log every N batches")
    g.add_argument("--recovery-interval", type=int, default=0, metavar="N",
                   help="also write a recovery checkpoint every N updates (0 = only at epoch ends)")
    g.add_argument("--save-images", action="store_true", default=False,
                   help="save the logged training batches as images in the run folder")
    g.add_argument("--tta", type=int, default=0, metavar="N",
                   help="evaluation averages the outputs of N consecutive images (test-time augmentation "
                        "factor; 0 = off)")
    g.add_argument("--use-multi-epochs-loader", action="store_true", default=False,
                   help="keep loader workers alive across epochs (timm's MultiEpochsDataLoader)")
    g.add_argument("--worker-seeding", type=str, default="all", metavar="MODE",
                   help="how loader workers are seeded: 'all' (python, numpy, torch) or 'part' (torch only)")
    g.add_argument("--log-wandb", action="store_true", default=False,
                   help="log the epoch metrics to Weights & Biases (needs `pip install wandb`)")
    g.add_argument("--wandb-project", default=None, type=str, metavar="NAME",
                   help="wandb project (default: wandb's)")
    g.add_argument("--wandb-tags", default=[], type=str, nargs="+", metavar="TAG",
                   help="wandb run tags (default: none)")
    g.add_argument("--wandb-resume-id", default="", type=str, metavar="ID",
                   help="continue this wandb run (needs --resume; default: a new run)")
    g.add_argument("--checkpoint-hist", type=int, default=10, metavar="N", help="best checkpoints to keep")
    g.add_argument("-j", "--workers", type=int, default=None, metavar="N",
                   help="data-loading processes per process (default: 4, capped to the CPU cores available)")
    g.add_argument("--output", default="", type=str, metavar="PATH",
                   help="folder for run folders (default: ./output/train)")
    g.add_argument("--experiment", default="", type=str, metavar="NAME",
                   help="run folder name (default: date, model and image size)")
    g.add_argument("--eval-metric", default="top1", type=str, metavar="EVAL_METRIC",
                   help="metric that picks the best checkpoint (top1, top5, loss)")
    g.add_argument("--eval-interval", "--val-interval", type=int, default=1, metavar="N",
                   help="evaluate every N epochs and after the last one (other epochs write only a recovery "
                        "checkpoint; --val-interval is timm's name)")
    return p


# timm's defaults of the unsupported flags that are not None/False: an args.yaml that timm's train.py wrote holds
# every flag, so a key at its default means "not used" and is skipped.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "kd_distill_type": "logit", "kd_loss_type": "kl", "kd_temperature": 4.0, "kd_token_distill_type": "soft",
    "naflex_train_seq_lens": [128, 256, 576, 784, 1024], "naflex_max_seq_len": 576, "naflex_loss_scale": "linear",
}


# The key under which timm-lap train records the files it read (args.yaml); a record, not a flag.
DATA_SOURCES_KEY = "data_sources"
_CONFIG_ALIASES = {"val_interval": "eval_interval", "train_steps_per_epoch": "train_batches_per_epoch"}


def _reject_unsupported(parser: argparse.ArgumentParser, flag: str, where: str = "") -> None:
    reason = TIMM_FLAGS_NOT_SUPPORTED.get(flag)
    if reason is not None:
        parser.error(f"{flag}{where} is a timm train.py flag that timm-lap train does not support: {reason}. Drop it, "
                     "or use timm's own train.py (the *_lap models work there too).")


def _read_config(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The flag defaults a YAML recipe sets: timm's recipe files (their derived keys are skipped) or timm-lap's."""
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as exc:
        parser.error(f"-c {path}: cannot read the config file ({exc.strerror})")
    if not isinstance(cfg, dict):
        parser.error(f"-c {path}: a config file is a YAML mapping of flag names to values")
    flags = vars(parser.parse_args([]))
    cfg = {_CONFIG_ALIASES.get(k, k): v for k, v in cfg.items() if k != DATA_SOURCES_KEY}
    for key, value in list(cfg.items()):
        flag = "--" + str(key).replace("_", "-")
        if flag in TIMM_FLAGS_NOT_SUPPORTED:
            if value in (None, False, "", [], {}) or value == _UNSUPPORTED_DEFAULTS.get(key):
                del cfg[key]  # written out at timm's default: not used
            else:
                _reject_unsupported(parser, flag, f" (key {key!r} of {path})")
    unknown = sorted(k for k in cfg if k not in flags)
    if unknown:
        parser.error(f"config file {path} has keys that are not flags of timm-lap train: {unknown}")
    return cfg


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, str]:
    """Parse ``argv`` (a YAML ``--config`` sets defaults); returns (args, args as YAML text)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    for arg in argv:
        _reject_unsupported(parser, arg.split("=", 1)[0])
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("-c", "--config", default="")
    known, _ = config_parser.parse_known_args(argv)
    if known.config:
        cfg = _read_config(parser, known.config)
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
