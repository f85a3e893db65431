"""Shared code for the low-data benchmarks: one training cell, resumable results files, statistics, plots.

Every run goes through ``timm_lap.train.train`` (the project's training entry point). The only change made
here is that the per-epoch ``curves.png`` plot of ``train`` is switched off (``train(..., plot=False)``): it
costs about a second per epoch on CPU and nothing is read from it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterable, Sequence


__all__ = [
    "Cell", "ResultsFile", "base_argv", "deadline_after", "run_cell", "run_sweep", "t_interval", "paired_difference",
    "spearman", "add_common_args", "default_out_dir", "format_ci",
]

Cell = dict[str, Any]

HERE = os.path.dirname(os.path.abspath(__file__))


def default_out_dir(name: str) -> str:
    """``benchmarks/results/<name>/``."""
    return os.path.join(HERE, "results", name)


# Statistics and the resumable results file live in the package (``timm_lap.stats``, ``timm_lap.runs``).
from timm_lap.runs import ResultsFile, _quiet_logs  # noqa: E402
from timm_lap.stats import paired_difference, spearman, t_interval  # noqa: E402


def format_ci(ci: dict[str, float], digits: int = 2) -> str:
    """'mean ± half (n=k)' or 'mean (n=1)'."""
    if ci["n"] < 2:
        return f"{ci['mean']:.{digits}f} (n=1)"
    return f"{ci['mean']:.{digits}f} ± {ci['half']:.{digits}f} (n={ci['n']})"


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
