"""Optimizer-side Uzawa update of the multiplier: ``lam += tau * task_loss``."""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .loss import LeastActionLoss

__all__ = ["MultiplierScheduler"]


class MultiplierScheduler(nn.Module):
    """Grow ``lam`` by ``tau * task_loss`` every ``every`` optimizer updates.

    It registers a post-step hook on ``optimizer``, so the update happens exactly once per
    real optimizer step, with the mean task loss of the micro-batches seen by ``loss``
    since the previous step (gradient accumulation works unchanged). ``lam`` is a float64
    tensor on the loss's device and is never read on the host: no synchronisation. Under
    ``torch.distributed`` the mean task loss is averaged over ranks first, so every rank
    holds the same ``lam``. A non-finite task loss leaves ``lam`` unchanged.

    The state is held as module buffers (``lam`` float64, ``inverse_lam`` float32, ``pending_sum``) and
    extra state (``tau``, ``every``, ``lambda0``, ``num_updates``, ``pending_count``): ``to()``,
    ``state_dict()`` and ``load_state_dict()`` work as for any module, and a state dict written by
    timm-lap 0.1.0 (flat keys) still loads.
    """

    lam: torch.Tensor
    inverse_lam: torch.Tensor
    pending_sum: torch.Tensor
    # Set with object.__setattr__ (plain references, not submodules); declared here for type checkers.
    optimizer: torch.optim.Optimizer
    loss: LeastActionLoss

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        loss: LeastActionLoss,
        tau: float = 1.0,
        every: int = 1,
        lambda0: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(loss, LeastActionLoss):
            raise TypeError(f"loss must be a timm_lap.LeastActionLoss; got {type(loss).__name__}.")
        if loss.weight is not None:
            raise ValueError(
                "this LeastActionLoss has a fixed weight (weight=...); the multiplier replaces it. "
                "Create the loss without weight= to use MultiplierScheduler."
            )
        if loss.multiplier is not None:
            raise ValueError("this LeastActionLoss already has a MultiplierScheduler; call its remove() first.")
        if not hasattr(optimizer, "register_step_post_hook"):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}.")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise ValueError(f"tau must be a finite number >= 0 (the multiplier's step size); got {tau!r}.")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1 (update lam every N optimizer steps); got {every!r}.")
        if isinstance(lambda0, bool) or not isinstance(lambda0, (int, float)) or not (0 < lambda0 < math.inf):
            raise ValueError(f"lambda0 must be a finite number > 0 (the initial multiplier); got {lambda0!r}.")
        self.tau = float(tau)
        self.every = every
        self.lambda0 = float(lambda0)
        self.num_updates = 0
        self.register_buffer("lam", torch.full((), self.lambda0, dtype=torch.float64))
        self.register_buffer("inverse_lam", torch.full((), 1.0 / self.lambda0, dtype=torch.float32))
        self.register_buffer("pending_sum", torch.zeros((), dtype=torch.float64))
        self.pending_count = 0
        # Sticky "a non-finite loss was seen" flag. On the CPU the tensor shares memory with the
        # numpy array, so the host reads it without any tensor call.
        self._nonfinite_host = np.zeros((), dtype=bool)
        self._nonfinite = torch.from_numpy(self._nonfinite_host)
        self._warned = False
        self._pinned_flag: torch.Tensor | None = None
        # Plain references, not submodules: the loss holds this multiplier the same way.
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "loss", loss)
        self._handle = optimizer.register_step_post_hook(self._after_optimizer_step)
        loss.attach_multiplier(self)

    # ------------------------------------------------------------------ public
    def observe(self, task_loss: torch.Tensor) -> None:
        """Record one micro-batch's task loss (LeastActionLoss calls this on training forwards)."""
        task_loss = task_loss.detach()
        if self.lam.device != task_loss.device:
            self._move_to(task_loss.device)
        if self.pending_count == 0:
            self.pending_sum.copy_(task_loss)
        else:
            self.pending_sum.add_(task_loss)
        self.pending_count += 1

    def step(self, task_loss: torch.Tensor | float | None = None) -> None:
        """Update ``lam`` now, from ``task_loss`` or the mean of the losses observed since the last update."""
        if task_loss is not None:
            value = torch.as_tensor(task_loss, dtype=torch.float64, device=self.lam.device)
        elif self.pending_count:
            value = self.pending_sum if self.pending_count == 1 else self.pending_sum / self.pending_count
        else:
            return
        self.pending_count = 0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= dist.get_world_size()
        step = value * self.tau
        # Non-finite steps (a NaN/inf loss, or an overflowing product) add 0 and set the flag; nan_to_num and
        # a comparison are cheaper than isfinite + where on a 0-d tensor.
        safe = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        self.lam.add_(safe)
        torch.reciprocal(self.lam, out=self.inverse_lam)
        self._nonfinite.logical_or_(safe != step)
        self._report_nonfinite()

    def remove(self) -> None:
        """Detach from the optimizer and the loss (which falls back to ``lam = lambda0 = 1``)."""
        self._handle.remove()
        self.loss.detach_multiplier(self)

    def get_extra_state(self) -> dict[str, Any]:
        return {"tau": self.tau, "every": self.every, "lambda0": self.lambda0, "num_updates": self.num_updates,
                "pending_count": self.pending_count}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.tau = float(state["tau"])
        self.every = int(state["every"])
        self.lambda0 = float(state["lambda0"])
        self.num_updates = int(state["num_updates"])
        self.pending_count = int(state.get("pending_count", 0))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a state dict of this class, or one written by timm-lap 0.1.0 (flat keys ``lam``, ``tau``, ...)."""
        if "_extra_state" not in state_dict:
            state_dict = _from_flat_state(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def __repr__(self) -> str:
        return f"MultiplierScheduler(tau={self.tau}, every={self.every}, lambda0={self.lambda0})"

    # ---------------------------------------------------------------- internals
    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.num_updates += 1
        if self.num_updates % self.every == 0:
            self.step()
        else:
            self.pending_count = 0

    def _move_to(self, device: torch.device) -> None:
        self.to(device)
        self._nonfinite = self._nonfinite.to(device)

    def _report_nonfinite(self) -> None:
        # The sticky device flag reaches the host through an asynchronous copy into pinned memory,
        # so checking it never stalls the device; on an accelerator the warning may come one update late.
        if self._warned:
            return
        seen = bool(self._nonfinite_host)  # on an accelerator: the previous update's copy
        if self._nonfinite.device.type != "cpu":
            if self._pinned_flag is None:
                self._pinned_flag = torch.zeros((), dtype=torch.bool, pin_memory=True)
                self._nonfinite_host = self._pinned_flag.numpy()
            self._pinned_flag.copy_(self._nonfinite, non_blocking=True)
        if seen:
            self._warned = True
            warnings.warn(
                "timm_lap: a non-finite task loss reached MultiplierScheduler; lam was left unchanged "
                "for that update.",
                stacklevel=4,
            )


def _from_flat_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A 0.1.0 state dict (``lam``, ``tau``, ``every``, ``lambda0``, ``num_updates``, ``pending_sum`` or None,
    ``pending_count``) in this class's layout."""
    missing = {"lam", "tau", "every", "lambda0", "num_updates"} - set(state)
    if missing:
        raise KeyError(f"MultiplierScheduler state_dict is missing {sorted(missing)}.")
    lam = torch.as_tensor(state["lam"]).detach().to(torch.float64)
    pending = state.get("pending_sum")
    return {
        "lam": lam,
        "inverse_lam": (1.0 / lam).float(),
        "pending_sum": torch.zeros((), dtype=torch.float64) if pending is None else torch.as_tensor(pending).double(),
        "_extra_state": {key: state[key] for key in ("tau", "every", "lambda0", "num_updates")}
        | {"pending_count": int(state.get("pending_count", 0))},
    }
