"""Low-data generalisation: vanilla vs LAP (tau=1) vs a fixed-weight transport regulariser.

Paired design: for every (dataset, size, seed) the three methods see the same class-balanced training subset
(seeded by ``--seed``) and the same initialisation seed. Test accuracy is the final-epoch top-1 on the held-out
split (digits: fixed 25% stratified split; Fashion-MNIST: the official 10k test set); nothing is selected on it.
The fixed weight W is a preset constant (0.1), not tuned on the test set.

    python benchmarks/lowdata.py --quick --datasets digits
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "lowdata"
DATASETS = {"digits": "sklearn/digits", "fashion_mnist": "torch/fashion_mnist"}
METHODS = ("vanilla", "lap", "fixed")
KEY_FIELDS = ("dataset", "size", "method", "seed", "epochs", "weight")

PRESETS: dict[str, dict[str, Any]] = {
    # "sizes": dataset -> {training images: epochs}; fewer epochs for larger sets keeps the step count similar.
    "smoke": {"sizes": {"digits": {100: 2}}, "seeds": [0], "weight": 0.1},
    "quick": {"sizes": {"digits": {100: 15, 300: 8, 1000: 4},
                        "fashion_mnist": {100: 15, 300: 8, 1000: 4, 5000: 2}},
              "seeds": [0, 1, 2, 3, 4], "weight": 0.1},
    "full": {"sizes": {"digits": {100: 60, 300: 30, 1000: 15},
                       "fashion_mnist": {100: 60, 300: 30, 1000: 15, 5000: 8}},
             "seeds": list(range(10)), "weight": 0.1},
}


def method_flags(method: str, weight: float) -> list[str]:
    """CLI flags of a method."""
    if method == "vanilla":
        return []
    if method == "lap":
        return ["--lap"]
    if method == "fixed":
        return ["--lap", "--lap-weight", str(weight)]
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def build_cells(preset: dict[str, Any], datasets: Sequence[str]) -> list[tuple[C.Cell, list[str]]]:
    """Seed-major order, so a partial sweep still has complete paired triples across all sizes."""
    cells = []
    for seed in preset["seeds"]:
        for ds in datasets:
            for size, epochs in preset["sizes"].get(ds, {}).items():
                for method in METHODS:
                    cell = {"dataset": DATASETS[ds], "size": size, "method": method, "seed": seed,
                            "epochs": epochs, "weight": preset["weight"] if method == "fixed" else None}
                    cells.append((cell, method_flags(method, preset["weight"])))
    return cells


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (dataset, size, epochs, method): accuracy, transport, paired difference vs vanilla."""
    groups: dict[tuple, dict[int, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["size"], r["epochs"], r["method"]), {})[r["seed"]] = r
    out = []
    for (ds, size, epochs, method), by_seed in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2],
                                                                                       METHODS.index(kv[0][3]))):
        entry = {"dataset": ds, "size": size, "epochs": epochs, "method": method,
                 "acc": C.t_interval([r["test_top1"] for r in by_seed.values()]),
                 "transport": C.t_interval([r["test_transport"] for r in by_seed.values()])}
        vanilla = groups.get((ds, size, epochs, "vanilla"), {})
        if method != "vanilla" and vanilla and set(vanilla) & set(by_seed):
            entry["diff_vs_vanilla"] = C.paired_difference({s: r["test_top1"] for s, r in by_seed.items()},
                                                           {s: r["test_top1"] for s, r in vanilla.items()})
        out.append(entry)
    return out


def summary_markdown(summary: list[dict[str, Any]], preset_name: str, preset: dict[str, Any]) -> str:
    lines = [f"# Low-data benchmark ({preset_name} preset)", "",
             f"Seeds {preset['seeds']}, epochs per training size {preset['sizes']}, fixed weight W={preset['weight']}. "
             "Accuracy: final-epoch test top-1 (%), mean ± 95% Student-t half-width. Transport: held-out mean.", "",
             "| dataset | n train | method | test top-1 (%) | paired diff vs vanilla (pp) | test transport |",
             "|---|---|---|---|---|---|"]
    for e in summary:
        diff = e.get("diff_vs_vanilla")
        diff_s = "-" if diff is None else f"{C.format_ci(diff)} [{diff['lo']:.2f}, {diff['hi']:.2f}]" \
            if diff["n"] > 1 else C.format_ci(diff)
        lines.append(f"| {e['dataset']} | {e['size']} | {e['method']} | {C.format_ci(e['acc'])} | {diff_s} | "
                     f"{C.format_ci(e['transport'], 3)} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: str) -> str:
    """Accuracy vs training size per method, one panel per dataset; error bars = 95% CI."""
    plt = C.matplotlib_pyplot()
    datasets = sorted({e["dataset"] for e in summary})
    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(5 * max(len(datasets), 1), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for i, method in enumerate(METHODS):
            pts = sorted((e["size"], e["acc"]) for e in summary if e["dataset"] == ds and e["method"] == method)
            if not pts:
                continue
            xs = [p[0] * (1 + 0.03 * (i - 1)) for p in pts]  # small horizontal dodge
            ys = [p[1]["mean"] for p in pts]
            err = [0.0 if p[1]["n"] < 2 else p[1]["half"] for p in pts]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("training images")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(ds)
        ax.grid(alpha=0.3)
        ax.legend()
    return C.save_figure(fig, path)


def report(rows: list[dict[str, Any]], out_dir: str, preset_name: str, preset: dict[str, Any]) -> dict[str, str]:
    """Write summary.md, summary.json and accuracy_vs_size.png."""
    summary = summarise(rows)
    return C.write_report(out_dir, summary_markdown(summary, preset_name, preset), summary,
                          (lambda path: plot(summary, path)) if summary else None, "accuracy_vs_size.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(parser, NAME)
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=None,
                        help="restrict to these datasets (default: all of the preset)")
    opts = parser.parse_args(argv)
    return C.sweep_and_report(opts, NAME, PRESETS, KEY_FIELDS,
                              lambda preset: build_cells(preset, opts.datasets or list(preset["sizes"])), report)


if __name__ == "__main__":
    main()
