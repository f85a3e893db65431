"""Look at the flow a residual network applies to its data.

A stage of same-width residual blocks moves every point ``x_0 -> x_1 -> ... -> x_K``.
This module measures that motion (:mod:`.plotting` draws it):

* :func:`energy_profile`: mean kinetic energy of every block over a dataset;
* :func:`same_width_stages`: runs of directly chained identity-shortcut blocks;
* :func:`trajectories`: particle paths through a stage, in 2D (PCA);
* :func:`transport_efficiency`: ``W2(x_0, x_K)^2 / (K * sum_k E|x_{k+1} - x_k|^2)``, in [0, 1]:
  1 when the stage moves the points along straight, evenly paced optimal-transport paths.

The transport efficiency needs POT (``pip install 'timm-lap[analysis]'``).
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..blocks import BlockSpec, find_blocks, select_blocks
from ..hooks import HookCall, HookCollector
from ..tracker import get_tracker, track, unwrap_model

# The figures moved to .plotting; their old import path (timm_lap.analysis.measure.plot_trajectories) still works.
from .plotting import draw_trajectories as draw_trajectories
from .plotting import plot_energy_profile as plot_energy_profile
from .plotting import plot_trajectories as plot_trajectories

__all__ = [
    "energy_profile",
    "validation_transport",
    "same_width_stages",
    "trajectories",
    "transport_efficiency",
]

# Rounding slack when a result that is in [0, 1] in exact arithmetic lands just outside.
_ROUNDING = 1e-9


# ------------------------------------------------------------------ helpers
def _batch_inputs(batch: Any) -> torch.Tensor:
    """The model input of a loader batch: ``x`` of ``(x, y)``, or the batch itself."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the loader must yield (x, y) batches with a tensor x; got x of type {type(x).__name__}.")
    return x


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _flat64(t: torch.Tensor) -> torch.Tensor:
    """A float64 CPU copy, one row per sample (copied: a later in-place op must not change it)."""
    return t.detach().reshape(t.shape[0], -1).to("cpu", torch.float64, copy=True)


class _EvalMode:
    """Eval mode and no autograd for the duration of a ``with`` block; restores the train flags."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []
        self.no_grad = torch.no_grad()

    def __enter__(self) -> nn.Module:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.no_grad.__enter__()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.no_grad.__exit__(*exc)
        for module, flag in self.flags:
            module.training = flag


def _tracked_specs(model: nn.Module) -> list[BlockSpec]:
    """The blocks of the model's tracker if it has one, else the blocks timm_lap would find."""
    base = unwrap_model(model)
    tracker = get_tracker(base)
    if tracker is not None and tracker.blocks:
        return select_blocks(base, tracker.blocks)
    return find_blocks(base)[0]


# ------------------------------------------------------------ energy profile
def energy_profile(
    model: nn.Module,
    loader: Iterable[Any],
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Per-block mean energy ``mean(|block(x) - shortcut(x)|^p)`` over a dataset, by block name.

    Runs ``model`` in eval mode without autograd on the ``(x, y)`` batches of ``loader``
    (at most ``max_batches``) and averages the tracker's per-block values weighted by batch
    size. ``p`` is the model's tracker's (2, the kinetic energy, for an untracked model). An
    existing tracker is reused and left in place (same object, same settings); an untracked
    model is tracked only for the duration of the call.
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None; got {max_batches!r}.")
    base = unwrap_model(model)
    device = _model_device(base, device)
    tracker = get_tracker(base)
    owned = tracker is None
    if tracker is None:
        tracker = track(base, p=2.0, track_eval=True)
    saved_track_eval = tracker.track_eval
    tracker.track_eval = True  # record in eval mode / under no_grad, only while profiling
    sums: dict[str, float] = {}
    count = 0
    try:
        with _EvalMode(model):
            batches = itertools.islice(loader, max_batches)
            for batch in tqdm(batches, total=max_batches, desc="energy profile", leave=False, disable=_quiet(progress)):
                x = _batch_inputs(batch).to(device)
                model(x)
                for name, value in tracker.per_block().items():
                    sums[name] = sums.get(name, 0.0) + float(value) * len(x)
                count += len(x)
    finally:
        if owned:
            tracker.remove()
        else:
            tracker.track_eval = saved_track_eval
    if count == 0:
        raise ValueError("energy_profile: the loader yielded no sample.")
    return {name: total / count for name, total in sums.items()}


def validation_transport(model: nn.Module, loader: Iterable[Any], max_batches: int | None = None) -> float:
    """Mean transport cost of ``model`` over ``loader`` (at most ``max_batches``; eval mode, detached): the sum of
    :func:`energy_profile` over blocks, the same way for any model."""
    return sum(energy_profile(model, loader, max_batches=max_batches, progress=False).values())


def _quiet(progress: bool) -> bool | None:
    # tqdm: disable=None shows the bar on a terminal only, so logs and tests stay clean.
    return None if progress else True


# ------------------------------------------------------------------- stages
@dataclass
class _Call:
    """What one block saw during a probe forward: its number of calls and the first one's input and output."""

    spec: BlockSpec
    calls: int
    inp: torch.Tensor | None
    out: Any


def _probe(model: nn.Module, example_input: torch.Tensor, specs: Sequence[BlockSpec]) -> list[_Call]:
    """One eval-mode forward with temporary hooks; the blocks' first inputs/outputs, in call order."""
    modules = {spec.name: spec.module for spec in specs}
    with HookCollector(outputs=modules, inputs=modules, early_inputs=True) as hooks, _EvalMode(model):
        model(example_input)
    counts = Counter(call.name for call in hooks.calls)
    first: dict[str, HookCall] = {}
    for call in sorted(hooks.calls, key=lambda c: c.index):  # numbered at their start
        first.setdefault(call.name, call)
    by_name = {spec.name: spec for spec in specs}
    return [_Call(by_name[name], counts[name], call.input, call.output) for name, call in first.items()]


def _keeps_width(rec: _Call) -> bool:
    return (
        rec.spec.shortcut is None
        and rec.calls == 1  # a block run twice has no single position in the flow
        and isinstance(rec.inp, torch.Tensor)
        and isinstance(rec.out, torch.Tensor)
        and rec.inp.ndim >= 1
        and rec.inp.shape == rec.out.shape
    )


def _chained(prev: _Call, rec: _Call) -> bool:
    """True if ``rec`` runs directly on ``prev``'s output (nothing in between)."""
    a, b = prev.out, rec.inp
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)  # both blocks passed _keeps_width
    if a is b:
        return True
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def same_width_stages(model: nn.Module, example_input: torch.Tensor) -> list[list[str]]:
    """Runs of directly chained identity-shortcut blocks that keep their input's shape.

    Uses the model's tracked blocks (or the ones :func:`timm_lap.track` would find) and one
    probe forward of ``example_input`` in eval mode to learn shapes. A block with a projection
    shortcut, or one that changes the shape, ends a run and belongs to none; so does a module
    between two blocks (the next block must receive the previous block's output).
    """
    specs = _tracked_specs(model)
    if not specs:
        return []
    stages: list[list[str]] = []
    prev: _Call | None = None
    for rec in _probe(model, example_input, specs):
        if not _keeps_width(rec):
            prev = None
            continue
        if prev is not None and _chained(prev, rec):
            stages[-1].append(rec.spec.name)
        else:
            stages.append([rec.spec.name])
        prev = rec
    return stages


def _pick_stage(model: nn.Module, example_input: torch.Tensor, stage: int | None) -> list[str]:
    stages = same_width_stages(model, example_input)
    if not stages:
        raise ValueError(
            f"{type(unwrap_model(model)).__name__} has no same-width stage: no tracked identity-shortcut block "
            "keeps its input's shape."
        )
    if stage is None:
        return max(stages, key=len)  # the first of the longest
    if not -len(stages) <= stage < len(stages):
        raise IndexError(f"stage={stage} is out of range: the model has {len(stages)} same-width stages {stages}.")
    return stages[stage]


# ------------------------------------------------------------ stage recorder
class _StageRecorder:
    """Hooks that copy a stage's input and each block's output (flattened, float64, CPU)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(unwrap_model(model).named_modules())
        self.names = list(names)
        self.hooks = HookCollector(outputs={name: modules[name] for name in names},
                                   inputs={names[0]: modules[names[0]]}, early_inputs=True, keep=_flat64)

    def take(self) -> list[torch.Tensor]:
        """The positions x_0..x_K of the latest forward (each block's latest call)."""
        latest = {call.name: call for call in self.hooks.calls}
        self.hooks.clear()
        if len(latest) < len(self.names):
            raise RuntimeError(f"the stage {self.names} did not run completely during the forward.")
        steps = [latest[self.names[0]].input, *(latest[name].output for name in self.names)]
        assert all(isinstance(step, torch.Tensor) for step in steps)  # the probe forward saw tensors
        return steps

    def remove(self) -> None:
        self.hooks.remove()


# -------------------------------------------------------------- trajectories
def trajectories(model: nn.Module, inputs: torch.Tensor, stage: int | None = None) -> dict[str, Any]:
    """Positions of every sample of ``inputs`` through one same-width stage, and their 2D PCA.

    ``stage`` indexes :func:`same_width_stages` (default: the longest). Returns a dict with
    ``'stage'`` (block names), ``'positions'`` (K+1, N, D) float64 array (stage input, then
    after each block, flattened per sample), ``'projected'`` (K+1, N, 2): the positions
    projected on the first two principal axes of all positions of all steps together, and
    ``'explained_variance_ratio'`` (2,).
    """
    names = _pick_stage(model, inputs, stage)
    recorder = _StageRecorder(model, names)
    try:
        with _EvalMode(model):
            model(inputs)
        steps = recorder.take()
    finally:
        recorder.remove()
    positions = torch.stack(steps).numpy()
    projected, ratio = _pca_2d(positions)
    return {"stage": names, "positions": positions, "projected": projected, "explained_variance_ratio": ratio}


def _pca_2d(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (S, N, D) points on the 2 leading principal axes of all S*N points (zero-padded if D < 2)."""
    steps, n, dim = positions.shape
    flat = positions.reshape(steps * n, dim)
    centred = flat - flat.mean(axis=0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    variance = sing**2
    total = variance.sum()
    ratio = variance[:2] / total if total > 0 else np.zeros(min(2, len(variance)))
    pad = 2 - coords.shape[1]
    if pad > 0:
        coords = np.pad(coords, ((0, 0), (0, pad)))
        ratio = np.pad(ratio, (0, pad))
    return coords.reshape(steps, n, 2), ratio


# ------------------------------------------------------ transport efficiency
@dataclass
class _StageStats:
    """Running collection for one stage: start/end clouds and summed squared displacements."""

    names: list[str]
    starts: list[torch.Tensor] = field(default_factory=list)
    ends: list[torch.Tensor] = field(default_factory=list)
    sq_moves: np.ndarray | None = None  # per block: sum over points of |x_{k+1} - x_k|^2

    def add(self, steps: list[torch.Tensor]) -> None:
        moves = np.array([(b - a).pow(2).sum(dim=1).sum().item() for a, b in zip(steps, steps[1:])])
        self.sq_moves = moves if self.sq_moves is None else self.sq_moves + moves
        self.starts.append(steps[0])
        self.ends.append(steps[-1])


def transport_efficiency(
    model: nn.Module,
    loader: Iterable[Any],
    n: int = 1000,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """How close each same-width stage comes to optimal transport, on the first ``n`` samples.

    For a stage of K blocks moving x_0 to x_K: ``efficiency = W2(x_0, x_K)^2 / (K * kinetic)``
    with ``kinetic = sum_k E|x_{k+1} - x_k|^2`` (squared norms of the flattened displacements,
    averaged over points) and W2 the exact optimal transport between the two empirical clouds
    (POT, uniform weights). By Cauchy-Schwarz it lies in [0, 1]; 1 means straight paths at
    constant speed along the optimal map. Returns one dict per stage with keys ``'stage'``,
    ``'blocks'``, ``'w2_squared'``, ``'kinetic'``, ``'block_kinetic'``, ``'efficiency'``, ``'n'``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 (number of points); got {n!r}.")
    device = _model_device(unwrap_model(model), device)
    batches = _take_samples(loader, n, device)
    first = next(batches, None)
    if first is None:
        raise ValueError("transport_efficiency: the loader yielded no sample.")
    stages = same_width_stages(model, first)
    if not stages:
        raise ValueError(
            f"{type(unwrap_model(model)).__name__} has no same-width stage to measure: no tracked "
            "identity-shortcut block keeps its input's shape."
        )
    stats = [_StageStats(names) for names in stages]
    recorders = [_StageRecorder(model, names) for names in stages]
    try:
        with _EvalMode(model):
            bar = tqdm(total=n, desc="transport efficiency", leave=False, disable=_quiet(progress))
            for x in itertools.chain([first], batches):
                model(x)
                for stat, recorder in zip(stats, recorders):
                    stat.add(recorder.take())
                bar.update(len(x))
            bar.close()
    finally:
        for recorder in recorders:
            recorder.remove()
    return [_efficiency(stat) for stat in stats]


def _take_samples(loader: Iterable[Any], n: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The inputs of the loader's batches, cut so that exactly the first ``n`` samples (or all) come out."""
    left = n
    for batch in loader:
        x = _batch_inputs(batch)[:left]
        if len(x):
            yield x.to(device)
        left -= len(x)
        if left <= 0:
            return


def _efficiency(stat: _StageStats) -> dict[str, Any]:
    x0 = torch.cat(stat.starts).numpy()
    xk = torch.cat(stat.ends).numpy()
    count, blocks = len(x0), len(stat.names)
    w2 = _w2_squared(x0, xk)
    assert stat.sq_moves is not None  # add() ran at least once: the loader yielded a first batch
    block_kinetic = stat.sq_moves / count
    kinetic = float(block_kinetic.sum())
    if kinetic > 0:
        efficiency = w2 / (blocks * kinetic)
        if 1.0 < efficiency <= 1.0 + _ROUNDING:
            efficiency = 1.0
    else:
        scale = max(1.0, float(np.mean(np.sum(x0 * x0, axis=1))))
        efficiency = 1.0 if w2 <= _ROUNDING * scale else math.nan
    return {
        "stage": list(stat.names),
        "blocks": blocks,
        "w2_squared": w2,
        "kinetic": kinetic,
        "block_kinetic": block_kinetic.tolist(),
        "efficiency": efficiency,
        "n": count,
    }


def _w2_squared(x0: np.ndarray, xk: np.ndarray) -> float:
    """Exact squared 2-Wasserstein distance between two equal-size uniform point clouds."""
    try:
        import ot
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("transport_efficiency needs POT: pip install 'timm-lap[analysis]'") from err
    count = len(x0)
    weights = np.full(count, 1.0 / count)
    cost = ot.dist(x0, xk)  # squared Euclidean, float64
    # The network simplex needs more than POT's default iteration cap for ~1000 points.
    w2 = float(ot.emd2(weights, weights, cost, numItermax=max(100_000, 50 * count * count)))
    return max(w2, 0.0)  # the |a|^2 + |b|^2 - 2ab expansion can round just below 0
