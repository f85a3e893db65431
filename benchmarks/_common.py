"""Shared code for the low-data benchmarks: one training cell, resumable results files, statistics, plots.

Every run goes through ``timm_lap.train.train`` (the project's training entry point). The only change made
here is that the per-epoch ``curves.png`` plot of ``train`` is switched off (``train(..., plot=False)``): it
costs about a second per epoch on CPU and nothing is read from it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "Cell", "ResultsFile", "base_argv", "deadline_after", "run_cell", "run_sweep", "t_interval", "paired_difference",
    "spearman", "add_common_args", "default_out_dir", "format_ci",
]

Cell = dict[str, Any]

HERE = os.path.dirname(os.path.abspath(__file__))


def default_out_dir(name: str) -> str:
    """``benchmarks/results/<name>/``."""
    return os.path.join(HERE, "results", name)


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval: {'n', 'mean', 'sd', 'half', 'lo', 'hi'}.

    With a single value the half-width is NaN (no spread can be estimated).
    """
    x = np.asarray([float(v) for v in values], dtype=float)
    if x.size == 0:
        raise ValueError("t_interval: no values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"t_interval: confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size < 2:
        return {"n": 1, "mean": mean, "sd": math.nan, "half": math.nan, "lo": math.nan, "hi": math.nan}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=x.size - 1) * sd / math.sqrt(x.size))
    return {"n": int(x.size), "mean": mean, "sd": sd, "half": half, "lo": mean - half, "hi": mean + half}


def paired_difference(a: dict[Any, float], b: dict[Any, float], confidence: float = 0.95) -> dict[str, float]:
    """t interval of ``a[k] - b[k]`` over the keys (e.g. seeds) both have; pairs only, never unpaired values."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ValueError("paired_difference: no common keys to pair")
    return t_interval([a[k] - b[k] for k in keys], confidence)


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman's rank correlation and its two-sided p-value."""
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"spearman: need two sequences of equal length >= 3, got {len(x)} and {len(y)}")
    res = stats.spearmanr(x, y)
    return {"n": len(x), "rho": float(res.statistic), "p": float(res.pvalue)}


def format_ci(ci: dict[str, float], digits: int = 2) -> str:
    """'mean ± half (n=k)' or 'mean (n=1)'."""
    if ci["n"] < 2:
        return f"{ci['mean']:.{digits}f} (n=1)"
    return f"{ci['mean']:.{digits}f} ± {ci['half']:.{digits}f} (n={ci['n']})"


# ---------------------------------------------------------------------------------------------------------------
# Resumable results file (JSON lines, one finished run per line)
# ---------------------------------------------------------------------------------------------------------------


class ResultsFile:
    """Append-only JSONL file of finished runs; a run is identified by the values of ``key_fields``."""

    def __init__(self, path: str, key_fields: Sequence[str]) -> None:
        if not key_fields:
            raise ValueError("ResultsFile: key_fields must not be empty")
        self.path = path
        self.key_fields = tuple(key_fields)

    def key(self, row: dict[str, Any]) -> tuple:
        missing = [k for k in self.key_fields if k not in row]
        if missing:
            raise KeyError(f"ResultsFile: row lacks key field(s) {missing}")
        return tuple(json.dumps(row[k], sort_keys=True) for k in self.key_fields)

    def rows(self) -> list[dict[str, Any]]:
        """All rows; a truncated last line (a run killed mid-write) is ignored."""
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def done(self) -> set[tuple]:
        return {self.key(r) for r in self.rows()}

    def append(self, row: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------------------
# One training cell
# ---------------------------------------------------------------------------------------------------------------


def base_argv(dataset: str, size: int, epochs: int, seed: int, output: str, experiment: str,
              lr: float = 0.05, weight_decay: float = 5e-4) -> list[str]:
    """The shared recipe (resnet10t, SGD + cosine, light crop augmentation) as ``timm-lap train`` arguments."""
    return [
        "--dataset", dataset, "--model", "resnet10t", "--train-subset", str(size), "--epochs", str(epochs),
        "-b", "32", "--opt", "sgd", "--lr", str(lr), "--momentum", "0.9", "--weight-decay", str(weight_decay),
        "--sched", "cosine", "--warmup-epochs", "0", "--smoothing", "0", "--scale", "0.7", "1.0", "--hflip", "0",
        "--color-jitter", "0", "--workers", "0", "--device", "cpu", "--seed", str(seed), "--output", output,
        "--experiment", experiment, "--log-interval", "1000", "--checkpoint-hist", "1",
        # Only the final epoch is read: evaluating it alone changes nothing in training (each epoch reseeds).
        "--eval-interval", str(epochs), "-vb", "256",
    ]


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Mute timm's and timm-lap's info logs for the duration of a run, then restore their levels."""
    loggers = [logging.getLogger(name) for name in ("timm", "timm_lap", "timm_lap.train")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# The held-out transport is averaged over the first images of the (unshuffled) eval set: all of digits' 450,
# the first 2048 of Fashion-MNIST's 10k test images (a full pass would add ~17 s to each CPU run).
TRANSPORT_IMAGES = 2048


def run_cell(cell: Cell, extra: Sequence[str], workdir: str | None = None) -> dict[str, Any]:
    """Train one cell and return its metrics; the run's output directory is deleted afterwards.

    ``cell`` needs dataset, size, epochs, seed; optional lr, weight_decay. ``extra`` are further CLI flags
    (``--lap`` ...). Returned: final test top-1 (%), test loss, held-out transport (first ``TRANSPORT_IMAGES`` eval
    images), final lam, seconds.
    """
    import torch
    from timm_lap.demo import validation_transport
    from timm_lap.train import train
    from timm_lap.train_args import parse_args

    root = tempfile.mkdtemp(prefix="lapbench-", dir=workdir)
    try:
        argv = base_argv(cell["dataset"], cell["size"], cell["epochs"], cell["seed"], root, "run",
                         lr=cell.get("lr", 0.05), weight_decay=cell.get("weight_decay", 5e-4)) + list(extra)
        args, text = parse_args(argv)
        start = time.perf_counter()
        with _quiet_logs():
            result = train(args, text, plot=False)
        seconds = time.perf_counter() - start
        last = result["rows"][-1]
        loader = result["loader_eval"]
        batch_size = getattr(loader, "loader", loader).batch_size  # timm's PrefetchLoader wraps a DataLoader
        max_batches = -(-TRANSPORT_IMAGES // batch_size)
        transport = validation_transport(result["model"], loader, max_batches)
        return {"test_top1": float(last["eval_top1"]), "test_loss": float(last["eval_loss"]),
                "test_transport": float(transport), "train_task_loss": float(last["task_loss"]),
                "lam": result["lam"], "seconds": round(seconds, 2), "argv": " ".join(extra),
                "eval_images": len(loader.dataset), "threads": torch.get_num_threads()}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def deadline_after(minutes: float | None) -> float | None:
    """The ``time.monotonic()`` instant ``minutes`` from now (None: no limit), for :func:`run_sweep`."""
    return None if minutes is None else time.monotonic() + 60.0 * minutes


def run_sweep(cells: Iterable[tuple[Cell, list[str]]], results: ResultsFile, desc: str,
              deadline: float | None = None, workdir: str | None = None) -> dict[str, int]:
    """Run every (cell, extra flags) not yet in ``results``, appending each row as it finishes.

    Stops launching new runs once ``time.monotonic()`` reaches ``deadline`` (the sweep stays resumable);
    sweeps that share one deadline share one time budget. Returns {'ran', 'skipped', 'left'}.
    """
    from tqdm import tqdm

    todo = list(cells)
    done = results.done()
    pending = [(c, e) for c, e in todo if results.key(c) not in done]
    counts = {"ran": 0, "skipped": len(todo) - len(pending), "left": 0}
    bar = tqdm(total=len(todo), initial=counts["skipped"], desc=desc, unit="run")
    for i, (cell, extra) in enumerate(pending):
        if deadline is not None and time.monotonic() >= deadline:
            counts["left"] = len(pending) - i
            bar.write(f"{desc}: time limit (--stop-after) reached; {counts['left']} run(s) left, "
                      "rerun the same command to resume")
            break
        row = dict(cell)
        row.update(run_cell(cell, extra, workdir))
        results.append(row)
        counts["ran"] += 1
        bar.set_postfix(top1=f"{row['test_top1']:.1f}", s=f"{row['seconds']:.0f}")
        bar.update(1)
    bar.close()
    return counts


# ---------------------------------------------------------------------------------------------------------------
# CLI helpers
# ---------------------------------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, name: str) -> None:
    """--quick / --smoke / --results / --out-dir / --threads / --stop-after."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the preset that fits ~1 h on 2 CPU cores")
    mode.add_argument("--smoke", action="store_true", help="one tiny cell end to end (CI)")
    parser.add_argument("--out-dir", default=None, help=f"plots and summary (default benchmarks/results/{name}/)")
    parser.add_argument("--results", default=None, help="JSONL results file (default <out-dir>/runs.jsonl)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--stop-after", type=float, default=None, metavar="MIN",
                        help="stop launching new runs after MIN minutes (resume later)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    parser.add_argument("--report-only", action="store_true", help="only rebuild summary/plots from results")


def resolve_preset(opts: argparse.Namespace, presets: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(preset name, preset) from --smoke/--quick (default: full), with --seeds applied."""
    name = "smoke" if opts.smoke else "quick" if opts.quick else "full"
    preset = dict(presets[name])
    if opts.seeds:
        preset["seeds"] = list(opts.seeds)
    return name, preset


def resolve_paths(opts: argparse.Namespace, name: str) -> tuple[str, str]:
    """(out_dir, results_path), creating out_dir."""
    out_dir = opts.out_dir or default_out_dir(name)
    os.makedirs(out_dir, exist_ok=True)
    return out_dir, opts.results or os.path.join(out_dir, "runs.jsonl")


def setup_torch(threads: int) -> None:
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def matplotlib_pyplot():
    """pyplot with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str) -> str:
    """Lay out, write (110 dpi) and close a pyplot figure; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    matplotlib_pyplot().close(fig)
    return path


def write_text(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def write_report(out_dir: str, markdown: str, summary: Any, plot: Callable[[str], str] | None,
                 plot_name: str) -> dict[str, str]:
    """Write summary.md, summary.json and (when ``plot`` is given) the plot; returns their paths."""
    files = {"summary_md": write_text(os.path.join(out_dir, "summary.md"), markdown),
             "summary_json": write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1))}
    if plot is not None:
        files["plot"] = plot(os.path.join(out_dir, plot_name))
    return files


def sweep_and_report(opts: argparse.Namespace, name: str, presets: dict[str, dict[str, Any]], key_fields: Sequence[str],
                     cells_for: Callable[[dict[str, Any]], list], report: Callable[..., dict[str, str]]) -> dict[str, Any]:
    """What every benchmark's ``main`` does: pick the preset, run the resumable sweep, write and print the report."""
    preset_name, preset = resolve_preset(opts, presets)
    out_dir, results_path = resolve_paths(opts, name)
    results = ResultsFile(results_path, key_fields)
    counts = {"ran": 0, "skipped": 0, "left": 0}
    if not opts.report_only:
        setup_torch(opts.threads)
        # One --stop-after budget for the whole command, including sweeps that cells_for runs first.
        opts.deadline = deadline_after(opts.stop_after)
        counts = run_sweep(cells_for(preset), results, f"{name} ({preset_name})", opts.deadline)
    files = report(results.rows(), out_dir, preset_name, preset)
    print(open(files["summary_md"]).read())
    return {"counts": counts, "files": files, "results": results_path}
