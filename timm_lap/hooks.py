"""One forward-hook collector for code that looks at what modules see (the analysis, the benchmark baselines).

In the spirit of timm's ``FeatureHooks``: hooks on named modules, removed together. :mod:`timm_lap.tracker` keeps
its own hooks, which are tuned for the training step.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from .tracker import first_tensor

__all__ = ["HookCall", "HookCollector"]

C = TypeVar("C", bound="HookCollector")


class HookCall:
    """One call of a hooked module: its ``name``, ``index`` (increasing with every call the collector sees:
    at its start for early inputs, else at its end) and its ``input`` / ``output`` (None where not asked for)."""

    __slots__ = ("name", "index", "input", "output")

    def __init__(self, name: str, index: int, input: Any = None, output: Any = None) -> None:
        self.name, self.index, self.input, self.output = name, index, input, output

    def __repr__(self) -> str:
        return f"HookCall({self.name!r}, index={self.index})"


class HookCollector:
    """Usage: ``with HookCollector(outputs={name: module}, inputs={name: module}) as hooks: model(x)``, then read
    ``hooks.calls``: one :class:`HookCall` per finished call of a hooked module, in the order the calls finished.

    ``input`` is the call's first tensor argument (positional, else keyword) for the modules of ``inputs``,
    ``output`` what the modules of ``outputs`` returned; a name in both must name the same module. Leaving the
    ``with`` block, or :meth:`remove`, removes every hook the collector registered; the calls stay readable.

    * Values are references unless ``keep`` turns them, at hook time, into something else (e.g. a copy; None
      stays None).
    * ``early_inputs=True`` takes inputs in forward pre-hooks, before a module can change them in place, and
      numbers those calls at their start; otherwise one forward hook per module sees input and output.
    * ``clear_on=model`` runs :meth:`clear` at the start of every forward of ``model``: the calls of the latest
      forward only.
    * A subclass keeps something else by overriding :meth:`on_call` (and :meth:`clear`).
    """

    def __init__(
        self,
        outputs: Mapping[str, nn.Module] | None = None,
        inputs: Mapping[str, nn.Module] | None = None,
        *,
        early_inputs: bool = False,
        keep: Callable[[Any], Any] | None = None,
        clear_on: nn.Module | None = None,
    ) -> None:
        outputs, inputs = dict(outputs or {}), dict(inputs or {})
        for name in outputs.keys() & inputs.keys():
            if outputs[name] is not inputs[name]:
                raise ValueError(f"HookCollector: {name!r} names two different modules in outputs and inputs.")
        self.calls: list[HookCall] = []
        self._counter = itertools.count()  # never reset: an index orders calls, it does not count them
        self._open: dict[str, list[HookCall]] = {}  # name -> calls started (pre-hook) and not finished yet
        self._handles: list[RemovableHandle] = []
        for name, module in {**outputs, **inputs}.items():
            self._hook(name, module, name in inputs, name in outputs, early_inputs and name in inputs, keep)
        if clear_on is not None:
            self._handles.append(clear_on.register_forward_pre_hook(lambda module, args: self.clear()))

    # ------------------------------------------------------------------ hooks
    def _hook(self, name: str, module: nn.Module, take_input: bool, take_output: bool, early: bool,
              keep: Callable[[Any], Any] | None) -> None:
        counter, on_call = self._counter, self.on_call
        keep = keep or _same
        started = self._open.setdefault(name, [])
        if early:

            def start(module: nn.Module, args: tuple, kwargs: dict) -> None:
                started.append(HookCall(name, next(counter), _kept(keep, _input(args, kwargs))))

            self._handles.append(module.register_forward_pre_hook(start, with_kwargs=True))

        def end(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if started:
                call = started.pop()  # the latest call started: a module may call itself
            else:
                call = HookCall(name, next(counter), _kept(keep, _input(args, kwargs)) if take_input else None)
            if take_output:
                call.output = _kept(keep, output)
            on_call(call)

        self._handles.append(module.register_forward_hook(end, with_kwargs=True))

    def on_call(self, call: HookCall) -> None:
        """Called with every finished call; keeps it in :attr:`calls`."""
        self.calls.append(call)

    # ------------------------------------------------------------------ records
    def of(self, name: str) -> list[HookCall]:
        """The recorded calls of the module ``name``, in the order they finished."""
        return [call for call in self.calls if call.name == name]

    def clear(self) -> None:
        """Forget the recorded calls (and the calls started but not finished)."""
        self.calls.clear()
        for started in self._open.values():
            started.clear()

    def remove(self) -> None:
        """Remove every hook (idempotent); the recorded calls stay."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()



def _same(value: Any) -> Any:
    return value


def _kept(keep: Callable[[Any], Any], value: Any) -> Any:
    return value if value is None or keep is _same else keep(value)


def _input(args: tuple, kwargs: dict) -> Any:
    """A call's first tensor argument (the common case, a positional first tensor, without a loop)."""
    return args[0] if args and isinstance(args[0], torch.Tensor) else first_tensor(args, kwargs)
