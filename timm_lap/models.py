"""``<arch>_lap`` timm models: the base architecture with a DisplacementTracker attached.

The LAP variants reuse the base model's entrypoint and pretrained configs, so
``pretrained=True`` loads the base weights and state dicts are interchangeable.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch.nn as nn
from timm.models import generate_default_cfgs, get_arch_pretrained_cfgs, is_model, model_entrypoint, register_model

from . import preact  # registers the paper-shaped base models before their *_lap variants
from .tracker import track

if TYPE_CHECKING:
    from timm.models import PretrainedCfg

__all__ = ["LAP_SUFFIX", "DEFAULT_LAP_ARCHS", "register_lap_model", "list_lap_models"]

LAP_SUFFIX = "_lap"
# Also declared as `timm.models` entry points in pyproject.toml (a test keeps both in step).
DEFAULT_LAP_ARCHS = (
    "resnet10t",
    "resnet14t",
    "resnet18",
    "resnet18d",
    "resnet26",
    "resnet26d",
    "resnet34",
    "resnet34d",
    "resnet50",
    "resnet50d",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "seresnet50",
    "resnetv2_50",
    "resnetv2_101",
    *preact.PREACT_ARCHS,
)

# register_model() reads pretrained cfgs from the defining module's `default_cfgs`.
default_cfgs: dict = {}
_registered: list[str] = []


def _make_entrypoint(base: str, name: str) -> Callable[..., nn.Module]:
    base_fn = model_entrypoint(base)

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        blocks = kwargs.pop("lap_blocks", None)
        p = kwargs.pop("lap_p", 2.0)
        sample = kwargs.pop("lap_sample", None)
        model = base_fn(pretrained=pretrained, **kwargs)
        track(model, blocks=blocks, p=p, sample=sample)
        cfg = getattr(model, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            model.pretrained_cfg = model.default_cfg = {**cfg, "architecture": name}
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (
        f"timm `{base}` with least-action displacement tracking (timm_lap). "
        "Extra kwargs: lap_p (default 2.0), lap_blocks (names/globs), lap_sample (fraction of each batch, "
        "default None: exact)."
    )
    return entrypoint


def register_lap_model(base: str) -> str:
    """Register ``<base>_lap`` for any timm architecture with residual blocks; returns its name."""
    if not is_model(base):
        raise ValueError(f"{base!r} is not a timm model name (see timm.list_models()).")
    name = base + LAP_SUFFIX
    if name in _registered:
        return name
    # The value type generate_default_cfgs declares (a dict, so invariant in it).
    cfgs: dict[str, dict[str, Any] | PretrainedCfg] = {
        name + key[len(base):]: cfg for key, cfg in get_arch_pretrained_cfgs(base).items()
    }
    default_cfgs.update(generate_default_cfgs(cfgs) if cfgs else {})
    fn = _make_entrypoint(base, name)
    globals()[name] = fn
    register_model(fn)
    _registered.append(name)
    return name


def list_lap_models() -> list[str]:
    """Names of the registered LAP timm models."""
    return sorted(_registered)


for _arch in DEFAULT_LAP_ARCHS:
    register_lap_model(_arch)
