"""Vanilla vs least-action (LAP) training of a small timm ResNet on scikit-learn's digits.

Both runs share the seed, the data and every hyperparameter; the LAP run only swaps in
``resnet10t_lap``, :class:`timm_lap.LeastActionLoss` and :class:`timm_lap.MultiplierScheduler`.
The 8x8 digits (bundled with scikit-learn, no download) are upsampled to 32x32 and only a
small class-balanced training subset is used: the low-data regime.

    python examples/digits_lap_vs_vanilla.py              # about a minute on 2 CPU cores
    python examples/digits_lap_vs_vanilla.py --quick      # about 15 seconds (smoke test)
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

import timm_lap

ARCH = "resnet10t"
NUM_CLASSES = 10
IMAGE_SIZE = 32
BATCH_SIZE = 64
OPTIMIZER = dict(opt="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)  # timm's "sgd" is Nesterov SGD
SPLIT_SEED = 0  # the train/test split is the same for every --seed
COLORS = {"vanilla": "tab:blue", "lap": "tab:orange"}

Tensors = tuple[torch.Tensor, torch.Tensor]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=300, help="training images (class-balanced subset)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--tau", type=float, default=1.0, help="multiplier step: lam += tau * task_loss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("examples_output/digits_lap_vs_vanilla.png"))
    parser.add_argument("--quick", action="store_true", help="a short run for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 4)
    return args


# ---------------------------------------------------------------------- data
def balanced_subset(y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``size`` samples with (as nearly as possible) equal counts per class."""
    classes = np.unique(y)
    counts = [size // len(classes) + (i < size % len(classes)) for i in range(len(classes))]
    picks = [rng.permutation(np.flatnonzero(y == c))[:n] for c, n in zip(classes, counts)]
    return rng.permutation(np.concatenate(picks))


def to_images(x: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """Flat 8x8 pixels in [0, 1] -> standardised 1x32x32 tensors."""
    images = torch.from_numpy((x - mean) / std).float().reshape(-1, 1, 8, 8)
    return F.interpolate(images, size=IMAGE_SIZE, mode="bilinear", align_corners=False)


def load_data(train_size: int, seed: int) -> tuple[Tensors, Tensors]:
    """A small balanced training subset and the fixed 25% test split of ``load_digits``."""
    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    x_pool, x_test, y_pool, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=SPLIT_SEED
    )
    idx = balanced_subset(y_pool, train_size, np.random.default_rng(seed))
    x_train, y_train = x_pool[idx], y_pool[idx]
    mean, std = float(x_train.mean()), float(x_train.std())
    return (
        (to_images(x_train, mean, std), torch.from_numpy(y_train).long()),
        (to_images(x_test, mean, std), torch.from_numpy(y_test).long()),
    )


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model: nn.Module, data: Tensors) -> tuple[float, float]:
    """Accuracy and mean transport cost on ``data``, measured on an eval-mode copy of ``model``."""
    model = copy.deepcopy(model).eval()
    existing = timm_lap.get_tracker(model)
    if existing is not None:
        existing.remove()
    tracker = timm_lap.track(model, track_eval=True)
    correct, transport = 0, 0.0
    for x, y in DataLoader(TensorDataset(*data), batch_size=256):
        correct += (model(x).argmax(dim=1) == y).sum().item()
        transport += tracker.transport_cost().item() * len(y)
    n = len(data[1])
    return correct / n, transport / n


# -------------------------------------------------------------------- training
def train(lap: bool, train_data: Tensors, test_data: Tensors, args: argparse.Namespace) -> dict[str, Any]:
    """Train one model (vanilla or LAP) and return its final metrics and per-epoch history."""
    name = "lap" if lap else "vanilla"
    torch.manual_seed(args.seed)  # same initial weights and batch order for both runs
    model = timm.create_model(ARCH + ("_lap" if lap else ""), num_classes=NUM_CLASSES, in_chans=1)
    optimizer = create_optimizer_v2(model, **OPTIMIZER)
    criterion: nn.Module = nn.CrossEntropyLoss()
    multiplier = None
    if lap:
        criterion = timm_lap.LeastActionLoss(criterion, model)
        multiplier = timm_lap.MultiplierScheduler(optimizer, criterion, tau=args.tau)
    loader = DataLoader(
        TensorDataset(*train_data),
        batch_size=BATCH_SIZE,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )

    keys = ("task_loss", "transport", "test_acc", "test_transport", "lam")
    history: dict[str, list[float]] = {key: [] for key in keys}
    train_time = 0.0
    # A bar on a terminal; into a file or pipe (CI, nohup, notebooks) one plain line per epoch instead.
    interactive = sys.stderr.isatty()
    progress = tqdm(total=args.epochs * len(loader), desc=name, leave=False, disable=not interactive)
    for epoch in range(args.epochs):
        model.train()
        start = time.perf_counter()
        task_sum, transport_sum, n = 0.0, 0.0, 0
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            output = model(x)
            loss = criterion(output, y)
            loss.backward()
            optimizer.step()
            n += len(y)
            task_sum += (criterion.task_loss if lap else loss).item() * len(y)
            if lap:
                transport_sum += criterion.transport.item() * len(y)
            progress.update()
        train_time += time.perf_counter() - start

        acc, test_transport = evaluate(model, test_data)
        history["task_loss"].append(task_sum / n)
        history["transport"].append(transport_sum / n if lap else math.nan)
        history["test_acc"].append(acc)
        history["test_transport"].append(test_transport)
        history["lam"].append(multiplier.lam.item() if multiplier is not None else math.nan)
        progress.set_postfix(loss=f"{task_sum / n:.3f}", acc=f"{acc:.3f}")
        if not interactive:
            print(f"{name:<8} epoch {epoch + 1}/{args.epochs}: task loss {task_sum / n:.4f}, test accuracy {acc:.4f}",
                  flush=True)
    progress.close()

    return {
        "accuracy": history["test_acc"][-1],
        "transport": history["test_transport"][-1],
        "lam": history["lam"][-1] if lap else None,
        "train_time": train_time,
        "history": history,
    }


# --------------------------------------------------------------------- report
def print_table(results: dict[str, dict[str, Any]]) -> None:
    header = f"{'method':<8} {'test acc':>9} {'test transport':>15} {'final lam':>10} {'train time (s)':>15}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        lam = "-" if r["lam"] is None else f"{r['lam']:.2f}"
        print(f"{name:<8} {r['accuracy']:>9.4f} {r['transport']:>15.4f} {lam:>10} {r['train_time']:>15.1f}")


def plot(results: dict[str, dict[str, Any]], out: Path) -> None:
    """Per-epoch curves of both runs, one panel per quantity."""
    panels = [
        ("task_loss", "training task loss"),
        ("transport", "training transport (LAP)"),
        ("test_transport", "test transport"),
        ("test_acc", "test accuracy"),
        ("lam", "multiplier lam (LAP)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for name, r in results.items():
            values = r["history"][key]
            if not all(math.isnan(v) for v in values):
                ax.plot(range(1, len(values) + 1), values, marker=".", color=COLORS[name], label=name)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    train_data, test_data = load_data(args.train_size, args.seed)
    print(
        f"digits: {len(train_data[1])} training / {len(test_data[1])} test images, "
        f"{ARCH}, {args.epochs} epochs, tau={args.tau}, seed={args.seed}"
    )
    results = {
        "vanilla": train(False, train_data, test_data, args),
        "lap": train(True, train_data, test_data, args),
    }
    print_table(results)
    plot(results, args.out)
    print(f"plot written to {args.out}")
    return results


if __name__ == "__main__":
    main()
