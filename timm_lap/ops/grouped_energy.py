"""The ``p = 2`` energies of many blocks in one autograd node (eager mode, any device).

``grouped_energies(outs, shortcuts)`` returns the vector ``[mean((out_k - shortcut_k)^2)]_k`` through a
single autograd node whose forward and backward each run a handful of ``torch._foreach_*`` calls for
all K blocks, instead of one autograd node and several operator calls per block. On small tensors
(deep, narrow networks; small batches) that per-block fixed cost, not the arithmetic, dominates.

The tracker groups the blocks of one forward pass into such nodes. A node's backward returns the
gradients of all its blocks at once, before autograd reaches those blocks, so a group holds at most
:func:`timm_lap.ops.switches.grouping_budget` bytes of gradients (``TIMM_LAP_GROUP_BYTES``; 0 turns grouping
off and every block gets its own node, the behaviour before grouping). Like the per-block node, the group saves only
references to tensors autograd keeps anyway, and forms and reduces the displacement in float32 (float64 for
float64 tensors).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.autograd.function import once_differentiable

from .displacement import displacement
from .energy import unpack_saved
from .switches import grouping, grouping_budget, set_grouping_budget  # re-exported: their home before config

__all__ = ["grouped_energies", "displacement_norm", "measured_early", "grouping_budget", "set_grouping_budget",
           "grouping"]


def _displacements(
    outs: list[torch.Tensor], shortcuts: list[torch.Tensor], all_float32: bool  # lists: what torch._foreach_* take
) -> list[torch.Tensor]:
    """``out_k - shortcut_k`` (new tensors) as :func:`timm_lap.displacement.displacement` forms them: float32, or the
    wider dtype of the pair (float64 models keep their precision)."""
    if all_float32:
        return list(torch._foreach_sub(outs, shortcuts))
    return [displacement(o, s) for o, s in zip(outs, shortcuts)]


_constants: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}


def _device_constant(key: tuple, values: Callable[[], list], dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    """``torch.tensor(values())`` on ``like``'s device, made once per key (``values`` runs only then).

    Cached, and copied to an accelerator from pinned memory without blocking: a plain copy from a
    Python list waits for the device. A network's block sizes are the same from one step to the next.
    """
    key = (*key, dtype, like.device)
    cached = _constants.get(key)
    if cached is None:
        if len(_constants) > 256:  # changing batch sizes or sampled chunks: keep the cache small
            _constants.clear()
        host = torch.tensor(values(), dtype=dtype)
        if like.device.type == "cpu":
            cached = (host, None)
        else:
            pinned = host.pin_memory() if torch.cuda.is_available() else host
            cached = (pinned.to(like.device, non_blocking=True), pinned)  # the pinned source must outlive the copy
        _constants[key] = cached
    return cached[0]


def _per_block_scale(numels: tuple[int, ...], weights: tuple[float, ...] | None, factor: float,
                     like: torch.Tensor) -> torch.Tensor:
    """The vector ``factor * weight_k / numel_k`` on ``like``'s device, in its dtype (float32 or float64)."""
    return _device_constant(
        ("scale", numels, weights, factor),
        lambda: [factor * w / max(n, 1) for n, w in zip(numels, weights or (1.0,) * len(numels))],
        like.dtype, like,
    )


# Groups of small float32 tensors of one shape are stacked into one tensor: a handful of whole-group
# operations then replace the per-tensor work of the _foreach_ calls, which dominates for tiny blocks.
# Larger tensors are not: the stacked copy would cost more memory traffic than it saves.
STACK_MAX_NUMEL = 4096
# Large CPU tensors go block by block instead: each displacement is used while it is still in cache
# (a _foreach_ call forms all K of them before reading any back), and the gradients are accumulated in
# place into the displacements themselves (no second list of K new tensors). Measured on a 2-core VM:
# forward 88 vs 143 us, backward 155 vs 188 us per 32x16x14x14 block.
PER_TENSOR_MIN_NUMEL = 16384


def measured_early(out: torch.Tensor) -> bool:
    """Whether a block's ``|out - shortcut|`` is best measured right after the block (:func:`displacement_norm`),
    while its tensors are still in the CPU's cache, rather than by the group node at the end of the forward."""
    return out.is_cpu and out.numel() >= PER_TENSOR_MIN_NUMEL


def _per_tensor(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether a group takes the block-by-block path: every tensor is one :func:`measured_early` would measure."""
    return all(measured_early(t) for t in tensors)


def displacement_norm(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``|out - shortcut|`` (2-norm over all elements), outside autograd: pass it to :func:`grouped_energies` as
    ``norms``. The group's backward needs no value, so measuring early changes nothing but memory traffic."""
    with torch.no_grad():
        return torch.linalg.vector_norm(displacement(out, shortcut))


def _stackable(tensors: Sequence[torch.Tensor]) -> bool:
    first = tensors[0]
    if first.dtype != torch.float32 or first.numel() > STACK_MAX_NUMEL or first.dim() == 0:
        return False
    shape, device = first.shape, first.device
    return all(t.shape == shape and t.dtype == torch.float32 and t.device == device for t in tensors)


class _StackedPlan:
    """The stacked group's index tensors; a chain (block k's output is block k+1's shortcut) uses slices."""

    __slots__ = ("chain", "out_index", "shortcut_index")

    def __init__(self, out_index: tuple[int, ...], shortcut_index: tuple[int, ...], like: torch.Tensor) -> None:
        k = len(out_index)
        self.chain = out_index == tuple(range(1, k + 1)) and shortcut_index == tuple(range(k))
        self.out_index = None if self.chain else _device_constant(
            ("index", out_index), lambda: list(out_index), torch.long, like)
        self.shortcut_index = None if self.chain else _device_constant(
            ("index", shortcut_index), lambda: list(shortcut_index), torch.long, like)

    def displacements(self, stacked: torch.Tensor) -> torch.Tensor:
        if self.chain:
            return stacked[1:] - stacked[:-1]
        assert self.out_index is not None and self.shortcut_index is not None  # made unless chain
        return stacked.index_select(0, self.out_index) - stacked.index_select(0, self.shortcut_index)

    def gradients(self, d: torch.Tensor, count: int) -> torch.Tensor:
        grads = torch.zeros((count, *d.shape[1:]), dtype=d.dtype, device=d.device)
        if self.chain:
            grads[1:] += d
            grads[:-1] -= d
            return grads
        assert self.out_index is not None and self.shortcut_index is not None  # made unless chain
        return grads.index_add_(0, self.out_index, d).index_add_(0, self.shortcut_index, d, alpha=-1)


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
        early: tuple[torch.Tensor | None, ...] | None, *tensors: torch.Tensor,
    ) -> torch.Tensor:
        outs = [tensors[i] for i in out_index]
        shortcuts = [tensors[i] for i in shortcut_index]
        ctx.indices = out_index, shortcut_index
        ctx.numels = tuple(o.numel() for o in outs)
        ctx.weights = weights
        ctx.save_for_backward(*tensors)
        ctx.stacked = None
        ctx.per_tensor = False
        ctx.all_float32 = all(t.dtype == torch.float32 for t in tensors)
        if _stackable(tensors):
            ctx.stacked = _StackedPlan(out_index, shortcut_index, tensors[0])
            d = ctx.stacked.displacements(torch.stack(tensors))
            norms = torch.linalg.vector_norm(d.flatten(1), dim=1)
        else:
            ctx.per_tensor = _per_tensor(tensors)
            if early is not None or ctx.per_tensor:  # norms measured at the blocks are used on any path
                early = early or (None,) * len(outs)
                norms = torch.stack([torch.linalg.vector_norm(displacement(o, s)) if n is None else n
                                     for o, s, n in zip(outs, shortcuts, early)])
            else:
                norms = torch.stack(torch._foreach_norm(_displacements(outs, shortcuts, ctx.all_float32)))
        return norms.square_().mul_(_per_block_scale(ctx.numels, weights, 1.0, norms))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        tensors = unpack_saved(ctx)  # also checks that nothing was modified in place since the forward
        out_index, shortcut_index = ctx.indices
        needs = ctx.needs_input_grad[4:]
        if ctx.stacked is not None:
            d = ctx.stacked.displacements(torch.stack(tensors))
            coef = grad * _per_block_scale(ctx.numels, ctx.weights, 2.0, grad)
            d.mul_(coef.view(-1, *([1] * (d.dim() - 1))))
            stacked_grads = ctx.stacked.gradients(d, len(tensors)).unbind(0)
            return (None, None, None, None, *(g if need else None for g, need in zip(stacked_grads, needs)))
        coef = grad * _per_block_scale(ctx.numels, ctx.weights, 2.0, grad)
        if ctx.per_tensor:
            grads = _accumulated_gradients(tensors, out_index, shortcut_index, coef.unbind(0), needs)
        else:
            d = _displacements([tensors[i] for i in out_index], [tensors[i] for i in shortcut_index], ctx.all_float32)
            torch._foreach_mul_(d, coef.unbind(0))
            grads = _gradient_plan(out_index, shortcut_index, len(tensors)).gradients(d, len(tensors))
        if not (ctx.all_float32 and all(needs)):
            grads = [_as(g, t.dtype) if need and g is not None else None for g, t, need in zip(grads, tensors, needs)]
        return (None, None, None, None, *grads)


def _scaled_displacement(out: torch.Tensor, shortcut: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``coef * (out - shortcut)`` as a new tensor in the displacement's dtype, in one pass for float32 pairs
    (``mse_loss_backward`` of a sum: the difference first, then the scale, as the reference rounds it)."""
    if out.dtype == shortcut.dtype == torch.float32 and out.shape == shortcut.shape:
        # The out= form: the plain one zero-fills its result first, one more pass over memory.
        return torch.ops.aten.mse_loss_backward.grad_input(coef * 0.5, out, shortcut, 2,  # 2 = sum reduction
                                                          grad_input=torch.empty_like(out))
    return displacement(out, shortcut).mul_(coef)


def _accumulated_gradients(
    tensors: Sequence[torch.Tensor], out_index: tuple[int, ...], shortcut_index: tuple[int, ...],
    coefs: Sequence[torch.Tensor], needs: Sequence[bool],
) -> list[torch.Tensor | None]:
    """Block by block, ``c_k * (out_k - shortcut_k)`` added into its two tensors' gradients. The first term a
    tensor receives with sign + becomes its gradient without a copy, so a chain costs one scaled difference and
    one accumulation per block."""
    grads: list[torch.Tensor | None] = [None] * len(tensors)
    for k, (u_out, u_short) in enumerate(zip(out_index, shortcut_index)):
        if not (needs[u_out] or needs[u_short]):
            continue
        d = _scaled_displacement(tensors[u_out], tensors[u_short], coefs[k])
        if needs[u_out]:
            g_out = grads[u_out]
            if g_out is None:
                grads[u_out] = d
            else:
                g_out.add_(d)
        if needs[u_short]:
            g_short = grads[u_short]
            if g_short is None:
                grads[u_short] = torch.neg(d)
            else:
                g_short.sub_(d)
    return grads


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def grouped_energies(
    outs: Sequence[torch.Tensor], shortcuts: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
    norms: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Differentiable vector of the K blocks' ``weight_k * mean((out - shortcut)^2)``, one autograd node for all.

    All tensors must be on one device; each pair must have one shape. The result is float32, or float64 when
    a pair is float64.
    ``weights`` (default all 1) scales each block's energy (the sampled estimate's chunk weight).
    ``norms``: per block, ``displacement_norm(out, shortcut)`` measured earlier (or None, measured here);
    a given norm is used instead of reading the tensors again (not by the stacked path of tiny tensors).
    """
    if len(outs) != len(shortcuts) or not outs:
        raise ValueError(
            f"grouped_energies needs as many outputs as shortcuts (>= 1); got {len(outs)} and {len(shortcuts)}."
        )
    k = len(outs)
    # Distinct tensors in order of first appearance, shortcut before output: a chain of blocks (each output
    # the next shortcut) then numbers its tensors 0..K, which the stacked path handles with two slices.
    out_ids = {id(o) for o in outs}
    if (len(out_ids) == k and id(shortcuts[0]) not in out_ids
            and all(s is o for s, o in zip(shortcuts[1:], outs))):  # the common case, without a dict walk
        distinct = [shortcuts[0], *outs]
        indices = [*range(1, k + 1), *range(k)]
    else:
        position: dict[int, int] = {}
        distinct = []
        indices = [0] * (2 * k)
        for i, (s, o) in enumerate(zip(shortcuts, outs)):
            for slot, t in ((k + i, s), (i, o)):
                at = position.get(id(t))
                if at is None:
                    at = position[id(t)] = len(distinct)
                    distinct.append(t)
                indices[slot] = at
    if weights is not None:
        weights = tuple(float(w) for w in weights)
        if len(weights) != k:
            raise ValueError(f"grouped_energies needs one weight per block; got {len(weights)} for {k} blocks.")
        if all(w == 1.0 for w in weights):
            weights = None
    if norms is not None:
        if len(norms) != k:
            raise ValueError(f"grouped_energies needs one norm (or None) per block; got {len(norms)} for {k} blocks.")
        norms = None if all(n is None for n in norms) else tuple(norms)
    return _GroupedSquaredDisplacementMeans.apply(tuple(indices[:k]), tuple(indices[k:]), weights, norms, *distinct)
