"""What ``timm-lap train`` and ``timm-lap analyze`` build the same way: checkpoint reading, dataset, model, eval loader.

    checkpoint = read_checkpoint(path, flag="--checkpoint", tolerant=True)
    dataset = create_dataset(name, root=root, split="validation", is_training=False, download=False, seed=42)
    model = build_model(name, in_chans=1, num_classes=10, weights=path, flag="--checkpoint", pretrained=False)
    sources = describe_sources(dataset)  # the files it was read from (timm_lap.data.provenance), for args.yaml
    loader = eval_loader(dataset, data_config, batch_size, workers, device)

Errors name the command-line flag the bad value came from (the commands turn them into ``SystemExit``).
The device is resolved by :func:`timm_lap.device.resolve_device`.
"""
from __future__ import annotations

import argparse
import difflib
import os
import socket
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn as nn
from timm.data import create_loader
from timm.models import (
    create_model,
    get_pretrained_cfg,
    is_model,
    list_models,
    list_pretrained,
    load_checkpoint,
    parse_model_name,
)

from ..data.factory import create_lap_dataset
from ..data.provenance import describe_sources

__all__ = ["Loader", "read_checkpoint", "create_dataset", "describe_sources", "check_model_name", "build_model",
           "create_pretrained_model", "load_weights", "eval_loader"]

Loader = Any  # what timm's create_loader returns: a torch DataLoader, or timm's PrefetchLoader around one
NOT_TORCH_PICKLES = (".safetensors", ".npz", ".npy")  # weight files torch.load cannot read (timm can)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a hub repo, in order
PROBE_TIMEOUT_S = 3.0  # seconds to wait for the weights' host before calling it unreachable
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
TRUE_STRINGS = ("1", "true", "yes", "on")


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

    timm's factory asserts on names it does not know; that becomes a ``ValueError`` naming ``--dataset``. A data
    folder (``root``, --data-dir) given but missing, or without the dataset's files, is a ``FileNotFoundError``.
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


def check_model_name(name: str, flag: str = "--model") -> None:
    """``check_model_name(name, flag='--model')``: a one-line ``ValueError`` naming ``flag`` and the closest timm
    model names when timm does not know ``name`` (pretrained tags and ``hf-hub:``/``local-dir:`` sources allowed)."""
    source, _ = parse_model_name(name)
    arch, _, tag = name.partition(".")
    if source:
        return
    if is_model(name):
        try:
            get_pretrained_cfg(name)  # timm refuses a pretrained tag it does not know, even without pretrained
        except RuntimeError as exc:
            tags = ", ".join(n.partition(".")[2] for n in list_pretrained(f"{arch}.*")) or "none"
            raise ValueError(f"{flag} {name}: timm has no pretrained tag {tag!r} for {arch}; its tags: {tags}") from exc
        return
    close = difflib.get_close_matches(arch, list_models(), n=3, cutoff=0.6)
    hint = f"closest: {', '.join(close)}" if close else "no close match"
    raise ValueError(f"{flag} {name}: no such timm model; {hint} (see timm.list_models())")


def _pretrained_cfg(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pretrained config timm will use for ``name`` (``pretrained_cfg``/``pretrained_cfg_overlay`` applied)."""
    cfg: Any = kwargs.get("pretrained_cfg") or get_pretrained_cfg(name)
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg) if isinstance(cfg, dict) else {}
    cfg.update(kwargs.get("pretrained_cfg_overlay") or {})
    return cfg


def _weights_location(name: str, cfg: dict[str, Any]) -> str:
    """Where timm looks for the weights, in words, as timm picks it: file, else Hugging Face hub id, else url."""
    source, rest = parse_model_name(name)
    if source:
        return f"{source} {rest}"
    tag = f" (pretrained tag {cfg['tag']})" if cfg.get("tag") else ""
    if cfg.get("file"):
        return f"file {cfg['file']}"
    if cfg.get("hf_hub_id"):
        return f"Hugging Face hub {cfg['hf_hub_id']}{tag}"
    return f"url {cfg['url']}{tag}" if cfg.get("url") else ""


def _weights_url(cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """The url timm would fetch the weights from, or None when they are local (a file, or in the hub/torch cache)."""
    if cfg.get("file") or cfg.get("state_dict"):
        return None
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = cfg["hf_hub_id"].partition("@")
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(HF_WEIGHT_FILES)
        cached = [try_to_load_from_cache(repo, n, cache_dir=cache_dir, revision=revision or None) for n in names]
        return None if any(isinstance(c, str) for c in cached) else constants.ENDPOINT
    url = cfg.get("url") or ""
    checkpoints = cache_dir or os.path.join(torch.hub.get_dir(), "checkpoints")
    return None if not url or os.path.isfile(os.path.join(checkpoints, os.path.basename(urlparse(url).path))) else url


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """False when the host of ``url`` refuses or cannot be resolved within ``timeout`` seconds; True behind a proxy
    or with ``HF_HUB_OFFLINE`` set (the hub then fails fast itself)."""
    if any(os.environ.get(v) for v in PROXY_VARS) or os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE_STRINGS:
        return True
    parts = urlparse(url)
    try:
        port = parts.port or (80 if parts.scheme == "http" else 443)
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _pretrained_error(name: str, where: str, why: str, flag: str) -> ValueError:
    from huggingface_hub import constants

    fix = "" if where.startswith("file ") else (
        "; to use a local weights file, drop --pretrained and pass --initial-checkpoint /path/to/weights.pth "
        f"(it must fit the model), or set HF_HUB_OFFLINE=1 with the weights in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE})")
    return ValueError(f"{flag} {name}: cannot load the pretrained weights from {where}: {why}{fix}")


def create_pretrained_model(name: str, flag: str = "--model", **kwargs: Any) -> nn.Module:
    """``create_pretrained_model(name, flag='--model', **create_model_kwargs)``: timm's ``create_model(name,
    pretrained=True, ...)``; weights that cannot be fetched are a one-line ``ValueError`` naming the model, where
    timm looked and what to do. Unreachable hosts are detected up front (a short probe) instead of retried."""
    try:
        cfg = _pretrained_cfg(name, kwargs)
    except RuntimeError as exc:  # an unknown pretrained tag
        raise ValueError(f"{flag} {name}: {exc}") from exc
    where = _weights_location(name, cfg)
    if not where:
        raise ValueError(f"{flag} {name}: timm has no pretrained weights for this model; drop --pretrained")
    if cfg.get("file") and not os.path.isfile(cfg["file"]):
        raise _pretrained_error(name, where, "no such file", flag)
    url = None if parse_model_name(name)[0] else _weights_url(cfg, kwargs.get("cache_dir"))
    if url is not None and not _reachable(url):
        raise _pretrained_error(name, where, f"{urlparse(url).hostname} cannot be reached (offline?)", flag)
    try:
        return create_model(name, pretrained=True, **kwargs)
    except OSError as exc:  # huggingface_hub, urllib and file errors are all OSErrors
        first_line = (str(exc).strip().splitlines() or [repr(exc)])[0]
        raise _pretrained_error(name, where, f"{type(exc).__name__}: {first_line}", flag) from exc


def build_model(name: str, in_chans: int, num_classes: int, weights: str | None = None, flag: str = "--checkpoint",
                model_kwargs: dict[str, Any] | None = None, pretrained: bool = False, model_flag: str = "--model",
                pretrained_file: str | None = None) -> nn.Module:
    """``build_model(name, in_chans, num_classes, weights=None, flag='--checkpoint', model_kwargs=None,
    pretrained=False, model_flag='--model', pretrained_file=None)``: timm's ``create_model(name, in_chans=,
    num_classes=, **model_kwargs)``, with the weights of the file ``weights`` when given (:func:`load_weights`,
    errors naming ``flag``).

    An unknown ``name`` is a ``ValueError`` naming ``model_flag`` and the closest names. ``pretrained`` (also
    accepted as ``model_kwargs['pretrained']``) goes through :func:`create_pretrained_model`; ``pretrained_file``
    loads a local file as the pretrained weights, adapted to ``in_chans``/``num_classes`` by timm.
    """
    check_model_name(name, model_flag)
    kwargs = dict(model_kwargs or {})
    pretrained = bool(kwargs.pop("pretrained", False)) or pretrained or bool(pretrained_file)
    if pretrained_file:
        kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": pretrained_file}
    if pretrained:
        model = create_pretrained_model(name, model_flag, in_chans=in_chans, num_classes=num_classes, **kwargs)
    else:
        model = create_model(name, in_chans=in_chans, num_classes=num_classes, **kwargs)
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
