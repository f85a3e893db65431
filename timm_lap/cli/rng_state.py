"""Random-number state of a training run, for checkpoints: ``--resume`` continues the uninterrupted run's draws.

    states = gather_rng_states(device, distributed)    # every rank calls it (a collective under torchrun)
    ...                                                 # the checkpoint stores ``states`` (one entry per rank)
    restore_rng_state(states, rank, world_size, device) # on resume: this rank's generators, exactly

timm's ``train.py`` seeds each process once (``random_seed(seed, rank)``) and lets the streams run, so a resumed timm
run draws other data orders and augmentations than the uninterrupted one. ``timm-lap train`` seeds the same way (its
runs are timm's, step for step) and stores every rank's Python, NumPy, torch CPU and current-CUDA-device generator
states in each end-of-epoch checkpoint; restoring them makes the resumed run the uninterrupted one.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["capture_rng_state", "gather_rng_states", "restore_rng_state"]

RngState = dict[str, Any]


def capture_rng_state(device: torch.device) -> RngState:
    """This process's generator states: Python's ``random``, NumPy's global one, torch's CPU one and, on CUDA, the
    current device's."""
    version, internal, gauss_next = random.getstate()
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    # Tensors and plain numbers only: checkpoints are read back with torch.load(weights_only=True).
    state: RngState = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(device: torch.device, distributed: bool) -> list[RngState]:
    """Every rank's :func:`capture_rng_state`, in rank order. Under torchrun all ranks must call it (rank 0 alone
    writes the checkpoint, but each rank's streams differ)."""
    state = capture_rng_state(device)
    if not distributed:
        return [state]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def restore_rng_state(states: list[RngState] | None, rank: int, world_size: int, device: torch.device) -> bool:
    """Set this process's generators to ``states[rank]``; False (nothing changed) when ``states`` is missing or was
    saved by a run with another number of processes."""
    if not states or len(states) != world_size:
        return False
    state = states[rank]
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))
    np.random.set_state(("MT19937", npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    return True
