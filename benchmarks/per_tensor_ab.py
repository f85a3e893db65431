"""Paired A/B in one process: the grouped energy's block-by-block path for large CPU tensors against the
``_foreach_`` path it replaced, each against vanilla, steps interleaved (drift hits all three alike).

Usage: python -m benchmarks.per_tensor_ab {flat9,resnet56} [REPEATS]   (one torch thread)
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import timm
import torch
import torch.nn as nn

import timm_lap
from timm_lap.ops import grouped_energy

NETWORKS = {
    "flat9": (lambda: timm.create_model("preact_flat9", num_classes=10, width=16, in_chans=1), (32, 1, 28, 28)),
    "resnet56": (lambda: timm.create_model("preact_resnet56", num_classes=10), (64, 3, 32, 32)),
}
BLOCK_BY_BLOCK = grouped_energy.PER_TENSOR_MIN_NUMEL


def training_step(network: str, lap: bool) -> Callable[[], None]:
    create, shape = NETWORKS[network]
    torch.manual_seed(0)
    model = create().train()
    x, y = torch.randn(*shape), torch.randint(0, 10, (shape[0],))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion: nn.Module = nn.CrossEntropyLoss()
    if lap:
        criterion = timm_lap.LeastActionLoss(criterion, model)
        timm_lap.MultiplierScheduler(optimizer, criterion)

    def step() -> None:
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(network: str = "flat9", repeats: int = 30, warmup: int = 3) -> dict[str, float]:
    torch.set_num_threads(1)
    vanilla, lap = training_step(network, False), training_step(network, True)
    arms = {"vanilla": (vanilla, BLOCK_BY_BLOCK), "foreach": (lap, 1 << 62), "block_by_block": (lap, BLOCK_BY_BLOCK)}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for rep in range(warmup + repeats):
        for name, (step, threshold) in arms.items():
            grouped_energy.PER_TENSOR_MIN_NUMEL = threshold
            t0 = time.perf_counter()
            step()
            if rep >= warmup:
                times[name].append(time.perf_counter() - t0)
    grouped_energy.PER_TENSOR_MIN_NUMEL = BLOCK_BY_BLOCK
    base = statistics.median(times["vanilla"])
    for name in ("foreach", "block_by_block"):
        extra = statistics.median(a - b for a, b in zip(times[name], times["vanilla"]))
        print(f"{network} {name:15s} {statistics.median(times[name]) / base:.4f}x vanilla, "
              f"median extra {extra * 1e3:.3f} ms per step (vanilla {base * 1e3:.2f} ms, {repeats} steps)")
    return {name: statistics.median(t) / base for name, t in times.items()}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "flat9", int(sys.argv[2]) if len(sys.argv) > 2 else 30)
