"""The paper-regime study: LAP on a deep, narrow pre-activation network, long SGD training, little data.

Four parts, each resumable (rerun the same command; finished runs are skipped), each writing under
``benchmarks/results/paper_regime/`` (or ``--out-dir``):

    python -m benchmarks.paper_regime study        # vanilla / LAP tau 0.1, 1, 10 / fixed W: paired, 10 seeds
    python -m benchmarks.paper_regime study --model preact_resnet20   # the same on the CIFAR-style ResNet-20
    python -m benchmarks.paper_regime energy-bias  # 36 vanilla runs: is low held-out transport a sign of accuracy?
    python -m benchmarks.paper_regime adapt        # LAP's lam and transport as the task gets harder (label noise)
    python -m benchmarks.paper_regime sample       # LAP with sample=0.25 against the exact transport, paired seeds

Recipe (the reference code's, scaled to a CPU): Fashion-MNIST (official 10k test set), ``preact_flat9`` at width
16 (the registry default is 32), SGD lr 0.1, momentum 0.9, weight decay 1e-4, 100 epochs, lr x0.1 at epochs 50
and 75, batch 50 (timm's training loader drops the last partial batch, so 100 images hold no batch of 128),
random crops of 75-100 % of the image resized to 28 px and horizontal flips. ``study``, ``adapt`` and ``sample``
run ``timm-lap compare``; ``--smoke`` runs a tiny version of each on scikit-learn digits (the CI test).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "paper_regime")


def paper_flags(smoke: bool = False, lr: str = "0.1", weight_decay: str = "1e-4", depth: int = 9,
                width: int = 16, model: str = "preact_flat9") -> list[str]:
    """``timm-lap train`` flags of the recipe (``smoke``: digits, a width-8 net, for tests).

    Numbers are strings so that the flags (part of each run's key in ``runs.jsonl``) stay exactly as written.
    """
    data = ["--dataset", "sklearn/digits"] if smoke else ["--dataset", "torch/fashion_mnist"]
    kwargs = [f"width={8 if smoke else width}"] + ([] if depth == 9 else [f"depth={depth}"])
    model_flags = ["--model", model] + (["--model-kwargs", *kwargs] if model == "preact_flat9" else [])
    return data + model_flags + [
                   "-b", "50", "-vb", "500", "--opt", "sgd", "--lr", lr, "--momentum", "0.9",
                   "--weight-decay", weight_decay, "--sched", "multistep", "--decay-milestones", "50", "75",
                   "--decay-rate", "0.1", "--warmup-epochs", "0", "--smoothing", "0", "--scale", "0.75", "1",
                   "--ratio", "1", "1", "--hflip", "0.5", "--color-jitter", "0", "--log-interval", "1000",
                   "--checkpoint-hist", "1"]


# ---------------------------------------------------------------------------------------------------------------
# study: timm-lap compare in the paper's regime
# ---------------------------------------------------------------------------------------------------------------


STUDY_METHODS = ["vanilla", "lap", "lap:tau=0.1", "lap:tau=10", "fixed"]
STUDY_SIZES = {"preact_flat9": ["100:100", "300:100"], "preact_resnet20": ["100:100"]}


def study(opts: argparse.Namespace) -> dict[str, Any]:
    from timm_lap.cli import compare

    sizes = ["100:1"] if opts.smoke else (opts.sizes or STUDY_SIZES[opts.model])
    seeds = ["0-1"] if opts.smoke else ["0-9"]
    title = f"preact_flat9 (width {opts.width})" if opts.model == "preact_flat9" else opts.model
    folder = "study" if opts.model == "preact_flat9" else f"study_{opts.model}"
    folder += "" if opts.width == 16 or opts.model != "preact_flat9" else f"_width{opts.width}"
    return compare.main([
        "--title", f"Paper regime: {title} on Fashion-MNIST",
        "--methods", *(opts.methods or STUDY_METHODS), "--weights", "0.01", "0.1", "1",
        "--sizes", *sizes, "--seeds", *seeds, "--select-seeds", "1000",
        "--val-from-train", "0.2" if opts.smoke else "2000", "--jobs", str(opts.jobs), "--threads", str(opts.threads),
        "--out-dir", os.path.join(opts.out_dir, folder), *paper_flags(opts.smoke, model=opts.model, width=opts.width)])


# ---------------------------------------------------------------------------------------------------------------
# energy-bias: vanilla runs, held-out transport vs test accuracy
# ---------------------------------------------------------------------------------------------------------------

BIAS_KEYS = ("n_train", "epochs", "lr", "weight_decay", "init_gain", "depth", "seed")


def bias_cells(smoke: bool) -> list[dict[str, Any]]:
    """lr x depth x init gain x weight decay, each run with a seed of its own (so the seed varies too)."""
    lrs, depths, gains, wds = (["0.03", "0.3"], [3, 9], [1.0], ["1e-4"]) if smoke else \
        (["0.03", "0.1", "0.3"], [3, 6, 9], [0.5, 1.0], ["1e-4", "1e-3"])
    n, epochs = (100, 1) if smoke else (300, 100)
    cells = []
    for i, (lr, depth, gain, wd) in enumerate((a, b, c, d) for a in lrs for b in depths for c in gains for d in wds):
        argv = paper_flags(smoke, lr=lr, weight_decay=wd, depth=depth) + [
            "--train-subset", str(n), "--epochs", str(epochs), "--eval-interval", str(epochs), "--seed", str(i),
            "--init-gain", f"{gain:g}", "-j", "0"]
        cells.append({"n_train": n, "epochs": epochs, "lr": float(lr), "weight_decay": float(wd), "init_gain": gain,
                      "depth": depth, "seed": i, "label": f"lr={lr} depth={depth}", "argv": argv})
    return cells


def bias_report(rows: list[dict[str, Any]], out_dir: str) -> dict[str, Any]:
    from matplotlib.figure import Figure

    from timm_lap.analysis.stats import spearman_bootstrap

    def corr(rs: list[dict[str, Any]]) -> dict[str, Any] | None:
        if len(rs) < 3:
            return None
        return spearman_bootstrap([r["test_transport"] for r in rs], [r["test_top1"] for r in rs])

    lrs = sorted({r["lr"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    summary = {"runs": len(rows), "overall": corr(rows),
               "by_lr": {f"{lr:g}": corr([r for r in rows if r["lr"] == lr]) for lr in lrs},
               # transport sums over blocks, so depth alone moves it: within one depth it cannot
               "by_depth": {str(d): corr([r for r in rows if r["depth"] == d]) for d in depths}}
    lines = ["# Kinetic-energy bias in the paper regime (vanilla runs)", "",
             "Spearman's rho between held-out transport (first 2048 test images) and test top-1, with a percentile "
             "bootstrap 95 % interval (2000 resamples of runs). Within one learning rate the learning rate cannot "
             "drive it; within one depth the number of blocks summed cannot.", "",
             "| runs | rho | 95 % CI | p |", "|---|---|---|---|"]
    groups = [("all", summary["overall"])] + [(f"lr = {k}", v) for k, v in summary["by_lr"].items()] + \
        [(f"depth = {k}", v) for k, v in summary["by_depth"].items()]
    for name, c in groups:
        if c is not None:
            lines.append(f"| {name} (n={c['n']}) | {c['rho']:+.3f} | [{c['lo']:+.3f}, {c['hi']:+.3f}] | {c['p']:.3g} |")
    lines += ["", "| lr | weight decay | init gain | depth | seed | test top-1 (%) | test transport |",
              "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["test_transport"]):
        lines.append(f"| {r['lr']:g} | {r['weight_decay']:g} | {r['init_gain']:g} | {r['depth']} | {r['seed']} | "
                     f"{r['test_top1']:.2f} | {r['test_transport']:.4f} |")
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    fig = Figure(figsize=(6, 4.4))
    ax = fig.subplots()
    markers = {d: m for d, m in zip(sorted({r["depth"] for r in rows}), "os^Dv")}
    for i, lr in enumerate(lrs):
        for depth, marker in markers.items():
            pts = [r for r in rows if r["lr"] == lr and r["depth"] == depth]
            ax.scatter([r["test_transport"] for r in pts], [r["test_top1"] for r in pts], color=f"C{i}",
                       marker=marker, label=f"lr {lr:g}, depth {depth}", alpha=0.8)
    c = summary["overall"]
    title = "vanilla runs" if c is None else f"rho = {c['rho']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}], n = {c['n']}"
    ax.set(xscale="log", xlabel="held-out transport (log)", ylabel="test top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "transport_vs_accuracy.png"), dpi=110)
    print("\n".join(lines[:13]))
    return summary


def energy_bias(opts: argparse.Namespace) -> dict[str, Any]:
    from timm_lap.cli.runs import ResultsFile, run_cells

    out_dir = os.path.join(opts.out_dir, "energy_bias")
    os.makedirs(out_dir, exist_ok=True)
    results = ResultsFile(os.path.join(out_dir, "runs.jsonl"), BIAS_KEYS)
    run_cells(bias_cells(opts.smoke), results, opts.jobs, opts.threads, "energy-bias")
    return bias_report(results.rows(), out_dir)


# ---------------------------------------------------------------------------------------------------------------
# adapt: does lam follow the task's difficulty?
# ---------------------------------------------------------------------------------------------------------------

NOISE_LEVELS = (0.0, 0.2, 0.4)


def adapt(opts: argparse.Namespace) -> dict[str, Any]:
    from matplotlib.figure import Figure

    from timm_lap.cli import compare
    from timm_lap.cli.runs import ResultsFile

    out_dir = os.path.join(opts.out_dir, "adapt")
    size, seeds = ("100:1", "0-1") if opts.smoke else ("300:100", opts.seeds or "0-2")
    rows: dict[float, list[dict[str, Any]]] = {}
    diffs: dict[float, dict[str, float] | None] = {}
    for noise in NOISE_LEVELS:
        sub = os.path.join(out_dir, f"noise_{noise:g}")
        compare.main(["--title", f"LAP vs vanilla with {noise:.0%} training label noise", "--methods", "vanilla",
                      "lap", "--sizes", size, "--seeds", seeds, "--jobs", str(opts.jobs), "--threads",
                      str(opts.threads), "--out-dir", sub, *paper_flags(opts.smoke), "--label-noise", f"{noise:g}"])
        rows[noise] = ResultsFile(os.path.join(sub, "runs.jsonl"), compare.KEY_FIELDS).rows()
        with open(os.path.join(sub, "summary.json")) as f:
            summary_rows = json.load(f)["summary"]
            diffs[noise] = next((e.get("diff_vs_vanilla") for e in summary_rows if e["label"] == "lap"), None)
    fig = Figure(figsize=(13, 3.8))
    ax_lam, ax_task, ax_tr = fig.subplots(1, 3)
    summary = {}
    for i, noise in enumerate(NOISE_LEVELS):
        lap = [r for r in rows[noise] if r["label"] == "lap"]
        vanilla = [r for r in rows[noise] if r["label"] == "vanilla"]
        for j, r in enumerate(lap):
            epochs = range(1, len(r["curves"]["lap_lambda"]) + 1)
            kw = {"color": f"C{i}", "alpha": 0.8, "label": f"{noise:.0%} noise" if j == 0 else None}
            ax_lam.plot(epochs, r["curves"]["lap_lambda"], **kw)
            ax_task.plot(epochs, r["curves"]["task_loss"], **kw)
        mean = lambda rs, k: sum(r[k] for r in rs) / len(rs) if rs else float("nan")
        summary[f"{noise:g}"] = {"lam": mean(lap, "lam"), "lap_transport": mean(lap, "test_transport"),
                                 "vanilla_transport": mean(vanilla, "test_transport"),
                                 "lap_top1": mean(lap, "test_top1"), "vanilla_top1": mean(vanilla, "test_top1"),
                                 "seeds": len(lap), "diff_vs_vanilla": diffs[noise]}
    xs = list(range(len(NOISE_LEVELS)))
    for key, label, marker in (("lap_transport", "LAP", "o"), ("vanilla_transport", "vanilla", "s")):
        ax_tr.plot(xs, [summary[f"{p:g}"][key] for p in NOISE_LEVELS], marker=marker, label=label)
    ax_tr.set_xticks(xs, [f"{p:.0%}" for p in NOISE_LEVELS])
    ax_lam.set(xlabel="epoch", ylabel="lam (LAP multiplier)", yscale="log", title="LAP multiplier by epoch")
    ax_task.set(xlabel="epoch", ylabel="training task loss (LAP)", title="LAP training task loss by epoch")
    ax_tr.set(xlabel="training label noise", ylabel="held-out transport (mean over seeds)", yscale="log",
              title="final transport")
    for ax in (ax_lam, ax_task, ax_tr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(os.path.join(out_dir, "adapt.png"), dpi=110)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    lines = ["| label noise | seeds | final lam (LAP) | transport LAP | transport vanilla | top-1 LAP "
             "| top-1 vanilla | LAP - vanilla (pp) [95 % CI] |", "|---|---|---|---|---|---|---|---|"]
    for p in NOISE_LEVELS:
        s = summary[f"{p:g}"]
        d = s["diff_vs_vanilla"]
        diff = "-" if not d or d["n"] < 2 else f"{d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"
        lines.append(f"| {p:.0%} | {s['seeds']} | {s['lam']:.1f} | {s['lap_transport']:.4f} | "
                     f"{s['vanilla_transport']:.4f} | {s['lap_top1']:.2f} | {s['vanilla_top1']:.2f} | {diff} |")
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("# LAP and task difficulty (training label noise)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


# ---------------------------------------------------------------------------------------------------------------
# sample: the sampled transport estimate (sample=0.25) against the exact transport, paired seeds
# ---------------------------------------------------------------------------------------------------------------

SAMPLE_METHOD = "lap:sample=0.25"


def sample(opts: argparse.Namespace) -> dict[str, Any]:
    from timm_lap.analysis.stats import detectable_difference, paired_difference, t_interval
    from timm_lap.cli import compare
    from timm_lap.cli.runs import ResultsFile

    out_dir = os.path.join(opts.out_dir, "sample")
    sizes, seeds = (["100:1"], "0-1") if opts.smoke else (["100:100", "300:100"], opts.seeds or "0-9")
    compare.main(["--title", "LAP with the transport estimated from a quarter of each batch", "--methods", "vanilla",
                  "lap", SAMPLE_METHOD, "--sizes", *sizes, "--seeds", seeds, "--jobs", str(opts.jobs), "--threads",
                  str(opts.threads), "--out-dir", out_dir, *paper_flags(opts.smoke)])
    rows = [r for r in ResultsFile(os.path.join(out_dir, "runs.jsonl"), compare.KEY_FIELDS).rows()
            if r["phase"] == "test"]
    lines = ["| n train | seeds | top-1 exact (%) | top-1 sampled (%) | sampled - exact (pp) [95 % CI] "
             "| detectable (pp) | transport exact | transport sampled | final lam exact | sampled "
             "| run time sampled / exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for n in sorted({r["n_train"] for r in rows}):
        by = {label: {r["seed"]: r for r in rows if r["n_train"] == n and r["label"] == label}
              for label in ("lap", SAMPLE_METHOD)}
        exact, sampled = by["lap"], by[SAMPLE_METHOD]
        if len(set(exact) & set(sampled)) < 2:
            continue
        diff = paired_difference({s: r["test_top1"] for s, r in sampled.items()},
                                 {s: r["test_top1"] for s, r in exact.items()})
        mean = lambda rs, k: t_interval([r[k] for r in rs.values()])["mean"]
        entry = {"seeds": diff["n"], "diff": diff, "detectable": detectable_difference(diff["sd"], diff["n"]),
                 **{f"{k}_{name}": mean(rs, k) for name, rs in (("exact", exact), ("sampled", sampled))
                    for k in ("test_top1", "test_transport", "lam", "seconds")}}
        summary[str(n)] = entry
        lines.append(f"| {n} | {entry['seeds']} | {entry['test_top1_exact']:.2f} | {entry['test_top1_sampled']:.2f} | "
                     f"{diff['mean']:+.2f} [{diff['lo']:+.2f}, {diff['hi']:+.2f}] | {entry['detectable']:.2f} | "
                     f"{entry['test_transport_exact']:.3f} | {entry['test_transport_sampled']:.3f} | "
                     f"{entry['lam_exact']:.0f} | {entry['lam_sampled']:.0f} | "
                     f"{entry['seconds_sampled'] / entry['seconds_exact']:.2f} |")
    with open(os.path.join(out_dir, "sample_vs_exact.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out_dir, "sample_vs_exact.md"), "w") as f:
        f.write("# Sampled (sample=0.25) vs exact transport, paired seeds\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main(argv: Sequence[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("study", "energy-bias", "adapt", "sample"))
    parser.add_argument("--out-dir", default=DEFAULT_OUT)
    parser.add_argument("--jobs", type=int, default=2, help="parallel runs (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--smoke", action="store_true", help="a tiny version on digits, 1 epoch (CI)")
    parser.add_argument("--model", choices=sorted(STUDY_SIZES), default="preact_flat9",
                        help="study: the network (preact_flat9 at width 16, or preact_resnet20 at its widths)")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="N:EPOCHS", help="study: override the sizes")
    parser.add_argument("--width", type=int, default=16, help="study: preact_flat9's width (default 16)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"study: methods (default {' '.join(STUDY_METHODS)})")
    parser.add_argument("--seeds", default=None, metavar="RANGE",
                        help="adapt: seeds (default 0-2); sample: seeds (default 0-9)")
    opts = parser.parse_args(argv)
    return {"study": study, "energy-bias": energy_bias, "adapt": adapt, "sample": sample}[opts.part](opts)


if __name__ == "__main__":
    sys.exit(main() and 0)
