"""Sensitivity of LAP to the multiplier step tau and the initial multiplier lambda0 (digits, 300 images).

Every (tau, lambda0) setting and a vanilla reference use the same seeds and data subsets (paired).

    python benchmarks/sensitivity.py --quick
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "sensitivity"
KEY_FIELDS = ("dataset", "size", "tau", "lambda0", "seed", "epochs")

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"size": 100, "seeds": [0], "epochs": 1, "taus": [1.0], "lambda0s": [0.1, 1.0]},
    "quick": {"size": 300, "seeds": [0, 1], "epochs": 8, "taus": [0.1, 1.0, 10.0], "lambda0s": [0.1, 1.0]},
    "full": {"size": 300, "seeds": [0, 1, 2, 3, 4], "epochs": 30, "taus": [0.1, 1.0, 10.0], "lambda0s": [0.1, 1.0]},
}


def label(row: dict[str, Any]) -> str:
    return "vanilla" if row["tau"] is None else f"tau={row['tau']:g}, lambda0={row['lambda0']:g}"


def build_cells(preset: dict[str, Any]) -> list[tuple[C.Cell, list[str]]]:
    """Seed-major; per seed a vanilla reference, then the tau x lambda0 grid."""
    cells = []
    for seed in preset["seeds"]:
        base = {"dataset": "sklearn/digits", "size": preset["size"], "seed": seed, "epochs": preset["epochs"]}
        cells.append((dict(base, tau=None, lambda0=None), []))
        for tau in preset["taus"]:
            for lam0 in preset["lambda0s"]:
                cells.append((dict(base, tau=tau, lambda0=lam0),
                              ["--lap", "--lap-tau", str(tau), "--lap-lambda0", str(lam0)]))
    return cells


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: accuracy, transport, final lam, paired difference vs vanilla."""
    groups: dict[tuple, dict[int, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["epochs"], r["tau"], r["lambda0"]), {})[r["seed"]] = r
    out = []
    for (size, epochs, tau, lam0), by_seed in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                     kv[0][2] or -1, kv[0][3] or -1)):
        entry = {"size": size, "epochs": epochs, "tau": tau, "lambda0": lam0,
                 "acc": C.t_interval([r["test_top1"] for r in by_seed.values()]),
                 "transport": C.t_interval([r["test_transport"] for r in by_seed.values()])}
        if tau is not None:
            entry["lam"] = C.t_interval([r["lam"] for r in by_seed.values()])
            vanilla = groups.get((size, epochs, None, None), {})
            if set(vanilla) & set(by_seed):
                entry["diff_vs_vanilla"] = C.paired_difference({s: r["test_top1"] for s, r in by_seed.items()},
                                                               {s: r["test_top1"] for s, r in vanilla.items()})
        out.append(entry)
    return out


def summary_markdown(summary: list[dict[str, Any]], preset_name: str, preset: dict[str, Any]) -> str:
    lines = [f"# LAP sensitivity ({preset_name} preset)", "",
             f"digits, {preset['size']} training images, {preset['epochs']} epochs, seeds {preset['seeds']}. "
             "Mean ± 95% Student-t half-width.", "",
             "| setting | test top-1 (%) | paired diff vs vanilla (pp) | test transport | final lam |",
             "|---|---|---|---|---|"]
    for e in summary:
        diff = C.format_ci(e["diff_vs_vanilla"]) if "diff_vs_vanilla" in e else "-"
        lam = C.format_ci(e["lam"], 3) if "lam" in e else "-"
        lines.append(f"| {label(e)} | {C.format_ci(e['acc'])} | {diff} | {C.format_ci(e['transport'], 3)} | {lam} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: str) -> str:
    """Accuracy and transport per setting (error bars = 95% CI)."""
    plt = C.matplotlib_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [label(e) for e in summary]
    for ax, key, title in ((axes[0], "acc", "test top-1 (%)"), (axes[1], "transport", "test transport")):
        ys = [e[key]["mean"] for e in summary]
        err = [0.0 if e[key]["n"] < 2 else e[key]["half"] for e in summary]
        ax.bar(range(len(ys)), ys, yerr=err, capsize=3, color=["gray" if e["tau"] is None else "tab:orange"
                                                                for e in summary])
        ax.set_xticks(range(len(ys)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    return C.save_figure(fig, path)


def report(rows: list[dict[str, Any]], out_dir: str, preset_name: str, preset: dict[str, Any]) -> dict[str, str]:
    summary = summarise(rows)
    return C.write_report(out_dir, summary_markdown(summary, preset_name, preset), summary,
                          (lambda path: plot(summary, path)) if summary else None, "sensitivity.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(parser, NAME)
    opts = parser.parse_args(argv)
    return C.sweep_and_report(opts, NAME, PRESETS, KEY_FIELDS, build_cells, report)


if __name__ == "__main__":
    main()
