"""Seeded subsets of a dataset: class-balanced subsets, stratified hold-outs, index subsets and label noise."""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from .targets import dataset_targets

__all__ = [
    "BalancedSubset",
    "RelabelledSubset",
    "class_balanced_subset",
    "holdout_split",
    "index_subset",
    "with_label_noise",
]


class BalancedSubset(Subset):
    """A ``Subset`` that forwards ``transform``/``target_transform`` to its base dataset and exposes ``targets``.

    timm's ``create_loader`` assigns ``dataset.transform``; forwarding makes that reach the dataset that applies it.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], targets: Sequence[int]) -> None:
        super().__init__(dataset, list(indices))
        self.targets: list[int] = list(targets)

    @property
    def transform(self) -> Any:
        return getattr(self.dataset, "transform", None)

    @transform.setter
    def transform(self, value: Any) -> None:
        dataset: Any = self.dataset  # any dataset object: the attribute is set whether it declares one or not
        dataset.transform = value

    @property
    def target_transform(self) -> Any:
        return getattr(self.dataset, "target_transform", None)

    @target_transform.setter
    def target_transform(self, value: Any) -> None:
        dataset: Any = self.dataset  # as for transform
        dataset.target_transform = value

    @property
    def classes(self) -> list[str] | None:
        return getattr(self.dataset, "classes", None)


def _balanced_quotas(capacity: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-class counts summing to n, as equal as the class sizes allow (water filling).

    The level L is the largest with sum(min(capacity, L)) <= n; the remaining r slots (fewer than the classes
    that still have room) each add one sample to a seeded random choice of those classes.
    """
    lo, hi = 0, int(capacity.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(capacity, mid).sum() <= n:
            lo = mid
        else:
            hi = mid - 1
    quotas = np.minimum(capacity, lo)
    leftover = n - int(quotas.sum())
    if leftover:
        room = np.flatnonzero(capacity > lo)
        quotas[rng.choice(room, size=leftover, replace=False)] += 1
    return quotas


def class_balanced_subset(dataset: Dataset, n: int, seed: int = 0) -> BalancedSubset:
    """A seeded, class-balanced subset of ``n`` samples.

    Classes get equal shares, the leftover ``n % k`` slots going to classes picked by ``seed``; a class smaller
    than its share gives all its samples and the rest is spread over the others. Indices are sorted. Raises
    ValueError if ``n < 1``, ``n`` is below the number of classes, or ``n > len(dataset)``.
    """
    targets = np.asarray(dataset_targets(dataset), dtype=np.int64)
    labels, per_class = np.unique(targets, return_counts=True)
    if n < 1:
        raise ValueError(f"subset size n must be at least 1, got {n}")
    if n > len(targets):
        raise ValueError(f"subset size n={n} is larger than the dataset ({len(targets)} samples); lower n")
    if n < len(labels):
        raise ValueError(
            f"subset size n={n} is smaller than the number of classes ({len(labels)}); "
            f"use n >= {len(labels)} so every class is represented"
        )
    rng = np.random.default_rng(seed)
    indices = _draw_per_class(targets, labels, _balanced_quotas(per_class, n, rng), rng)
    return BalancedSubset(dataset, indices.tolist(), targets[indices].tolist())


def _draw_per_class(targets: np.ndarray, labels: np.ndarray, quotas: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Sorted indices: ``quotas[i]`` samples of class ``labels[i]``, drawn without replacement."""
    chosen = [rng.choice(np.flatnonzero(targets == label), size=int(q), replace=False)
              for label, q in zip(labels, quotas)]
    return np.sort(np.concatenate(chosen))


def holdout_split(dataset: Dataset, size: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded, class-stratified split of ``dataset`` into (kept indices, held-out indices).

    ``size`` is the held-out share: a fraction in (0, 1) or a count >= 1. Each class gives its
    proportional share (largest remainders, ties broken by ``seed``) and keeps at least one sample.
    """
    targets = np.asarray(dataset_targets(dataset), dtype=np.int64)
    total = len(targets)
    if not (isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0):
        raise ValueError(f"held-out size must be a fraction in (0, 1) or a count >= 1, got {size!r}")
    if size < 1:
        n_out = int(round(size * total))
    elif float(size).is_integer():
        n_out = int(size)
    else:
        raise ValueError(f"held-out size {size} is neither a fraction in (0, 1) nor a whole count")
    labels, per_class = np.unique(targets, return_counts=True)
    if not 1 <= n_out <= total - len(labels):
        raise ValueError(
            f"held-out size {size} gives {n_out} of {total} samples; it must leave at least one sample of each of "
            f"the {len(labels)} classes for training and hold out at least one"
        )
    rng = np.random.default_rng([seed, 7919])  # a stream of its own, independent of class_balanced_subset's
    exact = per_class * (n_out / total)
    quotas = np.minimum(np.floor(exact).astype(np.int64), per_class - 1)
    order = np.lexsort((rng.random(len(labels)), -(exact - quotas)))  # largest remainder first, seeded ties
    while quotas.sum() < n_out:  # a second round only when some classes are too small to take their share
        for i in order:
            if quotas.sum() < n_out and quotas[i] < per_class[i] - 1:
                quotas[i] += 1
    held = _draw_per_class(targets, labels, quotas, rng)
    return np.setdiff1d(np.arange(total), held).tolist(), held.tolist()


def index_subset(dataset: Dataset, indices: Sequence[int]) -> BalancedSubset:
    """``dataset`` restricted to ``indices``, keeping targets and transform forwarding."""
    targets = dataset_targets(dataset)
    return BalancedSubset(dataset, indices, [targets[i] for i in indices])


class RelabelledSubset(BalancedSubset):
    """A :class:`BalancedSubset` whose samples carry ``targets`` instead of the base dataset's labels."""

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        sample, _ = self.dataset[self.indices[index]]
        return sample, self.targets[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any]]:
        return [self[i] for i in indices]


def with_label_noise(dataset: Dataset, fraction: float, seed: int = 0) -> RelabelledSubset:
    """``dataset`` with a seeded ``fraction`` of its labels replaced by a different class, drawn uniformly.

    Exactly ``round(fraction * len(dataset))`` samples are corrupted; every corrupted label differs from the true
    one (a harder task for a fixed amount of data). Classes are those present in the dataset's targets.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"label-noise fraction must be in [0, 1), got {fraction}")
    targets = np.asarray(dataset_targets(dataset), dtype=np.int64)
    labels = np.unique(targets)
    if fraction > 0 and len(labels) < 2:
        raise ValueError("label noise needs at least two classes in the dataset")
    rng = np.random.default_rng([seed, 0x4E015E])  # a stream of its own: independent of the subset draw
    noisy = targets.copy()
    chosen = rng.choice(len(targets), size=int(round(fraction * len(targets))), replace=False)
    for i in chosen:
        others = labels[labels != targets[i]]
        noisy[i] = others[rng.integers(len(others))]
    indices: Sequence[int]
    if isinstance(dataset, BalancedSubset):
        base, indices = dataset.dataset, dataset.indices
    else:
        assert isinstance(dataset, Sized)  # a map-style dataset has a length (torch's Dataset declares none)
        base, indices = dataset, range(len(dataset))
    return RelabelledSubset(base, indices, noisy.tolist())
