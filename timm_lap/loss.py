"""The drop-in loss wrapper: ``task + transport / lam`` (or ``task + weight * transport``)."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn as nn

from .sampling import validate_sample
from .tracker import DisplacementTracker, get_tracker, track

__all__ = ["LeastActionLoss", "Multiplier"]


class Multiplier(Protocol):
    """What :class:`LeastActionLoss` needs from a multiplier (MultiplierScheduler is one)."""

    lam: torch.Tensor  # the multiplier, for logging
    inverse_lam: torch.Tensor  # 1 / lam, the factor on the transport cost

    def observe(self, task_loss: torch.Tensor) -> None:
        """Called with each training forward's task loss."""


class LeastActionLoss(nn.Module):
    """Wrap a task loss with the least-action transport penalty.

    ``loss = criterion(output, target) + transport / lam``, where ``lam`` comes from an
    attached :class:`~timm_lap.MultiplierScheduler` (``lam = lambda0 = 1`` until one is attached).
    With ``weight=w`` (and no scheduler) it is the fixed-weight regulariser
    ``task + w * transport``. ``sample=f`` estimates the transport from a seeded random
    fraction ``f`` of each batch (unbiased; see :func:`timm_lap.track`).

    After each call, ``task_loss``, ``transport`` and ``lam`` hold detached tensors for logging.
    """

    def __init__(
        self,
        criterion: Callable[[Any, Any], torch.Tensor],
        model_or_tracker: nn.Module | DisplacementTracker,
        weight: float | None = None,
        sample: float | None = None,
    ) -> None:
        super().__init__()
        if not callable(criterion):
            raise TypeError(f"criterion must be callable as criterion(output, target); got {type(criterion).__name__}.")
        if weight is not None and (isinstance(weight, bool) or not math.isfinite(float(weight)) or weight < 0):
            raise ValueError(f"weight must be a finite number >= 0 (or None to use the multiplier); got {weight!r}.")
        self.criterion = criterion
        tracker: DisplacementTracker | None
        if isinstance(model_or_tracker, DisplacementTracker):
            tracker, subject = model_or_tracker, "the tracker's sample"
        elif isinstance(model_or_tracker, nn.Module):
            # A model that is already tracked keeps its tracker and settings (p, blocks, track_eval, sample):
            # only an explicit, conflicting track() call is an error.
            tracker, subject = get_tracker(model_or_tracker), "the model's tracker"
        else:
            raise TypeError(
                "LeastActionLoss needs the model (or its DisplacementTracker) as second argument; "
                f"got {type(model_or_tracker).__name__}."
            )
        if tracker is None:
            assert isinstance(model_or_tracker, nn.Module)  # a tracker passed in is never None
            tracker = track(model_or_tracker, sample=sample)
        elif sample is not None and validate_sample(sample) != tracker.sample:
            raise ValueError(
                f"sample={sample!r} differs from {subject} (sample={tracker.sample!r}); pass sample= when you first "
                "track the model (timm_lap.track or a *_lap model's lap_sample=), or remove its tracker first: "
                "timm_lap.get_tracker(model).remove()."
            )
        self.tracker = tracker
        self.weight = None if weight is None else float(weight)
        self._multiplier: Multiplier | None = None
        self.task_loss: torch.Tensor | None = None
        self.transport: torch.Tensor | None = None
        self._lambda0 = torch.ones((), dtype=torch.float64)

    # ------------------------------------------------------------- the multiplier interface
    @property
    def multiplier(self) -> Multiplier | None:
        """The attached multiplier (a :class:`~timm_lap.MultiplierScheduler`), or None."""
        return self._multiplier

    @property
    def scheduler(self) -> Multiplier | None:
        """The attached multiplier (its earlier name)."""
        return self._multiplier

    def attach_multiplier(self, multiplier: Multiplier) -> None:
        """Use ``multiplier``: the loss becomes ``task + transport * multiplier.inverse_lam`` and reports each
        training task loss to ``multiplier.observe()``. MultiplierScheduler calls this itself."""
        if self._multiplier is not None and self._multiplier is not multiplier:
            raise ValueError("this LeastActionLoss already has a multiplier; call its remove() first.")
        # A plain reference, not a submodule: the multiplier's state is saved on its own.
        object.__setattr__(self, "_multiplier", multiplier)

    def detach_multiplier(self, multiplier: Multiplier) -> None:
        """Stop using ``multiplier`` (back to ``lam = lambda0 = 1``); no effect if it is not the attached one."""
        if self._multiplier is multiplier:
            object.__setattr__(self, "_multiplier", None)

    @property
    def lam(self) -> torch.Tensor:
        """Current multiplier (detached): the attached multiplier's, else ``lam = lambda0 = 1``."""
        return (self._multiplier.lam if self._multiplier is not None else self._lambda0).detach()

    def forward(self, output: Any, target: Any) -> torch.Tensor:
        task = self.criterion(output, target)
        if not isinstance(task, torch.Tensor) or task.ndim != 0:
            shape = tuple(task.shape) if isinstance(task, torch.Tensor) else type(task).__name__
            raise ValueError(
                f"the wrapped criterion must return a scalar tensor; got {shape}. "
                "Use reduction='mean' (or 'sum') in the criterion."
            )
        # The transport of the forward that produced this output (two views: each loss gets its own).
        transport = self.tracker.transport_cost(output)
        multiplier = self._multiplier
        if multiplier is not None:
            # Only a loss that can reach an optimizer update counts: not an eval-mode forward that runs with
            # autograd on (a validation pass without torch.no_grad()).
            if task.requires_grad and self.tracker.forward_trains(output) is not False:
                multiplier.observe(task)
            total = torch.addcmul(task, transport, multiplier.inverse_lam)
        elif self.weight is not None:
            total = torch.add(task, transport, alpha=self.weight)
        else:
            total = task + transport  # lam = lambda0 = 1
        self.task_loss = task.detach()
        self.transport = transport.detach()
        return total

    def extra_repr(self) -> str:
        mode = "multiplier" if self.weight is None else f"weight={self.weight}"
        sample = "" if self.tracker.sample is None else f", sample={self.tracker.sample}"
        return f"{mode}, p={self.tracker.p}, blocks={len(self.tracker.blocks)}{sample}"
