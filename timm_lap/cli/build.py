"""What ``timm-lap train`` and ``timm-lap analyze`` build the same way: checkpoint reading, dataset, model, eval loader.

    checkpoint = read_checkpoint(path, flag="--checkpoint", tolerant=True)
    dataset = create_dataset(name, root=root, split="validation", is_training=False, download=False, seed=42)
    model = build_model(name, in_chans=1, num_classes=10, weights=path, flag="--checkpoint")
    loader = eval_loader(dataset, data_config, batch_size, workers, device)

Errors name the command-line flag the bad value came from (the commands turn them into ``SystemExit``).
The device is resolved by :func:`timm_lap.device.resolve_device`.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import torch
import torch.nn as nn
from timm.data import create_loader
from timm.models import create_model, load_checkpoint

from ..data.factory import create_lap_dataset

__all__ = ["Loader", "read_checkpoint", "create_dataset", "build_model", "load_weights", "eval_loader"]

Loader = Any  # what timm's create_loader returns: a torch DataLoader, or timm's PrefetchLoader around one
NOT_TORCH_PICKLES = (".safetensors", ".npz", ".npy")  # weight files torch.load cannot read (timm can)


def read_checkpoint(path: str, flag: str = "--resume", tolerant: bool = False) -> dict[str, Any]:
    """``read_checkpoint(path, flag, tolerant)``: the training checkpoint at ``path``, loaded on the CPU with
    ``weights_only=True`` (an ``argparse.Namespace`` of saved flags allowed).

    A missing file is a ``FileNotFoundError`` naming ``flag``. ``tolerant=True`` (for files that may be plain
    weights) memory-maps where possible and returns ``{}`` for what is not a readable torch dict
    (safetensors/numpy files, other objects, unreadable files): timm's ``load_checkpoint`` reports real problems.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such checkpoint file")
    if not tolerant:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    if path.endswith(NOT_TORCH_PICKLES):
        return {}
    for mmap in (True, False):
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            return checkpoint if isinstance(checkpoint, dict) else {}
        except Exception:  # load_checkpoint reports the real problem
            continue
    return {}


def create_dataset(name: str, **kwargs: Any) -> Any:
    """``create_dataset(name, root=, split=, is_training=, download=, seed=, ...)``: the dataset
    :func:`~timm_lap.data.factory.create_lap_dataset` makes of ``name`` and ``kwargs``.

    timm's factory asserts on names it does not know; that becomes a ``ValueError`` naming ``--dataset``.
    """
    try:
        return create_lap_dataset(name, **kwargs)
    except AssertionError as exc:  # timm's dataset factory asserts on unknown names
        raise ValueError(f"--dataset {name!r}: {exc}") from exc


def load_weights(model: nn.Module, path: str, flag: str = "--checkpoint") -> None:
    """``load_weights(model, path, flag)``: timm's ``load_checkpoint(model, path)`` (EMA weights first); weights that
    do not fit the model are a ``ValueError`` naming ``flag``."""
    try:
        load_checkpoint(model, path)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{flag} {path} does not fit the model: {exc}") from exc


def build_model(name: str, in_chans: int, num_classes: int, weights: str | None = None, flag: str = "--checkpoint",
                model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``build_model(name, in_chans, num_classes, weights=None, flag, model_kwargs)``: timm's
    ``create_model(name, in_chans=, num_classes=, **model_kwargs)``, with the weights of the file ``weights`` when
    given (:func:`load_weights`, errors naming ``flag``)."""
    model = create_model(name, in_chans=in_chans, num_classes=num_classes, **(model_kwargs or {}))
    if weights:
        load_weights(model, weights, flag)
    return model


def eval_loader(dataset: Any, data_config: dict[str, Any], batch_size: int, workers: int, device: torch.device,
                use_prefetcher: bool | None = None, distributed: bool = False, pin_memory: bool = False) -> Loader:
    """``eval_loader(dataset, data_config, batch_size, workers, device)``: timm's evaluation loader (no shuffling,
    no augmentation) with the input size, interpolation, mean, std and crop of ``data_config``
    (timm's ``resolve_data_config``); no persistent workers.

    ``use_prefetcher`` (timm's CUDA prefetching loader) defaults to ``device`` being CUDA; ``distributed`` shards the
    set over the processes of a torchrun job.
    """
    return create_loader(
        dataset, input_size=data_config["input_size"], batch_size=batch_size, is_training=False,
        interpolation=data_config["interpolation"], mean=data_config["mean"], std=data_config["std"],
        num_workers=workers, distributed=distributed, crop_pct=data_config["crop_pct"], pin_memory=pin_memory,
        device=device, use_prefetcher=device.type == "cuda" if use_prefetcher is None else use_prefetcher,
        persistent_workers=False,
    )
