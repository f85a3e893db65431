"""Step timing on CUDA shared by the GPU diagnostics (``gpu_profile``, ``gpu_host_time``, ``gpu_ablation``)."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch


def synced_steps(step: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per step, each step starting on an idle device: (host enqueue time, wall time after a sync)."""
    torch.cuda.synchronize()
    enqueue, wall = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        enqueue.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
    return enqueue, wall


def pipelined_step(step: Callable[[], object], repeats: int) -> float:
    """Mean seconds per step over ``repeats`` back-to-back steps and one final sync, as a training loop runs."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats
