"""Per-block kinetic energy ``mean(|out - shortcut|^p)``, reduced in float32 (float64 for float64 tensors).

``p == 2`` (the default) goes through a custom autograd function that saves only
references to the block output and its shortcut -- tensors autograd keeps alive
anyway -- so the regulariser adds no saved activation of its own. Other ``p`` use
plain PyTorch, which is also the reference the tests compare against.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .displacement import displacement
from .grad_taps import TapRegistry, Term
from .switches import fused_enabled, grad_taps_mode

__all__ = ["block_energy", "reference_energy", "use_grad_taps"]


def _load_triton():
    try:
        from . import triton_kernels as _triton_energy
    except Exception:  # Triton missing or unusable: the PyTorch path is always there
        return None
    return _triton_energy


_triton = None
_triton_loaded = False


def _fused_kernels(out: torch.Tensor, shortcut: torch.Tensor):
    """The Triton module if it applies to these tensors (eager, CUDA, dense, same strides), else None."""
    global _triton, _triton_loaded
    if (
        out.device.type != "cuda" or not fused_enabled() or torch.compiler.is_compiling()
        or shortcut.device != out.device
    ):
        return None
    if not _triton_loaded:
        _triton, _triton_loaded = _load_triton(), True
    if _triton is None or not _triton.supports(out, shortcut):
        return None
    return _triton


def _squared_displacement_mean(out: torch.Tensor, shortcut: torch.Tensor, term: Term | None = None) -> torch.Tensor:
    kernels = _fused_kernels(out, shortcut)
    if kernels is not None:
        if term is not None:
            term.fused = kernels
        return kernels.squared_displacement_mean(out, shortcut)
    d = displacement(out, shortcut)
    return d.square_().mean()  # d is our own temporary: square it in place


def unpack_saved(ctx) -> tuple[torch.Tensor, ...]:
    """``ctx.saved_tensors``, with an error that says what to change when the model modified one in place."""
    try:
        return ctx.saved_tensors
    except RuntimeError as error:
        if "inplace operation" not in str(error):
            raise
        raise RuntimeError(
            "timm_lap: a tracked block's output or shortcut was changed in place after the model's forward "
            "returned (for example out.relu_() on a model output that is a block's output); timm_lap keeps "
            "references to these tensors until backward. Use the out-of-place operation (out = out.relu()). "
            "(In-place changes inside the model's forward are handled: the block is then measured from a copy.)"
        ) from error


class _SquaredDisplacementMean(torch.autograd.Function):
    """``mean((out - shortcut)^2)`` in :func:`~timm_lap.displacement.energy_dtype`; backward recomputes
    ``out - shortcut``."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(out, shortcut)
        return _squared_displacement_mean(out, shortcut)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        out, shortcut = unpack_saved(ctx)
        kernels = _fused_kernels(out, shortcut)
        if kernels is not None:
            return kernels.squared_displacement_mean_backward(
                out, shortcut, grad.contiguous(), ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            )
        scale = grad * (2.0 / out.numel())
        g = displacement(out, shortcut).mul_(scale)
        grad_out = g.to(out.dtype) if ctx.needs_input_grad[0] else None
        grad_shortcut = torch.neg(g).to(shortcut.dtype) if ctx.needs_input_grad[1] else None
        return grad_out, grad_shortcut


class _TappedSquaredDisplacementMean(torch.autograd.Function):
    """Same value; backward hands its gradient to the tensors' taps (see :mod:`timm_lap.grad_taps`)."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, shortcut: torch.Tensor, term: Term) -> torch.Tensor:
        ctx.save_for_backward(out, shortcut)
        ctx.term = term
        return _squared_displacement_mean(out, shortcut, term)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        out, shortcut = unpack_saved(ctx)  # checks that neither was modified in place since the forward
        ctx.term.set(grad, out, shortcut)
        return None, None, None


def use_grad_taps(out: torch.Tensor) -> bool:
    """Whether the tracker should route this block's energy gradient through taps."""
    mode = grad_taps_mode()
    if mode is False or torch.compiler.is_compiling():
        return False
    return mode is True or (out.device.type == "cuda" and fused_enabled())


def reference_energy(out: torch.Tensor, shortcut: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Plain-PyTorch ``mean(|out - shortcut|^p)`` in :func:`~timm_lap.displacement.energy_dtype` (any ``p > 0``)."""
    d = displacement(out, shortcut)
    if p == 2.0:
        return d.square().mean()
    return d.abs().pow(p).mean()


def block_energy(
    out: torch.Tensor, shortcut: torch.Tensor, p: float = 2.0, taps: TapRegistry | None = None
) -> torch.Tensor:
    """Differentiable energy of one block (float32; float64 for float64 tensors); fused for ``p == 2``.

    With ``taps`` (eager, ``p == 2``) the gradient reaches ``out`` and ``shortcut`` through the
    registry's tensor hooks instead of new gradient tensors; the value is the same.
    """
    if p == 2.0:
        if taps is not None:
            return _TappedSquaredDisplacementMean.apply(out, shortcut, taps.attach(out, shortcut))
        return _SquaredDisplacementMean.apply(out, shortcut)
    return reference_energy(out, shortcut, p)
