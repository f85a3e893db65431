"""``timm-lap demo``: vanilla vs least-action training of a small timm ResNet on real digits, no network.

Both runs go through ``timm-lap train`` with the same seed, data subset and hyperparameters; the only
difference is ``--lap``. Prints a side-by-side table and saves a comparison plot.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .. import recipes
from ..analysis import plotting
from ..analysis.measure import validation_transport
from .train import read_summary, train
from .train_args import parse_args

__all__ = ["main", "validation_transport"]


@dataclass(frozen=True)
class DemoRun:
    """One of the demo's runs, as the table and the plot show it."""

    output_dir: str
    rows: list[dict[str, float]]  # summary.csv's rows
    best_metric: float
    lam: float | None  # the final multiplier (None without LAP)
    val_transport: float  # held-out transport of the final model
    seconds: float


def _run(name: str, common: list[str], extra: list[str]) -> DemoRun:
    args, text = parse_args(common + ["--experiment", name] + extra)
    start = time.perf_counter()
    result = train(args, text)
    seconds = time.perf_counter() - start
    assert result.output_dir is not None and result.best_metric is not None  # one process, every epoch evaluated
    return DemoRun(output_dir=result.output_dir, rows=result.rows, best_metric=result.best_metric, lam=result.lam,
                   val_transport=validation_transport(result.model, result.loader_eval), seconds=seconds)


DEMO_PANELS = (("task_loss", "training task loss"), ("eval_top1", "validation top-1 (%)"),
               ("transport", "training transport (LAP)"), ("lap_lambda", "multiplier lam (LAP)"))


def _plot(results: dict[str, DemoRun], path: str) -> str | None:
    runs = {name: read_summary(os.path.join(result.output_dir, "summary.csv")) for name, result in results.items()}
    drawn = plotting.plot_curves(runs, DEMO_PANELS, path, colors={"vanilla": "tab:blue", "lap": "tab:orange"},
                                 title="timm-lap demo: resnet10t on scikit-learn digits (low-data subset)")
    return None if drawn is None else str(drawn)


def _table(results: dict[str, DemoRun]) -> str:
    header = (f"{'method':8s} {'val top-1 (%)':>14s} {'best top-1':>11s} {'val transport':>14s} {'final lam':>10s} "
              f"{'time (s)':>9s}")
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        lam = "-" if r.lam is None else f"{r.lam:.3g}"
        lines.append(f"{name:8s} {r.rows[-1]['eval_top1']:14.2f} {r.best_metric:11.2f} {r.val_transport:14.4f} "
                     f"{lam:>10s} {r.seconds:9.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, DemoRun]:
    parser = argparse.ArgumentParser(prog="timm-lap demo", description=__doc__.split("\n")[0])
    parser.add_argument("--train-subset", type=int, default=300, help="training images (class-balanced)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--lap-tau", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="./output/demo")
    parser.add_argument("--quick", action="store_true", help="3 epochs on 200 images (a smoke test)")
    opts = parser.parse_args(argv)
    logging.getLogger("timm").setLevel(logging.WARNING)  # keep the demo's output to the epoch lines and the table
    if opts.quick:
        opts.epochs, opts.train_subset = min(opts.epochs, 3), min(opts.train_subset, 200)
    common = [  # the digits recipe (timm_lap/recipes/resnet10t_digits.yaml) and this demo's own settings
        "-c", recipes.path("resnet10t_digits"), "--model", opts.model, "--train-subset", str(opts.train_subset),
        "--epochs", str(opts.epochs), "--seed", str(opts.seed), "--output", opts.output,
    ]
    print(f"timm-lap demo: {opts.model} on scikit-learn digits, {opts.train_subset} training images, "
          f"{opts.epochs} epochs, seed {opts.seed}: vanilla, then LAP (tau={opts.lap_tau})")
    results = {
        "vanilla": _run("vanilla", common, []),
        "lap": _run("lap", common, ["--lap", "--lap-tau", str(opts.lap_tau)]),
    }
    print(_table(results))
    plot = _plot(results, os.path.join(opts.output, "demo.png"))
    if plot:
        print(f"plot written to {plot}")
    return results


if __name__ == "__main__":
    main()
