"""The device a command runs on, resolved the same way by ``timm-lap train`` and ``timm-lap analyze``."""
from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | None, command: str = "timm-lap") -> torch.device:
    """``name`` as a device, or CUDA when there is one and the CPU otherwise (``name=None``).

    Asking for CUDA on a machine without it, or for something that is not a device name, is a ValueError
    that names the flag and the fix.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{command}: --device {name} was asked for but no CUDA device is available; use --device cpu.")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{command}: --device {name!r} is not a device name (cpu, cuda, cuda:1, mps, ...).") from err
