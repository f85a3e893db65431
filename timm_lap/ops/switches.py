"""timm-lap's switches: private, read from the environment at first use, changed by functions and context managers.

- ``fused``: the Triton kernels for the p = 2 energy in eager CUDA (``TIMM_LAP_TRITON=0`` turns them off);
- ``grad_taps``: route the energy's gradient through tensor hooks (``None``: on for eager CUDA with the fused
  kernels; ``True``: always in eager mode, the CPU too; ``False``: never; ``TIMM_LAP_GRAD_TAPS=0`` = ``False``);
- ``grouping``: bytes of early gradients one grouped energy node may hold (``TIMM_LAP_GROUP_BYTES``, default
  32 MiB; 0 = one autograd node per block), see :mod:`timm_lap.grouped_energy`.

Reading the environment lazily means a bad value is reported where it is used, never by ``import timm``.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "fused", "fused_enabled", "grad_taps", "grad_taps_mode", "grouping", "grouping_budget", "set_fused",
    "set_grad_taps", "set_grouping_budget",
]

_UNSET = object()
_fused: object = _UNSET
_grad_taps: object = _UNSET
_budget: object = _UNSET
_DEFAULT_BUDGET = 32 * 2**20


# ------------------------------------------------------------------------------------------- fused kernels
def fused_enabled() -> bool:
    """Whether eager CUDA uses the fused Triton kernels (when Triton is available)."""
    global _fused
    if _fused is _UNSET:
        _fused = os.environ.get("TIMM_LAP_TRITON", "1") != "0"
    return bool(_fused)


def set_fused(enabled: bool) -> None:
    """Use (True) or avoid (False) the fused Triton kernels in eager CUDA."""
    global _fused
    if not isinstance(enabled, bool):
        raise TypeError(f"set_fused takes True or False; got {enabled!r}.")
    _fused = enabled


@contextlib.contextmanager
def _switched(get: Callable[[], Any], set_: Callable[[Any], None], value: Any) -> Iterator[None]:
    previous = get()
    set_(value)
    try:
        yield
    finally:
        set_(previous)


def fused(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """``with fused(False):`` the plain-PyTorch energy inside the block, the previous setting after it."""
    return _switched(fused_enabled, set_fused, enabled)


# ------------------------------------------------------------------------------------------- gradient taps
def grad_taps_mode() -> bool | None:
    """None (automatic: eager CUDA with the fused kernels), True (always in eager mode) or False (never)."""
    global _grad_taps
    if _grad_taps is _UNSET:
        _grad_taps = None if os.environ.get("TIMM_LAP_GRAD_TAPS", "1") != "0" else False
    return _grad_taps  # type: ignore[return-value]


def set_grad_taps(mode: bool | None) -> None:
    """Gradient taps: None = automatic, True = always (eager), False = never."""
    global _grad_taps
    if mode is not None and not isinstance(mode, bool):
        raise TypeError(f"set_grad_taps takes None, True or False; got {mode!r}.")
    _grad_taps = mode


def grad_taps(mode: bool | None) -> contextlib.AbstractContextManager[None]:
    """``with grad_taps(True):`` the taps' mode inside the block, the previous one after it."""
    return _switched(grad_taps_mode, set_grad_taps, mode)


# ------------------------------------------------------------------------------------------- grouping budget
def _budget_from_env() -> int:
    raw = os.environ.get("TIMM_LAP_GROUP_BYTES", "")
    if not raw:
        return _DEFAULT_BUDGET
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"TIMM_LAP_GROUP_BYTES must be a whole number of bytes (0 = no grouping); got {raw!r}."
        ) from None
    if value < 0:
        raise ValueError(f"TIMM_LAP_GROUP_BYTES must be >= 0 (0 = no grouping); got {value}.")
    return value


def grouping_budget() -> int:
    """Bytes of early gradients one group may hold (0: one autograd node per block)."""
    global _budget
    if _budget is _UNSET:
        _budget = _budget_from_env()
    return _budget  # type: ignore[return-value]


def set_grouping_budget(nbytes: int) -> None:
    """Set the group budget in bytes for this process; 0 turns grouping off."""
    global _budget
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"the grouping budget must be an int >= 0 (bytes; 0 = no grouping); got {nbytes!r}.")
    _budget = nbytes


def grouping(nbytes: int) -> contextlib.AbstractContextManager[None]:
    """``with grouping(0):`` one autograd node per block inside the block, the previous budget after it."""
    return _switched(grouping_budget, set_grouping_budget, nbytes)
