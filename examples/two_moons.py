"""Particle trajectories of a 2D residual network: vanilla vs least-action (LAP) training.

A stack of residual blocks ``x + h * f(x)`` acts directly on the 2D points of scikit-learn's
two moons (or circles) and a linear head classifies where the points end up. Both runs share
the seed, the data and every hyperparameter; the LAP run only wraps the loss in
:class:`timm_lap.LeastActionLoss` with a :class:`timm_lap.MultiplierScheduler`. The figure
shows every point's path through the blocks in the input plane: LAP moves the points less,
along straighter paths. The script prints test accuracy, transport cost (kinetic energy) and
transport efficiency (1 = straight, evenly paced optimal-transport paths).

    python examples/two_moons.py                  # a few seconds on 2 CPU cores
    python examples/two_moons.py --data circles
    python examples/two_moons.py --quick          # a shorter run (smoke test)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
from sklearn.datasets import make_circles, make_moons
from tqdm.auto import tqdm

import timm_lap
from timm_lap.analysis.measure import draw_trajectories, trajectories, transport_efficiency

Tensors = tuple[torch.Tensor, torch.Tensor]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("moons", "circles"), default="moons")
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-test", type=int, default=512)
    parser.add_argument("--depth", type=int, default=10, help="number of residual blocks")
    parser.add_argument("--hidden", type=int, default=16, help="hidden width of each block's MLP")
    parser.add_argument("--steps", type=int, default=500, help="full-batch Adam steps")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--tau", type=float, default=1.0, help="multiplier step: lam += tau * task_loss")
    parser.add_argument("--plot-points", type=int, default=300, help="test points whose paths are drawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("examples_output/two_moons.png"))
    parser.add_argument("--quick", action="store_true", help="a shorter run for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 250)
        args.n_train = min(args.n_train, 256)
        args.n_test = min(args.n_test, 256)
        args.plot_points = min(args.plot_points, 150)
    return args


# ----------------------------------------------------------------------- model
class ResidualBlock2D(nn.Module):
    """``x + h * f(x)`` with ``f`` a small tanh MLP from the plane to the plane."""

    def __init__(self, hidden: int, h: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, 2)
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.h * self.fc2(torch.tanh(self.fc1(x)))


class PlaneResNet(nn.Module):
    """Residual blocks that move the 2D points, then a linear classifier on the moved points."""

    def __init__(self, depth: int, hidden: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualBlock2D(hidden, 1.0 / depth) for _ in range(depth)])
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


# ------------------------------------------------------------------------ data
def make_data(kind: str, n: int, seed: int) -> Tensors:
    if kind == "moons":
        x, y = make_moons(n_samples=n, noise=0.1, random_state=seed)
    else:
        x, y = make_circles(n_samples=n, noise=0.1, factor=0.4, random_state=seed)
    return torch.from_numpy(x).float(), torch.from_numpy(y).long()


# -------------------------------------------------------------------- training
def train(lap: bool, data: Tensors, args: argparse.Namespace) -> tuple[PlaneResNet, float | None, float]:
    """Full-batch Adam; returns the model, the final multiplier (LAP only) and the training time."""
    torch.manual_seed(args.seed)  # the same initial weights for both runs
    model = PlaneResNet(args.depth, args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    criterion: nn.Module = nn.CrossEntropyLoss()
    multiplier = None
    if lap:
        criterion = timm_lap.LeastActionLoss(criterion, model)
        multiplier = timm_lap.MultiplierScheduler(optimizer, criterion, tau=args.tau)
    x, y = data
    start = time.perf_counter()
    model.train()
    # A bar on a terminal; into a file or pipe (CI, nohup, notebooks) ten plain lines instead.
    interactive = sys.stderr.isatty()
    name = "lap" if lap else "vanilla"
    report_every = max(1, args.steps // 10)
    for step in tqdm(range(args.steps), desc=name, leave=False, disable=not interactive):
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        if not interactive and ((step + 1) % report_every == 0 or step + 1 == args.steps):
            print(f"{name:<8} step {step + 1}/{args.steps}: loss {loss.item():.4f}", flush=True)
    elapsed = time.perf_counter() - start
    return model, (multiplier.lam.item() if multiplier is not None else None), elapsed


@torch.no_grad()
def accuracy(model: nn.Module, data: Tensors) -> float:
    model.eval()
    x, y = data
    return (model(x).argmax(dim=1) == y).float().mean().item()


def evaluate(model: PlaneResNet, data: Tensors) -> dict[str, float]:
    """Test accuracy, transport cost (mean over points of the summed squared moves) and efficiency."""
    (stage,) = transport_efficiency(model, [data], n=len(data[1]), progress=False)
    return {
        "accuracy": accuracy(model, data),
        "transport": stage["kinetic"],
        "w2_squared": stage["w2_squared"],
        "efficiency": stage["efficiency"],
    }


# --------------------------------------------------------------------- figure
def draw_head_boundary(ax: Any, head: nn.Linear) -> None:
    """The linear head's decision line, which applies to the end points of the paths."""
    w = (head.weight[1] - head.weight[0]).detach().numpy()
    b = (head.bias[1] - head.bias[0]).item()
    if not np.any(w):
        return  # a constant head has no boundary
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    if abs(w[1]) > abs(w[0]):
        xs = np.array([x0, x1])
        ax.plot(xs, -(w[0] * xs + b) / w[1], "k--", linewidth=1, label="head boundary")
    else:
        ys = np.array([y0, y1])
        ax.plot(-(w[1] * ys + b) / w[0], ys, "k--", linewidth=1, label="head boundary")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def square_limits(points: np.ndarray, margin: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper corners of a square around ``points``: equal scales keep path lengths comparable."""
    low, high = points.min(0), points.max(0)
    half = 0.5 * (1 + 2 * margin) * float((high - low).max())
    centre = 0.5 * (low + high)
    return centre - half, centre + half


def plot(
    models: dict[str, PlaneResNet], results: dict[str, dict[str, Any]], data: Tensors, args: argparse.Namespace
) -> None:
    """Both runs' test-point paths side by side, on the same square axes."""
    x, y = data[0][: args.plot_points], data[1][: args.plot_points]
    paths = {name: trajectories(model, x)["positions"] for name, model in models.items()}
    low, high = square_limits(np.concatenate([p.reshape(-1, 2) for p in paths.values()]))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 5.4), sharex=True, sharey=True)
    for ax, (name, model) in zip(axes, models.items()):
        draw_trajectories(ax, paths[name], y.numpy())
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        draw_head_boundary(ax, model.head)
        r = results[name]
        ax.set_title(
            f"{name}: acc {r['accuracy']:.3f}, transport {r['transport']:.3f}, efficiency {r['efficiency']:.3f}",
            fontsize=10,
        )
        ax.set_aspect("equal", adjustable="box")
        ax.grid(alpha=0.2)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"{args.data}: paths through {args.depth} residual blocks (o start, x end)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------- report
def print_table(results: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'method':<8} {'test acc':>9} {'transport':>10} {'W2^2':>8} {'efficiency':>11} "
        f"{'final lam':>10} {'time (s)':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        lam = "-" if r["lam"] is None else f"{r['lam']:.2f}"
        print(
            f"{name:<8} {r['accuracy']:>9.4f} {r['transport']:>10.4f} {r['w2_squared']:>8.4f} "
            f"{r['efficiency']:>11.4f} {lam:>10} {r['train_time']:>9.1f}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train vanilla and LAP, print and plot; returns the numbers of both and the transport ratio."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    # Tensors this small gain nothing from threads, and spinning threads crawl on a busy CPU.
    torch.set_num_threads(1)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict[str, Any]:
    train_data = make_data(args.data, args.n_train, args.seed)
    test_data = make_data(args.data, args.n_test, args.seed + 1)
    print(
        f"{args.data}: {args.n_train} training / {args.n_test} test points, {args.depth} blocks, "
        f"{args.steps} full-batch Adam steps (lr {args.lr}), tau={args.tau}, seed={args.seed}"
    )
    models: dict[str, PlaneResNet] = {}
    results: dict[str, Any] = {}
    for name in ("vanilla", "lap"):
        model, lam, elapsed = train(name == "lap", train_data, args)
        models[name] = model
        results[name] = {**evaluate(model, test_data), "lam": lam, "train_time": elapsed}
    print_table(results)
    ratio = results["lap"]["transport"] / results["vanilla"]["transport"]
    print(f"transport LAP / vanilla: {ratio:.3f} (LAP moves the points {1 / ratio:.1f}x less)")
    plot(models, results, test_data, args)
    print(f"figure written to {args.out}")
    return {**results, "transport_ratio": ratio, "figure": str(args.out)}


if __name__ == "__main__":
    main()
