"""Old import paths (before the package had subpackages) keep working: ``import timm_lap.energy`` gives
:mod:`timm_lap.ops.energy` itself, the same module object, so settings and monkeypatches reach the real
module, and ``python -m timm_lap.train`` still runs the training command.

Imported by ``timm_lap/__init__.py``; new code should use the new paths.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import CodeType, ModuleType

__all__ = ["MOVED", "install"]

MOVED = {  # old path -> where the module lives now
    "timm_lap.config": "timm_lap.ops.switches",
    "timm_lap.displacement": "timm_lap.ops.displacement",
    "timm_lap.energy": "timm_lap.ops.energy",
    "timm_lap.grouped_energy": "timm_lap.ops.grouped_energy",
    "timm_lap.grad_taps": "timm_lap.ops.grad_taps",
    "timm_lap._triton_energy": "timm_lap.ops.triton_kernels",
    "timm_lap.plotting": "timm_lap.analysis.plotting",
    "timm_lap.stats": "timm_lap.analysis.stats",
    "timm_lap.train": "timm_lap.cli.train",
    "timm_lap.train_args": "timm_lap.cli.train_args",
    "timm_lap.demo": "timm_lap.cli.demo",
    "timm_lap.compare": "timm_lap.cli.compare",
    "timm_lap.analyze": "timm_lap.cli.analyze",
    "timm_lap.runs": "timm_lap.cli.runs",
    "timm_lap.bench": "timm_lap.cli.bench",
    "timm_lap.data.datasets": "timm_lap.data",
}


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module at its new path (one object under both names)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name

    def get_code(self, fullname: str) -> CodeType:
        # runpy (``python -m timm_lap.train``) asks for code to run as __main__: run the new module that way,
        # so that its relative imports resolve from its own package.
        source = f"import runpy\nrunpy.run_module({self.target!r}, run_name='__main__', alter_sys=True)\n"
        return compile(source, f"<{fullname} -> {self.target}>", "exec")


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
