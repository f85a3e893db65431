"""The in-memory grayscale image dataset behind the built-in datasets, and the split names they accept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torchvision.datasets import VisionDataset

from .provenance import Source

__all__ = ["EVAL_SPLITS", "TRAIN_SPLITS", "ArrayImageDataset", "is_train_split"]

TRAIN_SPLITS = ("train", "training")
EVAL_SPLITS = ("validation", "val", "valid", "test", "eval", "evaluation")


class ArrayImageDataset(VisionDataset):
    """Grayscale images held as one ``(N, H, W)`` uint8 array; each item is ``(PIL 'L' image, int target)``.

    ``transform``/``target_transform`` are read at every ``__getitem__``, so assigning them later (as timm's
    ``create_loader`` does) takes effect. ``sources`` records the files the arrays were read from (see
    :func:`timm_lap.data.provenance.describe_sources`).
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int],
        classes: Sequence[str],
        root: str = "",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        sources: Sequence[Source] = (),
    ) -> None:
        super().__init__(root, transform=transform, target_transform=target_transform)
        images = np.ascontiguousarray(images)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be a uint8 array of shape (N, H, W), got dtype {images.dtype} and shape {images.shape}"
            )
        if len(images) != len(targets):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets; they must match one to one")
        self.data = images
        self.targets: list[int] = [int(t) for t in targets]
        self.classes: list[str] = list(classes)
        self.sources: list[Source] = [dict(s) for s in sources]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img: Any = Image.fromarray(self.data[index])  # 2-D uint8 -> mode "L"
        target: Any = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def extra_repr(self) -> str:
        return f"Image size: {tuple(self.data.shape[1:])}\nClasses: {len(self.classes)}"


def is_train_split(split: str) -> bool:
    """True for the training split, False for the held-out one; ValueError for anything else."""
    key = split.lower()
    if key in TRAIN_SPLITS:
        return True
    if key in EVAL_SPLITS:
        return False
    raise ValueError(
        f"unknown split {split!r}: use one of {TRAIN_SPLITS} for training or {EVAL_SPLITS} for the held-out split"
    )
