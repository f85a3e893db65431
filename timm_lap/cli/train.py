"""``timm-lap train``: timm's training recipe, built from timm's public API, with ``--lap``.

    timm-lap train --dataset sklearn/digits --model resnet18 --lap --epochs 30 -b 64 --lr 0.05
    torchrun --nproc-per-node 2 -m timm_lap.train --dataset torch/fashion_mnist --model resnet18_lap ...
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
from collections import OrderedDict
from contextlib import nullcontext
from datetime import datetime
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.data import Mixup, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import create_model, load_checkpoint, model_parameters, resume_checkpoint, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    AverageMeter,
    CheckpointSaver,
    ModelEmaV3,
    NativeScaler,
    accuracy,
    dispatch_clip_grad,
    get_outdir,
    init_distributed_device,
    is_primary,
    random_seed,
    reduce_tensor,
)
from tqdm.auto import tqdm

from ..analysis import plotting
from ..data.datasets import (class_balanced_subset, create_lap_dataset, dataset_num_classes, holdout_split, index_subset,
                   with_label_noise)
from ..device import resolve_device
from ..loss import LeastActionLoss
from ..models import LAP_SUFFIX
from ..multiplier import MultiplierScheduler
from ..tracker import get_tracker, track
from .train_args import parse_args

__all__ = ["main", "train", "SUMMARY_COLUMNS"]

_logger = logging.getLogger("timm_lap.train")

SUMMARY_COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "task_loss", "transport",
                   "lap_lambda")
# Sensible input defaults for the small grey-scale datasets timm-lap ships loaders for.
DATASET_INPUT_DEFAULTS = {
    "sklearn/digits": dict(input_size=(1, 32, 32), mean=(0.5,), std=(0.5,)),
    "torch/mnist": dict(input_size=(1, 28, 28), mean=(0.1307,), std=(0.3081,)),
    "torch/fashion_mnist": dict(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,)),
}


class ExtraTrainingState:
    """Checkpoint slot for what timm's saver does not know about: the LAP multiplier and the AMP scaler.

    timm's ``CheckpointSaver`` stores ``amp_scaler.state_dict()`` under ``state_dict_key`` and
    ``resume_checkpoint`` restores it, so this object rides on that mechanism.
    """

    state_dict_key = "timm_lap"

    def __init__(self, multiplier: MultiplierScheduler | None, scaler: NativeScaler | None) -> None:
        self.multiplier = multiplier
        self.scaler = scaler

    def state_dict(self) -> dict[str, Any]:
        return {
            "multiplier": None if self.multiplier is None else self.multiplier.state_dict(),
            "amp_scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.multiplier is not None:
            if state.get("multiplier") is None:
                raise ValueError("--resume: the checkpoint has no LAP multiplier state (was it trained without --lap?)")
            self.multiplier.load_state_dict(state["multiplier"])
        if self.scaler is not None and state.get("amp_scaler") is not None:
            self.scaler.load_state_dict(state["amp_scaler"])


def _resolve_device(args: argparse.Namespace) -> None:
    try:
        args.device = str(resolve_device(args.device, "timm-lap train"))
    except ValueError as err:
        raise SystemExit(str(err)) from None


def apply_dataset_defaults(args: argparse.Namespace) -> None:
    """Fill the input size, mean and std of a known small dataset into ``args`` where the user gave none."""
    defaults = DATASET_INPUT_DEFAULTS.get(args.dataset)
    if not defaults:
        return
    if args.input_size is None and args.img_size is None and args.in_chans is None:
        args.input_size = list(defaults["input_size"])
    chans = args.input_size[0] if args.input_size else (args.in_chans or defaults["input_size"][0])
    if args.mean is None and chans == 1:
        args.mean = list(defaults["mean"])
    if args.std is None and chans == 1:
        args.std = list(defaults["std"])


def _build_datasets(args: argparse.Namespace):
    common = dict(root=args.data_dir or "", download=args.dataset_download, batch_size=args.batch_size,
                  seed=args.seed)
    train_set = create_lap_dataset(args.dataset, split=args.train_split, is_training=True, **common)
    if args.val_from_train is None:
        eval_set = create_lap_dataset(args.dataset, split=args.val_split, is_training=False, **common)
    else:
        # A second instance of the training split, so the held-out part gets the eval transform.
        train_as_eval = create_lap_dataset(args.dataset, split=args.train_split, is_training=False, **common)
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


def _build_model(args: argparse.Namespace, num_classes: int, in_chans: int) -> nn.Module:
    kwargs = dict(args.model_kwargs)
    if args.model.endswith(LAP_SUFFIX):
        kwargs.update(lap_p=args.lap_p, lap_blocks=args.lap_blocks, lap_sample=args.lap_sample)
    model = create_model(
        args.model,
        pretrained=args.pretrained,
        in_chans=in_chans,
        num_classes=num_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        **kwargs,
    )
    if args.initial_checkpoint:
        load_checkpoint(model, args.initial_checkpoint)
    if args.init_gain != 1.0:
        scale_initial_weights(model, args.init_gain)
    if args.lap and get_tracker(model) is None:
        track(model, blocks=args.lap_blocks, p=args.lap_p, sample=args.lap_sample)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def _load_training_checkpoint(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {path}: no such checkpoint file")
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _resolve_lr(args: argparse.Namespace) -> None:
    if args.lr is not None:
        return
    global_batch = args.batch_size * args.world_size * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    scale = args.lr_base_scale or ("sqrt" if any(o in args.opt.lower() for o in ("ada", "lamb")) else "linear")
    args.lr = args.lr_base * (ratio ** 0.5 if scale == "sqrt" else ratio)


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


def train_one_epoch(epoch, model, loader, optimizer, loss_fn, args, device, lr_scheduler=None, amp_autocast=nullcontext,
                    loss_scaler=None, model_ema=None, mixup_fn=None, primary=True):
    """One epoch; returns (metrics, num_updates). Metrics are means over the epoch (reduced over ranks)."""
    lap_loss = loss_fn if isinstance(loss_fn, LeastActionLoss) else None
    accum = args.grad_accum_steps
    updates_per_epoch = (len(loader) + accum - 1) // accum
    num_updates = epoch * updates_per_epoch
    sums = {k: torch.zeros((), device=device, dtype=torch.float64) for k in ("loss", "task_loss", "transport")}
    count = 0
    model.train()
    progress = _Progress(len(loader), f"train {epoch}", primary, args.log_interval)
    optimizer.zero_grad()
    last_accum_steps = len(loader) % accum
    last_batch_idx = len(loader) - 1
    last_batch_idx_to_accum = len(loader) - last_accum_steps
    for batch_idx, (x, y) in enumerate(loader):
        need_update = (batch_idx + 1) % accum == 0 or batch_idx == last_batch_idx
        steps_this_update = last_accum_steps if batch_idx >= last_batch_idx_to_accum and last_accum_steps else accum
        x, y = x.to(device), y.to(device)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sync_ctx = model.no_sync if (args.distributed and not need_update and hasattr(model, "no_sync")) else nullcontext
        with sync_ctx():
            with amp_autocast():
                output = model(x)
                loss = loss_fn(output, y)
            scaled = loss / steps_this_update
            if loss_scaler is not None:
                loss_scaler(scaled, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=model_parameters(model, exclude_head="agc" in args.clip_mode),
                            need_update=need_update)
            else:
                scaled.backward()
                if need_update:
                    if args.clip_grad is not None:
                        dispatch_clip_grad(model_parameters(model, exclude_head="agc" in args.clip_mode),
                                           value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
        sums["loss"] += loss.detach()
        if lap_loss is not None:
            sums["task_loss"] += lap_loss.task_loss
            sums["transport"] += lap_loss.transport
        else:
            sums["task_loss"] += loss.detach()
        count += 1
        if need_update:
            optimizer.zero_grad()
            num_updates += 1
            if model_ema is not None:
                model_ema.update(model, step=num_updates)
            if lr_scheduler is not None:
                lr_scheduler.step_update(num_updates=num_updates)
        progress.update(batch_idx, lambda: {k: (v / count).item() for k, v in sums.items() if k != "task_loss"}
                        | ({"lam": lap_loss.lam.item()} if lap_loss is not None else {}))
    progress.close()
    means = {k: v / max(count, 1) for k, v in sums.items()}
    if args.distributed:
        means = {k: reduce_tensor(v, args.world_size) for k, v in means.items()}
    metrics = OrderedDict((k, v.item()) for k, v in means.items())
    metrics["lap_lambda"] = lap_loss.lam.item() if lap_loss is not None else float("nan")
    if lap_loss is None:
        metrics["transport"] = float("nan")
    return metrics, num_updates


@torch.no_grad()
def validate(model, loader, loss_fn, args, device, amp_autocast=nullcontext, primary=True, desc="eval"):
    model.eval()
    meters = {k: AverageMeter() for k in ("loss", "top1", "top5")}
    progress = _Progress(len(loader), desc, primary, args.log_interval)
    for batch_idx, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(x)
        loss = loss_fn(output.float(), y)
        top1, top5 = accuracy(output, y, topk=(1, min(5, output.shape[-1])))
        if args.distributed:
            loss, top1, top5 = (reduce_tensor(t, args.world_size) for t in (loss, top1, top5))
        n = x.shape[0]
        for name, value in (("loss", loss), ("top1", top1), ("top5", top5)):
            meters[name].update(value.item(), n)
        progress.update(batch_idx, lambda: {"loss": meters["loss"].avg, "top1": meters["top1"].avg})
    progress.close()
    return OrderedDict((k, m.avg) for k, m in meters.items())


def _write_summary(path: str, row: dict[str, Any], write_header: bool) -> None:
    with open(path, "a" if not write_header else "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        if write_header:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in SUMMARY_COLUMNS})


def read_summary(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


TRAIN_PANELS = (("task_loss", "training task loss"), ("transport", "training transport"),
                ("lap_lambda", "multiplier lam"), ("eval_top1", "validation top-1 (%)"))


def plot_curves(summary_path: str, out_path: str) -> str | None:
    """Task loss, transport, lam and validation accuracy per epoch, as a PNG (needs matplotlib)."""
    path = plotting.plot_curves({"": read_summary(summary_path)}, TRAIN_PANELS, out_path)
    return None if path is None else str(path)


def train(
    args: argparse.Namespace, args_text: str = "", stop_after_epochs: int | None = None, plot: bool = True
) -> dict[str, Any]:
    """Run training; returns {'output_dir', 'best_metric', 'best_epoch', 'rows', 'lam', 'model', 'loader_train', 'loader_eval'}.

    ``stop_after_epochs`` ends this process after that many epochs (as if interrupted), leaving a resumable run;
    ``plot=False`` skips the per-epoch ``curves.png`` (about a second per epoch on a CPU).
    """
    _resolve_device(args)
    if args.model.endswith(LAP_SUFFIX):
        args.lap = True
    if args.lap_weight is not None:
        args.lap = True
    apply_dataset_defaults(args)
    device = init_distributed_device(args)
    primary = is_primary(args)
    random_seed(args.seed, args.rank)

    train_set, eval_set = _build_datasets(args)
    num_classes = args.num_classes or dataset_num_classes(train_set)
    args.num_classes = num_classes
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    model = _build_model(args, num_classes, in_chans)
    data_config = resolve_data_config(vars(args), model=model, verbose=primary)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    _resolve_lr(args)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))

    amp_autocast, loss_scaler = nullcontext, None
    if args.amp:
        amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
        amp_autocast = lambda: torch.autocast(device.type, dtype=amp_dtype)  # noqa: E731
        if amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)

    # Losses: timm's choice of training loss, wrapped by LAP when asked.
    mixup_active = args.mixup > 0 or args.cutmix > 0
    if mixup_active:
        train_loss_fn: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()
    multiplier = None
    if args.lap:
        # The model's own tracker carries --lap-p, --lap-blocks and --lap-sample.
        train_loss_fn = LeastActionLoss(train_loss_fn, get_tracker(model), weight=args.lap_weight)
        if args.lap_weight is None:
            multiplier = MultiplierScheduler(optimizer, train_loss_fn, tau=args.lap_tau, every=args.lap_every,
                                             lambda0=args.lap_lambda0)
    eval_loss_fn = nn.CrossEntropyLoss()
    extra_state = ExtraTrainingState(multiplier, loss_scaler)

    start_epoch = 0
    checkpoint = _load_training_checkpoint(args.resume) if args.resume else {}
    if args.resume:
        start_epoch = resume_checkpoint(model, args.resume, optimizer=None if args.no_resume_opt else optimizer,
                                        loss_scaler=extra_state, log_info=primary) or 0

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay)
        if "state_dict_ema" in checkpoint:
            model_ema.module.load_state_dict(checkpoint["state_dict_ema"])

    train_model = model
    if args.torchcompile:
        train_model = torch.compile(model, backend=args.torchcompile)
    if args.distributed:
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=[device] if device.type == "cuda"
                                                          else None)

    mixup_fn = None
    if mixup_active:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                         switch_prob=args.mixup_switch_prob, mode=args.mixup_mode, label_smoothing=args.smoothing,
                         num_classes=num_classes)
    use_prefetcher = device.type == "cuda" and not args.no_prefetcher and not mixup_active
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config["interpolation"]
    loader_train = create_loader(
        train_set, input_size=data_config["input_size"], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        interpolation=train_interpolation, mean=data_config["mean"], std=data_config["std"],
        num_workers=args.workers, distributed=args.distributed, pin_memory=args.pin_mem, device=device,
        use_prefetcher=use_prefetcher, persistent_workers=False,
    )
    loader_eval = create_loader(
        eval_set, input_size=data_config["input_size"], batch_size=args.validation_batch_size or args.batch_size,
        is_training=False, interpolation=data_config["interpolation"], mean=data_config["mean"],
        std=data_config["std"], num_workers=args.workers, distributed=args.distributed,
        crop_pct=data_config["crop_pct"], pin_memory=args.pin_mem, device=device, use_prefetcher=use_prefetcher,
        persistent_workers=False,
    )

    if len(loader_train) == 0:
        # timm's training loader drops the last partial batch: fewer samples than one batch means no step at all.
        raise ValueError(f"the training set has {len(train_set)} samples, fewer than one batch (-b {args.batch_size}"
                         f"{f' x {args.world_size} processes' if args.distributed else ''}), and the last partial "
                         f"batch is dropped when training, so no step would be taken; use -b {len(train_set)} or less")
    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args),
                                                   updates_per_epoch=updates_per_epoch)
    if start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)

    output_dir = saver = None
    summary_path = ""
    if primary:
        exp_name = args.experiment or "-".join([
            datetime.now().strftime("%Y%m%d-%H%M%S"), safe_model_name(args.model), str(data_config["input_size"][-1])])
        output_dir = get_outdir(args.output or "./output/train", exp_name)
        decreasing = "loss" in args.eval_metric
        saver = CheckpointSaver(model=model, optimizer=optimizer, args=args, model_ema=model_ema,
                                amp_scaler=extra_state, checkpoint_dir=output_dir, recovery_dir=output_dir,
                                decreasing=decreasing, max_history=args.checkpoint_hist)
        same_dir = os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(output_dir)
        if "saver" in checkpoint and same_dir and hasattr(saver, "load_state_dict"):  # timm >= 1.0.25
            saver.load_state_dict(checkpoint["saver"])  # keep ranking/evicting checkpoints as before
        with open(os.path.join(output_dir, "args.yaml"), "w") as f:
            f.write(args_text)
        summary_path = os.path.join(output_dir, "summary.csv")
        _logger.info(f"timm-lap train: {args.model}{' with LAP' if args.lap else ''}, {len(train_set)} training / "
                     f"{len(eval_set)} validation samples, {num_epochs} epochs, output in {output_dir}")

    best_metric = best_epoch = None
    rows: list[dict[str, Any]] = []
    epochs_run = 0
    for epoch in range(start_epoch, num_epochs):
        # Seeding each epoch from (seed, epoch) makes data order and augmentation independent of earlier
        # epochs, so a resumed run repeats the uninterrupted one exactly.
        random_seed(args.seed + epoch, args.rank)
        if args.lap_sample is not None:
            get_tracker(model).reseed(args.seed + epoch)
        if hasattr(loader_train.sampler, "set_epoch"):
            loader_train.sampler.set_epoch(epoch)
        if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixup_fn.mixup_enabled = False
        train_metrics, _ = train_one_epoch(
            epoch, train_model, loader_train, optimizer, train_loss_fn, args, device, lr_scheduler=lr_scheduler,
            amp_autocast=amp_autocast, loss_scaler=loss_scaler, model_ema=model_ema, mixup_fn=mixup_fn,
            primary=primary)
        evaluate = (epoch + 1) % args.eval_interval == 0 or epoch + 1 == num_epochs
        eval_metrics = OrderedDict((k, math.nan) for k in ("loss", "top1", "top5"))
        if evaluate:
            eval_metrics = validate(model, loader_eval, eval_loss_fn, args, device, amp_autocast, primary)
            if model_ema is not None:
                eval_metrics = validate(model_ema, loader_eval, eval_loss_fn, args, device, amp_autocast, primary,
                                        desc="eval (EMA)")
        lr = optimizer.param_groups[0]["lr"]
        row = {"epoch": epoch, "train_loss": train_metrics["loss"], "eval_loss": eval_metrics["loss"],
               "eval_top1": eval_metrics["top1"], "eval_top5": eval_metrics["top5"], "lr": lr,
               "task_loss": train_metrics["task_loss"], "transport": train_metrics["transport"],
               "lap_lambda": train_metrics["lap_lambda"]}
        rows.append(row)
        metric = eval_metrics[args.eval_metric.replace("eval_", "")] if args.eval_metric.replace("eval_", "") in \
            eval_metrics else eval_metrics["top1"]
        if primary:
            _write_summary(summary_path, row, write_header=(epoch == 0 or not os.path.exists(summary_path)))
            if plot:
                plot_curves(summary_path, os.path.join(output_dir, "curves.png"))
            if evaluate:
                best_metric, best_epoch = saver.save_checkpoint(epoch, metric=metric)
            else:  # no metric to rank by: a recovery checkpoint keeps the run resumable
                saver.save_recovery(epoch)
            lam = f", lam {row['lap_lambda']:.4g}, transport {row['transport']:.4g}" if args.lap else ""
            evaluated = f"eval loss {row['eval_loss']:.4f}, top1 {row['eval_top1']:.2f}" if evaluate else \
                f"not evaluated (--eval-interval {args.eval_interval})"
            _logger.info(f"epoch {epoch}: train loss {row['train_loss']:.4f}, {evaluated}{lam}")
        lr_scheduler.step(epoch + 1, metric if evaluate else None)
        epochs_run += 1
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
    if multiplier is not None:
        # Every rank reports: under DDP the values must be identical.
        _logger.info(f"rank {args.rank}: final lam {multiplier.lam.item()!r}")
    if args.distributed:
        torch.distributed.barrier()
    return {"output_dir": output_dir, "best_metric": best_metric, "best_epoch": best_epoch, "rows": rows,
            "lam": None if multiplier is None else multiplier.lam.item(), "num_epochs": num_epochs,
            "model": model, "loader_train": loader_train, "loader_eval": loader_eval}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args, args_text = parse_args(argv)
    try:
        return train(args, args_text)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"timm-lap train: {exc}") from exc
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
