"""The ``p = 2`` energies of many blocks in one autograd node (eager mode, any device).

``grouped_energies(outs, shortcuts)`` returns the vector ``[mean((out_k - shortcut_k)^2)]_k`` through a
single autograd node whose forward and backward each run a handful of ``torch._foreach_*`` calls for
all K blocks, instead of one autograd node and several operator calls per block. On small tensors
(deep, narrow networks; small batches) that per-block fixed cost, not the arithmetic, dominates.

The tracker groups the blocks of one forward pass into such nodes. A node's backward returns the
gradients of all its blocks at once, before autograd reaches those blocks, so a group holds at most
:func:`grouping_budget` bytes of gradients (``TIMM_LAP_GROUP_BYTES``; 0 turns grouping off and every
block gets its own node, the behaviour before grouping). Like the per-block node, the group saves only
references to tensors autograd keeps anyway, and forms and reduces the displacement in float32.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import torch
from torch.autograd.function import once_differentiable

__all__ = ["grouped_energies", "grouping_budget", "set_grouping_budget", "grouping"]

_DEFAULT_BUDGET = 32 * 2**20


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


_budget = _budget_from_env()


def grouping_budget() -> int:
    """Bytes of early gradients one group may hold (0: one autograd node per block)."""
    return _budget


def set_grouping_budget(nbytes: int) -> None:
    """Set the group budget in bytes for this process; 0 turns grouping off."""
    global _budget
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"the grouping budget must be an int >= 0 (bytes; 0 = no grouping); got {nbytes!r}.")
    _budget = nbytes


@contextlib.contextmanager
def grouping(nbytes: int) -> Iterator[None]:
    """Context manager: use ``nbytes`` as the grouping budget inside the block, then restore it."""
    previous = _budget
    set_grouping_budget(nbytes)
    try:
        yield
    finally:
        set_grouping_budget(previous)


def _displacements(outs: Sequence[torch.Tensor], shortcuts: Sequence[torch.Tensor], all_float32: bool) -> list[torch.Tensor]:
    """``out_k - shortcut_k`` in float32 (new tensors), as :func:`timm_lap.energy.block_energy` forms it."""
    if all_float32:
        return list(torch._foreach_sub(outs, shortcuts))
    return [o.float() - s.float() for o, s in zip(outs, shortcuts)]


_scale_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}


def _per_block_scale(numels: tuple[int, ...], weights: tuple[float, ...] | None, factor: float,
                     like: torch.Tensor) -> torch.Tensor:
    """The float32 vector ``factor * weight_k / numel_k`` on ``like``'s device, made once per layout.

    Cached, and copied to an accelerator from pinned memory without blocking: a plain copy from a
    Python list waits for the device. A network's block sizes are the same from one step to the next.
    """
    key = (numels, weights, factor, like.device)
    cached = _scale_cache.get(key)
    if cached is None:
        if len(_scale_cache) > 256:  # changing batch sizes or sampled chunks: keep the cache small
            _scale_cache.clear()
        weights = weights or (1.0,) * len(numels)
        host = torch.tensor([factor * w / max(n, 1) for n, w in zip(numels, weights)], dtype=torch.float32)
        if like.device.type == "cpu":
            cached = (host, None)
        else:
            pinned = host.pin_memory() if torch.cuda.is_available() else host
            cached = (pinned.to(like.device, non_blocking=True), pinned)  # the pinned source must outlive the copy
        _scale_cache[key] = cached
    return cached[0]


class _GradientPlan:
    """How the K displacements add up into the gradients of the U distinct tensors.

    A chain of blocks shares tensors (block k's output is block k+1's shortcut), so the node takes
    each distinct tensor once and returns one gradient for it: ``d_k - d_{k+1}`` in one batched call.
    """

    __slots__ = ("pairs", "plus", "minus", "other")

    def __init__(self, out_index: tuple[int, ...], shortcut_index: tuple[int, ...], count: int) -> None:
        plus: list[list[int]] = [[] for _ in range(count)]
        minus: list[list[int]] = [[] for _ in range(count)]
        for k, u in enumerate(out_index):
            plus[u].append(k)
        for k, u in enumerate(shortcut_index):
            minus[u].append(k)
        self.pairs: list[tuple[int, int, int]] = []  # (tensor, k of +d_k, j of -d_j)
        self.plus: list[tuple[int, int]] = []  # (tensor, k): +d_k only
        self.minus: list[tuple[int, int]] = []  # (tensor, j): -d_j only
        self.other: list[tuple[int, list[int], list[int]]] = []  # anything else (a tensor shared more widely)
        for u in range(count):
            p, m = plus[u], minus[u]
            if len(p) == 1 and len(m) == 1:
                self.pairs.append((u, p[0], m[0]))
            elif len(p) == 1 and not m:
                self.plus.append((u, p[0]))
            elif len(m) == 1 and not p:
                self.minus.append((u, m[0]))
            else:
                self.other.append((u, p, m))

    def gradients(self, d: list[torch.Tensor], count: int) -> list[torch.Tensor | None]:
        grads: list[torch.Tensor | None] = [None] * count
        if self.pairs:
            combined = torch._foreach_sub([d[k] for _, k, _ in self.pairs], [d[j] for _, _, j in self.pairs])
            for (u, _, _), g in zip(self.pairs, combined):
                grads[u] = g
        for u, k in self.plus:
            grads[u] = d[k]
        if self.minus:
            for (u, _), g in zip(self.minus, torch._foreach_neg([d[j] for _, j in self.minus])):
                grads[u] = g
        for u, p, m in self.other:
            total = torch.zeros_like(d[(p or m)[0]])
            for k in p:
                total += d[k]
            for j in m:
                total -= d[j]
            grads[u] = total
        return grads


_plan_cache: dict[tuple, _GradientPlan] = {}


def _gradient_plan(out_index: tuple[int, ...], shortcut_index: tuple[int, ...], count: int) -> _GradientPlan:
    key = (out_index, shortcut_index)
    plan = _plan_cache.get(key)
    if plan is None:
        if len(_plan_cache) > 256:
            _plan_cache.clear()
        plan = _plan_cache[key] = _GradientPlan(out_index, shortcut_index, count)
    return plan


class _GroupedSquaredDisplacementMeans(torch.autograd.Function):
    """``[mean((out_k - shortcut_k)^2)]_k`` over distinct input tensors; backward recomputes the displacements."""

    @staticmethod
    def forward(
        ctx, out_index: tuple[int, ...], shortcut_index: tuple[int, ...], weights: tuple[float, ...] | None,
        *tensors: torch.Tensor,
    ) -> torch.Tensor:
        outs = [tensors[i] for i in out_index]
        shortcuts = [tensors[i] for i in shortcut_index]
        ctx.indices = out_index, shortcut_index
        ctx.numels = tuple(o.numel() for o in outs)
        ctx.weights = weights
        ctx.all_float32 = all(t.dtype == torch.float32 for t in tensors)
        ctx.save_for_backward(*tensors)
        norms = torch.stack(torch._foreach_norm(_displacements(outs, shortcuts, ctx.all_float32)))
        return norms.square_().mul_(_per_block_scale(ctx.numels, weights, 1.0, norms))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        tensors = ctx.saved_tensors  # also checks that nothing was modified in place since the forward
        out_index, shortcut_index = ctx.indices
        d = _displacements([tensors[i] for i in out_index], [tensors[i] for i in shortcut_index], ctx.all_float32)
        coef = grad * _per_block_scale(ctx.numels, ctx.weights, 2.0, d[0])
        torch._foreach_mul_(d, coef.unbind(0))
        grads = _gradient_plan(out_index, shortcut_index, len(tensors)).gradients(d, len(tensors))
        needs = ctx.needs_input_grad[3:]
        if not (ctx.all_float32 and all(needs)):
            grads = [_as(g, t.dtype) if need and g is not None else None for g, t, need in zip(grads, tensors, needs)]
        return (None, None, None, *grads)


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def grouped_energies(
    outs: Sequence[torch.Tensor], shortcuts: Sequence[torch.Tensor], weights: Sequence[float] | None = None
) -> torch.Tensor:
    """Differentiable vector of the K blocks' ``weight_k * mean((out - shortcut)^2)``, one autograd node for all.

    All tensors must be on one device; each pair must have one shape. The result is float32.
    ``weights`` (default all 1) scales each block's energy (the sampled estimate's chunk weight).
    """
    if len(outs) != len(shortcuts) or not outs:
        raise ValueError(
            f"grouped_energies needs as many outputs as shortcuts (>= 1); got {len(outs)} and {len(shortcuts)}."
        )
    tensors = (*outs, *shortcuts)
    ids = [id(t) for t in tensors]
    by_id = dict(zip(ids, tensors))  # distinct tensors, in order of first appearance
    position = {key: i for i, key in enumerate(by_id)}
    indices = [position[key] for key in ids]
    k = len(outs)
    if weights is not None:
        weights = tuple(float(w) for w in weights)
        if len(weights) != k:
            raise ValueError(f"grouped_energies needs one weight per block; got {len(weights)} for {k} blocks.")
        if all(w == 1.0 for w in weights):
            weights = None
    return _GroupedSquaredDisplacementMeans.apply(tuple(indices[:k]), tuple(indices[k:]), weights, *by_id.values())
