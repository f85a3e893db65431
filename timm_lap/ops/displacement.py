"""A block's displacement ``out - shortcut``, in the precision every energy path shares."""
from __future__ import annotations

import torch

__all__ = ["energy_dtype", "displacement"]


def energy_dtype(out: torch.Tensor, shortcut: torch.Tensor) -> torch.dtype:
    """The dtype the displacement is formed and reduced in: the wider of both tensors', and at least float32."""
    return torch.promote_types(torch.promote_types(out.dtype, shortcut.dtype), torch.float32)


def displacement(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``out - shortcut`` as a new tensor in :func:`energy_dtype` (float64 models keep their precision:
    a displacement small against the activations is not lost to float32 rounding)."""
    dtype = energy_dtype(out, shortcut)
    return out.to(dtype) - shortcut.to(dtype)
