"""``timm-lap compare``: does least action help on *your* data? A paired multi-seed comparison in one command.

    timm-lap compare --methods vanilla lap lap:tau=0.1 fixed --sizes 100 300:200 --seeds 0-9 --jobs 2 \\
        --dataset torch/fashion_mnist --model preact_flat9 --epochs 100 --lr 0.1 -j 0

Every flag that is not compare's own goes to every ``timm-lap train`` run. For each training-subset size and seed,
every method trains on the same class-balanced subset from the same initialisation (``--seed``), so differences
are paired. The fixed-weight method's W is chosen per size on a validation part carved from the training split
(``--val-from-train``, seeds ``--select-seeds``), never on the evaluation split. Results go to ``runs.jsonl``
(resumable), ``summary.md``/``summary.json`` and ``accuracy_vs_size.png`` under ``--out-dir``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .parsing import CliParser

__all__ = ["Method", "parse_method", "parse_size", "plan_cells", "choose_weights", "summarise", "main"]

KEY_FIELDS = ("phase", "dataset", "model", "flags", "n_train", "epochs", "label", "weight", "seed")
LAP_PARAMS = {"tau": 1.0, "lambda0": 1.0, "every": 1, "sample": 1.0}  # sample 1 = the exact transport
# Flags compare sets itself for every run: passing them through would silently break the pairing.
CONTROLLED_FLAGS = ("--seed", "--train-subset", "--lap", "--lap-tau", "--lap-lambda0", "--lap-every", "--lap-weight",
                    "--lap-sample",
                    "--output", "--experiment", "--resume", "--val-from-train", "--eval-interval")


@dataclass(frozen=True)
class Method:
    """One arm of the comparison: ``vanilla``, ``lap`` (multiplier) or ``fixed`` (``task + W * transport``)."""

    kind: str
    params: dict[str, float] = field(default_factory=dict)
    weight: float | None = None  # fixed:w=... ; None for "fixed" means chosen on validation

    @property
    def label(self) -> str:
        if self.kind == "lap":
            changed = [f"{k}={v:g}" for k, v in self.params.items() if v != LAP_PARAMS[k]]
            return "lap" + (":" + ",".join(changed) if changed else "")
        if self.kind == "fixed" and self.weight is not None:
            return f"fixed:w={self.weight:g}"
        return self.kind

    def flags(self, weight: float | None = None) -> list[str]:
        if self.kind == "vanilla":
            return []
        if self.kind == "lap":
            p = {**LAP_PARAMS, **self.params}
            sample = ["--lap-sample", f"{p['sample']:g}"] if p["sample"] != 1.0 else []
            return ["--lap", "--lap-tau", f"{p['tau']:g}", "--lap-lambda0", f"{p['lambda0']:g}",
                    "--lap-every", str(int(p["every"]))] + sample
        w = self.weight if self.weight is not None else weight
        if w is None:
            raise ValueError("fixed method without a weight")
        return ["--lap", "--lap-weight", f"{w:g}"]


def parse_method(text: str) -> Method:
    """``vanilla`` | ``lap[:tau=T,lambda0=L,every=N,sample=F]`` | ``fixed`` (W chosen on validation) | ``fixed:w=W``."""
    kind, _, rest = text.partition(":")
    if kind not in ("vanilla", "lap", "fixed"):
        raise ValueError(
            f"unknown method {text!r}: use vanilla, lap[:tau=T,lambda0=L,every=N,sample=F], fixed or fixed:w=W"
        )
    params: dict[str, float] = {}
    for item in filter(None, rest.split(",")):
        name, eq, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not eq or not math.isfinite(number):
            raise ValueError(f"method {text!r}: {item!r} is not NAME=NUMBER")
        params[name] = number
    if kind == "vanilla" and params:
        raise ValueError(f"method {text!r}: vanilla takes no parameters")
    if kind == "fixed":
        if set(params) - {"w"}:
            raise ValueError(f"method {text!r}: fixed takes only w=W (or nothing: W chosen on validation)")
        if params.get("w", 0.0) < 0:
            raise ValueError(f"method {text!r}: w must be >= 0")
        return Method("fixed", {}, params.get("w"))
    if kind == "lap":
        unknown = set(params) - set(LAP_PARAMS)
        if unknown:
            raise ValueError(
                f"method {text!r}: unknown parameter(s) {sorted(unknown)}; lap takes tau, lambda0, every, sample"
            )
        if params.get("tau", 1.0) < 0 or params.get("lambda0", 1.0) <= 0 or params.get("every", 1) < 1 \
                or not float(params.get("every", 1)).is_integer() or not 0 < params.get("sample", 1.0) <= 1:
            raise ValueError(
                f"method {text!r}: need tau >= 0, lambda0 > 0, a whole every >= 1 and 0 < sample <= 1"
            )
    return Method(kind, params)


def parse_size(text: str) -> tuple[int, int | None]:
    """``N`` or ``N:EPOCHS``."""
    size, _, epochs = text.partition(":")
    try:
        n, e = int(size), (int(epochs) if epochs else None)
    except ValueError:
        raise ValueError(f"--sizes: {text!r} is not N or N:EPOCHS (whole numbers)") from None
    if n < 1 or (e is not None and e < 1):
        raise ValueError(f"--sizes: {text!r} needs N >= 1 and EPOCHS >= 1")
    return n, e


def parse_seeds(items: Sequence[str]) -> list[int]:
    """Seeds as numbers or inclusive ranges: ``0 1 2`` or ``0-9``."""
    seeds: list[int] = []
    for item in items:
        lo, dash, hi = item.partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if dash and lo else [int(item)]
        except ValueError:
            raise ValueError(f"--seeds: {item!r} is not a whole number or a range like 0-9") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: repeated seeds in {seeds}")
    return seeds


# ---------------------------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    dataset: str
    model: str
    flags: list[str]  # pass-through timm-lap train flags
    sizes: list[tuple[int, int]]  # (n_train, epochs)
    methods: list[Method]
    seeds: list[int]
    weights: list[float]
    select_seeds: list[int]
    val_from_train: float


def _cell(plan: Plan, phase: str, n: int, epochs: int, method: Method, seed: int, weight: float | None,
          extra: Sequence[str] = ()) -> dict[str, Any]:
    params = {**LAP_PARAMS, **method.params} if method.kind == "lap" else {}
    argv = plan.flags + ["--train-subset", str(n), "--epochs", str(epochs), "--eval-interval", str(epochs),
                         "--seed", str(seed)] + method.flags(weight) + list(extra)
    return {"phase": phase, "dataset": plan.dataset, "model": plan.model, "flags": " ".join(plan.flags),
            "n_train": n, "epochs": epochs, "method": method.kind, "label": method.label,
            "tau": params.get("tau"), "lambda0": params.get("lambda0"), "every": params.get("every"),
            "sample": params.get("sample"),
            "weight": weight if method.kind == "fixed" else None, "seed": seed, "argv": argv}


def selection_cells(plan: Plan) -> list[dict[str, Any]]:
    """Fixed-weight runs for every W of the grid and size, evaluated on the part carved from the training split."""
    if not any(m.kind == "fixed" and m.weight is None for m in plan.methods):
        return []
    extra = ["--val-from-train", f"{plan.val_from_train:g}"]
    return [_cell(plan, "selection", n, epochs, Method("fixed"), seed, w, extra)
            for seed in plan.select_seeds for n, epochs in plan.sizes for w in plan.weights]


def choose_weights(rows: Sequence[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """(n_train, epochs) -> {'weight': best W, 'by_weight': {W: mean validation top-1}}; ties go to the smaller W."""
    acc: dict[tuple[int, int], dict[float, list[float]]] = {}
    for r in rows:
        acc.setdefault((r["n_train"], r["epochs"]), {}).setdefault(r["weight"], []).append(r["test_top1"])
    out = {}
    for key, by_w in acc.items():
        means = {w: sum(v) / len(v) for w, v in sorted(by_w.items())}
        out[key] = {"weight": max(means, key=lambda w: (means[w], -w)), "by_weight": means}
    return out


def plan_cells(plan: Plan, chosen: dict[tuple[int, int], dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Test cells, seed-major (a partial sweep still has complete pairs). Fixed cells whose W is not chosen yet
    (``chosen`` lacks their size) are left out."""
    cells = []
    for seed in plan.seeds:
        for n, epochs in plan.sizes:
            for m in plan.methods:
                weight = m.weight
                if m.kind == "fixed" and weight is None:
                    choice = (chosen or {}).get((n, epochs))
                    if choice is None:
                        continue
                    weight = choice["weight"]
                cells.append(_cell(plan, "test", n, epochs, m, seed, weight))
    return cells


# ---------------------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------------------


def _group_key(r: dict[str, Any]) -> tuple:
    return (r["dataset"], r["model"], r["flags"], r["n_train"], r["epochs"])


def summarise(rows: Sequence[dict[str, Any]], method_order: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One entry per (dataset, model, flags, n_train, epochs, label) of the test rows: accuracy, transport and
    lam intervals; paired difference vs vanilla with the smallest detectable difference."""
    from ..analysis.stats import detectable_difference, paired_difference, t_interval

    groups: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = {}
    for r in rows:
        if r.get("phase", "test") == "test":
            groups.setdefault(_group_key(r), {}).setdefault(r["label"], {})[r["seed"]] = r
    order = {label: i for i, label in enumerate(method_order)}
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3], k[4])):
        by_label = groups[key]
        vanilla = by_label.get("vanilla", {})
        for label in sorted(by_label, key=lambda lab: (order.get(lab, len(order)), lab)):
            by_seed = by_label[label]
            entry: dict[str, Any] = dict(zip(("dataset", "model", "flags", "n_train", "epochs"), key))
            lams = [r["lam"] for r in by_seed.values() if r.get("lam") is not None]
            weights = sorted({r["weight"] for r in by_seed.values() if r.get("weight") is not None})
            entry.update(label=label, seeds=sorted(by_seed), weights=weights,
                         acc=t_interval([r["test_top1"] for r in by_seed.values()]),
                         transport=t_interval([r["test_transport"] for r in by_seed.values()]),
                         lam=t_interval(lams) if lams else None)
            if label != "vanilla" and set(vanilla) & set(by_seed):
                diff = paired_difference({s: r["test_top1"] for s, r in by_seed.items()},
                                         {s: r["test_top1"] for s, r in vanilla.items()})
                diff["detectable"] = detectable_difference(diff["sd"], int(diff["n"]))  # n: a count of pairs
                entry["diff_vs_vanilla"] = diff
            out.append(entry)
    return out


def _fmt(ci: dict[str, float] | None, digits: int = 2) -> str:
    if ci is None:
        return "-"
    if ci["n"] < 2:
        return f"{ci['mean']:.{digits}f} (n=1)"
    return f"{ci['mean']:.{digits}f} ± {ci['half']:.{digits}f}"


def _fmt_diff(diff: dict[str, float] | None) -> str:
    if diff is None:
        return "-"
    if diff["n"] < 2:
        return f"{diff['mean']:+.2f} (n=1)"
    return f"{diff['mean']:+.2f} [{diff['lo']:+.2f}, {diff['hi']:+.2f}]"


def summary_markdown(summary: Sequence[dict[str, Any]], selection: dict[tuple[int, int], dict[str, Any]],
                     title: str = "timm-lap compare") -> str:
    """The tables: one row per (size, method), then the choice of W."""
    lines = [f"# {title}", "",
             "Test top-1 (%) at the final epoch, mean ± 95 % Student-t half-width over seeds. The paired difference "
             "is method - vanilla over the seeds both ran (same subset, same initialisation), with its 95 % "
             "interval; *detectable* is the smallest true difference this many pairs would detect with 80 % power "
             "(two-sided paired t-test, 5 %). Transport: held-out, eval mode. lam: final multiplier.", ""]
    by_group: dict[tuple, list[dict[str, Any]]] = {}
    for e in summary:
        by_group.setdefault((e["dataset"], e["model"], e["flags"]), []).append(e)
    for (dataset, model, flags), entries in by_group.items():
        lines += [f"## {model} on {dataset}", "", f"Flags: `{flags}`", "",
                  "| n train | epochs | method | W | seeds | test top-1 (%) | diff vs vanilla (pp) [95 % CI] | "
                  "detectable (pp) | test transport | final lam |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for e in entries:
            diff = e.get("diff_vs_vanilla")
            det = "-" if diff is None or not math.isfinite(diff["detectable"]) else f"{diff['detectable']:.2f}"
            weights = ", ".join(f"{w:g}" for w in e["weights"]) or "-"
            lines.append(f"| {e['n_train']} | {e['epochs']} | {e['label']} | {weights} | {len(e['seeds'])} | "
                         f"{_fmt(e['acc'])} | {_fmt_diff(diff)} | {det} | {_fmt(e['transport'], 3)} | "
                         f"{_fmt(e['lam'], 3)} |")
        lines.append("")
    if selection:
        all_w = sorted({w for s in selection.values() for w in s["by_weight"]})
        lines += ["## Choice of the fixed weight W (validation split carved from the training split)", "",
                  "| n train | epochs | " + " | ".join(f"W={w:g}" for w in all_w) + " | chosen |",
                  "|---|---|" + "---|" * len(all_w) + "---|"]
        for (n, epochs), s in sorted(selection.items()):
            cells = " | ".join(f"{s['by_weight'][w]:.2f}" if w in s["by_weight"] else "-" for w in all_w)
            lines.append(f"| {n} | {epochs} | {cells} | {s['weight']:g} |")
        lines.append("")
    return "\n".join(lines)


def plot_summary(summary: Sequence[dict[str, Any]], path: str) -> str:
    """Per (dataset, model, flags): test accuracy vs training size, and the paired difference vs vanilla."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay untouched

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for e in summary:
        groups.setdefault((e["dataset"], e["model"], e["flags"]), []).append(e)
    fig = Figure(figsize=(11, 3.8 * len(groups)))
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for (dataset, model, _), (ax_acc, ax_diff) in zip(groups, axes):
        entries = groups[(dataset, model, _)]
        labels = list(dict.fromkeys(e["label"] for e in entries))
        for i, label in enumerate(labels):
            pts = sorted((e["n_train"], e) for e in entries if e["label"] == label)
            dodge = [n * (1 + 0.04 * (i - (len(labels) - 1) / 2)) for n, _ in pts]
            err = [0.0 if e["acc"]["n"] < 2 else e["acc"]["half"] for _, e in pts]
            ax_acc.errorbar(dodge, [e["acc"]["mean"] for _, e in pts], yerr=err, marker="o", capsize=3, label=label)
            diffs = [(x, e["diff_vs_vanilla"]) for x, (_, e) in zip(dodge, pts) if "diff_vs_vanilla" in e]
            if diffs:
                ax_diff.errorbar([x for x, _ in diffs], [d["mean"] for _, d in diffs],
                                 yerr=[0.0 if d["n"] < 2 else d["half"] for _, d in diffs], marker="o", capsize=3,
                                 label=label, color=f"C{i}")
        ax_diff.axhline(0.0, color="k", lw=0.8)
        for ax, ylabel in ((ax_acc, "test top-1 (%)"), (ax_diff, "paired diff vs vanilla (pp, 95 % CI)")):
            ax.set_xscale("log")
            ax.set_xlabel("training images")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{model} on {dataset}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_report(rows: Sequence[dict[str, Any]], out_dir: str, method_order: Sequence[str] = (),
                 title: str = "timm-lap compare",
                 selection: dict[tuple[int, int], dict[str, Any]] | None = None) -> dict[str, str]:
    """summary.md, summary.json and (with matplotlib) accuracy_vs_size.png from the rows of ``runs.jsonl``.

    Fixed-weight test rows count only with the W chosen for their size when a selection exists; ``selection``
    (from :func:`choose_weights`) defaults to one made from every selection row given.
    """
    if selection is None:
        selection = choose_weights([r for r in rows if r.get("phase") == "selection"])
    test_rows = [r for r in rows if r.get("phase", "test") == "test" and not (
        r["label"] == "fixed" and (r["n_train"], r["epochs"]) in selection
        and r["weight"] != selection[(r["n_train"], r["epochs"])]["weight"])]
    summary = summarise(test_rows, method_order)
    os.makedirs(out_dir, exist_ok=True)
    files = {"summary_md": os.path.join(out_dir, "summary.md"), "summary_json": os.path.join(out_dir, "summary.json")}
    with open(files["summary_md"], "w") as f:
        f.write(summary_markdown(summary, selection, title))
    with open(files["summary_json"], "w") as f:
        json.dump({"summary": summary, "selection": {f"{n}:{e}": s for (n, e), s in selection.items()}}, f, indent=1)
    if summary:
        try:
            files["plot"] = plot_summary(summary, os.path.join(out_dir, "accuracy_vs_size.png"))
        except ImportError:
            print("timm-lap compare: matplotlib is not installed, no plot (pip install 'timm-lap[analysis]')",
                  file=sys.stderr)
    return files


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(  # no abbreviations: else `--seed 3` (a train flag) would silently set --seeds
        prog="timm-lap compare",
        usage="timm-lap compare [COMPARE OPTIONS] TRAIN FLAGS...",
        description="Paired multi-seed comparison of vanilla training, LAP and a fixed-weight transport penalty. "
                    "Every flag not listed here goes to each `timm-lap train` run (--dataset, --model, --epochs, "
                    "--lr, ...); see `timm-lap train --help`.",
        epilog="Example: timm-lap compare --methods vanilla lap fixed --sizes 100 300 --seeds 0-9 --jobs 2 "
               "--dataset sklearn/digits --model preact_flat9 --epochs 100 -b 128 --lr 0.1 -j 0")
    p.add_argument("--methods", nargs="+", default=["vanilla", "lap", "fixed"], metavar="METHOD",
                   help="vanilla | lap[:tau=T,lambda0=L,every=N,sample=F] | fixed (W chosen on validation) | fixed:w=W "
                        "(default: vanilla lap fixed)")
    p.add_argument("--sizes", nargs="+", required=True, metavar="N[:EPOCHS]",
                   help="training-subset sizes (class-balanced), each optionally with its own epochs")
    p.add_argument("--seeds", nargs="+", default=["0-4"], metavar="S",
                   help="seeds or ranges (default 0-4); each seed fixes the subset and the initialisation")
    p.add_argument("--weights", type=float, nargs="+", default=[0.01, 0.1, 1.0], metavar="W",
                   help="grid for the fixed method's W (default 0.01 0.1 1)")
    p.add_argument("--val-from-train", type=float, default=0.2, metavar="SIZE",
                   help="validation part carved from the training split to choose W (fraction or count; default 0.2)")
    p.add_argument("--select-seeds", nargs="+", default=["1000"], metavar="S",
                   help="seeds of the W-selection runs (default 1000; must differ from --seeds)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="runs in parallel processes (default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch threads per run (default: CPU cores / jobs)")
    p.add_argument("--transport-images", type=int, default=2048, metavar="N",
                   help="held-out transport is averaged over the first N evaluation images (default 2048)")
    p.add_argument("--out-dir", default="output/compare", metavar="DIR",
                   help="runs.jsonl, summary.md, summary.json, accuracy_vs_size.png (default output/compare)")
    p.add_argument("--stop-after", type=float, default=None, metavar="MIN",
                   help="start no new run after MIN minutes (rerun the same command to resume)")
    p.add_argument("--title", default="timm-lap compare", help="heading of summary.md")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from runs.jsonl")
    p.add_argument("--dry-run", action="store_true", help="print the runs that would be made and exit")
    return p


def _plan(opts: argparse.Namespace, train_flags: list[str], parser: argparse.ArgumentParser) -> Plan:
    from .train_args import build_parser as build_train_parser
    from .train_args import parse_args

    for flag in train_flags:
        if flag.split("=", 1)[0] in CONTROLLED_FLAGS:
            parser.error(f"{flag.split('=', 1)[0]} is set by compare for every run (methods, sizes and seeds "
                         "are compare's options); drop it")
    if "-j" not in train_flags and "--workers" not in train_flags and not any(
            f.startswith("--workers=") for f in train_flags):
        train_flags = train_flags + ["-j", "0"]  # many small runs: loader worker processes cost more than they give
    try:
        methods = [parse_method(m) for m in opts.methods]
        sizes = [parse_size(s) for s in opts.sizes]
        seeds, select_seeds = parse_seeds(opts.seeds), parse_seeds(opts.select_seeds)
    except ValueError as exc:
        parser.error(str(exc))
    if len({m.label for m in methods}) != len(methods):
        parser.error(f"--methods: repeated method in {[m.label for m in methods]}")
    if set(seeds) & set(select_seeds):
        parser.error(f"--select-seeds {sorted(set(seeds) & set(select_seeds))} also appear in --seeds; the choice of "
                     "W must not reuse the test runs' seeds")
    if opts.jobs < 1 or (opts.threads is not None and opts.threads < 1):
        parser.error("--jobs and --threads must be >= 1")
    if any(w < 0 for w in opts.weights):
        parser.error("--weights must be >= 0")
    _, unknown = build_train_parser().parse_known_args(train_flags)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (neither a compare option nor a timm-lap train "
                     "flag; see timm-lap compare --help and timm-lap train --help)")
    args, _ = parse_args(train_flags)  # the train flags' own errors, once, before any run
    if args.model.endswith("_lap"):
        parser.error(f"--model {args.model}: give the base model ({args.model[:-4]}); compare adds LAP per method")
    run_sizes = [(n, e or args.epochs) for n, e in sizes]  # EPOCHS defaults to the train flags' --epochs
    return Plan(args.dataset, args.model, train_flags, run_sizes, methods, seeds, sorted(set(opts.weights)),
                select_seeds, opts.val_from_train)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Plan]:
    """``parse_args(argv)``: compare's options and the run plan (torch-free; exits 2 on a bad flag)."""
    parser = build_parser()
    opts, train_flags = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return opts, _plan(opts, train_flags, parser)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from .runs import ResultsFile, run_cells

    opts, plan = parse_args(argv)
    results = ResultsFile(os.path.join(opts.out_dir, "runs.jsonl"), KEY_FIELDS)
    order = [m.label for m in plan.methods]
    deadline = None if opts.stop_after is None else time.monotonic() + 60 * opts.stop_after
    counts = {"ran": 0, "skipped": 0, "left": 0}
    if opts.dry_run:
        selection_runs = selection_cells(plan)
        cells = selection_runs + plan_cells(plan, None)
        for c in cells:
            print(f"{c['phase']:9s} {c['label']:16s} n={c['n_train']} seed={c['seed']}: timm-lap train "
                  + " ".join(c["argv"]))
        print(f"{len(cells)} run(s){'; fixed-weight test runs follow the W selection' if selection_runs else ''}")
        return {"cells": cells}
    flags = " ".join(plan.flags)

    def plan_selection(rows: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
        """W per size from this plan's selection runs only (its flags, select seeds and W grid)."""
        return choose_weights([r for r in rows if r.get("phase") == "selection" and r["flags"] == flags
                               and r["seed"] in plan.select_seeds and r["weight"] in plan.weights])

    if not opts.report_only:
        def sweep(cells: list[dict[str, Any]], desc: str) -> None:
            got = run_cells(cells, results, opts.jobs, opts.threads, desc, opts.transport_images, deadline)
            for k in counts:
                counts[k] += got[k]

        # Selection first, in the same pool pass as every test run that does not wait for it.
        sweep(selection_cells(plan) + plan_cells(plan, None), "compare")
        selection = plan_selection(results.rows())
        if {(n, e) for n, e in plan.sizes} <= set(selection):
            sweep([c for c in plan_cells(plan, selection) if c["label"] == "fixed"], "compare (fixed W)")
    rows = [r for r in results.rows() if r.get("flags") == flags]
    files = write_report(rows, opts.out_dir, order, opts.title, plan_selection(rows))
    print(open(files["summary_md"]).read())
    return {"counts": counts, "files": files, "results": results.path}


if __name__ == "__main__":
    main()
