"""Kinetic-energy bias: among vanilla runs, does a lower held-out transport cost go with higher test accuracy?

Vanilla (no LAP) runs on one low-data task vary the initialisation gain (``--init-gain``: conv and linear
weights scaled after timm's init), the learning rate and the weight decay, and (full preset)
``--model-kwargs zero_init_last=False`` and ``--drop-path``. Reported: a scatter of final test transport vs
test accuracy with Spearman's rho and its p-value.

    python -m benchmarks.energy_bias --quick
"""
from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from typing import Any

from benchmarks import common as C

NAME = "energy_bias"
KEY_FIELDS = ("dataset", "size", "seed", "epochs", "lr", "weight_decay", "init_gain", "zero_init_last", "drop_path")

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"size": 100, "seeds": [0], "epochs": 1, "lrs": [0.01, 0.05, 0.2], "wds": [5e-4], "gains": [1.0],
              "zero_init_last": [True], "drop_paths": [0.0]},
    "quick": {"size": 300, "seeds": [0], "epochs": 8, "lrs": [0.01, 0.05, 0.2], "wds": [0.0, 5e-3],
              "gains": [0.5, 1.0, 2.0], "zero_init_last": [True], "drop_paths": [0.0]},
    "full": {"size": 300, "seeds": [0, 1], "epochs": 30, "lrs": [0.01, 0.05, 0.2], "wds": [0.0, 5e-3],
             "gains": [0.5, 1.0, 2.0], "zero_init_last": [True, False], "drop_paths": [0.0, 0.1]},
}


def config_flags(init_gain: float, zero_init_last: bool, drop_path: float) -> list[str]:
    """Extra CLI flags of a configuration (lr and weight decay go through the cell)."""
    flags = [] if init_gain == 1.0 else ["--init-gain", str(init_gain)]
    flags += [] if zero_init_last else ["--model-kwargs", "zero_init_last=False"]
    return flags + (["--drop-path", str(drop_path)] if drop_path > 0 else [])


def build_cells(preset: dict[str, Any]) -> list[tuple[C.Cell, list[str]]]:
    cells = []
    grid = itertools.product(preset["seeds"], preset["lrs"], preset["wds"], preset["gains"],
                             preset["zero_init_last"], preset["drop_paths"])
    for seed, lr, wd, gain, zil, dp in grid:
        cell = {"dataset": "sklearn/digits", "size": preset["size"], "seed": seed, "epochs": preset["epochs"],
                "lr": lr, "weight_decay": wd, "init_gain": gain, "zero_init_last": zil, "drop_path": dp}
        cells.append((cell, config_flags(gain, zil, dp)))
    return cells


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman's rho between test transport and test accuracy over all runs (None with < 3 runs)."""
    x = [r["test_transport"] for r in rows]
    y = [r["test_top1"] for r in rows]
    return {"runs": len(rows), "spearman": C.spearman(x, y) if len(rows) >= 3 else None}


def summary_markdown(rows: list[dict[str, Any]], summary: dict[str, Any], preset_name: str,
                     preset: dict[str, Any]) -> str:
    sp = summary["spearman"]
    sp_s = "not enough runs" if sp is None else f"rho = {sp['rho']:.3f}, p = {sp['p']:.3g} (n = {sp['n']})"
    lines = [f"# Kinetic-energy bias ({preset_name} preset)", "",
             f"Vanilla runs, digits, {preset['size']} training images, {preset['epochs']} epochs, seeds "
             f"{preset['seeds']}. Spearman (test transport vs test top-1): {sp_s}.", "",
             "| lr | weight decay | init gain | zero_init_last | drop path | seed | test top-1 (%) | test transport |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["test_transport"]):
        lines.append(f"| {r['lr']:g} | {r['weight_decay']:g} | {r['init_gain']:g} | {r['zero_init_last']} | "
                     f"{r['drop_path']:g} | {r['seed']} | {r['test_top1']:.2f} | {r['test_transport']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], summary: dict[str, Any], path: str) -> str:
    """Scatter of test transport vs test accuracy, colour = learning rate, marker = initialisation gain."""
    plt = C.matplotlib_pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    lrs = sorted({r["lr"] for r in rows})
    gains = sorted({r["init_gain"] for r in rows})
    markers = "o^sDv<>p"
    cmap = plt.get_cmap("viridis")
    for r in rows:
        color = cmap(lrs.index(r["lr"]) / max(len(lrs) - 1, 1))
        ax.scatter(r["test_transport"], r["test_top1"], color=color, s=40, edgecolor="k", linewidth=0.5,
                   marker=markers[gains.index(r["init_gain"]) % len(markers)] if r["zero_init_last"] else "x")
    for i, lr in enumerate(lrs):
        ax.scatter([], [], color=cmap(i / max(len(lrs) - 1, 1)), label=f"lr={lr:g}")
    for i, gain in enumerate(gains):
        ax.scatter([], [], color="w", edgecolor="k", marker=markers[i % len(markers)], label=f"init gain {gain:g}")
    if not all(r["zero_init_last"] for r in rows):
        ax.scatter([], [], color="k", marker="x", label="zero_init_last=False")
    ax.set_xscale("log")
    ax.set_xlabel("test transport cost (held out)")
    ax.set_ylabel("test top-1 (%)")
    sp = summary["spearman"]
    if sp is not None:
        ax.set_title(f"Spearman rho={sp['rho']:.2f}, p={sp['p']:.2g}, n={sp['n']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return C.save_figure(fig, path)


def report(rows: list[dict[str, Any]], out_dir: str, preset_name: str, preset: dict[str, Any]) -> dict[str, str]:
    summary = summarise(rows)
    return C.write_report(out_dir, summary_markdown(rows, summary, preset_name, preset), summary,
                          (lambda path: plot(rows, summary, path)) if rows else None, "transport_vs_accuracy.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(parser, NAME)
    opts = parser.parse_args(argv)
    return C.sweep_and_report(opts, NAME, PRESETS, KEY_FIELDS, build_cells, report)


if __name__ == "__main__":
    main()
