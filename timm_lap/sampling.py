"""Unbiased estimate of the transport from a seeded random part of each batch (``track(..., sample=f)``).

The first dimension of every block's output (the batch, for timm models) is cut into ``J = ceil(B / m)``
consecutive chunks of ``m = ceil(f * B)`` rows; each training forward picks one chunk uniformly at random
(the same relative position for every block) and the block's energy is ``J * sum(chunk^2) / numel``. Every
row lies in exactly one chunk, picked with probability ``1 / J``, so the estimate and its gradient have the
exact transport's expectation, for any ``B`` (the last chunk may be shorter). The chunks are views: nothing is
copied, and the energy reads only ``m`` rows.
"""
from __future__ import annotations

import math
import random

import torch

__all__ = ["RowSample", "validate_sample"]


def validate_sample(sample: float | None) -> float | None:
    """``None`` (exact) or a fraction in (0, 1]; 1 means exact too."""
    if sample is None:
        return None
    if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not (0 < sample <= 1):
        raise ValueError(
            "sample must be a fraction of the batch in (0, 1] (e.g. 0.25), or None for the exact transport; "
            f"got {sample!r}."
        )
    return None if sample == 1 else float(sample)


class RowSample:
    """The chunk of rows one training forward measures; see the module docstring."""

    def __init__(self, fraction: float, seed: int = 0) -> None:
        self.fraction = fraction
        self._rng = random.Random(seed)
        self._draw: float | None = None
        self._views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def reseed(self, seed: int) -> None:
        """Restart the draws from ``seed`` (``timm-lap train`` does this every epoch, so resumes repeat them)."""
        self._rng.seed(seed)

    def new_pass(self) -> None:
        """Forget this forward's draw; the next :meth:`apply` draws again."""
        self._draw = None
        self._views = {}

    def end_pass(self) -> None:
        """Drop the views (and so the references to the block outputs) once the forward is over."""
        self._views = {}

    def apply(self, out: torch.Tensor, shortcut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(out rows, shortcut rows, weight)``: ``weight * mean((rows_out - rows_sc)^2)`` estimates the energy."""
        if out.dim() == 0:
            return out, shortcut, 1.0
        rows = out.shape[0]
        size = max(1, math.ceil(self.fraction * rows))
        chunks = -(-rows // size)
        if chunks == 1:
            return out, shortcut, 1.0
        if self._draw is None:
            self._draw = self._rng.random()
        start = min(int(self._draw * chunks), chunks - 1) * size
        stop = min(rows, start + size)
        weight = chunks * (stop - start) / rows
        return self._view(out, start, stop), self._view(shortcut, start, stop), weight

    def _view(self, tensor: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # One view per tensor and forward: a block's output is the next block's shortcut, and the grouped
        # energy recognises shared tensors by identity.
        cached = self._views.get(id(tensor))
        if cached is not None and cached[0] is tensor:
            return cached[1]
        view = tensor[start:stop]
        self._views[id(tensor)] = (tensor, view)
        return view

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_views": {}}
