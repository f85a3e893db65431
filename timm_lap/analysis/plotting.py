"""Figures without pyplot: nothing here chooses a matplotlib backend or touches the caller's figures.

``new_figure`` gives a bare :class:`matplotlib.figure.Figure` (rendered with Agg on save); ``save_figure``
writes it atomically; ``plot_curves`` draws per-epoch curves of one or more runs side by side.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["new_figure", "save_figure", "plot_curves"]


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
