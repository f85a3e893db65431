"""Forward hooks that record each residual block's displacement energy."""
from __future__ import annotations

import copy
import math
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from .blocks import BlockSelector, BlockSpec, find_blocks, select_blocks
from .ops.energy import block_energy, use_grad_taps
from .ops.grad_taps import TapRegistry
from .ops.grouped_energy import displacement_norm, grouped_energies, measured_early
from .ops.switches import grouping_budget
from .sampling import RowSample, validate_sample

__all__ = ["DisplacementTracker", "track", "get_tracker", "unwrap_model", "is_training_forward", "strip_tracking",
           "first_tensor"]

_TRACKER_ATTR = "_timm_lap_tracker"
_MAX_FORWARDS = 16  # recent forwards whose transport a loss can still ask for by output
# A block waiting for its group: (name, output, shortcut, sample weight, |output - shortcut| measured at the
# block or None).
_Pending = tuple[str, torch.Tensor, torch.Tensor, float, torch.Tensor | None]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip ``torch.compile``, DDP and DataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _in_backward() -> bool:
    # True while autograd runs a backward pass, e.g. when gradient checkpointing recomputes blocks.
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


_top_saved_tensors_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)


def is_training_forward(module: nn.Module) -> bool:
    """Whether a forward of ``module`` can lead to an optimizer update: training mode with autograd on.

    The one definition both the tracker (which blocks add transport) and :class:`~timm_lap.LeastActionLoss`
    (which task losses reach the multiplier) use.
    """
    return module.training and torch.is_grad_enabled()


def _saved_tensor_hooks_active() -> bool:
    # Inside non-reentrant checkpointing (or save_on_cpu and the like) the energy must be saved
    # through those hooks, so it gets its own node right there instead of joining a later group.
    return True if _top_saved_tensors_hooks is None else _top_saved_tensors_hooks(False) is not None


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The first tensor among a call's positional then keyword arguments (a block's input), or None."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def _output_key(output: Any) -> torch.Tensor | None:
    """The tensor that stands for a model output: itself, or the first tensor in a tuple, list or dict."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        key = _output_key(value)
        if key is not None:
            return key
    return None


class _BlockHook:
    """Per-block hook object (a callable object, so ``deepcopy`` gives each copy its own)."""

    def __init__(self, tracker: DisplacementTracker, spec: BlockSpec) -> None:
        self.tracker = tracker
        self.name = spec.name
        self.has_projection = spec.shortcut is not None
        self.explicit = spec.rule.startswith("explicit")
        self.captured: torch.Tensor | None = None
        self.checked = False

    def capture_shortcut(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.captured = output

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.has_projection:
            shortcut = self.captured
        elif args and isinstance(args[0], torch.Tensor):
            shortcut = args[0]
        else:
            shortcut = first_tensor(args, kwargs)
        self.captured = None
        self.tracker._record(self, module, output, shortcut)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "captured": None}


class DisplacementTracker:
    """Records ``mean(|block(x) - shortcut(x)|^p)`` for every tracked block of a model.

    Create it with :func:`track`. Each top-level forward of the model starts a fresh
    account; :meth:`transport_cost` returns the differentiable sum over blocks of the
    most recent forward, :meth:`per_block` the detached values by block name.
    """

    def __init__(
        self,
        model: nn.Module,
        specs: Sequence[BlockSpec],
        skipped: dict[str, str],
        p: float = 2.0,
        track_eval: bool = False,
        sample: float | None = None,
        sample_seed: int = 0,
    ) -> None:
        self.p = float(p)
        self.track_eval = bool(track_eval)
        self.sample = validate_sample(sample)
        self._sampler = RowSample(self.sample, sample_seed) if self.sample is not None else None
        self.skipped: dict[str, str] = dict(skipped)
        self._model: nn.Module | None = model
        self._names = [s.name for s in specs]
        self._invalid: set[str] = set()
        # Energies of the latest forward: (block names, differentiable vector of their energies).
        self._energies: list[tuple[tuple[str, ...], torch.Tensor]] = []
        # Blocks waiting to join one grouped energy node (see timm_lap.grouped_energy).
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._group_budget: int | None = None  # decided at a forward's first block
        # Tensors of this forward's blocks with their versions at the block, to see in-place changes after it.
        self._watch: list[tuple[str, torch.Tensor, torch.Tensor, int, int]] = []
        # Blocks whose model changes their output / shortcut in place after them: measured from copies.
        self._copy_blocks: dict[str, set[str]] = {}
        self._taps = TapRegistry()
        self._training_pass = False
        self._latest_forward_trains: bool | None = None
        # Recent top-level forwards by id of their output tensor: (weak reference to it, energies, training?).
        # An entry is dropped once its output is gone, so it never keeps a graph alive.
        self._forwards: dict[int, tuple[weakref.ref, list, bool | None]] = {}
        self._warned: set[str] = set()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._handles.append(model.register_forward_pre_hook(self._start_pass))
        self._handles.append(model.register_forward_hook(self._end_pass))
        for spec in specs:
            hook = _BlockHook(self, spec)
            self._handles.append(spec.module.register_forward_hook(hook, with_kwargs=True))
            if spec.shortcut is not None:
                self._handles.append(spec.shortcut.register_forward_hook(hook.capture_shortcut))
        setattr(model, _TRACKER_ATTR, self)
        # torch.jit.script calls a module's __prepare_scriptable__ first: scripting the model (or one of its
        # blocks) then compiles an untracked copy, the base model's inference graph.
        self._scriptable = [model, *(spec.module for spec in specs)]
        for module in self._scriptable:
            module.__dict__["__prepare_scriptable__"] = _UntrackedCopy(module)

    # ------------------------------------------------------------------ public
    @property
    def blocks(self) -> list[str]:
        """Names of the tracked blocks, in forward order of registration."""
        return [n for n in self._names if n not in self._invalid]

    @property
    def removed(self) -> bool:
        return self._model is None

    def transport_cost(self, output: Any = None) -> torch.Tensor:
        """Differentiable float32 transport cost (sum of block energies) of one forward.

        ``output``: the model output of the forward meant (two views: ``o1 = model(x1); o2 = model(x2)``);
        by default, or for an output the tracker did not see, the latest forward.
        """
        energies = self._energies_of(output)
        if not energies:
            assert self._model is not None  # _energies_of raised if the tracker was removed
            param = next(self._model.parameters(), None)
            return torch.zeros((), dtype=torch.float32, device=param.device if param is not None else None)
        if len(energies) == 1:
            return energies[0][1].sum()
        return torch.cat([values for _, values in energies]).sum()

    def forward_trains(self, output: Any = None) -> bool | None:
        """Whether the forward that produced ``output`` (default: the latest) was a training forward; None if
        unknown."""
        entry = self._forward_of(output)
        return self._latest_forward_trains if entry is None else entry[1]

    def per_block(self, output: Any = None) -> dict[str, torch.Tensor]:
        """Detached per-block energies of one forward (as in :meth:`transport_cost`), by block name."""
        result: dict[str, torch.Tensor] = {}
        for names, values in self._energies_of(output):
            for name, value in zip(names, values.detach().unbind(0)):
                result[name] = value if name not in result else result[name] + value
        return result

    def reseed(self, seed: int) -> None:
        """Restart the random draws of ``sample=`` from ``seed`` (no effect on the exact transport)."""
        if self._sampler is not None:
            self._sampler.reseed(seed)

    def reset(self) -> None:
        """Forget the recorded energies (a top-level forward does this by itself)."""
        self._energies = []
        self._clear_pending()

    def remove(self) -> None:
        """Remove every hook; the model then behaves exactly as if it was never tracked."""
        if self._model is None:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if getattr(self._model, _TRACKER_ATTR, None) is self:
            delattr(self._model, _TRACKER_ATTR)
        for module in self._scriptable:
            module.__dict__.pop("__prepare_scriptable__", None)
        self._scriptable = []
        self._model = None
        self.reset()

    def __enter__(self) -> DisplacementTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._model is None else f"{len(self.blocks)} blocks"
        sample = "" if self.sample is None else f", sample={self.sample}"
        return f"DisplacementTracker({state}, p={self.p}, track_eval={self.track_eval}{sample})"

    # ------------------------------------------------------- copies & pickling
    def __getstate__(self) -> dict:
        # Recorded energies belong to one forward of one model: never copy them.
        return {**self.__dict__, "_energies": [], "_pending": [], "_pending_bytes": 0, "_taps": TapRegistry(),
                "_forwards": {}, "_watch": []}

    # ----------------------------------------------------------- forward pass
    def _check_alive(self) -> None:
        if self._model is None:
            raise RuntimeError(
                "This DisplacementTracker was removed (tracker.remove()); it records nothing. "
                "Call timm_lap.track(model) to track the model again."
            )

    def _start_pass(self, module: nn.Module, args: tuple) -> None:
        if _in_backward():
            return
        self._energies = []
        self._clear_pending()
        self._group_budget = None
        self._watch = []
        if self._sampler is not None:
            self._sampler.new_pass()
        self._taps.clear()
        self._training_pass = self._latest_forward_trains = is_training_forward(module)

    def _end_pass(self, module: nn.Module, args: tuple, output: Any) -> None:
        if _in_backward():
            return
        if self._watch:
            self._check_in_place()
        self._flush()
        if self._sampler is not None:
            self._sampler.end_pass()
        # (Not while compiling: a weak reference is a graph break; compiled losses use the latest forward.)
        key = None if torch.compiler.is_compiling() else _output_key(output)
        if key is not None:
            forwards = {k: v for k, v in self._forwards.items() if v[0]() is not None}
            if len(forwards) >= _MAX_FORWARDS:
                forwards.pop(next(iter(forwards)))
            forwards[id(key)] = (weakref.ref(key), self._energies, self._latest_forward_trains)
            self._forwards = forwards
        self._training_pass = False
        self._taps.clear()

    def _forward_of(self, output: Any) -> tuple[list, bool | None] | None:
        if output is None or not self._forwards:
            return None
        key = _output_key(output)
        entry = None if key is None else self._forwards.get(id(key))
        if entry is None or entry[0]() is not key:  # an id can be reused once its tensor is gone
            return None
        return entry[1], entry[2]

    def _energies_of(self, output: Any) -> list[tuple[tuple[str, ...], torch.Tensor]]:
        self._check_alive()
        self._flush()
        entry = self._forward_of(output)
        return self._energies if entry is None else entry[0]

    # ------------------------------------------------------------ grouping
    def _clear_pending(self) -> None:
        self._pending = []
        self._pending_bytes = 0

    def _flush(self) -> None:
        """Turn the pending blocks into grouped energy nodes (one per device)."""
        pending = self._pending
        if not pending:
            return
        self._clear_pending()
        device = pending[0][1].device
        if any(entry[1].device != device for entry in pending):  # a model split over devices
            for dev in dict.fromkeys(entry[1].device for entry in pending):
                self._append_group([entry for entry in pending if entry[1].device == dev])
        else:
            self._append_group(pending)

    def _append_group(self, pending: list[_Pending]) -> None:
        names = tuple(entry[0] for entry in pending)
        weights = [entry[3] for entry in pending] if self._sampler is not None else None
        values = grouped_energies([entry[1] for entry in pending], [entry[2] for entry in pending], weights,
                                  [entry[4] for entry in pending])
        self._energies.append((names, values))

    def _pass_budget(self, output: torch.Tensor) -> int:
        """This forward's grouping budget: 0 where blocks need their own node (p != 2, compile, taps)."""
        if self.p != 2.0 or torch.compiler.is_compiling():
            return 0
        if use_grad_taps(output) and self._sampler is None:  # the taps measure whole tensors
            return 0
        return grouping_budget()

    # ------------------------------------------------------------ block hook
    def _record(self, hook: _BlockHook, module: nn.Module, output: Any, shortcut: torch.Tensor | None) -> None:
        if not hook.checked and (hook.name in self._invalid or not self._check_block(hook, output, shortcut)):
            return
        name = hook.name
        if is_training_forward(module):
            assert shortcut is not None  # _check_block passed this block: it has a tensor shortcut
            budget = self._group_budget
            if budget is None:
                budget = self._group_budget = self._pass_budget(output)
            # The hot path: a positive budget already means eager mode; the two checks are C calls.
            if budget and torch._C._current_graph_task_id() == -1 and not _saved_tensor_hooks_active():
                weight = 1.0
                output, shortcut = self._protect(name, output, shortcut)
                if self._sampler is not None:
                    output, shortcut, weight = self._sampler.apply(output, shortcut)
                norm = displacement_norm(output, shortcut) if measured_early(output) else None
                self._pending.append((name, output, shortcut, weight, norm))
                # Its backward materialises two float32 gradients: the output's and the shortcut's.
                self._pending_bytes += 8 * output.numel()
                if self._pending_bytes >= budget:
                    self._flush()
                return
            if _in_backward():
                # Gradient-checkpoint recomputation: the energy is computed again so that the
                # recomputed graph saves the same tensors, but it was already counted.
                block_energy(output, shortcut, self.p)
                return
            weight = 1.0
            if not torch.compiler.is_compiling():  # compiled graphs are functional: nothing to protect
                output, shortcut = self._protect(name, output, shortcut)
            # Measured exactly: compiled blocks (a draw would be frozen into the graph; the compiled exact
            # transport costs about nothing) and blocks inside gradient checkpointing (their recomputation
            # cannot know which rows the original forward drew).
            if self._sampler is not None and not torch.compiler.is_compiling() and not _saved_tensor_hooks_active():
                output, shortcut, weight = self._sampler.apply(output, shortcut)
            # block_energy uses the taps for p == 2 only; they measure whole tensors, so not with sample=.
            taps = self._taps if self._sampler is None and use_grad_taps(output) else None
            energy = block_energy(output, shortcut, self.p, taps)
            if weight != 1.0:
                energy = energy * weight
        elif self.track_eval:
            if _in_backward():
                return
            assert shortcut is not None  # _check_block passed this block: it has a tensor shortcut
            with torch.no_grad():
                energy = block_energy(output, shortcut, self.p)
        else:
            if module.training and self._training_pass and not _in_backward():
                self._warn_once(
                    "no_grad_block",
                    f"block {name!r} ran without autograd inside a training forward (reentrant gradient "
                    "checkpointing, or torch.no_grad() inside the model): it adds no transport. Use "
                    "non-reentrant checkpointing (timm's default).",
                )
            return
        # A block that is not grouped flushes the pending ones first: energies stay in forward order.
        self._flush()
        self._energies.append(((name,), energy.reshape(1)))

    # ------------------------------------------------------- in-place changes
    def _protect(self, name: str, output: torch.Tensor, shortcut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the tensors this block's model changes in place later; otherwise watch their versions."""
        changed = self._copy_blocks.get(name)
        if changed is None:
            self._watch.append((name, output, shortcut, output._version, shortcut._version))
            return output, shortcut
        # clone() is differentiable: the gradient reaches the original tensor's history as before.
        return (output.clone() if "output" in changed else output,
                shortcut.clone() if "shortcut" in changed else shortcut)

    def _check_in_place(self) -> None:
        """End of a forward: drop the energies of blocks whose tensors were changed in place since the block ran.

        Their saved references would fail in backward ("modified by an inplace operation") and the values
        they held are gone; from the next forward on those blocks measure copies (one activation each).
        """
        watch, self._watch = self._watch, []
        changed: dict[str, set[str]] = {}
        for name, output, shortcut, output_version, shortcut_version in watch:
            if output._version != output_version:
                changed.setdefault(name, set()).add("output")
            if shortcut._version != shortcut_version:
                changed.setdefault(name, set()).add("shortcut")
        if not changed:
            return
        dropped = [entry[0] for entry in self._pending if entry[0] in changed]
        self._pending = [entry for entry in self._pending if entry[0] not in changed]
        kept = []
        for names, values in self._energies:  # a group flushed earlier in this forward goes whole
            if changed.keys() & set(names):
                dropped.extend(names)
            else:
                kept.append((names, values))
        self._energies = kept
        for name, what in changed.items():
            self._copy_blocks.setdefault(name, set()).update(what)
        blocks = ", ".join(f"{name!r} ({' and '.join(sorted(what))})" for name, what in sorted(changed.items()))
        self._warn_once(
            "in_place:" + ",".join(sorted(changed)),
            f"the model changes the tensors of block(s) {blocks} in place after the block ran (e.g. "
            "F.relu(x, inplace=True) on a block's output). From the next forward on timm_lap measures a copy "
            "of them (one activation each); this forward's transport leaves out "
            f"{', '.join(repr(n) for n in dict.fromkeys(dropped))}. An out-of-place operation avoids the copy.",
        )

    def _check_block(self, hook: _BlockHook, output: Any, shortcut: torch.Tensor | None) -> bool:
        reason = None
        if not isinstance(output, torch.Tensor):
            reason = f"its output is a {type(output).__name__}, not a tensor"
        elif shortcut is None:
            reason = "no tensor input (or projected shortcut) was seen"
        elif output.shape != shortcut.shape:
            reason = (
                f"its output shape {tuple(output.shape)} differs from its shortcut shape "
                f"{tuple(shortcut.shape)} and no projection shortcut is known"
            )
        if reason is None:
            hook.checked = True
            return True
        self._invalid.add(hook.name)
        self.skipped[hook.name] = reason
        # Blocks found automatically may be non-residual look-alikes: those are only listed in `skipped`.
        if hook.explicit:
            warnings.warn(f"timm_lap: not tracking block {hook.name!r} (from blocks=): {reason}.", stacklevel=3)
        return False

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"timm_lap: {message}", stacklevel=4)


class _UntrackedCopy:
    """``module.__prepare_scriptable__``: a deep copy of the module without timm_lap's hooks.

    An object rather than a closure, so that ``deepcopy`` of the model points the copy's at the copy.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self) -> nn.Module:
        clone = copy.deepcopy(self.module)
        strip_tracking(clone)
        own = getattr(type(clone), "__prepare_scriptable__", None)  # the class's own preparation, if any
        return own(clone) if own is not None else clone


def _is_tracking_hook(hook: Any) -> bool:
    owner = getattr(hook, "__self__", hook)
    return isinstance(owner, (_BlockHook, DisplacementTracker))


def strip_tracking(module: nn.Module) -> nn.Module:
    """Remove every timm_lap hook and attribute from ``module`` and its submodules, in place (for copies
    meant for export: ``torch.jit.script`` of a tracked model does this on a copy by itself)."""
    for sub in module.modules():
        for hooks in (sub._forward_hooks, sub._forward_pre_hooks):
            for key in [k for k, hook in hooks.items() if _is_tracking_hook(hook)]:
                del hooks[key]
                sub._forward_hooks_with_kwargs.pop(key, None)
                sub._forward_hooks_always_called.pop(key, None)
                sub._forward_pre_hooks_with_kwargs.pop(key, None)
        sub.__dict__.pop("__prepare_scriptable__", None)
        sub.__dict__.pop(_TRACKER_ATTR, None)
    return module


def get_tracker(model: nn.Module) -> DisplacementTracker | None:
    """The tracker attached to ``model`` (through compile/DDP wrappers), or None."""
    return getattr(unwrap_model(model), _TRACKER_ATTR, None)


def _validate_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
        raise ValueError(f"p must be a finite number > 0 (the exponent of |displacement|^p); got {p!r}.")
    return float(p)


def track(
    model: nn.Module,
    blocks: Sequence[BlockSelector] | BlockSelector | Mapping[Any, Any] | None = None,
    p: float = 2.0,
    track_eval: bool = False,
    sample: float | None = None,
    sample_seed: int = 0,
) -> DisplacementTracker:
    """Attach a :class:`DisplacementTracker` to ``model`` (at most one per model).

    Args:
        model: any residual network (timm, torchvision or your own); compile/DDP wrappers are unwrapped.
        blocks: None to find the residual blocks automatically, or module names, globs
            (``'layer*.*'``; ``*`` stays within one dotted component, ``**`` crosses them) or module objects;
            a ``(block, projection)`` pair or a ``{block: projection}`` mapping also names the module whose
            output is the block's shortcut (a module, a full name, or a name relative to the block).
        p: exponent of the displacement norm (2 = kinetic energy).
        track_eval: also record (detached) energies in eval mode or without autograd.
        sample: None (exact, the default) or a fraction f in (0, 1]: each training forward measures one
            seeded random chunk of ``ceil(f * batch)`` rows, weighted so that the transport and its gradient
            keep their exact expectation (:mod:`timm_lap.sampling`). Eager mode only: under torch.compile and
            inside gradient checkpointing the blocks are measured exactly.
        sample_seed: seed of those draws (``tracker.reseed(seed)`` restarts them).
    """
    p = _validate_p(p)
    sample = validate_sample(sample)
    if not isinstance(model, nn.Module):
        raise TypeError(f"track() needs an nn.Module; got {type(model).__name__}.")
    base = unwrap_model(model)
    existing = get_tracker(base)
    if existing is not None:
        if blocks is None and p == existing.p and bool(track_eval) == existing.track_eval and sample == existing.sample:
            return existing
        raise ValueError(
            f"{type(base).__name__} is already tracked (p={existing.p}, track_eval={existing.track_eval}, "
            f"sample={existing.sample}, {len(existing.blocks)} blocks). Call timm_lap.get_tracker(model).remove() "
            "before tracking it with other settings."
        )
    if blocks is None:
        specs, skipped = find_blocks(base)
    else:
        specs, skipped = select_blocks(base, blocks), {}
    if not specs:
        n_modules = sum(1 for _ in base.modules())
        raise ValueError(
            f"timm_lap found no residual block in {type(base).__name__} ({n_modules} modules searched for: "
            "timm/torchvision residual blocks, modules with a has_skip/use_res_connect flag or a "
            "downsample/shortcut projection, and modules whose class name contains Block/Bottleneck/Residual "
            "and whose forward adds a shortcut). LAP needs residual blocks x -> x + r(x). If your model has "
            "them, name them: timm_lap.track(model, blocks=['layers.*']) or blocks=[module, ...]."
            + (f" Left out: {skipped}." if skipped else "")
        )
    return DisplacementTracker(base, specs, skipped, p=p, track_eval=track_eval, sample=sample, sample_seed=sample_seed)
