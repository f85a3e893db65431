"""Paper-shaped pre-activation ResNets, registered with timm: ``timm.create_model('preact_flat9')``.

The least-action paper's reference experiments use networks that read as a discretised flow: many
same-width pre-activation blocks ``x + conv(relu(bn(conv(relu(bn(x))))))``. Registered here (each also as a
``*_lap`` variant with a tracker attached, see :mod:`timm_lap.models`):

- ``preact_flat9``: a conv stem (stride 2: 28/32 px -> 14/16 px) then ONE stage of 9 same-width blocks
  (``width=32`` by default), then BN-ReLU, global pool and a linear head.
- ``preact_resnet20`` / ``preact_resnet56``: CIFAR-style, 3 stages of 3 / 9 blocks of widths 16/32/64, a
  1x1 strided projection (applied to the pre-activated input) at the first block of stages 2 and 3.

All take timm's usual ``in_chans``, ``num_classes``, ``drop_rate``, ``drop_path_rate`` and ``global_pool``;
``widths``/``depths`` (and ``width``/``depth`` for ``preact_flat9``) change the shape. There are no pretrained weights.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

__all__ = ["PreActBlock", "PreActResNet", "PREACT_ARCHS"]

PREACT_ARCHS = ("preact_flat9", "preact_resnet20", "preact_resnet56")


class PreActBlock(nn.Module):
    """``shortcut(x) + drop_path(conv2(relu(bn2(conv1(relu(bn1(x)))))))``.

    ``shortcut`` is ``None`` (identity) when stride and width are kept, else a 1x1 strided convolution of the
    pre-activated input, as in He et al. (2016) and the least-action reference code.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return shortcut + self.drop_path(out)


class PreActResNet(nn.Module):
    """Stem conv, stages of :class:`PreActBlock`, final BN-ReLU, pooled linear head (timm conventions)."""

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 3),
        widths: Sequence[int] = (16, 32, 64),
        stem_stride: int = 1,
        in_chans: int = 3,
        num_classes: int = 10,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(widths) or not depths:
            raise ValueError(f"PreActResNet: depths {tuple(depths)} and widths {tuple(widths)} must be non-empty "
                             "and of the same length (one entry per stage)")
        if min(depths) < 1 or min(widths) < 1:
            raise ValueError(f"PreActResNet: every depth and width must be >= 1, got {tuple(depths)}, {tuple(widths)}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stem = nn.Conv2d(in_chans, widths[0], 3, stride=stem_stride, padding=1, bias=False)
        # Stochastic depth grows linearly with the block index over the whole network (timm's convention).
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        blocks: list[nn.Module] = []
        self.feature_info: list[dict[str, Any]] = []
        in_chs, reduction, index = widths[0], stem_stride, 0
        for stage, (depth, width) in enumerate(zip(depths, widths)):
            stride = 1 if stage == 0 else 2
            reduction *= stride
            for i in range(depth):
                blocks.append(PreActBlock(in_chs, width, stride if i == 0 else 1, rates[index]))
                in_chs, index = width, index + 1
            self.feature_info.append({"num_chs": width, "reduction": reduction, "module": f"blocks.{index - 1}"})
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(in_chs)
        self.num_features = self.head_hidden_size = in_chs
        self.head = ClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^stem", "blocks": r"^blocks\.(\d+)" if not coarse else r"^blocks"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return F.relu(self.norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
        "first_conv": "stem", "classifier": "head.fc", **kwargs,
    }


# register_model() reads this module's `default_cfgs` at decoration time.
default_cfgs = generate_default_cfgs({
    "preact_flat9": _cfg(input_size=(3, 28, 28)),
    "preact_resnet20": _cfg(),
    "preact_resnet56": _cfg(),
})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> PreActResNet:
    return build_model_with_cfg(PreActResNet, variant, pretrained, feature_cfg={"flatten_sequential": True},
                                **kwargs)


@register_model
def preact_flat9(pretrained: bool = False, width: int = 32, depth: int = 9, **kwargs: Any) -> PreActResNet:
    """Stride-2 conv stem, then one stage of ``depth`` (default 9) same-width pre-activation blocks of ``width``
    channels (default 32)."""
    kwargs.setdefault("depths", (depth,))
    kwargs.setdefault("widths", (width,))
    return _create("preact_flat9", pretrained, stem_stride=2, **kwargs)


@register_model
def preact_resnet20(pretrained: bool = False, **kwargs: Any) -> PreActResNet:
    """CIFAR-style pre-activation ResNet-20: 3 stages x 3 blocks, widths 16/32/64."""
    return _create("preact_resnet20", pretrained, **{"depths": (3, 3, 3), "widths": (16, 32, 64), **kwargs})


@register_model
def preact_resnet56(pretrained: bool = False, **kwargs: Any) -> PreActResNet:
    """CIFAR-style pre-activation ResNet-56: 3 stages x 9 blocks, widths 16/32/64."""
    return _create("preact_resnet56", pretrained, **{"depths": (9, 9, 9), "widths": (16, 32, 64), **kwargs})
