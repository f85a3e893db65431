"""timm-lap: least-action (LAP) training for residual networks in PyTorch / timm.

    criterion = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    multiplier = timm_lap.MultiplierScheduler(optimizer, criterion, tau=1.0)

The names below load on first use, so ``import timm_lap`` (and ``timm-lap CMD --help``) does not wait for torch.
The ``*_lap`` timm models are registered as soon as timm is imported (now, if it already is).
"""
from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from . import compat

__version__ = "0.1.0"

_PUBLIC = {  # name -> module that defines it
    "DisplacementTracker": "tracker",
    "LeastActionLoss": "loss",
    "MultiplierScheduler": "multiplier",
    "block_energy": "ops.energy",
    "get_tracker": "tracker",
    "list_lap_models": "models",
    "reference_energy": "ops.energy",
    "register_lap_model": "models",
    "track": "tracker",
}
__all__ = [
    "DisplacementTracker",
    "LeastActionLoss",
    "MultiplierScheduler",
    "block_energy",
    "get_tracker",
    "list_lap_models",
    "reference_energy",
    "register_lap_model",
    "track",
]

if TYPE_CHECKING:
    from .loss import LeastActionLoss
    from .models import list_lap_models, register_lap_model
    from .multiplier import MultiplierScheduler
    from .ops.energy import block_energy, reference_energy
    from .tracker import DisplacementTracker, get_tracker, track


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    try:  # a submodule used as an attribute (``timm_lap.tracker`` after ``import timm_lap``)
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


def _register_models_with_timm() -> None:
    """Register the ``*_lap`` models now if timm is imported, else as soon as it is (also with autoload off)."""
    try:
        import _timm_lap_autoload
    except ImportError:  # a source tree without the start-up hook: register eagerly
        importlib.import_module(f"{__name__}.models")
        return
    _timm_lap_autoload.install(force=True)


compat.install()  # old module paths (timm_lap.energy, timm_lap.train, ...) still import
if "timm" in sys.modules:
    importlib.import_module(f"{__name__}.models")
else:
    _register_models_with_timm()
