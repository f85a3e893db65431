"""The markdown report of ``timm-lap analyze``: :func:`render_report` turns an analysis result into its text.

The result is the dict :func:`timm_lap.cli.analyze.analyze` returns (model, checkpoint and data description,
top-1 accuracy, energy profile, transport efficiency per same-width stage, trajectories); nothing here measures.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

# Why a run's numbers depend on which of its checkpoints is analysed (timm-lap demo's table uses the last).
CHECKPOINT_NOTE = (
    "A `timm-lap train` run folder holds `last.pth.tar` (the final epoch: the model `timm-lap train` and "
    "`timm-lap demo` measure at the end, e.g. the demo's *val transport*) and `model_best.pth.tar` (the epoch with "
    "the best `--eval-metric`); their numbers agree only when the best epoch is the last."
)
SINGLE_BLOCK_NOTE = (
    "{stages} {verb} a single block: a one-step stage's efficiency compares the block's own pairing x_0 -> x_1 "
    "with the optimal one, and with n points in many dimensions the two coincide, so it comes out 1 (or very "
    "nearly) almost by construction, whatever the network learned. Efficiency says something about stages of "
    "several blocks."
)
MARKERS_NOTE = (
    "hollow circle = stage input (start), cross = stage output (end); when the inputs sit in a cloud much smaller "
    "than the paths, an inset shows them enlarged."
)

__all__ = ["CHECKPOINT_NOTE", "MARKERS_NOTE", "SINGLE_BLOCK_NOTE", "efficiency_table", "energy_table", "format_value",
           "render_report", "stage_label", "stage_share"]


def format_value(value: float) -> str:
    """Six significant digits, ``nan`` for NaN."""
    return "nan" if math.isnan(value) else f"{value:.6g}"


def stage_label(names: Sequence[str], code: bool = True, count: bool = True) -> str:
    """``first .. last (K blocks)``, or just the name of a one-block stage."""
    quote = "`" if code else ""
    first, last = f"{quote}{names[0]}{quote}", f"{quote}{names[-1]}{quote}"
    if len(names) == 1:
        return first
    return f"{first} .. {last}" + (f" ({len(names)} blocks)" if count else "")


def energy_table(profile: dict[str, float]) -> list[str]:
    """Markdown rows: every block's energy and its share of the total, in depth order."""
    total = sum(profile.values())
    lines = ["| # | block | energy | share |", "|---:|---|---:|---:|"]
    for i, (name, value) in enumerate(profile.items()):
        share = f"{100 * value / total:.1f} %" if total > 0 else "-"
        lines.append(f"| {i} | `{name}` | {format_value(value)} | {share} |")
    return lines


def efficiency_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: one per :func:`~timm_lap.analysis.measure.transport_efficiency` stage."""
    lines = ["| stage | blocks | W2^2 | kinetic | efficiency | n |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        values = " | ".join(format_value(row[key]) for key in ("w2_squared", "kinetic", "efficiency"))
        lines.append(f"| {stage_label(row['stage'], count=False)} | {row['blocks']} | {values} | {row['n']} |")
    return lines


def render_report(result: dict[str, Any]) -> str:
    """The markdown text of the report for an analysis result (see the module docstring)."""
    return "\n".join([*_summary(result), *_energy_section(result), *_efficiency_section(result),
                      *_trajectory_section(result)]) + "\n"


def _summary(r: dict[str, Any]) -> list[str]:
    lines = [
        f"# timm-lap analyze: {r['model']}", "",
        "| | |", "|---|---|",
        f"| model | `{r['model']}`{_kwargs(r.get('model_kwargs'))} ({r['num_params'] / 1e6:.2f}M parameters, "
        f"{r['num_classes']} classes) |",
        f"| checkpoint | {r['checkpoint_info']} |",
        f"| dataset | `{r['dataset'] or 'ImageFolder'}`, split `{r['split']}`, {r['num_samples']} samples, "
        f"input {tuple(r['input_size'])} |",
        f"| top-1 accuracy | {r['top1']:.2f} % ({r['num_samples']} samples) |",
        f"| total transport | {format_value(r['total_transport'])} (sum of {len(r['energy_profile'])} block "
        f"energies, eval mode, mean over {r['energy_samples']} samples of `{r['split']}`) |",
    ]
    if r["inherited"]:
        lines += ["", f"Taken from the checkpoint's training arguments: {', '.join(r['inherited'])}."]
    if r.get("checkpoint_epoch") is not None:
        lines += ["", CHECKPOINT_NOTE]
        if os.path.basename(r.get("checkpoint") or "") == "model_best.pth.tar":
            lines += ["", f"This is `model_best.pth.tar`, the model of epoch {r['checkpoint_epoch']}: the run's "
                          "final model only when its last epoch set the best score. `last.pth.tar` beside it is the "
                          "final model, the one whose numbers `timm-lap demo`'s table shows."]
    return lines


def _kwargs(kwargs: dict[str, Any] | None) -> str:
    """`` with `width=16`` for a model built with extra create_model arguments, else empty."""
    return " with " + ", ".join(f"`{k}={v!r}`" for k, v in kwargs.items()) if kwargs else ""


def _energy_section(r: dict[str, Any]) -> list[str]:
    return [
        "", "## Energy profile", "",
        f"Energy `mean |block(x) - shortcut(x)|^p` (p = {r['p']:g}, mean over elements) of every residual "
        f"block, in depth order, averaged over {r['energy_samples']} samples.", "",
        *energy_table(r["energy_profile"]), "",
        f"Total transport: **{format_value(r['total_transport'])}**", "",
        "![energy profile](energy_profile.png)",
    ]


def _efficiency_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "", "## Transport efficiency", "",
        "Per same-width stage of K blocks moving x_0 to x_K: `efficiency = W2(x_0, x_K)^2 / (K * kinetic)`, "
        "`kinetic = sum_k E|x_{k+1} - x_k|^2` (squared norms of the flattened displacements, averaged over the "
        "n points); 1 = straight, evenly paced optimal-transport paths.", "",
    ]
    rows = r["transport_efficiency"]
    if not rows:
        return lines + ["The model has no same-width stage (no identity-shortcut block that keeps its input's shape)."]
    lines += efficiency_table(rows)
    single = [f"`{row['stage'][0]}`" for row in rows if row["blocks"] == 1]
    if single:
        text = SINGLE_BLOCK_NOTE.format(stages=", ".join(single), verb="is" if len(single) == 1 else "are each")
        lines += ["", f"Note: {text}"]
    return lines


def stage_share(stage: Sequence[str], profile: dict[str, float]) -> float:
    """The share (0..1) of the total transport that the blocks of ``stage`` carry (NaN if the total is 0)."""
    total = sum(profile.values())
    return sum(profile.get(name, 0.0) for name in stage) / total if total > 0 else math.nan


def _trajectory_section(r: dict[str, Any]) -> list[str]:
    traj = r["trajectories"]
    lines = ["", "## Trajectories", ""]
    if traj is None:
        return lines + ["No same-width stage: no trajectories to draw."]
    ratio = ", ".join(f"{v:.0%}" for v in traj["explained_variance_ratio"])
    share = stage_share(traj["stage"], r["energy_profile"])
    carried = "" if math.isnan(share) else f" (it carries {share:.1%} of the total transport)"
    lines += [
        f"{traj['points']} points through the longest same-width stage, {stage_label(traj['stage'])}{carried}, "
        f"projected on their first two principal axes (explained variance {ratio}), coloured by class; "
        f"{MARKERS_NOTE}",
    ]
    if len(traj["stage"]) == 1:
        lines += ["", "Note: the longest same-width stage is a single block, so each path is one step."]
    return lines + ["", "![trajectories](trajectories.png)"]
