"""Overhead benchmark: timm-lap against vanilla and a naive reference-style regulariser.

Measures, in one process, with the variants interleaved:
- saved-activation bytes of one training forward (unique storages packed by autograd);
- step time (forward + backward + optimizer step), median and min-max over repetitions;
- on CUDA, peak memory (``torch.cuda.max_memory_allocated``).

``naive`` is the obvious eager implementation: residual tensors ``out - shortcut`` kept for
``mean(|r| ** p)`` and ``lam += tau * loss.item()`` every step (a host-device sync).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import timm
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import energy
from .blocks import find_blocks
from .loss import LeastActionLoss
from .multiplier import MultiplierScheduler
from .tracker import track

__all__ = ["saved_activation_bytes", "run_benchmark", "main"]

DEFAULT_MODELS = ("resnet18", "resnet50", "convnext_atto", "vit_tiny_patch16_224")
VARIANTS = ("vanilla", "timm_lap", "timm_lap_taps", "timm_lap_notaps", "timm_lap_torch", "naive")
DEFAULT_VARIANTS = ("vanilla", "timm_lap", "naive")


def saved_activation_bytes(step: Callable[[], object]) -> int:
    """Bytes of the unique storages autograd saves for backward while ``step()`` runs."""
    storages: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[(t.device, s.data_ptr())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


class NaiveLAP:
    """Reference-code style regulariser, kept as the baseline to beat."""

    def __init__(self, model: nn.Module, tau: float = 1.0, p: float = 2.0) -> None:
        self.residuals: list[torch.Tensor] = []
        self.lam = 1.0
        self.tau = tau
        self.p = p
        specs, _ = find_blocks(model)
        for spec in specs:
            slot: dict = {}
            if spec.shortcut is not None:
                spec.shortcut.register_forward_hook(lambda m, a, o, slot=slot: slot.__setitem__("s", o))
            spec.module.register_forward_hook(
                lambda m, a, o, slot=slot, proj=spec.shortcut is not None: self._hook(o, slot.pop("s") if proj else a[0])
            )
        model.register_forward_pre_hook(lambda m, a: self.residuals.clear())

    def _hook(self, out: torch.Tensor, shortcut: torch.Tensor) -> None:
        if out.shape == shortcut.shape:
            self.residuals.append(out - shortcut)

    def loss(self, task: torch.Tensor) -> torch.Tensor:
        transport = sum(r.float().abs().pow(self.p).mean() for r in self.residuals)
        self.lam += self.tau * task.item()
        return task + transport / self.lam


@contextlib.contextmanager
def variant_settings(variant: str):
    """The energy module's switches for a variant, restored afterwards.

    ``timm_lap``: the defaults; ``timm_lap_taps`` / ``timm_lap_notaps``: gradient taps forced on / off;
    ``timm_lap_torch``: the plain-PyTorch energy instead of the fused CUDA kernels.
    """
    previous = energy.USE_TRITON, energy.GRAD_TAPS
    energy.USE_TRITON = previous[0] and variant != "timm_lap_torch"
    if variant in ("timm_lap_taps", "timm_lap_notaps"):
        energy.GRAD_TAPS = variant == "timm_lap_taps"
    try:
        yield
    finally:
        energy.USE_TRITON, energy.GRAD_TAPS = previous


@dataclass
class Variant:
    name: str
    model: nn.Module
    step: Callable[[], torch.Tensor]  # forward + backward + optimizer step
    forward_loss: Callable[[], torch.Tensor]  # the training forward alone (for saved-activation bytes)
    optimizer: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)


def _model_kwargs(name: str, args: argparse.Namespace) -> dict:
    # Transformers need the benchmark's image size at construction; CNNs take any size.
    return {"img_size": args.img_size} if "vit" in name or "swin" in name else {}


def _build(name: str, variant: str, args: argparse.Namespace, device: torch.device, state: dict) -> Variant:
    model = timm.create_model(name, num_classes=args.num_classes, **_model_kwargs(name, args))
    model.load_state_dict(state)
    model.to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss()
    lap = variant.startswith("timm_lap")
    if lap:
        track(model)
    naive = NaiveLAP(model) if variant == "naive" else None
    runner = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    lap_loss = LeastActionLoss(criterion, model) if lap else None
    if lap_loss is not None:
        MultiplierScheduler(optimizer, lap_loss)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    )

    def forward_loss() -> torch.Tensor:
        with amp:
            out = runner(x)
            if lap_loss is not None:
                return lap_loss(out, y)
            task = criterion(out, y)
            return naive.loss(task) if naive is not None else task

    def step() -> torch.Tensor:
        with variant_settings(variant):
            loss = forward_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return loss

    return Variant(variant, model, step, forward_loss, optimizer)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    state = timm.create_model(name, num_classes=args.num_classes, **_model_kwargs(name, args)).state_dict()
    variants = [_build(name, v, args, device, state) for v in args.variants]
    result: dict = {"model": name}
    if not args.compile:
        saved = {v.name: saved_activation_bytes(v.forward_loss) for v in variants}
        result["saved_bytes"] = saved
    for v in variants:  # warm-up (and compilation)
        for _ in range(args.warmup):
            v.step()
    _sync(device)
    if device.type == "cuda":
        peak = {}
        for v in variants:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            v.step()
            _sync(device)
            peak[v.name] = torch.cuda.max_memory_allocated(device)
        result["peak_memory"] = peak
    for _ in tqdm(range(args.repeats), desc=name, leave=False, disable=not sys.stderr.isatty()):
        for v in variants:  # interleaved: drift hits every variant alike
            _sync(device)
            t0 = time.perf_counter()
            v.step()
            _sync(device)
            v.times.append(time.perf_counter() - t0)
    result["time_s"] = {
        v.name: {"median": statistics.median(v.times), "min": min(v.times), "max": max(v.times)} for v in variants
    }
    base = result["time_s"]["vanilla"]["median"]
    result["time_ratio"] = {v.name: result["time_s"][v.name]["median"] / base for v in variants}
    if "saved_bytes" in result:
        result["saved_bytes_ratio"] = {k: b / result["saved_bytes"]["vanilla"] for k, b in result["saved_bytes"].items()}
    if "peak_memory" in result:
        result["peak_memory_ratio"] = {k: b / result["peak_memory"]["vanilla"] for k, b in result["peak_memory"].items()}
    return result


def run_benchmark(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    env = {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "func")},
    }
    results = [bench_model(name, args, device) for name in args.models]
    return {"env": env, "results": results}


def format_table(report: dict) -> str:
    lines = []
    header = f"{'model':24s} {'variant':9s} {'time ms (median [min-max])':>30s} {'x vanilla':>9s} {'saved x':>8s} {'peak x':>7s}"
    lines.append(header)
    lines.append("-" * len(header))
    for r in report["results"]:
        for name, t in r["time_s"].items():
            span = f"{t['median'] * 1e3:8.1f} [{t['min'] * 1e3:.1f}-{t['max'] * 1e3:.1f}]"
            saved = r.get("saved_bytes_ratio", {}).get(name)
            peak = r.get("peak_memory_ratio", {}).get(name)
            lines.append(
                f"{r['model']:24s} {name:9s} {span:>30s} {r['time_ratio'][name]:9.3f} "
                f"{'' if saved is None else f'{saved:8.3f}':>8s} {'' if peak is None else f'{peak:7.3f}':>7s}"
            )
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="timm-lap bench", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS,
                        help="timm_lap_taps/_notaps: gradient taps forced on/off; timm_lap_torch: without the "
                             "fused CUDA kernels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile every variant")
    parser.add_argument("--json", default=None, help="write the report here as JSON")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if "vanilla" not in args.variants:
        args.variants = ["vanilla", *args.variants]
    report = run_benchmark(args)
    print(format_table(report))
    print(f"# {report['env']['device']}, torch {report['env']['torch']}, {report['env']['threads']} threads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"# JSON written to {args.json}")
    return report


if __name__ == "__main__":
    main()
