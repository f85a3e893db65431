"""Class labels and class counts of a dataset, read from metadata where possible (no image decoding)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Subset

__all__ = ["dataset_num_classes", "dataset_targets"]


def _as_int_list(values: Any) -> list[int]:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        values = values.tolist()
    return [int(v) for v in values]


def _reader_targets(reader: Any) -> list[int] | None:
    """Targets from a timm reader without opening images (folder/tar readers keep them in memory)."""
    targets = getattr(reader, "targets", None)
    if targets is not None:
        return _as_int_list(targets)
    samples = getattr(reader, "samples", None)
    if samples is not None:
        # timm's ImageDataset reports a missing target as -1
        return [-1 if s[1] is None else int(s[1]) for s in samples]
    return None


def dataset_targets(dataset: Any) -> list[int]:
    """Integer class label of every sample, read from metadata when possible (no image decoding).

    Looks at ``.targets`` (torchvision datasets and ours), a timm ``ImageDataset``'s reader (``reader.samples``
    / ``reader.targets``), and recurses through ``Subset``/``ConcatDataset``; otherwise iterates the dataset
    once. Returns labels before any ``target_transform``.
    """
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return _as_int_list(targets)
    if isinstance(dataset, Subset):
        base = dataset_targets(dataset.dataset)
        return [base[int(i)] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [t for part in dataset.datasets for t in dataset_targets(part)]
    reader = getattr(dataset, "reader", None)
    if reader is not None:
        from_reader = _reader_targets(reader)
        if from_reader is not None:
            return from_reader
    return [int(dataset[i][1]) for i in range(len(dataset))]


def dataset_num_classes(dataset: Any) -> int:
    """Number of classes: ``len(dataset.classes)`` when present (also on a subset's base), else max target + 1."""
    node = dataset
    while node is not None:
        classes = getattr(node, "classes", None)
        if classes:
            return len(classes)
        node = getattr(node, "dataset", None)
    targets = dataset_targets(dataset)
    if not targets:
        raise ValueError("cannot infer the number of classes of an empty dataset without a 'classes' attribute")
    return max(targets) + 1
