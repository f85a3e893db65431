"""``timm-lap train``: timm's training recipe, built from timm's public API, with ``--lap``.

    timm-lap train --dataset sklearn/digits --model resnet18 --lap --epochs 30 -b 64 --lr 0.05
    torchrun --nproc-per-node 2 -m timm_lap.train --dataset torch/fashion_mnist --model resnet18_lap ...

A run goes in four steps: :func:`resolve_config` turns the parsed flags into a frozen :class:`TrainConfig` (the
flags as given, plus every value derived from them), :func:`build_objects` builds what trains
(:class:`TrainingObjects`), :func:`run_epochs` runs the epochs and returns a :class:`TrainResult`; :func:`train`
chains them.
"""
from __future__ import annotations

import argparse
import csv
import glob
import importlib
import logging
import math
import os
import shlex
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, cast

import torch
import torch.nn as nn
import yaml
from timm.data import AugMixDataset, FastCollateMixup, Mixup, create_loader, resolve_data_config
from timm.layers import convert_splitbn_model, convert_sync_batchnorm, set_fast_norm
from timm.models import model_parameters, resume_checkpoint, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.scheduler.scheduler import Scheduler
from timm.task import create_classification_loss
from timm.utils import (
    AverageMeter,
    CheckpointSaver,
    ModelEmaV3,
    NativeScaler,
    accuracy,
    dispatch_clip_grad,
    distribute_bn,
    get_outdir,
    init_distributed_device,
    random_seed,
    reduce_tensor,
    set_jit_fuser,
)
from tqdm.auto import tqdm

from ..analysis import plotting
from ..data.idx import IDX_DATASETS
from ..data.subsets import class_balanced_subset, holdout_split, index_subset, with_label_noise
from ..data.targets import dataset_num_classes
from ..device import resolve_device
from ..loss import LeastActionLoss
from ..models import LAP_SUFFIX
from ..multiplier import MultiplierScheduler
from ..tracker import DisplacementTracker, get_tracker, track
from .build import Loader, build_model, create_dataset, describe_sources, eval_loader, read_checkpoint
from .rng_state import gather_rng_states, restore_rng_state
from .train_args import DATA_SOURCES_KEY, parse_args

__all__ = ["main", "train", "resolve_config", "build_objects", "run_epochs", "TrainConfig", "TrainingObjects",
           "TrainResult", "TrainingInterrupted", "SUMMARY_COLUMNS", "latest_checkpoint", "resume_command"]

_logger = logging.getLogger("timm_lap.train")

SUMMARY_COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "task_loss", "transport",
                   "lap_lambda")
# Sensible input defaults for the small grey-scale datasets timm-lap ships loaders for.
DATASET_INPUT_DEFAULTS: dict[str, dict[str, tuple[Any, ...]]] = {
    "sklearn/digits": dict(input_size=(1, 32, 32), mean=(0.5,), std=(0.5,)),
    "torch/mnist": dict(input_size=(1, 28, 28), mean=(0.1307,), std=(0.3081,)),
    "torch/fashion_mnist": dict(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,)),
}
# The datasets timm-lap loads itself (every other name goes to timm's create_dataset).
BUILTIN_DATASETS = frozenset({"sklearn/digits", *(f"torch/{name}" for name in IDX_DATASETS)})
EVAL_METRICS = ("loss", "top1", "top5")  # what validate() measures

Autocast = Callable[[], AbstractContextManager[Any]]
Row = dict[str, float]  # one line of summary.csv


class ExtraTrainingState:
    """Checkpoint slot for what timm's saver does not know about: the LAP multiplier, the AMP scaler and every
    rank's random-number state at the end of the epoch (``rng_states``, set just before an end-of-epoch save).

    timm's ``CheckpointSaver`` stores ``amp_scaler.state_dict()`` under ``state_dict_key`` and
    ``resume_checkpoint`` restores it, so this object rides on that mechanism.
    """

    state_dict_key = "timm_lap"

    def __init__(self, multiplier: MultiplierScheduler | None, scaler: NativeScaler | None) -> None:
        self.multiplier = multiplier
        self.scaler = scaler
        self.rng_states: list[Any] | None = None  # what the next save stores (None: a mid-epoch recovery)
        self.loaded_rng_states: list[Any] | None = None  # what --resume read

    def state_dict(self) -> dict[str, Any]:
        return {
            "multiplier": None if self.multiplier is None else self.multiplier.state_dict(),
            "amp_scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng_states": self.rng_states,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.multiplier is not None:
            if state.get("multiplier") is None:
                raise ValueError("--resume: the checkpoint has no LAP multiplier state (was it trained without --lap?)")
            self.multiplier.load_state_dict(state["multiplier"])
        if self.scaler is not None and state.get("amp_scaler") is not None:
            self.scaler.load_state_dict(state["amp_scaler"])
        self.loaded_rng_states = state.get("rng_states")


# ------------------------------------------------------------------ step 1: the flags, resolved once
@dataclass(frozen=True)
class Placement:
    """Where this process runs: the device, and its place among the processes of a torchrun job."""

    device: torch.device
    distributed: bool
    world_size: int
    rank: int
    local_rank: int


@dataclass(frozen=True)
class TrainConfig:
    """The flags of one run, resolved once: ``args`` is what was parsed (inputs, never changed); every other
    field is a value the run derives from the flags, the process and the dataset, and uses instead of the flag."""

    args: argparse.Namespace
    device: torch.device  # --device, or CUDA when there is one (the local rank's GPU under torchrun)
    distributed: bool
    world_size: int
    rank: int
    local_rank: int
    lap: bool  # --lap, or implied by a *_lap model name or --lap-weight
    num_classes: int  # --num-classes, or the training set's
    in_chans: int
    input_size: tuple[int, ...] | None  # --input-size, or the default of a known small dataset
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    lr: float  # --lr, or --lr-base scaled by the global batch (timm's rule)
    amp_dtype: torch.dtype | None  # None without --amp
    model_dtype: torch.dtype | None  # --model-dtype: the parameters' and inputs' dtype (None: float32)
    mixup: bool  # --mixup or --cutmix is on
    prefetcher: bool  # timm's prefetching loader (any device, as timm's train.py), unless --no-prefetcher
    eval_metric: str  # the key of validate()'s metrics that ranks checkpoints (--eval-metric, else top1)

    @property
    def primary(self) -> bool:
        """The process that logs and writes the run folder."""
        return self.rank == 0

    @property
    def uses_multiplier(self) -> bool:
        """LAP with the multiplier (no fixed --lap-weight)."""
        return self.lap and self.args.lap_weight is None

    def namespace(self) -> argparse.Namespace:
        """The flags with the derived values written in (a new object each call): what timm's helpers read and
        what checkpoints store under ``args``."""
        ns = argparse.Namespace(**vars(self.args))
        ns.device = str(self.device)
        ns.lap = self.lap
        ns.input_size, ns.mean, ns.std = (None if v is None else list(v)
                                          for v in (self.input_size, self.mean, self.std))
        ns.distributed, ns.world_size, ns.rank, ns.local_rank = (self.distributed, self.world_size, self.rank,
                                                                 self.local_rank)
        ns.num_classes = self.num_classes
        ns.lr = self.lr
        return ns


def _start_process(args: argparse.Namespace) -> Placement:
    """Import --device-modules, resolve --device, join the process group under torchrun (timm's helper), seed
    this process and set timm's global layer switches (--fuser, --fast-norm)."""
    for module in args.device_modules or ():
        importlib.import_module(module)
    try:
        name = str(resolve_device(args.device, "timm-lap train"))
    except ValueError as err:
        raise SystemExit(str(err)) from None
    dist = argparse.Namespace(device=name)  # timm's helper writes its answers into this
    device = init_distributed_device(dist)
    random_seed(args.seed, dist.rank)
    if args.fuser:
        set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()
    return Placement(device, dist.distributed, dist.world_size, dist.rank, dist.local_rank)


def dataset_input_defaults(args: argparse.Namespace) -> tuple[list[int] | None, list[float] | None,
                                                              list[float] | None]:
    """``args``' (input size, mean, std), with those of a known small dataset where the user gave none."""
    input_size, mean, std = args.input_size, args.mean, args.std
    defaults = DATASET_INPUT_DEFAULTS.get(args.dataset)
    if not defaults:
        return input_size, mean, std
    if input_size is None and args.in_chans is None:  # the dataset's channels, at --img-size when given
        chans, height, width = defaults["input_size"]
        input_size = [chans, height, width] if args.img_size is None else [chans, args.img_size, args.img_size]
    chans = input_size[0] if input_size else (args.in_chans or defaults["input_size"][0])
    if mean is None and chans == 1:
        mean = list(defaults["mean"])
    if std is None and chans == 1:
        std = list(defaults["std"])
    return input_size, mean, std


def apply_dataset_defaults(args: argparse.Namespace) -> None:
    """Fill the input size, mean and std of a known small dataset into ``args`` where the user gave none."""
    args.input_size, args.mean, args.std = dataset_input_defaults(args)


def _resolve_lr(args: argparse.Namespace, world_size: int, batch_size: float | None = None) -> float:
    """--lr, or --lr-base scaled by the global batch (``batch_size`` per process: the scheduled loader's
    average with --train-img-sizes, else --batch-size)."""
    if args.lr is not None:
        return float(args.lr)
    global_batch = (batch_size or args.batch_size) * world_size * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    scale = args.lr_base_scale or ("sqrt" if any(o in args.opt.lower() for o in ("ada", "lamb")) else "linear")
    return float(args.lr_base * (ratio ** 0.5 if scale == "sqrt" else ratio))


def _model_dtype(args: argparse.Namespace) -> torch.dtype | None:
    if args.model_dtype is None:
        return None
    dtype = cast(torch.dtype, getattr(torch, args.model_dtype))
    if args.amp and dtype != torch.float32:
        raise ValueError(f"--model-dtype {args.model_dtype} with --amp: autocast needs float32 parameters; drop "
                         "one of the two (--amp for mixed precision, --model-dtype for a low-precision model)")
    return dtype


def _check_combinations(args: argparse.Namespace, lap: bool) -> None:
    """Flags that cannot work together, as one-line errors."""
    if args.torchscript and lap:
        raise ValueError("--torchscript with --lap: TorchScript drops the forward hooks that measure the transport; "
                         "use --torchcompile instead")
    if args.torchscript and args.torchcompile:
        raise ValueError("--torchscript and --torchcompile: pick one")
    if args.sync_bn and args.split_bn:
        raise ValueError("--sync-bn and --split-bn: timm supports one BatchNorm conversion at a time")
    if args.split_bn and args.aug_splits < 2:
        raise ValueError("--split-bn needs --aug-splits 2 or more (one BatchNorm per augmentation split)")
    if args.jsd_loss and args.aug_splits < 2:
        raise ValueError("--jsd-loss needs --aug-splits 2 or more (it compares the splits' predictions)")


def resolve_config(args: argparse.Namespace, placement: Placement, train_set: Any) -> TrainConfig:
    """Every value the run derives from the flags ``args`` (which are copied, not changed)."""
    lap = args.lap or args.model.endswith(LAP_SUFFIX) or args.lap_weight is not None
    _check_combinations(args, lap)
    input_size, mean, std = dataset_input_defaults(args)
    mixup = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    metric = args.eval_metric.replace("eval_", "")
    return TrainConfig(
        args=argparse.Namespace(**vars(args)),
        device=placement.device, distributed=placement.distributed, world_size=placement.world_size,
        rank=placement.rank, local_rank=placement.local_rank,
        lap=lap,
        num_classes=args.num_classes or dataset_num_classes(train_set),
        in_chans=args.in_chans or (input_size[0] if input_size else 3),
        input_size=None if input_size is None else tuple(input_size),
        mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std),
        lr=_resolve_lr(args, placement.world_size),
        amp_dtype=(torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16) if args.amp else None,
        model_dtype=_model_dtype(args),
        mixup=mixup,
        # As timm's train.py: on every device (it normalises uint8 batches there; mixup runs in its collate).
        # timm refuses mixup with --aug-splits on it; timm-lap falls back to the plain loader instead.
        prefetcher=not args.no_prefetcher and not (mixup and args.aug_splits > 1),
        eval_metric=metric if metric in EVAL_METRICS else "top1",
    )


# ------------------------------------------------------------------ step 2: the objects that train
@dataclass(frozen=True)
class RunOutput:
    """The run folder the first process writes: checkpoints (through ``saver``), args.yaml, summary.csv."""

    dir: str
    saver: CheckpointSaver
    summary_path: str


@dataclass(frozen=True)
class TrainingObjects:
    """What a run trains, evaluates and saves, built by :func:`build_objects`."""

    model: nn.Module  # as built: evaluated, saved and returned
    train_model: nn.Module  # what the training step calls: ``model``, compiled (--torchcompile) and/or in DDP
    model_ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: Scheduler
    start_epoch: int  # > 0 after --resume
    num_epochs: int
    train_loss: nn.Module  # timm's training loss for the flags, in a LeastActionLoss with LAP
    eval_loss: nn.Module
    multiplier: MultiplierScheduler | None
    loss_scaler: NativeScaler | None  # AMP in float16
    autocast: Autocast
    mixup: Mixup | None
    loader_train: Loader
    loader_eval: Loader
    output: RunOutput | None  # None on every process but the first
    reference_batch: float  # the batch size --variable-batch-loss-scale compares each batch with
    wandb_run: Any = None  # the wandb run of --log-wandb (first process, wandb installed)
    extra_state: ExtraTrainingState | None = None  # the checkpoint's multiplier / scaler / random-state slot


# Flags that only timm's dataset factory reads (the built-in datasets have no use for them).
TIMM_DATASET_FLAGS = ("class_map", "input_img_mode", "input_key", "target_key", "train_num_samples",
                      "val_num_samples", "dataset_trust_remote_code", "epoch_repeats")


def _timm_dataset_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """What timm's ``create_dataset`` gets from the flags (as timm's train.py passes them); for a built-in dataset,
    an error naming any of those flags that was set."""
    if args.dataset.strip().lower() in BUILTIN_DATASETS:
        given = [f"--{name.replace('_', '-')}" for name in TIMM_DATASET_FLAGS if getattr(args, name)]
        if given:
            raise ValueError(f"{', '.join(given)}: read by timm's dataset readers only; --dataset {args.dataset} is "
                             "built into timm-lap and has no use for them")
        return {}
    chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    return dict(class_map=args.class_map, input_img_mode=args.input_img_mode or ("RGB" if chans == 3 else "L"),
                input_key=args.input_key, target_key=args.target_key,
                trust_remote_code=args.dataset_trust_remote_code)


def _build_datasets(args: argparse.Namespace) -> tuple[Any, Any]:
    common = dict(root=args.data_dir or "", download=args.dataset_download, batch_size=args.batch_size,
                  seed=args.seed, **_timm_dataset_kwargs(args))
    extra_train = {} if not common.keys() - {"root", "download", "batch_size", "seed"} else dict(
        num_samples=args.train_num_samples, repeats=args.epoch_repeats)
    extra_eval = {} if not extra_train else dict(num_samples=args.val_num_samples)
    train_set = create_dataset(args.dataset, split=args.train_split, is_training=True, **common, **extra_train)
    if args.val_from_train is None:
        eval_set = create_dataset(args.dataset, split=args.val_split, is_training=False, **common, **extra_eval)
    else:
        # A second instance of the training split, so the held-out part gets the eval transform.
        train_as_eval = create_dataset(args.dataset, split=args.train_split, is_training=False, **common,
                                       **extra_eval)
        kept, held = holdout_split(train_set, args.val_from_train, seed=args.seed)
        train_set, eval_set = index_subset(train_set, kept), index_subset(train_as_eval, held)
    if args.train_subset is not None:
        train_set = class_balanced_subset(train_set, args.train_subset, seed=args.seed)
    if args.label_noise:
        train_set = with_label_noise(train_set, args.label_noise, seed=args.seed)
    return train_set, eval_set


def scale_initial_weights(model: nn.Module, gain: float) -> nn.Module:
    """Multiply the weights of every convolution and linear layer by ``gain`` (biases and norms untouched)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                module.weight.mul_(gain)
    return model


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """timm ``create_model`` keyword arguments of the flags (timm drops the ones left None)."""
    kwargs = dict(drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
                  global_pool=args.gp, bn_momentum=args.bn_momentum, bn_eps=args.bn_eps,
                  scriptable=args.torchscript or None)
    if args.pretrained_path:  # as timm's train.py: num_classes=-1 always drops the file's classifier
        kwargs["pretrained_cfg_overlay"] = dict(num_classes=-1)
    return kwargs | args.model_kwargs


def _init_head(model: nn.Module, scale: float | None, bias: float | None) -> None:
    """--head-init-scale / --head-init-bias on the model's classifier."""
    if scale is None and bias is None:
        return
    head = cast(Any, model).get_classifier()
    with torch.no_grad():
        if scale is not None:
            head.weight.mul_(scale)
            head.bias.mul_(scale)
        if bias is not None:
            head.bias.fill_(bias)


def _build_model(args: argparse.Namespace, num_classes: int, in_chans: int, lap: bool) -> nn.Module:
    """The timm model of the flags ``args``; ``lap``: track its blocks (a *_lap model tracks itself)."""
    kwargs = _model_kwargs(args)
    if args.model.endswith(LAP_SUFFIX):
        kwargs.update(lap_p=args.lap_p, lap_blocks=args.lap_blocks, lap_sample=args.lap_sample)
    model = build_model(args.model, in_chans, num_classes, weights=args.initial_checkpoint, flag="--initial-checkpoint",
                        model_kwargs=kwargs, pretrained=args.pretrained, pretrained_file=args.pretrained_path)
    if args.init_gain != 1.0:
        scale_initial_weights(model, args.init_gain)
    _init_head(model, args.head_init_scale, args.head_init_bias)
    if args.split_bn:
        model = convert_splitbn_model(model, max(args.aug_splits, 2))
    if lap and get_tracker(model) is None:
        track(model, blocks=args.lap_blocks, p=args.lap_p, sample=args.lap_sample)
    if args.grad_checkpointing:
        cast(Any, model).set_grad_checkpointing(enable=True)
    return model


def _tracker(model: nn.Module) -> DisplacementTracker:
    tracker = get_tracker(model)
    if tracker is None:
        raise RuntimeError("timm-lap train: the model has no displacement tracker")  # _build_model attached one
    return tracker


def _amp(config: TrainConfig) -> tuple[Autocast, NativeScaler | None]:
    """The autocast context of --amp, and the loss scaler that float16 needs."""
    amp_dtype = config.amp_dtype
    if amp_dtype is None:
        return nullcontext, None
    autocast = lambda: torch.autocast(config.device.type, dtype=amp_dtype)
    return autocast, NativeScaler(device=config.device.type) if amp_dtype == torch.float16 else None


def _build_train_loss(config: TrainConfig, model: nn.Module,
                      optimizer: torch.optim.Optimizer) -> tuple[nn.Module, MultiplierScheduler | None]:
    """timm's choice of training loss, wrapped by LAP when asked; and LAP's multiplier (no fixed weight)."""
    args = config.args
    loss_type = "jsd" if args.jsd_loss else "bce" if args.bce_loss else "ce"
    loss = create_classification_loss(
        loss_type, smoothing=args.smoothing, soft_targets=config.mixup and not args.jsd_loss,
        pos_weight=args.bce_pos_weight, bce_target_thresh=args.bce_target_thresh, bce_sum=args.bce_sum,
        jsd_splits=args.aug_splits).to(config.device)
    if not config.lap:
        return loss, None
    # The model's own tracker carries --lap-p, --lap-blocks and --lap-sample.
    lap_loss = LeastActionLoss(loss, _tracker(model), weight=args.lap_weight)
    multiplier = None
    if config.uses_multiplier:
        multiplier = MultiplierScheduler(optimizer, lap_loss, tau=args.lap_tau, every=args.lap_every,
                                         lambda0=args.lap_lambda0)
    return lap_loss, multiplier


def _resume(config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
            extra_state: ExtraTrainingState) -> tuple[int, dict[str, Any]]:
    """--resume: restore model, optimizer, multiplier and scaler; returns (start epoch, the checkpoint)."""
    args = config.args
    if not args.resume:
        return 0, {}
    checkpoint = read_checkpoint(args.resume, flag="--resume")
    # timm restores the extra state through its loss-scaler slot and would announce an "AMP loss scaler" even
    # without AMP: its lines stay off, this one says what was restored.
    start_epoch = resume_checkpoint(model, args.resume, optimizer=None if args.no_resume_opt else optimizer,
                                    loss_scaler=extra_state, log_info=False) or 0
    if config.primary:
        restored = ["model", *(["optimizer"] if not args.no_resume_opt else []),
                    *([f"lam {extra_state.multiplier.lam.item():.6g}"] if extra_state.multiplier else []),
                    *(["AMP loss scaler"] if extra_state.scaler else [])]
        _logger.info(f"resumed from {args.resume} at epoch {start_epoch}: {', '.join(restored)}")
    return start_epoch, checkpoint


def _build_ema(config: TrainConfig, model: nn.Module, checkpoint: dict[str, Any]) -> ModelEmaV3 | None:
    if not config.args.model_ema:
        return None
    args = config.args
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                           device=torch.device("cpu") if args.model_ema_force_cpu else None)
    if "state_dict_ema" in checkpoint:
        model_ema.module.load_state_dict(checkpoint["state_dict_ema"])
    return model_ema


def _training_model(config: TrainConfig, model: nn.Module) -> nn.Module:
    """``model`` as the training step calls it: compiled with --torchcompile, in DDP under torchrun."""
    args, train_model = config.args, model
    if args.torchscript:
        train_model = cast(nn.Module, torch.jit.script(model))
    if args.torchcompile:
        train_model = cast(nn.Module, torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode))
    if config.distributed:
        device_ids = [config.device] if config.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=device_ids,
                                                          broadcast_buffers=not args.no_ddp_bb)
    return train_model


def _build_mixup(config: TrainConfig) -> Mixup | None:
    args = config.args
    if not config.mixup:
        return None
    # With the prefetcher, timm mixes uint8 batches in the loader's collate function (FastCollateMixup).
    mixup = FastCollateMixup if config.prefetcher else Mixup
    return mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode=args.mixup_mode, label_smoothing=args.smoothing,
                 cutmix_minmax=args.cutmix_minmax,
                 num_classes=config.num_classes)


def _build_loaders(config: TrainConfig, train_set: Any, eval_set: Any, data_config: dict[str, Any],
                   collate_fn: Mixup | None = None) -> tuple[Loader, Loader]:
    args, device = config.args, config.device
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config["interpolation"]
    if args.aug_splits > 1:
        train_set = AugMixDataset(train_set, num_splits=args.aug_splits)
    loader_train = create_loader(
        train_set, input_size=data_config["input_size"], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip,
        color_jitter=args.color_jitter, color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
        gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa, num_aug_repeats=int(args.aug_repeats),
        num_aug_splits=args.aug_splits, interpolation=train_interpolation, mean=data_config["mean"],
        std=data_config["std"], num_workers=args.workers, distributed=config.distributed, pin_memory=args.pin_mem,
        img_dtype=config.model_dtype or torch.float32, device=device, use_prefetcher=config.prefetcher,
        persistent_workers=False, worker_seeding=args.worker_seeding,
        collate_fn=collate_fn or (_collate_splits if args.aug_splits > 1 and not config.prefetcher else None),
        use_multi_epochs_loader=args.use_multi_epochs_loader, **_variable_size_kwargs(args),
    )
    loader_eval = eval_loader(eval_set, data_config, args.validation_batch_size or args.batch_size, args.workers,
                              device, use_prefetcher=config.prefetcher, distributed=config.distributed,
                              pin_memory=args.pin_mem)
    if len(loader_train) == 0:
        # timm's training loader drops the last partial batch: fewer samples than one batch means no step at all.
        raise ValueError(f"the training set has {len(train_set)} samples, fewer than one batch (-b {args.batch_size}"
                         f"{f' x {config.world_size} processes' if config.distributed else ''}), and the last "
                         f"partial batch is dropped when training, so no step would be taken; use "
                         f"-b {len(train_set)} or less")
    return loader_train, loader_eval


def _collate_splits(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """--aug-splits without timm's prefetching loader (--no-prefetcher, or mixup with it): the layout of timm's
    ``fast_collate``, one tensor whose n-th block of the batch holds every sample's split n, targets repeated
    (torch's collate would leave a list of the splits)."""
    images, targets = torch.utils.data.default_collate(batch)
    if isinstance(images, (list, tuple)):
        targets = targets.repeat((len(images),) + (1,) * (targets.ndim - 1))
        images = torch.cat(list(images))
    return images, targets


def _variable_size_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """timm ``create_loader``'s scheduled-batch options (--train-img-sizes ...), as timm's train.py passes them."""
    return dict(input_size_choices=args.train_img_sizes, batch_size_choices=args.train_batch_sizes,
                batch_choice_weights=args.train_size_probs, batch_choice_seed=args.seed,
                batch_choice_schedule=args.train_size_schedule,
                batch_schedule_epochs=args.epochs if args.train_size_schedule == "progressive" else None,
                batch_schedule_spread=args.train_size_schedule_spread,
                batch_schedule_random_mix=args.train_size_random_mix, num_batches=args.train_batches_per_epoch)


def _updates_per_epoch(batches: int, accum: int) -> int:
    return (batches + accum - 1) // accum


def _build_scheduler(flags: argparse.Namespace, optimizer: torch.optim.Optimizer, batches: int,
                     start_epoch: int) -> tuple[Scheduler, int]:
    """timm's scheduler for the resolved flags, moved on to ``start_epoch``; returns (scheduler, epochs)."""
    updates_per_epoch = _updates_per_epoch(batches, flags.grad_accum_steps)
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(flags),
                                                   updates_per_epoch=updates_per_epoch)
    if start_epoch > 0:
        if flags.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
    return lr_scheduler, num_epochs


def _open_output(config: TrainConfig, flags: argparse.Namespace, saver_objects: dict[str, Any],
                 checkpoint: dict[str, Any], input_size: Sequence[int], args_text: str) -> RunOutput:
    """The run folder: its checkpoint saver (continuing a resumed run's ranking there) and args.yaml."""
    args = config.args
    exp_name = args.experiment or "-".join([
        datetime.now().strftime("%Y%m%d-%H%M%S"), safe_model_name(args.model), str(input_size[-1])])
    output_dir = get_outdir(args.output or "./output/train", exp_name)
    saver = CheckpointSaver(**saver_objects, args=flags, checkpoint_dir=output_dir, recovery_dir=output_dir,
                            decreasing="loss" in args.eval_metric, max_history=args.checkpoint_hist)
    same_dir = os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(output_dir)
    if "saver" in checkpoint and same_dir and hasattr(saver, "load_state_dict"):  # timm >= 1.0.25
        saver.load_state_dict(checkpoint["saver"])  # keep ranking/evicting checkpoints as before
    with open(os.path.join(output_dir, "args.yaml"), "w") as f:
        f.write(args_text)
    return RunOutput(output_dir, saver, os.path.join(output_dir, "summary.csv"))


def build_objects(config: TrainConfig, train_set: Any, eval_set: Any, args_text: str = "") -> TrainingObjects:
    """Model, EMA, optimizer, scheduler, losses, multiplier, loaders and (first process) the run folder."""
    args, flags = config.args, config.namespace()
    model = _build_model(args, config.num_classes, config.in_chans, config.lap)
    data_config = resolve_data_config(vars(flags), model=model, verbose=config.primary)
    model.to(device=config.device, dtype=config.model_dtype)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.distributed and args.sync_bn:
        model = convert_sync_batchnorm(model)  # the tracked blocks stay the same modules
    mixup = _build_mixup(config)
    loader_train, loader_eval = _build_loaders(config, train_set, eval_set, data_config,
                                               collate_fn=mixup if config.prefetcher else None)
    reference_batch = float(getattr(loader_train.batch_sampler, "average_batch_size", args.batch_size))
    if args.train_img_sizes is not None and args.lr is None:
        flags.lr = _resolve_lr(args, config.world_size, reference_batch)
        if config.primary:
            _logger.info(f"lr {flags.lr:.6g} from --lr-base {args.lr_base} and the scheduled loader's average "
                         f"batch {reference_batch:.2f}")
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=flags), **args.opt_kwargs)
    autocast, loss_scaler = _amp(config)
    train_loss, multiplier = _build_train_loss(config, model, optimizer)
    extra_state = ExtraTrainingState(multiplier, loss_scaler)
    start_epoch, checkpoint = _resume(config, model, optimizer, extra_state)
    if args.start_epoch is not None:  # timm's override, resumed or not
        start_epoch = args.start_epoch
    model_ema = _build_ema(config, model, checkpoint)
    train_model = _training_model(config, model)
    lr_scheduler, num_epochs = _build_scheduler(flags, optimizer, len(loader_train), start_epoch)
    output = None
    if config.primary:
        saver_objects = dict(model=model, optimizer=optimizer, model_ema=model_ema, amp_scaler=extra_state)
        output = _open_output(config, flags, saver_objects, checkpoint, data_config["input_size"], args_text)
        _logger.info(f"timm-lap train: {args.model}{' with LAP' if config.lap else ''}, {len(train_set)} training / "
                     f"{len(eval_set)} validation samples, {num_epochs} epochs, output in {output.dir}")
    wandb_run = _start_wandb(flags, output.dir) if output is not None and args.log_wandb else None
    if args.resume:  # last: nothing built above may draw from the restored streams
        _resume_random_state(config, extra_state, start_epoch)
    return TrainingObjects(
        model=model, train_model=train_model, model_ema=model_ema, optimizer=optimizer, lr_scheduler=lr_scheduler,
        start_epoch=start_epoch, num_epochs=num_epochs, train_loss=train_loss, eval_loss=nn.CrossEntropyLoss(),
        multiplier=multiplier, loss_scaler=loss_scaler, autocast=autocast, mixup=mixup, loader_train=loader_train,
        loader_eval=loader_eval, output=output, reference_batch=reference_batch, wandb_run=wandb_run,
        extra_state=extra_state)


def _resume_random_state(config: TrainConfig, extra_state: ExtraTrainingState, start_epoch: int) -> None:
    """--resume: every generator as the checkpointed epoch left it, so the run goes on drawing what the
    uninterrupted one draws; a checkpoint without that state (a mid-epoch recovery, an older release, another
    number of processes) reseeds from (seed, epoch) instead, and says so."""
    if restore_rng_state(extra_state.loaded_rng_states, config.rank, config.world_size, config.device):
        return
    random_seed(config.args.seed + start_epoch * config.world_size, config.rank)
    if config.primary:
        _logger.info(f"--resume: the checkpoint holds no random-number state for {config.world_size} process(es) "
                     f"(a mid-epoch recovery, an older release or another world size): reseeded from (seed, epoch "
                     f"{start_epoch}); data order and augmentations differ from an uninterrupted run")


def _start_wandb(flags: argparse.Namespace, output_dir: str) -> Any:
    """A wandb run for --log-wandb, or None (with a warning saying how to get it) when wandb is not installed."""
    try:
        import wandb
    except ImportError:
        _logger.warning("--log-wandb: the wandb package is not installed, so nothing is logged to wandb; "
                        "`pip install wandb` (and `wandb login`) to log this run")
        return None
    return wandb.init(project=flags.wandb_project, name=os.path.basename(output_dir), config=vars(flags),
                      tags=flags.wandb_tags or None, resume="must" if flags.wandb_resume_id else None,
                      id=flags.wandb_resume_id or None, dir=output_dir)


# ------------------------------------------------------------------ step 3: the epochs
class _Progress:
    """tqdm on a terminal, plain log lines every ``log_interval`` steps otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool, log_interval: int) -> None:
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True) if self.interactive else None
        self.enabled, self.total, self.desc, self.log_interval = enabled, total, desc, max(1, log_interval)

    def update(self, step: int, values: Callable[[], dict[str, float]]) -> None:
        if not self.enabled:
            return
        last = step + 1 == self.total
        if self.bar is not None:
            self.bar.update(1)
            if step % self.log_interval == 0 or last:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in values().items()}, refresh=False)
        elif step % self.log_interval == 0 or last:
            parts = " ".join(f"{k}={v:.4g}" for k, v in values().items())
            _logger.info(f"{self.desc} [{step + 1}/{self.total}] {parts}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _train_step(config: TrainConfig, objects: TrainingObjects, x: torch.Tensor, y: torch.Tensor, steps: int,
                need_update: bool, save_images_as: int | None = None) -> torch.Tensor:
    """Forward and backward of one batch (its share 1/``steps`` of an update), then the optimizer step when
    ``need_update``; returns the batch's loss. ``save_images_as``: a batch index to save the input grid under."""
    args, model, optimizer = config.args, objects.train_model, objects.optimizer
    x, y = x.to(device=config.device, dtype=config.model_dtype), y.to(config.device)
    if objects.mixup is not None and not config.prefetcher:  # the prefetcher's collate function mixed them
        x, y = objects.mixup(x, y)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if save_images_as is not None and objects.output is not None:
        _save_images(x, objects.output.dir, save_images_as)
    no_sync = config.distributed and not need_update and hasattr(model, "no_sync")
    with cast(Any, model).no_sync() if no_sync else nullcontext():
        with objects.autocast():
            output = model(x)
            loss = objects.train_loss(output, y)
        scaled = loss * _batch_loss_scale(args.variable_batch_loss_scale, x.shape[0], objects.reference_batch) / steps
        if objects.loss_scaler is not None:
            objects.loss_scaler(scaled, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                                parameters=model_parameters(model, exclude_head="agc" in args.clip_mode),
                                need_update=need_update)
        else:
            scaled.backward()
            if need_update:
                if args.clip_grad is not None:
                    dispatch_clip_grad(model_parameters(model, exclude_head="agc" in args.clip_mode),
                                       value=args.clip_grad, mode=args.clip_mode)
                optimizer.step()
    return loss


def _batch_loss_scale(mode: str, batch: int, reference: float) -> float:
    """--variable-batch-loss-scale: a scheduled batch's weight relative to the loader's average batch."""
    if mode == "none" or batch == reference:
        return 1.0
    return batch / reference if mode == "linear" else (batch / reference) ** 0.5


def _synchronize(device: torch.device) -> None:
    """--synchronize-step: wait for the accelerator (a no-op on the CPU)."""
    backend: Any = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(backend, "synchronize"):
        backend.synchronize()


def _save_images(x: torch.Tensor, output_dir: str, batch_idx: int) -> None:
    """--save-images: the batch as the model saw it (after mixup), one JPEG grid."""
    from torchvision.utils import save_image

    save_image(x.float(), os.path.join(output_dir, f"train-batch-{batch_idx}.jpg"), padding=0, normalize=True)


def _after_update(objects: TrainingObjects, num_updates: int) -> None:
    objects.optimizer.zero_grad()
    if objects.model_ema is not None:
        objects.model_ema.update(objects.train_model, step=num_updates)
    objects.lr_scheduler.step_update(num_updates=num_updates)


def _epoch_metrics(config: TrainConfig, sums: dict[str, torch.Tensor], count: int,
                   lap_loss: LeastActionLoss | None) -> OrderedDict[str, float]:
    """Means over the epoch's batches (over all processes), plus the multiplier; NaN where there is none."""
    means = {k: v / max(count, 1) for k, v in sums.items()}
    if config.distributed:
        means = {k: reduce_tensor(v, config.world_size) for k, v in means.items()}
    metrics = OrderedDict((k, v.item()) for k, v in means.items())
    metrics["lap_lambda"] = lap_loss.lam.item() if lap_loss is not None else float("nan")
    if lap_loss is None:
        metrics["transport"] = float("nan")
    return metrics


def _running_means(sums: dict[str, torch.Tensor], count: int, lap_loss: LeastActionLoss | None) -> dict[str, float]:
    """The progress line's values: mean loss so far and, with LAP, mean transport and the multiplier (a vanilla
    run has no transport term, so it shows none, as summary.csv leaves it NaN)."""
    if lap_loss is None:
        return {"loss": (sums["loss"] / count).item()}
    means = {k: (v / count).item() for k, v in sums.items() if k != "task_loss"}
    return means | {"lam": lap_loss.lam.item()}


def train_one_epoch(config: TrainConfig, objects: TrainingObjects, epoch: int) -> tuple[OrderedDict[str, float], int]:
    """One epoch; returns (metrics, num_updates). Metrics are means over the epoch (reduced over ranks)."""
    loader = objects.loader_train
    lap_loss = objects.train_loss if isinstance(objects.train_loss, LeastActionLoss) else None
    args = config.args
    accum = args.grad_accum_steps
    num_updates = epoch * _updates_per_epoch(len(loader), accum)
    sums = {k: torch.zeros((), device=config.device, dtype=torch.float64) for k in ("loss", "task_loss", "transport")}
    count = 0
    objects.train_model.train()
    progress = _Progress(len(loader), f"train {epoch}", config.primary, config.args.log_interval)
    objects.optimizer.zero_grad()
    last_accum_steps = len(loader) % accum
    last_batch_idx = len(loader) - 1
    last_batch_idx_to_accum = len(loader) - last_accum_steps
    for batch_idx, (x, y) in enumerate(loader):
        need_update = (batch_idx + 1) % accum == 0 or batch_idx == last_batch_idx
        steps_this_update = last_accum_steps if batch_idx >= last_batch_idx_to_accum and last_accum_steps else accum
        logs = batch_idx % max(1, args.log_interval) == 0 or batch_idx == last_batch_idx
        loss = _train_step(config, objects, x, y, steps_this_update, need_update,
                           save_images_as=batch_idx if args.save_images and logs else None)
        sums["loss"] += loss.detach()
        if lap_loss is not None:
            assert lap_loss.task_loss is not None and lap_loss.transport is not None  # set by the forward
            sums["task_loss"] += lap_loss.task_loss
            sums["transport"] += lap_loss.transport
        else:
            sums["task_loss"] += loss.detach()
        count += 1
        if need_update:
            num_updates += 1
            _after_update(objects, num_updates)
            if args.synchronize_step:
                _synchronize(config.device)
            update_idx = batch_idx // accum
            if objects.output is not None and args.recovery_interval and (update_idx + 1) % args.recovery_interval == 0:
                objects.output.saver.save_recovery(epoch, batch_idx=update_idx)
        progress.update(batch_idx, partial(_running_means, sums, count, lap_loss))
    progress.close()
    return _epoch_metrics(config, sums, count, lap_loss), num_updates


@torch.no_grad()
def validate(config: TrainConfig, model: nn.Module, loader: Loader, loss_fn: nn.Module, amp_autocast: Autocast,
             desc: str = "eval") -> OrderedDict[str, float]:
    """Mean loss, top-1 and top-5 of ``model`` over ``loader`` (reduced over ranks)."""
    model.eval()
    meters = {k: AverageMeter() for k in EVAL_METRICS}
    progress = _Progress(len(loader), desc, config.primary, config.args.log_interval)
    for batch_idx, (x, y) in enumerate(loader):
        x, y = x.to(device=config.device, dtype=config.model_dtype), y.to(config.device)
        if config.args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(x)
        if config.args.tta > 1:  # as timm: each run of N consecutive outputs is one sample's N augmented views
            output = output.unfold(0, config.args.tta, config.args.tta).mean(dim=2)
            y = y[::config.args.tta]
        loss = loss_fn(output.float(), y)
        top1, top5 = accuracy(output, y, topk=(1, min(5, output.shape[-1])))
        if config.distributed:
            loss, top1, top5 = (reduce_tensor(t, config.world_size) for t in (loss, top1, top5))
        n = y.shape[0]
        for name, value in (("loss", loss), ("top1", top1), ("top5", top5)):
            meters[name].update(value.item(), n)
        progress.update(batch_idx, lambda: {"loss": meters["loss"].avg, "top1": meters["top1"].avg})
    progress.close()
    return OrderedDict((k, m.avg) for k, m in meters.items())


def _write_summary(path: str, row: Row, write_header: bool) -> None:
    with open(path, "a" if not write_header else "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        if write_header:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in SUMMARY_COLUMNS})


def read_summary(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


TRAIN_PANELS = (("task_loss", "training task loss"), ("transport", "training transport"),
                ("lap_lambda", "multiplier lam"), ("eval_top1", "validation top-1 (%)"))


def plot_curves(summary_path: str, out_path: str) -> str | None:
    """Task loss, transport, lam and validation accuracy per epoch, as a PNG (needs matplotlib)."""
    path = plotting.plot_curves({"": read_summary(summary_path)}, TRAIN_PANELS, out_path)
    return None if path is None else str(path)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the run's outcome, and the live model and loaders for further measurements."""

    output_dir: str | None  # None on every process but the first
    best_metric: float | None  # the best --eval-metric so far (None before any evaluation)
    best_epoch: int | None
    rows: list[Row]  # summary.csv's rows of the epochs this call ran
    lam: float | None  # the final multiplier (None without one)
    num_epochs: int
    config: TrainConfig
    model: nn.Module
    loader_train: Loader
    loader_eval: Loader

    def __getitem__(self, key: str) -> Any:
        """``result["model"]``: the dict access of releases where :func:`train` returned a dict (same keys)."""
        if key == "config" or key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


def _prepare_epoch(config: TrainConfig, objects: TrainingObjects, epoch: int) -> None:
    # The global generators are seeded once per process, as timm seeds them (so a run is timm's, draw for draw);
    # checkpoints carry their state (timm_lap.cli.rng_state), so --resume continues them exactly.
    args = config.args
    if args.lap_sample is not None:
        _tracker(objects.model).reseed(args.seed + epoch)
    loader = objects.loader_train
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if hasattr(loader.batch_sampler, "set_epoch"):  # timm's scheduled (variable-size) batches
        loader.batch_sampler.set_epoch(epoch)
    elif hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if objects.mixup is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        objects.mixup.mixup_enabled = False


def _distribute_bn(config: TrainConfig, model: nn.Module) -> None:
    """--dist-bn: BatchNorm running statistics averaged over the ranks ('reduce') or taken from rank 0
    ('broadcast'), as timm does after each epoch; nothing with --sync-bn, whose statistics are already global."""
    args = config.args
    if config.distributed and not args.sync_bn and args.dist_bn in ("broadcast", "reduce"):
        distribute_bn(model, config.world_size, args.dist_bn == "reduce")


def _evaluate(config: TrainConfig, objects: TrainingObjects) -> OrderedDict[str, float]:
    """Validation metrics of the model, or of its EMA with --model-ema (unless it lives on the CPU by
    --model-ema-force-cpu, which timm does not evaluate)."""
    metrics = validate(config, objects.model, objects.loader_eval, objects.eval_loss, objects.autocast)
    if objects.model_ema is not None and not config.args.model_ema_force_cpu:
        _distribute_bn(config, objects.model_ema)
        metrics = validate(config, objects.model_ema, objects.loader_eval, objects.eval_loss, objects.autocast,
                           desc="eval (EMA)")
    return metrics


def _summary_row(epoch: int, train: dict[str, float], evaluated: dict[str, float], lr: float) -> Row:
    return {"epoch": epoch, "train_loss": train["loss"], "eval_loss": evaluated["loss"],
            "eval_top1": evaluated["top1"], "eval_top5": evaluated["top5"], "lr": lr,
            "task_loss": train["task_loss"], "transport": train["transport"], "lap_lambda": train["lap_lambda"]}


def _record_epoch(config: TrainConfig, output: RunOutput, row: Row, metric: float | None,
                  plot: bool) -> tuple[Any, Any] | None:
    """summary.csv, curves.png, a checkpoint ranked by ``metric`` (a recovery one when the epoch was not
    evaluated, ``metric=None``) and the epoch's log line; returns the saver's (best metric, best epoch)."""
    epoch = int(row["epoch"])
    _write_summary(output.summary_path, row, write_header=(epoch == 0 or not os.path.exists(output.summary_path)))
    if plot:
        plot_curves(output.summary_path, os.path.join(output.dir, "curves.png"))
    best = None
    if metric is not None:
        best = output.saver.save_checkpoint(epoch, metric=metric)
    else:  # no metric to rank by: a recovery checkpoint keeps the run resumable
        output.saver.save_recovery(epoch)
    lam = f", lam {row['lap_lambda']:.4g}, transport {row['transport']:.4g}" if config.lap else ""
    evaluated = f"eval loss {row['eval_loss']:.4f}, top1 {row['eval_top1']:.2f}" if metric is not None else \
        f"not evaluated (--eval-interval {config.args.eval_interval})"
    _logger.info(f"epoch {epoch}: train loss {row['train_loss']:.4f}, {evaluated}{lam}")
    return best


def _hold_random_state(config: TrainConfig, objects: TrainingObjects) -> None:
    """Every rank's generator states as this epoch ends, for the checkpoint about to be written (a collective under
    torchrun: each rank's streams differ, rank 0 alone writes)."""
    if objects.extra_state is not None and (objects.output is not None or config.distributed):
        objects.extra_state.rng_states = gather_rng_states(config.device, config.distributed)


def run_epochs(config: TrainConfig, objects: TrainingObjects, stop_after_epochs: int | None = None,
               plot: bool = True) -> TrainResult:
    """Train from ``objects.start_epoch`` to the last epoch (or for ``stop_after_epochs`` epochs)."""
    best: tuple[Any, Any] = (None, None)
    rows: list[Row] = []
    for epoch in range(objects.start_epoch, objects.num_epochs):
        _prepare_epoch(config, objects, epoch)
        train_metrics, _ = train_one_epoch(config, objects, epoch)
        _distribute_bn(config, objects.model)
        evaluate = (epoch + 1) % config.args.eval_interval == 0 or epoch + 1 == objects.num_epochs
        eval_metrics = _evaluate(config, objects) if evaluate else OrderedDict((k, math.nan) for k in EVAL_METRICS)
        row = _summary_row(epoch, train_metrics, eval_metrics, objects.optimizer.param_groups[0]["lr"])
        rows.append(row)
        metric = eval_metrics[config.eval_metric] if evaluate else None
        _hold_random_state(config, objects)
        if objects.output is not None:
            best = _record_epoch(config, objects.output, row, metric, plot) or best
        if objects.extra_state is not None:
            objects.extra_state.rng_states = None  # a later mid-epoch recovery has no end-of-epoch state
        if objects.wandb_run is not None:
            objects.wandb_run.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        objects.lr_scheduler.step(epoch + 1, metric)
        if stop_after_epochs is not None and len(rows) >= stop_after_epochs:
            break
    lam = None if objects.multiplier is None else objects.multiplier.lam.item()
    if lam is not None:
        # Under DDP every rank reports: the values must be identical.
        _logger.info(f"{f'rank {config.rank}: ' if config.distributed else ''}final lam {lam:.6g}")
    if config.distributed:
        torch.distributed.barrier()
    return TrainResult(output_dir=None if objects.output is None else objects.output.dir, best_metric=best[0],
                       best_epoch=best[1], rows=rows, lam=lam, num_epochs=objects.num_epochs, config=config,
                       model=objects.model, loader_train=objects.loader_train, loader_eval=objects.loader_eval)


class TrainingInterrupted(Exception):
    """Ctrl-C stopped :func:`train`: the run folder (None before it exists) and its newest complete checkpoint
    (None before the first epoch ended). Checkpoints are written to a temporary file and renamed, so none is
    half-written."""

    def __init__(self, output_dir: str | None, checkpoint: str | None) -> None:
        super().__init__(f"training interrupted; newest checkpoint: {checkpoint}")
        self.output_dir, self.checkpoint = output_dir, checkpoint

    def message(self, argv: Sequence[str]) -> str:
        """One line: what is saved and the exact command that resumes the run."""
        if self.checkpoint is None:
            where = f" (run folder {self.output_dir})" if self.output_dir else ""
            return f"timm-lap train: interrupted before the first epoch ended; nothing to resume{where}"
        epoch = read_checkpoint(self.checkpoint).get("epoch")
        saved = ("the run is saved" if not isinstance(epoch, int) else
                 "epoch 0 is saved" if epoch == 0 else f"epochs 0-{epoch} are saved")
        return (f"timm-lap train: interrupted; {saved} in {self.checkpoint}; resume with: "
                f"{resume_command(argv, self.checkpoint)}")


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint of a run folder: ``last.pth.tar`` or a recovery checkpoint, whichever is newer."""
    candidates = [p for p in (os.path.join(output_dir, "last.pth.tar"),
                              *glob.glob(os.path.join(glob.escape(output_dir), "recovery-*.pth.tar")))
                  if os.path.isfile(p)]
    return max(candidates, key=os.path.getmtime, default=None)


_RUN_LOCATION_FLAGS = ("--resume", "--output", "--experiment")


def resume_command(argv: Sequence[str], checkpoint: str) -> str:
    """``timm-lap train ARGV`` with ``--resume checkpoint`` into the checkpoint's own run folder (any earlier
    --resume/--output/--experiment replaced), quoted for a POSIX shell."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _RUN_LOCATION_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in _RUN_LOCATION_FLAGS)):
            kept.append(arg)
    run_dir = os.path.dirname(os.path.abspath(checkpoint))
    kept += ["--output", os.path.dirname(run_dir), "--experiment", os.path.basename(run_dir), "--resume", checkpoint]
    return shlex.join(["timm-lap", "train", *kept])


def _sources_yaml(config: TrainConfig, train_set: Any, eval_set: Any) -> str:
    """The files both datasets were read from, as an args.yaml key (``-c`` skips it), also written to the log."""
    if not config.primary:
        return ""
    sources = {"train": describe_sources(train_set), "eval": describe_sources(eval_set)}
    for split, records in sources.items():
        for record in records:
            digest = f", sha256 {str(record['sha256'])[:12]}" if record.get("sha256") else ""
            _logger.info(f"data ({split}): {record['kind']} {record['path']}, {record['files']} file(s), "
                         f"{record['bytes']} bytes{digest}")
    return yaml.safe_dump({DATA_SOURCES_KEY: sources}, default_flow_style=False, sort_keys=False)


def train(args: argparse.Namespace, args_text: str = "", stop_after_epochs: int | None = None,
          plot: bool = True) -> TrainResult:
    """Run training with the flags ``args`` (as :func:`~timm_lap.cli.train_args.parse_args` returns them; not
    changed: the resolved values are in the result's ``config``).

    ``stop_after_epochs`` ends this process after that many epochs (as if interrupted), leaving a resumable run;
    ``plot=False`` skips the per-epoch ``curves.png`` (about a second per epoch on a CPU). Ctrl-C raises
    :class:`TrainingInterrupted`.
    """
    placement = _start_process(args)
    train_set, eval_set = _build_datasets(args)
    config = resolve_config(args, placement, train_set)
    objects = build_objects(config, train_set, eval_set, args_text + _sources_yaml(config, train_set, eval_set))
    try:
        return run_epochs(config, objects, stop_after_epochs, plot)
    except KeyboardInterrupt:
        output_dir = None if objects.output is None else objects.output.dir
        raise TrainingInterrupted(output_dir, None if output_dir is None else latest_checkpoint(output_dir)) from None


def main(argv: Sequence[str] | None = None) -> TrainResult:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args, args_text = parse_args(argv)
    try:
        return train(args, args_text)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"timm-lap train: {exc}") from exc
    except TrainingInterrupted as stop:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed or torch.distributed.get_rank() == 0:
            print(stop.message(argv), file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
