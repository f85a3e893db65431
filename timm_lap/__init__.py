"""timm-lap: least-action (LAP) training for residual networks in PyTorch / timm.

    criterion = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    multiplier = timm_lap.MultiplierScheduler(optimizer, criterion, tau=1.0)
"""
from . import compat
from .loss import LeastActionLoss
from .models import list_lap_models, register_lap_model
from .multiplier import MultiplierScheduler
from .ops.energy import block_energy, reference_energy
from .tracker import DisplacementTracker, get_tracker, track

__version__ = "0.1.0"

compat.install()  # old module paths (timm_lap.energy, timm_lap.train, ...) still import

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
