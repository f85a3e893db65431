"""Shared code for the benchmark scripts: the resnet10t recipe, presets over ``timm-lap compare``, report helpers.

Every run goes through ``timm_lap.cli.runs.run_cell`` (``timm-lap train`` without the per-epoch plot); statistics and
the resumable results file come from ``timm_lap.analysis.stats`` and ``timm_lap.cli.runs``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "Cell", "ResultsFile", "base_argv", "deadline_after", "run_sweep", "t_interval", "paired_difference",
    "spearman", "add_common_args", "default_out_dir", "format_ci", "resnet10t_recipe", "preset_parser",
    "run_compare_presets",
]

Cell = dict[str, Any]

HERE = os.path.dirname(os.path.abspath(__file__))


def default_out_dir(name: str) -> str:
    """``benchmarks/results/<name>/``."""
    return os.path.join(HERE, "results", name)


# Statistics and the resumable results file live in the package (``timm_lap.analysis.stats``, ``timm_lap.cli.runs``).
from timm_lap import recipes  # noqa: E402
from timm_lap.analysis.stats import paired_difference, spearman, t_interval  # noqa: E402
from timm_lap.cli.runs import ResultsFile  # noqa: E402


def format_ci(ci: dict[str, float], digits: int = 2) -> str:
    """'mean ± half (n=k)' or 'mean (n=1)'."""
    if ci["n"] < 2:
        return f"{ci['mean']:.{digits}f} (n=1)"
    return f"{ci['mean']:.{digits}f} ± {ci['half']:.{digits}f} (n={ci['n']})"


# ---------------------------------------------------------------------------------------------------------------
# One training cell
# ---------------------------------------------------------------------------------------------------------------


def resnet10t_recipe(dataset: str, lr: str = "0.05", weight_decay: str = "5e-4") -> list[str]:
    """The demo's digits recipe (``timm_lap/recipes/resnet10t_digits.yaml``: resnet10t, SGD + cosine, light crop
    augmentation) on ``dataset`` as ``timm-lap train`` flags, evaluated in batches of 256."""
    return recipes.flags("resnet10t_digits", dataset=dataset, lr=lr, weight_decay=weight_decay) + ["-vb", "256"]


def base_argv(dataset: str, size: int, epochs: int, seed: int, lr: float = 0.05,
              weight_decay: float = 5e-4) -> list[str]:
    """:func:`resnet10t_recipe` for one run: subset size, epochs (only the last evaluated) and seed."""
    return resnet10t_recipe(dataset, str(lr), str(weight_decay)) + [
        "--train-subset", str(size), "--epochs", str(epochs), "--seed", str(seed),
        # Only the final epoch is read: evaluating it alone changes nothing in training (each epoch reseeds).
        "--eval-interval", str(epochs)]


# The held-out transport is averaged over the first images of the (unshuffled) eval set: all of digits' 450,
# the first 2048 of Fashion-MNIST's 10k test images (a full pass would add ~17 s to each CPU run).
TRANSPORT_IMAGES = 2048


def deadline_after(minutes: float | None) -> float | None:
    """The ``time.monotonic()`` instant ``minutes`` from now (None: no limit), for :func:`run_sweep`."""
    return None if minutes is None else time.monotonic() + 60.0 * minutes


def run_sweep(cells: Iterable[tuple[Cell, list[str]]], results: ResultsFile, desc: str,
              deadline: float | None = None) -> dict[str, int]:
    """Run every (cell, extra flags) not yet in ``results`` (through :func:`timm_lap.cli.runs.run_cells`).

    Stops launching new runs once ``time.monotonic()`` reaches ``deadline`` (the sweep stays resumable).
    Returns {'ran', 'skipped', 'left'}.
    """
    from timm_lap.cli.runs import run_cells

    with_argv = [{**cell, "argv": base_argv(cell["dataset"], cell["size"], cell["epochs"], cell["seed"],
                                            lr=cell.get("lr", 0.05), weight_decay=cell.get("weight_decay", 5e-4))
                  + list(extra), "flags": " ".join(extra)} for cell, extra in cells]
    return run_cells(with_argv, results, jobs=1, desc=desc, transport_images=TRANSPORT_IMAGES, deadline=deadline)


# ---------------------------------------------------------------------------------------------------------------
# Presets over timm-lap compare
# ---------------------------------------------------------------------------------------------------------------


def preset_parser(doc: str | None, name: str) -> argparse.ArgumentParser:
    """--smoke/--quick, --out-dir, --jobs, --threads, --stop-after, --seeds, --report-only."""
    parser = argparse.ArgumentParser(description=(doc or name).split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the preset that fits ~1 h on 2 CPU cores")
    mode.add_argument("--smoke", action="store_true", help="one tiny cell end to end (CI)")
    parser.add_argument("--out-dir", default=None, help=f"results (default benchmarks/results/{name}/)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--stop-after", type=float, default=None, metavar="MIN",
                        help="stop launching new runs after MIN minutes (resume later)")
    parser.add_argument("--seeds", nargs="+", default=None, help="override the preset's seeds (numbers or 0-9)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild summaries and plots")
    return parser


def run_compare_presets(opts: argparse.Namespace, name: str, argvs: dict[str, list[str]]) -> dict[str, Any]:
    """Run ``timm-lap compare`` once per entry (sub-folder name -> compare argv) under one ``--stop-after`` budget."""
    from timm_lap.cli import compare

    out_dir = opts.out_dir or default_out_dir(name)
    deadline = deadline_after(opts.stop_after)
    counts = {"ran": 0, "skipped": 0, "left": 0}
    results = {}
    for sub, argv in argvs.items():
        common = ["--out-dir", os.path.join(out_dir, sub), "--jobs", str(opts.jobs)]
        common += [] if opts.threads is None else ["--threads", str(opts.threads)]
        common += ["--report-only"] if opts.report_only else []
        if deadline is not None:
            common += ["--stop-after", str(max(0.0, (deadline - time.monotonic()) / 60.0))]
        res = compare.main(common + argv)
        for k in counts:
            counts[k] += res["counts"][k]
        results[sub] = res
    return {"counts": counts, "results": {sub: r["results"] for sub, r in results.items()},
            "files": {sub: r["files"] for sub, r in results.items()}}


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


def sweep_and_report(opts: argparse.Namespace, name: str, presets: dict[str, dict[str, Any]],
                     key_fields: Sequence[str], cells_for: Callable[[dict[str, Any]], list],
                     report: Callable[..., dict[str, str]]) -> dict[str, Any]:
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
