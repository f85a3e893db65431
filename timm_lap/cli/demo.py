"""``timm-lap demo``: vanilla vs least-action training of a small pre-activation ResNet on real digits, no network.

    timm-lap demo [--epochs 15] [--train-subset 300] [--model preact_flat9] [--quick]

Both runs go through ``timm-lap train`` with the recipe ``--recipe`` (default: preact_flat9_digits), the same seed,
data subset and hyperparameters; the only difference is ``--lap``. Prints one line per epoch, a side-by-side
table and saves a comparison plot; the flags are in :mod:`.demo_args` (light).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .. import recipes
from ..analysis import plotting
from ..analysis.measure import validation_transport
from . import train_args
from .demo_args import parse_args
from .train import read_summary, train

__all__ = ["main", "validation_transport"]

PROG = "timm-lap demo"
TRAIN_LOGGER = "timm_lap.train"
EPOCH_PREFIX = "epoch "  # timm-lap train's end-of-epoch log line; its other lines are per-batch progress


@dataclass(frozen=True)
class DemoRun:
    """One of the demo's runs, as the table and the plot show it."""

    output_dir: str
    rows: list[dict[str, float]]  # summary.csv's rows
    best_metric: float
    lam: float | None  # the final multiplier (None without LAP)
    val_transport: float  # held-out transport of the final model (last.pth.tar)
    seconds: float
    best_epoch: int | None = None
    val_samples: int = 0  # images the held-out transport is averaged over


def _is_epoch_line(record: logging.LogRecord) -> bool:
    return record.getMessage().startswith(EPOCH_PREFIX)


@contextmanager
def epoch_lines(name: str, stream: Any = None) -> Iterator[None]:
    """``with epoch_lines("lap"): train(...)``: timm-lap train's epoch lines to ``stream`` (stdout), one each, flushed.

    No carriage returns, so they read the same in a log file; the logger's settings are restored afterwards.
    """
    logger = logging.getLogger(TRAIN_LOGGER)
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.addFilter(_is_epoch_line)
    handler.setFormatter(logging.Formatter(name.replace("%", "%%").ljust(8) + " %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a configured root logger would print every line twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _run(name: str, common: list[str], extra: list[str]) -> DemoRun:
    args, text = train_args.parse_args(common + ["--experiment", name] + extra)
    start = time.perf_counter()
    with epoch_lines(name):
        result = train(args, text)
    seconds = time.perf_counter() - start
    assert result.output_dir is not None and result.best_metric is not None  # one process, every epoch evaluated
    return DemoRun(output_dir=result.output_dir, rows=result.rows, best_metric=result.best_metric, lam=result.lam,
                   val_transport=validation_transport(result.model, result.loader_eval), seconds=seconds,
                   best_epoch=result.best_epoch, val_samples=len(result.loader_eval.dataset))


DEMO_PANELS = (("task_loss", "training task loss"), ("eval_top1", "validation top-1 (%)"),
               ("transport", "training transport (LAP)"), ("lap_lambda", "multiplier lam (LAP)"))


def _plot(results: dict[str, DemoRun], path: str, model: str) -> str | None:
    runs = {name: read_summary(os.path.join(result.output_dir, "summary.csv")) for name, result in results.items()}
    drawn = plotting.plot_curves(runs, DEMO_PANELS, path, colors={"vanilla": "tab:blue", "lap": "tab:orange"},
                                 title=f"timm-lap demo: {model} on scikit-learn digits (low-data subset)")
    return None if drawn is None else str(drawn)


def _table(results: dict[str, DemoRun]) -> str:
    header = (f"{'method':8s} {'val top-1 (%)':>14s} {'best top-1':>11s} {'best epoch':>11s} {'val transport':>14s} "
              f"{'final lam':>10s} {'time (s)':>9s}")
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        lam = "-" if r.lam is None else f"{r.lam:.3g}"
        best_epoch = "-" if r.best_epoch is None else str(r.best_epoch)
        lines.append(f"{name:8s} {r.rows[-1]['eval_top1']:14.2f} {r.best_metric:11.2f} {best_epoch:>11s} "
                     f"{r.val_transport:14.4f} {lam:>10s} {r.seconds:9.1f}")
    return "\n".join(lines)


def _notes(results: dict[str, DemoRun]) -> str:
    """What the table's columns measure, and the command that analyses the LAP run's final model."""
    lap = results["lap"]
    last = int(lap.rows[-1]["epoch"])
    return "\n".join([
        f"val top-1, val transport: each run's final model (epoch {last}, last.pth.tar) on the {lap.val_samples} "
        "validation images, eval mode; best top-1, best epoch: model_best.pth.tar.",
        "val transport is the sum of the block energies, what timm-lap analyze reports as 'total transport' for "
        "last.pth.tar; on model_best.pth.tar it reports the best epoch's, the same only when that is the last "
        "epoch. (The epoch lines' transport is the training batches' mean, in training mode.)",
        "the LAP run's energy profile, trajectories and transport efficiency:",
        f"  timm-lap analyze --checkpoint {os.path.join(lap.output_dir, 'last.pth.tar')} "
        f"--output {os.path.join(os.path.dirname(lap.output_dir), 'analyze-lap')}",
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, DemoRun]:
    """Entry point of ``timm-lap demo``: both runs, the table and the plot; returns the runs by name."""
    opts = parse_args(argv)
    logging.getLogger("timm").setLevel(logging.WARNING)  # keep the demo's output to the epoch lines and the table
    try:
        common = [  # the recipe and this demo's own settings
            "-c", recipes.path(opts.recipe), "--model", opts.model, "--train-subset", str(opts.train_subset),
            "--epochs", str(opts.epochs), "--seed", str(opts.seed), "--output", opts.output,
        ]
        print(f"{PROG}: {opts.model} on scikit-learn digits, {opts.train_subset} training images, {opts.epochs} "
              f"epochs, seed {opts.seed}: vanilla, then LAP (tau={opts.lap_tau})", flush=True)
        results = {
            "vanilla": _run("vanilla", common, []),
            "lap": _run("lap", common, ["--lap", "--lap-tau", str(opts.lap_tau)]),
        }
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"{PROG}: {exc}") from exc
    print(_table(results))
    print(_notes(results))
    plot = _plot(results, os.path.join(opts.output, "demo.png"), opts.model)
    if plot:
        print(f"plot written to {plot}")
    return results


if __name__ == "__main__":
    main()
