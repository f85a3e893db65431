"""Gradient taps: the energy's gradient added straight into each tensor's own gradient (eager CUDA).

Without taps, autograd materialises ``c * (out - shortcut)`` for each block as two new full-size
gradients and then adds each into the gradient of ``out`` and of ``shortcut``: four extra
full-tensor passes on top of the two of the energy's own kernel. With taps the energy node
returns no gradient at all; a hook on each tensor involved adds every energy term that touches it
(``g + sum_i sign_i * c_i * (out_i - shortcut_i)``) in one fused pass. A block's output is also the
next block's shortcut, so its two terms cost one pass together.

The energy node stores its incoming scalar gradient and its saved tensors in a :class:`Term`; the
hooks run after it because autograd only calls a tensor's hook once every consumer of the tensor
(the energy node included) has contributed its gradient.
"""
from __future__ import annotations

import types
import weakref

import torch

from .displacement import displacement

__all__ = ["Term", "TapRegistry", "add_terms"]


class Term:
    """One block's energy in one forward: its scale and, after its backward, the tensors to read."""

    __slots__ = ("numel", "fused", "grad", "out", "shortcut", "users", "pending")

    def __init__(self, numel: int) -> None:
        self.numel = numel
        # The Triton kernels module when the forward found the tensors fit them.
        self.fused: types.ModuleType | None = None
        self.users = 0  # tensor hooks that read this term
        self.pending = 0
        self.grad: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.shortcut: torch.Tensor | None = None

    def set(self, grad: torch.Tensor, out: torch.Tensor, shortcut: torch.Tensor) -> None:
        """Called by the energy node's backward."""
        self.grad, self.out, self.shortcut = grad, out, shortcut
        self.pending = self.users

    def consumed(self) -> None:
        # Drop the references once every hook has read them, so the activations are freed as usual.
        self.pending -= 1
        if self.pending <= 0:
            self.grad = self.out = self.shortcut = None

    def scale(self, sign: float) -> float:
        """Host-side factor of ``grad`` in this term's gradient: ``sign * 2 / numel``."""
        return sign * 2.0 / self.numel


class _TensorTap:
    """The hook on one tensor: adds every ready term that involves it."""

    __slots__ = ("terms",)

    def __init__(self) -> None:
        self.terms: list[tuple[Term, float]] = []

    def __call__(self, grad: torch.Tensor) -> torch.Tensor | None:
        ready = [(term, sign) for term, sign in self.terms if term.grad is not None]
        if not ready:  # the energy was not part of this backward
            return None
        new = add_terms(grad, ready)
        for term, _ in ready:
            term.consumed()
        return new


class TapRegistry:
    """The taps of one forward pass, one hook per tensor however many blocks use it."""

    def __init__(self) -> None:
        self._taps: dict[int, tuple[weakref.ref, _TensorTap]] = {}

    def attach(self, out: torch.Tensor, shortcut: torch.Tensor) -> Term:
        term = Term(out.numel())
        for tensor, sign in ((out, 1.0), (shortcut, -1.0)):
            if not tensor.requires_grad:
                continue
            # Keyed by id, checked through a weak reference: an id can be reused once its tensor is gone.
            entry = self._taps.get(id(tensor))
            if entry is None or entry[0]() is not tensor:
                tap = _TensorTap()
                tensor.register_hook(tap)
                self._taps[id(tensor)] = (weakref.ref(tensor), tap)
            else:
                tap = entry[1]
            tap.terms.append((term, sign))
            term.users += 1
        return term

    def clear(self) -> None:
        self._taps = {}


def _torch_add_terms(grad: torch.Tensor, terms: list[tuple[Term, float]]) -> torch.Tensor:
    dtype = torch.promote_types(grad.dtype, torch.float32)
    acc = grad.to(dtype)
    if acc is grad:
        acc = acc.clone()
    for term, sign in terms:
        # Only ready terms get here: set() has run and consumed() has not dropped them yet.
        assert term.grad is not None and term.out is not None and term.shortcut is not None
        d = displacement(term.out, term.shortcut)
        acc.add_(d.mul_(term.grad.to(d.dtype) * term.scale(sign)))
    return acc.to(grad.dtype)


def add_terms(grad: torch.Tensor, terms: list[tuple[Term, float]]) -> torch.Tensor:
    """``grad + sum sign * grad_E * 2/n * (out - shortcut)`` in float32 or wider, returned in ``grad``'s dtype."""
    # The forward already checked each term's (out, shortcut) for the fused kernels (Term.fused);
    # the gradient only has to walk memory in the same order.
    if (
        all(t.fused is not None and t.out is not None and grad.stride() == t.out.stride() for t, _ in terms)
        and grad.is_cuda
    ):
        fused = terms[0][0].fused
        assert fused is not None  # checked for every term just above
        return fused.add_terms(grad, [(t.out, t.shortcut, t.grad, t.scale(sign)) for t, sign in terms])
    return _torch_add_terms(grad, terms)
