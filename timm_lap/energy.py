"""Per-block kinetic energy ``mean(|out - shortcut|^p)``, reduced in float32.

``p == 2`` (the default) goes through a custom autograd function that saves only
references to the block output and its shortcut -- tensors autograd keeps alive
anyway -- so the regulariser adds no saved activation of its own. Other ``p`` use
plain PyTorch, which is also the reference the tests compare against.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["block_energy", "reference_energy"]


def _displacement_f32(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    return out.float() - shortcut.float()


class _SquaredDisplacementMean(torch.autograd.Function):
    """``mean((out - shortcut)^2)`` in float32; backward recomputes ``out - shortcut``."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(out, shortcut)
        d = _displacement_f32(out, shortcut)
        return d.square_().mean()  # d is our own temporary: square it in place

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        out, shortcut = ctx.saved_tensors
        scale = grad * (2.0 / out.numel())
        g = _displacement_f32(out, shortcut).mul_(scale)
        grad_out = g.to(out.dtype) if ctx.needs_input_grad[0] else None
        grad_shortcut = torch.neg(g).to(shortcut.dtype) if ctx.needs_input_grad[1] else None
        return grad_out, grad_shortcut


def reference_energy(out: torch.Tensor, shortcut: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Plain-PyTorch ``mean(|out - shortcut|^p)`` in float32 (any ``p > 0``)."""
    d = _displacement_f32(out, shortcut)
    if p == 2.0:
        return d.square().mean()
    return d.abs().pow(p).mean()


def block_energy(out: torch.Tensor, shortcut: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Differentiable float32 energy of one block; the fused path is used for ``p == 2``."""
    if p == 2.0:
        return _SquaredDisplacementMean.apply(out, shortcut)
    return reference_energy(out, shortcut, p)
