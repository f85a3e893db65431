"""Figures without pyplot: nothing here chooses a matplotlib backend or touches the caller's figures.

``new_figure`` gives a bare :class:`matplotlib.figure.Figure` (rendered with Agg on save); ``save_figure``
writes it atomically; ``plot_curves`` draws per-epoch curves of one or more runs side by side;
``plot_energy_profile``, ``draw_trajectories`` and ``plot_trajectories`` draw what :mod:`.measure` measured.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["new_figure", "save_figure", "plot_curves", "plot_energy_profile", "draw_trajectories", "plot_trajectories"]

ANALYSIS_DPI = 120  # the energy profile and trajectory figures


def new_figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure that needs no pyplot. Raises ImportError with the install hint without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'timm-lap[analysis]'") from err
    return Figure(figsize=figsize)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out and write ``fig`` to ``path`` (through a temporary file, so a reader never sees half a PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def plot_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    panels: Sequence[tuple[str, str]],
    path: str | Path,
    title: str | None = None,
    colors: Mapping[str, str] | None = None,
) -> Path | None:
    """One panel per ``(column, title)``, one line per run (rows with an ``epoch`` column, as summary.csv).

    Empty values are gaps; a run whose column is all empty is left out of that panel. Returns the path, or
    None when matplotlib is missing or there is nothing to draw.
    """
    if not any(runs.values()):
        return None
    try:
        fig = new_figure((4.1 * len(panels), 3.3))
    except ImportError:
        return None
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (_, panel_title) in zip(axes, panels):
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for name, rows in runs.items():
        epochs = [int(r["epoch"]) for r in rows]
        for ax, (key, _) in zip(axes, panels):
            values = [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows]
            if not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, marker="o", ms=3, label=name or None, color=(colors or {}).get(name))
    if len(runs) > 1:
        axes[0].legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------- analysis figures
def plot_energy_profile(profile: dict[str, float], path: str | Path, title: str | None = None) -> Path:
    """Bar plot of an :func:`~timm_lap.analysis.measure.energy_profile` by depth (block names as ticks); returns
    the path."""
    if not profile:
        raise ValueError("plot_energy_profile: the profile is empty (no tracked block recorded anything).")
    names = list(profile)
    fig = new_figure(figsize=(max(4.0, 0.35 * len(names) + 2.0), 3.6))
    ax = fig.add_subplot()
    ax.bar(range(len(names)), [profile[n] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set(xlabel="block (depth)", ylabel="mean energy", title=title or "energy profile")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi=ANALYSIS_DPI)


def draw_trajectories(ax: Any, points: np.ndarray, labels: Sequence[int] | np.ndarray | torch.Tensor) -> Any | None:
    """``draw_trajectories(ax, points, labels)``: (K+1, N, 2) particle paths on a matplotlib ``ax``, by class.

    Each sample is a faint line through its K+1 positions, ending in a cross (stage output); its start (stage
    input) is a hollow circle drawn on top, so it stays visible where a point barely moves. When the starts sit in
    a cloud much smaller than the paths (spread below ``START_ZOOM_BELOW`` of the whole drawing's, so their circles
    would merge into one blob), an inset in the emptiest corner shows them enlarged; it is returned (else None).
    The legend (the caller's ``ax.legend()``) gets one line per class and the two marker kinds.
    """
    points = np.asarray(points)
    if points.ndim != 3 or points.shape[2] != 2:
        raise ValueError(f"points must have shape (K+1, N, 2); got {points.shape}.")
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.shape != (points.shape[1],):
        raise ValueError(f"labels must have one entry per sample ({points.shape[1]}); got shape {labels.shape}.")
    classes = np.unique(labels)
    colours = _class_colours(len(classes))
    for colour, cls in zip(colours, classes):
        paths = points[:, labels == cls, :]
        ax.plot(paths[..., 0], paths[..., 1], color=colour, alpha=0.3, linewidth=0.8, zorder=1)
        ax.scatter(paths[-1, :, 0], paths[-1, :, 1], color=colour, s=14, marker="x", linewidths=1.0, zorder=3)
        ax.plot([], [], color=colour, linewidth=2, label=f"class {cls}")
    for colour, cls in zip(colours, classes):  # every start over every path and end
        _starts(ax, points[0, labels == cls, :], colour)
    ax.scatter([], [], facecolors="none", edgecolors="black", s=30, marker="o", linewidths=1.0,
               label="start (stage input)")
    ax.scatter([], [], color="black", s=14, marker="x", linewidths=1.0, label="end (stage output)")
    return _zoom_on_starts(ax, points, labels, classes, colours)


# An inset shows the starts when their spread (largest coordinate range) is below this fraction of all points'.
START_ZOOM_BELOW = 0.15
INSET_SIZE = 0.34  # of the axes, each side


def _starts(ax: Any, starts: np.ndarray, colour: Any) -> Any:
    return ax.scatter(starts[:, 0], starts[:, 1], facecolors="none", edgecolors=[colour], s=30, marker="o",
                      linewidths=1.0, zorder=4)


def _spread(points: np.ndarray) -> float:
    flat = points.reshape(-1, 2)
    return float(np.max(np.ptp(flat, axis=0))) if len(flat) else 0.0


def _zoom_on_starts(ax: Any, points: np.ndarray, labels: np.ndarray, classes: np.ndarray,
                    colours: Sequence[Any]) -> Any | None:
    """The inset of :func:`draw_trajectories` (None when the starts are spread enough, or all in one point)."""
    starts, whole = points[0], _spread(points)
    spread = _spread(starts)
    if not (0 < spread < START_ZOOM_BELOW * whole):
        return None
    inset = ax.inset_axes([*_emptiest_corner(points), INSET_SIZE, INSET_SIZE])
    for colour, cls in zip(colours, classes):
        _starts(inset, starts[labels == cls], colour)
    low, high = starts.min(axis=0), starts.max(axis=0)
    margin = 0.08 * spread  # > 0: the starts do not all coincide
    inset.set_xlim(low[0] - margin, high[0] + margin)
    inset.set_ylim(low[1] - margin, high[1] + margin)
    inset.set_title(f"starts, enlarged x{whole / spread:.0f}", fontsize=7, pad=2)
    inset.set_xticks([])  # the title gives the scale; tick labels would crowd the small box
    inset.set_yticks([])
    ax.indicate_inset_zoom(inset, edgecolor="0.4")
    return inset


def _emptiest_corner(points: np.ndarray) -> tuple[float, float]:
    """Lower-left corner (axes fraction) of the inset: the corner of the drawing that covers the fewest points."""
    flat = points.reshape(-1, 2)
    low, high = flat.min(axis=0), flat.max(axis=0)
    rel = (flat - low) / np.where(high > low, high - low, 1.0)  # 0..1 within the drawing
    corners = [(x, y) for y in (1.0 - INSET_SIZE - 0.02, 0.02) for x in (0.02, 1.0 - INSET_SIZE - 0.02)]
    # A point lies under an inset at (x, y) when it falls in that box (the drawing's margins are ignored).
    inside = [np.sum((rel[:, 0] >= x) & (rel[:, 0] <= x + INSET_SIZE) & (rel[:, 1] >= y)
                     & (rel[:, 1] <= y + INSET_SIZE)) for x, y in corners]
    return corners[int(np.argmin(inside))]


def _class_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def plot_trajectories(
    traj: dict[str, Any],
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Plot the PCA-projected particle paths of :func:`~timm_lap.analysis.measure.trajectories`, coloured by
    class; returns the path."""
    fig = new_figure(figsize=(7.0, 5.0))
    ax = fig.add_subplot()
    draw_trajectories(ax, traj["projected"], labels)
    ratio = np.asarray(traj["explained_variance_ratio"])
    ax.set(xlabel=f"PC1 ({ratio[0]:.0%})", ylabel=f"PC2 ({ratio[1]:.0%})")
    stage = traj["stage"]
    ax.set_title(title or f"{stage[0]} .. {stage[-1]} ({len(stage)} blocks)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)  # beside the points
    return save_figure(fig, path, dpi=ANALYSIS_DPI)
