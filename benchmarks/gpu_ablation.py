"""Ablation of timm-lap's eager GPU cost (resnet50, 224 px, batch 128, bf16 autocast, channels_last).

Modes, each timed as host-enqueue and synced wall milliseconds per step (median of 10 after 3 warm-up):
vanilla; ``hooks_noop`` (a no-op forward hook on every block); ``track_only`` (energies computed in the
forward, not in the loss); ``lap_fixed`` (``LeastActionLoss(weight=0.1)``); ``lap`` (with
``MultiplierScheduler``), then ``lap`` with Python's GC off and with the plain-PyTorch energy; then a
cProfile of 5 ``lap`` steps. Usage: ``python -m benchmarks.gpu_ablation`` (needs CUDA).
"""
from __future__ import annotations

import cProfile
import gc
import io
import pstats
import statistics
from collections.abc import Callable

import timm
import torch
import torch.nn as nn

from benchmarks.gpu_timing import synced_steps
from timm_lap import LeastActionLoss, MultiplierScheduler, track
from timm_lap.ops import switches as config

MODES = ("vanilla", "hooks_noop", "track_only", "lap_fixed", "lap")


def build(mode: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step of resnet50 in the given mode."""
    model = timm.create_model("resnet50", num_classes=10).to(x.device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn: nn.Module = nn.CrossEntropyLoss()
    if mode == "track_only":
        track(model)
    elif mode in ("lap", "lap_fixed"):
        loss_fn = LeastActionLoss(loss_fn, model, weight=0.1 if mode == "lap_fixed" else None)
        if mode == "lap":
            MultiplierScheduler(optimizer, loss_fn)
    elif mode == "hooks_noop":
        for module in model.modules():
            if type(module).__name__ == "Bottleneck":
                module.register_forward_hook(lambda *a: None)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def enqueue_and_wall_ms(step: Callable[[], None], repeats: int = 10) -> tuple[float, float]:
    """Median host-enqueue and synced wall milliseconds per step, after 3 warm-up steps."""
    for _ in range(3):
        step()
    enqueue, wall = synced_steps(step, repeats)
    return round(1e3 * statistics.median(enqueue), 1), round(1e3 * statistics.median(wall), 1)


def main() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    x = torch.randn(128, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), device=device)
    for mode in MODES:
        step = build(mode, x, y)
        print(mode, "enqueue/wall ms", enqueue_and_wall_ms(step), flush=True)
        if mode == "lap":
            gc.disable()
            print("lap gc off", enqueue_and_wall_ms(step), flush=True)
            gc.enable()
            config.set_fused(False)
            print("lap torch energy", enqueue_and_wall_ms(step), flush=True)
            config.set_fused(True)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue()[:6000])
        del step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
