"""Low-data generalisation: vanilla vs LAP (tau=1) vs a fixed-weight transport regulariser.

Paired design: for every (dataset, size, seed) the three methods see the same class-balanced training subset
(seeded by ``--seed``) and the same initialisation seed. Test accuracy is the final-epoch top-1 on the held-out
split (digits: fixed 25% stratified split; Fashion-MNIST: the official 10k test set); nothing is selected on it.
The fixed weight W is chosen per (dataset, size) from a small grid on a validation part carved out of the
training split (``timm-lap train --val-from-train``), with seeds of its own; those runs go to ``selection.jsonl``.

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
SELECTION_FILE = "selection.jsonl"
SELECTION_KEYS = ("dataset", "size", "method", "seed", "epochs", "weight", "val_from_train")
DATASETS = {"digits": "sklearn/digits", "fashion_mnist": "torch/fashion_mnist"}
METHODS = ("vanilla", "lap", "fixed")
KEY_FIELDS = ("dataset", "size", "method", "seed", "epochs", "weight")

# Validation part carved from each training split for choosing W: digits' split has 1347 images (1000 must remain).
VALIDATION = {"digits": 0.2, "fashion_mnist": 2000}

PRESETS: dict[str, dict[str, Any]] = {
    # "sizes": dataset -> {training images: epochs}; fewer epochs for larger sets keeps the step count similar.
    # "weights"/"select_seeds": the grid for W and the seeds of the selection runs (never the test seeds).
    "smoke": {"sizes": {"digits": {100: 2}}, "seeds": [0], "weights": [0.1, 1.0], "select_seeds": [100]},
    "quick": {"sizes": {"digits": {100: 15, 300: 8, 1000: 4},
                        "fashion_mnist": {100: 15, 300: 8, 1000: 4, 5000: 2}},
              "seeds": [0, 1, 2, 3, 4], "weights": [0.01, 0.1, 1.0], "select_seeds": [100]},
    "full": {"sizes": {"digits": {100: 60, 300: 30, 1000: 15},
                       "fashion_mnist": {100: 60, 300: 30, 1000: 15, 5000: 8}},
             "seeds": list(range(10)), "weights": [0.01, 0.1, 1.0], "select_seeds": [100, 101]},
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


def selection_cells(preset: dict[str, Any], datasets: Sequence[str]) -> list[tuple[C.Cell, list[str]]]:
    """Fixed-weight runs for every W of the grid, validated on the carved part of the training split."""
    cells = []
    for seed in preset["select_seeds"]:
        for ds in datasets:
            for size, epochs in preset["sizes"].get(ds, {}).items():
                for weight in preset["weights"]:
                    cell = {"dataset": DATASETS[ds], "size": size, "method": "fixed", "seed": seed, "epochs": epochs,
                            "weight": weight, "val_from_train": VALIDATION[ds]}
                    cells.append((cell, method_flags("fixed", weight) + ["--val-from-train", str(VALIDATION[ds])]))
    return cells


def selection_table(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[float, float]]:
    """(dataset, size) -> {W: mean validation top-1 over the selection seeds}."""
    acc: dict[tuple[str, int], dict[float, list[float]]] = {}
    for r in rows:
        acc.setdefault((r["dataset"], r["size"]), {}).setdefault(r["weight"], []).append(r["test_top1"])
    return {key: {w: sum(v) / len(v) for w, v in sorted(by_w.items())} for key, by_w in acc.items()}


def choose_weights(table: dict[tuple[str, int], dict[float, float]]) -> dict[tuple[str, int], float]:
    """Best validation accuracy per (dataset, size); a tie goes to the smaller W."""
    return {key: max(by_w, key=lambda w: (by_w[w], -w)) for key, by_w in table.items()}


def build_cells(preset: dict[str, Any], datasets: Sequence[str],
                weights: dict[tuple[str, int], float]) -> list[tuple[C.Cell, list[str]]]:
    """Seed-major order, so a partial sweep still has complete paired triples across all sizes."""
    cells = []
    for seed in preset["seeds"]:
        for ds in datasets:
            for size, epochs in preset["sizes"].get(ds, {}).items():
                for method in METHODS:
                    weight = weights.get((DATASETS[ds], size)) if method == "fixed" else None
                    cell = {"dataset": DATASETS[ds], "size": size, "method": method, "seed": seed,
                            "epochs": epochs, "weight": weight}
                    cells.append((cell, method_flags(method, weight)))
    return cells


def select_then_build_cells(opts: argparse.Namespace, preset: dict[str, Any],
                            datasets: Sequence[str]) -> list[tuple[C.Cell, list[str]]]:
    """Run (or resume) the W selection, then return the test cells (without the fixed-weight ones while the
    selection is unfinished). Both sweeps share the command's ``--stop-after`` deadline (``opts.deadline``)."""
    out_dir, _ = C.resolve_paths(opts, NAME)
    selection = C.ResultsFile(os.path.join(out_dir, SELECTION_FILE), SELECTION_KEYS)
    counts = C.run_sweep(selection_cells(preset, datasets), selection, f"{NAME} W selection", opts.deadline)
    if counts["left"]:
        print(f"{NAME}: W selection unfinished ({counts['left']} run(s) left); the fixed-weight runs wait for it")
        return [(cell, flags) for cell, flags in build_cells(preset, datasets, {}) if cell["method"] != "fixed"]
    wanted = {(DATASETS[ds], size) for ds in datasets for size in preset["sizes"].get(ds, {})}
    chosen = choose_weights(selection_table([r for r in selection.rows() if r["seed"] in preset["select_seeds"]
                                             and r["weight"] in preset["weights"]]))
    return build_cells(preset, datasets, {key: chosen[key] for key in wanted})


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (dataset, size, epochs, method): accuracy, transport, paired difference vs vanilla."""
    groups: dict[tuple, dict[int, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["size"], r["epochs"], r["method"], r["weight"]), {})[r["seed"]] = r
    out = []
    for (ds, size, epochs, method, weight), by_seed in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], METHODS.index(kv[0][3]), kv[0][4] or 0)):
        entry = {"dataset": ds, "size": size, "epochs": epochs, "method": method, "weight": weight,
                 "acc": C.t_interval([r["test_top1"] for r in by_seed.values()]),
                 "transport": C.t_interval([r["test_transport"] for r in by_seed.values()])}
        vanilla = groups.get((ds, size, epochs, "vanilla", None), {})
        if method != "vanilla" and vanilla and set(vanilla) & set(by_seed):
            entry["diff_vs_vanilla"] = C.paired_difference({s: r["test_top1"] for s, r in by_seed.items()},
                                                           {s: r["test_top1"] for s, r in vanilla.items()})
        out.append(entry)
    return out


def selection_markdown(table: dict[tuple[str, int], dict[float, float]], preset: dict[str, Any]) -> list[str]:
    if not table:
        return []
    weights = sorted({w for by_w in table.values() for w in by_w})
    chosen = choose_weights(table)
    lines = ["", "## Choice of the fixed weight W", "",
             f"Validation top-1 (%) on the part carved from the training split ({VALIDATION}), mean over selection "
             f"seeds {preset['select_seeds']}; the test runs use the chosen W.", "",
             "| dataset | n train | " + " | ".join(f"W={w:g}" for w in weights) + " | chosen W |",
             "|---|---|" + "---|" * len(weights) + "---|"]
    for (ds, size), by_w in sorted(table.items()):
        cells = " | ".join(f"{by_w[w]:.2f}" if w in by_w else "-" for w in weights)
        lines.append(f"| {ds} | {size} | {cells} | {chosen[(ds, size)]:g} |")
    return lines


def summary_markdown(summary: list[dict[str, Any]], preset_name: str, preset: dict[str, Any],
                     selection: dict[tuple[str, int], dict[float, float]] | None = None) -> str:
    lines = [f"# Low-data benchmark ({preset_name} preset)", "",
             f"Seeds {preset['seeds']}, epochs per training size {preset['sizes']}; fixed weight W chosen on a "
             f"validation split from {preset['weights']} (table below). Accuracy: final-epoch test top-1 (%), mean ± "
             f"95% Student-t half-width. Transport: held-out mean over the first {C.TRANSPORT_IMAGES} test images.",
             "", "| dataset | n train | method | W | test top-1 (%) | paired diff vs vanilla (pp) | test transport |",
             "|---|---|---|---|---|---|---|"]
    for e in summary:
        diff = e.get("diff_vs_vanilla")
        diff_s = "-" if diff is None else f"{C.format_ci(diff)} [{diff['lo']:.2f}, {diff['hi']:.2f}]" \
            if diff["n"] > 1 else C.format_ci(diff)
        weight = "-" if e["weight"] is None else f"{e['weight']:g}"
        lines.append(f"| {e['dataset']} | {e['size']} | {e['method']} | {weight} | {C.format_ci(e['acc'])} | "
                     f"{diff_s} | {C.format_ci(e['transport'], 3)} |")
    lines += selection_markdown(selection or {}, preset)
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
    selection_rows = C.ResultsFile(os.path.join(out_dir, SELECTION_FILE), SELECTION_KEYS).rows()
    table = selection_table([r for r in selection_rows if r["seed"] in preset["select_seeds"]])
    chosen = choose_weights(table)
    # Fixed-weight runs count only with the W chosen for their (dataset, size), once that choice exists.
    summary = summarise([r for r in rows if r["method"] != "fixed" or (r["dataset"], r["size"]) not in chosen
                         or r["weight"] == chosen[(r["dataset"], r["size"])]])
    return C.write_report(out_dir, summary_markdown(summary, preset_name, preset, table), summary,
                          (lambda path: plot(summary, path)) if summary else None, "accuracy_vs_size.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(parser, NAME)
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=None,
                        help="restrict to these datasets (default: all of the preset)")
    opts = parser.parse_args(argv)
    return C.sweep_and_report(opts, NAME, PRESETS, KEY_FIELDS,
                              lambda preset: select_then_build_cells(opts, preset, opts.datasets or list(preset["sizes"])),
                              report)


if __name__ == "__main__":
    main()
