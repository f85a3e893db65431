"""``timm-lap analyze``: a markdown report on the transport a (trained) timm model applies to a dataset.

    timm-lap analyze --checkpoint output/demo/lap/last.pth.tar
    timm-lap analyze --model resnet18 --checkpoint weights.pth --dataset sklearn/digits

Writes ``report.md`` (model, checkpoint, data, top-1 accuracy, total transport, per-block energies,
transport efficiency per same-width stage) with ``energy_profile.png`` and ``trajectories.png`` into
``--output`` (default ``./output/analyze/<model>``). A ``timm-lap train`` checkpoint's saved arguments
fill in the model (and its ``--model-kwargs``), dataset, split, input size and class count when they are not
given on the command line.
The flags are in :mod:`.analyze_args` (light); this module runs the steps; :mod:`timm_lap.analysis` measures,
draws and writes the text.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.models import safe_model_name
from timm.utils import random_seed

from ..analysis.measure import energy_profile, same_width_stages, trajectories, transport_efficiency
from ..analysis.plotting import plot_energy_profile, plot_trajectories
from ..analysis.report import render_report, stage_label
from ..data.targets import dataset_num_classes
from ..device import resolve_device
from ..tracker import get_tracker
from .analyze_args import PROG, parse_args
from .build import build_model, create_dataset, eval_loader, read_checkpoint
from .train import apply_dataset_defaults

__all__ = ["analyze", "main", "parse_args"]

TRAJECTORY_POINTS = 256
# Settings a timm-lap train checkpoint's saved `args` may supply when the command line leaves them unset:
# the data ones only without --dataset, the input ones only when no input size/channels were given.
INHERITED_ALWAYS = ("num_classes", "crop_pct", "interpolation")
INHERITED_DATA = ("dataset", "data_dir", "split")
INHERITED_INPUT = ("input_size", "img_size", "in_chans", "mean", "std")
# Where load_checkpoint(use_ema=True) takes the weights from, in its order of preference.
WEIGHT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


# ----------------------------------------------------------------- checkpoint
def _training_args(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The ``args`` a training script saved in the checkpoint, as a dict ({} if none)."""
    saved = checkpoint.get("args")
    if isinstance(saved, argparse.Namespace):
        return vars(saved)
    return dict(saved) if isinstance(saved, dict) else {}


def _describe_checkpoint(path: str, checkpoint: dict[str, Any]) -> str:
    """One line saying what kind of checkpoint ``path`` is, which epoch, and where the weights came from."""
    key = next((k for k in WEIGHT_KEYS if checkpoint.get(k) is not None), None)
    if key is None:
        return f"`{path}` (state_dict)"
    epoch = f", epoch {checkpoint['epoch']}" if "epoch" in checkpoint else ""
    metric = checkpoint.get("metric")
    if isinstance(metric, (int, float)):
        name = _training_args(checkpoint).get("eval_metric") or "metric"
        epoch += f", saved with eval {name} {metric:.4g}"
    return f"`{path}` (training checkpoint{epoch}, weights from `{key}`)"


def _inherit(args: argparse.Namespace, train_args: dict[str, Any]) -> list[str]:
    """Fill unset settings from a training run's args; returns the names that were filled."""
    source = {**train_args, "split": train_args.get("val_split")}
    names = list(INHERITED_ALWAYS)
    if args.dataset is None:
        names += INHERITED_DATA
    if all(getattr(args, name) is None for name in ("input_size", "img_size", "in_chans")):
        names += INHERITED_INPUT
    filled = [name for name in names if getattr(args, name) is None and source.get(name) is not None]
    for name in filled:
        setattr(args, name, source[name])
    return filled


# ---------------------------------------------------------------- model, data
@torch.no_grad()
def _top1(model: nn.Module, loader: Iterable[Any], device: torch.device) -> tuple[float, int]:
    """Top-1 accuracy (%) of ``model`` over every batch of ``loader``, and the number of samples."""
    model.eval()
    correct = count = 0
    for x, y in loader:
        pred = model(x.to(device)).argmax(dim=-1)
        correct += int((pred == y.to(device)).sum())
        count += len(y)
    if count == 0:
        raise ValueError("the dataset split is empty: nothing to analyse.")
    return 100.0 * correct / count, count


def _first_samples(loader: Iterable[Any], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` inputs and labels the loader yields (fewer if it runs out)."""
    xs, ys, left = [], [], n
    for x, y in loader:
        xs.append(x[:left])
        ys.append(y[:left])
        left -= len(xs[-1])
        if left <= 0:
            break
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------ analysis
def _say(message: str) -> None:
    print(f"{PROG}: {message}", flush=True)


def _plot_trajectories(model: nn.Module, loader: Iterable[Any], out: Path, device: torch.device,
                       title: str) -> dict[str, Any]:
    x, y = _first_samples(loader, TRAJECTORY_POINTS)
    traj = trajectories(model, x.to(device))  # the longest same-width stage
    plot_trajectories(traj, y, out / "trajectories.png", title=f"{title}: {stage_label(traj['stage'], code=False)}")
    return {"stage": traj["stage"], "points": len(x), "explained_variance_ratio": traj["explained_variance_ratio"]}


def _resolve_settings(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Read the checkpoint and complete ``args`` from it and the dataset defaults; returns (checkpoint, inherited)."""
    checkpoint = read_checkpoint(args.checkpoint, flag="--checkpoint", tolerant=True) if args.checkpoint else {}
    train_args = _training_args(checkpoint)
    inherited = _inherit(args, train_args)
    if args.model is None:
        if not train_args.get("model"):
            raise ValueError("--model is required (no timm-lap train checkpoint to take it from).")
        args.model = train_args["model"]
        inherited.insert(0, "model")
    if args.dataset is None:
        raise ValueError("--dataset is required (no timm-lap train checkpoint to take it from).")
    args.split = args.split or "validation"
    args.model_kwargs = {}
    if train_args.get("model") not in (None, args.model):
        _say(f"note: the checkpoint was trained as {train_args['model']!r}, analysing it as {args.model!r}")
    elif train_args.get("model_kwargs"):  # the trained shape (e.g. preact_flat9 width=16), for the same model only
        args.model_kwargs = dict(train_args["model_kwargs"])
        inherited.append("model_kwargs")
    apply_dataset_defaults(args)
    return checkpoint, inherited


def _build_model(args: argparse.Namespace, num_classes: int, checkpoint: dict[str, Any]) -> tuple[nn.Module, str]:
    """The timm model with the checkpoint's weights (or freshly initialised), and a line describing them."""
    random_seed(args.seed)
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    model = build_model(args.model, in_chans, num_classes, weights=args.checkpoint, flag="--checkpoint",
                        model_kwargs=args.model_kwargs)
    if not args.checkpoint:
        return model, f"none: freshly initialised weights (seed {args.seed}), not a trained model"
    return model, _describe_checkpoint(args.checkpoint, checkpoint)


def _measure(model: nn.Module, loader: Any, args: argparse.Namespace, device: torch.device, out: Path,
             title: str) -> dict[str, Any]:
    """Accuracy, energy profile, transport efficiency and trajectories, with their plots."""
    top1, count = _top1(model, loader, device)
    _say(f"top-1 accuracy {top1:.2f} % on {count} samples")
    profile = energy_profile(model, loader, max_batches=args.max_batches, device=device)
    plot_energy_profile(profile, out / "energy_profile.png", title=f"{title}: energy profile")
    energy_samples = min(count, args.batch_size * args.max_batches) if args.max_batches else count
    total = sum(profile.values())
    _say(f"energy profile of {len(profile)} blocks on {energy_samples} samples (eval mode): total transport "
         f"{total:.6g}")

    has_stage = bool(same_width_stages(model, _first_samples(loader, 2)[0].to(device)))
    efficiency = transport_efficiency(model, loader, n=args.n, device=device) if has_stage else []
    for row in efficiency:
        single = " (one block: about 1 whatever was learned, see the report)" if row["blocks"] == 1 else ""
        _say(f"transport efficiency of {stage_label(row['stage'], code=False)}: {row['efficiency']:.4g} "
             f"(n = {row['n']}){single}")
    traj = _plot_trajectories(model, loader, out, device, title) if has_stage else None
    tracker = get_tracker(model)
    return {
        "num_samples": count, "top1": top1, "energy_profile": profile, "total_transport": total,
        "energy_samples": energy_samples, "p": tracker.p if tracker is not None else 2.0,
        "transport_efficiency": efficiency, "trajectories": traj,
        "plots": {"energy_profile": str(out / "energy_profile.png"),
                  "trajectories": str(out / "trajectories.png") if traj else None},
    }


def analyze(args: argparse.Namespace) -> dict[str, Any]:
    """Run the analysis described by ``args`` (see :func:`parse_args`); write the report and return the results."""
    checkpoint, inherited = _resolve_settings(args)
    device = resolve_device(args.device, "timm-lap analyze")
    dataset = create_dataset(args.dataset, root=args.data_dir or "", split=args.split, is_training=False,
                             download=args.dataset_download, seed=args.seed)
    num_classes = args.num_classes or dataset_num_classes(dataset)
    model, info = _build_model(args, num_classes, checkpoint)
    model.to(device).eval()
    data_config = resolve_data_config(vars(args), model=model)
    loader = eval_loader(dataset, data_config, args.batch_size, args.workers, device)
    out = Path(args.output or os.path.join("output", "analyze", safe_model_name(args.model)))
    out.mkdir(parents=True, exist_ok=True)
    source = f"checkpoint {args.checkpoint}" if args.checkpoint else "fresh init"
    _say(f"{args.model} ({source}) on {args.dataset or 'ImageFolder'}/{args.split}: {len(dataset)} samples, "
         f"input {data_config['input_size']}")

    title = f"{args.model} ({'checkpoint' if args.checkpoint else 'fresh init'})"
    result = {
        "output_dir": str(out), "report": str(out / "report.md"), "model": args.model,
        "model_kwargs": args.model_kwargs, "checkpoint": args.checkpoint, "checkpoint_info": info,
        "checkpoint_epoch": checkpoint.get("epoch"), "inherited": inherited, "dataset": args.dataset,
        "split": args.split, "num_classes": num_classes, "num_params": sum(p.numel() for p in model.parameters()),
        "input_size": tuple(data_config["input_size"]), "data_config": data_config,
        **_measure(model, loader, args, device, out, title),
    }
    Path(result["report"]).write_text(render_report(result))
    _say(f"report written to {result['report']}")
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of ``timm-lap analyze``; returns :func:`analyze`'s result."""
    args = parse_args(argv)
    try:
        return analyze(args)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"{PROG}: {exc}") from exc


if __name__ == "__main__":
    main()
