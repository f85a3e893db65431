"""Datasets for timm-lap training by timm-style name: small built-in datasets plus timm's dataset factory.

``create_lap_dataset`` handles three names itself so they work offline:

* ``sklearn/digits``: scikit-learn's bundled 8x8 handwritten digits, with a fixed stratified split
  (:mod:`timm_lap.data.digits`);
* ``torch/mnist`` and ``torch/fashion_mnist``: read straight from the four IDX files (plain or gzip), looked up
  in the data folder and torchvision's ``<Name>/raw`` layout under it, or, without a folder, in a Debian
  package's install folder (:mod:`timm_lap.data.idx`).

Every other name goes to :func:`timm.data.create_dataset`, after checking that the data folder given exists.
All datasets here yield ``(PIL 'L' image, int)`` and have a writable ``transform`` attribute, so timm's
``create_transform``/``create_loader`` apply unchanged.
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import Dataset

from .digits import load_digits_dataset
from .idx import IDX_DATASETS, load_idx_dataset

__all__ = ["create_lap_dataset"]

_CACHE_PREFIXES = ("hfds/", "hfids/")  # root is a download cache there: created when missing
_FOLDER_NAMES = ("", "folder", "imagefolder", "tar", "torch/folder", "torch/image_folder", "torch/imagenet")


def _check_timm_root(name: str, root: str, download: bool) -> str:
    """``root`` with ``~`` expanded; a one-line ``FileNotFoundError`` when timm would read a folder that is not
    there (kept for downloads, which create it, and Hugging Face caches)."""
    key = name.strip().lower()
    if key.startswith(_CACHE_PREFIXES):
        return root
    folder_dataset = key in _FOLDER_NAMES or "/" not in key
    if not root:
        if folder_dataset:
            raise FileNotFoundError(f"--dataset {name!r} reads an image folder: pass --data-dir pointing at it")
        return root
    root = os.path.expanduser(root)
    if not os.path.exists(root) and (folder_dataset or not download):
        how = "pass the folder that holds the data" if folder_dataset or key.startswith(("tfds/", "wds/")) \
            else "pass the folder that holds the data, or add --dataset-download to fetch it there"
        raise FileNotFoundError(f"--data-dir {root} does not exist (for --dataset {name!r}); to fix: {how}")
    return root


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
    A data folder given but missing, or an IDX folder without the files, is a one-line ``FileNotFoundError``;
    'sklearn/digits' is bundled and ignores ``root`` (recorded in its ``sources``).
    """
    key = name.strip().lower()
    if key == "sklearn/digits":
        return load_digits_dataset(split, ignored_data_dir=root)
    if key.startswith("torch/") and key[len("torch/"):] in IDX_DATASETS:
        return load_idx_dataset(key[len("torch/"):], root=root, split=split, download=download)

    from timm.data import create_dataset

    return create_dataset(
        name, root=_check_timm_root(name, root, download), split=split, is_training=is_training, download=download,
        seed=seed, **timm_kwargs,
    )
