"""The energy's arithmetic and its switches: per-block and grouped ``p = 2`` energies, gradient taps, Triton kernels.

    timm_lap.ops.set_fused(False)          # plain PyTorch instead of the fused CUDA kernels
    with timm_lap.ops.grouping(0): ...     # one autograd node per block inside the block

Switches are read from the environment at first use (``TIMM_LAP_TRITON``, ``TIMM_LAP_GRAD_TAPS``,
``TIMM_LAP_GROUP_BYTES``) and changed by the functions and context managers below.
"""
from .switches import (
    fused,
    fused_enabled,
    grad_taps,
    grad_taps_mode,
    grouping,
    grouping_budget,
    set_fused,
    set_grad_taps,
    set_grouping_budget,
)

__all__ = [
    "fused", "fused_enabled", "grad_taps", "grad_taps_mode", "grouping", "grouping_budget", "set_fused",
    "set_grad_taps", "set_grouping_budget",
]
