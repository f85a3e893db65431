"""Datasets for timm-lap training by timm-style name: small built-in datasets plus timm's dataset factory.

``create_lap_dataset`` handles three names itself so they work offline:

* ``sklearn/digits``: scikit-learn's bundled 8x8 handwritten digits, with a fixed stratified split
  (:mod:`timm_lap.data.digits`);
* ``torch/mnist`` and ``torch/fashion_mnist``: read straight from the four IDX files (plain or gzip), looked up
  in the data folder, torchvision's ``<Name>/raw`` layout, or a Debian package's install folder
  (:mod:`timm_lap.data.idx`).

Every other name goes to :func:`timm.data.create_dataset`. All datasets here yield ``(PIL 'L' image, int)`` and
have a writable ``transform`` attribute, so timm's ``create_transform``/``create_loader`` apply unchanged.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from .digits import load_digits_dataset
from .idx import IDX_DATASETS, load_idx_dataset

__all__ = ["create_lap_dataset"]


def create_lap_dataset(
    name: str,
    root: str = "",
    split: str = "train",
    is_training: bool = False,
    download: bool = False,
    seed: int = 42,
    **timm_kwargs: Any,
) -> Dataset:
    """Dataset by timm-style name.

    Handles 'sklearn/digits', 'torch/mnist', 'torch/fashion_mnist' itself (split 'train', or one of
    'validation'/'val'/'test'/'eval' for the held-out split; extra timm kwargs are ignored). Every other name
    (including '' = ImageFolder under root, 'torch/cifar10', ...) goes to ``timm.data.create_dataset``.
    """
    key = name.strip().lower()
    if key == "sklearn/digits":
        return load_digits_dataset(split)
    if key.startswith("torch/") and key[len("torch/"):] in IDX_DATASETS:
        return load_idx_dataset(key[len("torch/"):], root=root, split=split, download=download)

    from timm.data import create_dataset

    return create_dataset(
        name, root=root, split=split, is_training=is_training, download=download, seed=seed, **timm_kwargs
    )
