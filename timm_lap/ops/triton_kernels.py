"""Fused CUDA kernels (Triton) for the p = 2 energy: one read of ``out`` and ``shortcut`` forward,
one read and two writes backward, float32 arithmetic whatever the storage dtype.

Used in eager mode on CUDA for dense tensors with identical strides; under ``torch.compile``
the plain-PyTorch path is traced instead, and Inductor fuses it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _partial_sq_diff_kernel(out_ptr, shortcut_ptr, partial_ptr, n, inv_n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    o = tl.load(out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(shortcut_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    d = o - s
    tl.store(partial_ptr + pid, tl.sum(d * d, axis=0) * inv_n)


@triton.jit
def _grad_kernel(
    out_ptr, shortcut_ptr, grad_ptr, grad_out_ptr, grad_shortcut_ptr, n, scale,
    WRITE_OUT: tl.constexpr, WRITE_SHORTCUT: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(grad_ptr).to(tl.float32) * scale
    o = tl.load(out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(shortcut_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    d = (o - s) * g
    if WRITE_OUT:
        tl.store(grad_out_ptr + offs, d.to(grad_out_ptr.dtype.element_ty), mask=mask)
    if WRITE_SHORTCUT:
        tl.store(grad_shortcut_ptr + offs, (-d).to(grad_shortcut_ptr.dtype.element_ty), mask=mask)


def _dense(t: torch.Tensor) -> bool:
    if t.is_contiguous():
        return True
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


def supports(out: torch.Tensor, shortcut: torch.Tensor) -> bool:
    """Both dense with the same strides, so one flat index walks both in step."""
    return (
        out.shape == shortcut.shape
        and out.stride() == shortcut.stride()
        and out.numel() > 0
        and out.dtype.is_floating_point
        and shortcut.dtype.is_floating_point
        and torch.float64 not in (out.dtype, shortcut.dtype)  # the kernels reduce in float32
        and _dense(out)
        and _dense(shortcut)
    )


def squared_displacement_mean(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    n = out.numel()
    grid = (triton.cdiv(n, BLOCK),)
    partial = torch.empty(grid[0], dtype=torch.float32, device=out.device)
    _partial_sq_diff_kernel[grid](out, shortcut, partial, n, 1.0 / n, BLOCK=BLOCK)
    return partial.sum()  # the partial sums are already divided by n: one op less on the host


def squared_displacement_mean_backward(
    out: torch.Tensor, shortcut: torch.Tensor, grad: torch.Tensor, need_out: bool, need_shortcut: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    n = out.numel()
    grad_out = torch.empty_like(out) if need_out else None
    grad_shortcut = torch.empty_like(shortcut) if need_shortcut else None
    grid = (triton.cdiv(n, BLOCK),)
    _grad_kernel[grid](
        out, shortcut, grad, grad_out if need_out else out, grad_shortcut if need_shortcut else shortcut,
        n, 2.0 / n, WRITE_OUT=need_out, WRITE_SHORTCUT=need_shortcut, BLOCK=BLOCK,
    )
    return grad_out, grad_shortcut


@triton.jit
def _add_terms_kernel(
    grad_ptr, result_ptr, out0_ptr, short0_ptr, scalar0_ptr, k0, out1_ptr, short1_ptr, scalar1_ptr, k1, n,
    TWO: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c0 = tl.load(scalar0_ptr).to(tl.float32) * k0
    o0 = tl.load(out0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s0 = tl.load(short0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    acc += c0 * (o0 - s0)
    if TWO:
        c1 = tl.load(scalar1_ptr).to(tl.float32) * k1
        o1 = tl.load(out1_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(short1_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc += c1 * (o1 - s1)
    tl.store(result_ptr + offs, acc.to(result_ptr.dtype.element_ty), mask=mask)


def add_terms(
    grad: torch.Tensor, terms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]
) -> torch.Tensor:
    """``grad + sum k * scalar * (out - shortcut)`` over ``terms = [(out, shortcut, scalar, k)]``, two per pass."""
    n = grad.numel()
    grid = (triton.cdiv(n, BLOCK),)
    result = grad
    for i in range(0, len(terms), 2):
        pair = terms[i:i + 2]
        o0, s0, g0, k0 = pair[0]
        o1, s1, g1, k1 = pair[1] if len(pair) == 2 else pair[0]
        target = torch.empty_like(grad)
        _add_terms_kernel[grid](result, target, o0, s0, g0, k0, o1, s1, g1, k1, n, TWO=len(pair) == 2, BLOCK=BLOCK)
        result = target
    return result
