"""Datasets for timm-lap training: small built-in datasets plus timm's dataset factory.

``create_lap_dataset`` understands timm-style dataset names. Three are handled here so they work offline:

* ``sklearn/digits``: scikit-learn's bundled 8x8 handwritten digits, with a fixed stratified split;
* ``torch/mnist`` and ``torch/fashion_mnist``: read straight from the four IDX files (plain or gzip), looked up
  in the data folder, torchvision's ``<Name>/raw`` layout, or a Debian package's install folder.

Every other name goes to :func:`timm.data.create_dataset`. All datasets here yield ``(PIL 'L' image, int)`` and
have a writable ``transform`` attribute, so timm's ``create_transform``/``create_loader`` apply unchanged.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision.datasets import VisionDataset

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "DEBIAN_MNIST_DIR",
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "ArrayImageDataset",
    "BalancedSubset",
    "class_balanced_subset",
    "create_lap_dataset",
    "dataset_num_classes",
    "dataset_targets",
    "holdout_split",
    "index_subset",
    "load_digits_dataset",
    "load_idx_dataset",
    "read_idx",
]

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
DEBIAN_MNIST_DIR = "/usr/share/datasets/mnist"

DIGIT_CLASSES = [
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

TRAIN_SPLITS = ("train", "training")
EVAL_SPLITS = ("validation", "val", "valid", "test", "eval", "evaluation")

DIGITS_TEST_SIZE = 0.25
DIGITS_SPLIT_SEED = 0  # fixed on purpose: the held-out split must not move with the run's seed


# ---------------------------------------------------------------------------------------------------------------
# Generic in-memory image dataset
# ---------------------------------------------------------------------------------------------------------------


class ArrayImageDataset(VisionDataset):
    """Grayscale images held as one ``(N, H, W)`` uint8 array; each item is ``(PIL 'L' image, int target)``.

    ``transform``/``target_transform`` are read at every ``__getitem__``, so assigning them later (as timm's
    ``create_loader`` does) takes effect.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int],
        classes: Sequence[str],
        root: str = "",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
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


def _is_train_split(split: str) -> bool:
    """True for the training split, False for the held-out one; ValueError for anything else."""
    key = split.lower()
    if key in TRAIN_SPLITS:
        return True
    if key in EVAL_SPLITS:
        return False
    raise ValueError(
        f"unknown split {split!r}: use one of {TRAIN_SPLITS} for training or {EVAL_SPLITS} for the held-out split"
    )


# ---------------------------------------------------------------------------------------------------------------
# sklearn/digits
# ---------------------------------------------------------------------------------------------------------------


def load_digits_dataset(split: str = "train") -> ArrayImageDataset:
    """scikit-learn's 1,797 8x8 digit scans as 0..255 'L' images, with a fixed 75/25 stratified split."""
    is_train = _is_train_split(split)
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # scikit-learn is an optional dependency of the package
        raise ImportError(
            "dataset 'sklearn/digits' needs scikit-learn: pip install scikit-learn (or timm-lap[demo])"
        ) from e
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    idx = np.sort(train_idx if is_train else test_idx)
    return ArrayImageDataset(images[idx], labels[idx].tolist(), DIGIT_CLASSES)


# ---------------------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------------------------

# IDX type codes (third magic byte) -> big-endian numpy dtypes
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_maybe_gzip(path: str) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic bytes (whatever its name)."""
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (plain or gzip-compressed) into a numpy array of its stored shape."""
    buf = _read_maybe_gzip(path)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {buf[:4]!r})")
    dtype, ndim = _IDX_DTYPES[buf[2]], buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{path}: IDX header is truncated ({len(buf)} bytes, expected at least {header})")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    if len(buf) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX header promises shape {dims} ({count * dtype.itemsize} bytes) "
            f"but the file holds {len(buf) - header} data bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(buf, dtype=dtype, count=count, offset=header).reshape(dims)


@dataclass(frozen=True)
class _IdxSpec:
    """What distinguishes MNIST from Fashion-MNIST when loading IDX files."""

    title: str
    torchvision_name: str  # folder name in torchvision's <root>/<Name>/raw layout
    debian_attr: str  # module constant holding the system-wide install folder (read at call time)
    classes: tuple[str, ...]
    install_hint: str


_IDX_SPECS = {
    "mnist": _IdxSpec("MNIST", "MNIST", "DEBIAN_MNIST_DIR", tuple(DIGIT_CLASSES), ""),
    "fashion_mnist": _IdxSpec(
        "Fashion-MNIST",
        "FashionMNIST",
        "DEBIAN_FASHION_MNIST_DIR",
        tuple(FASHION_MNIST_CLASSES),
        "apt-get install dataset-fashion-mnist (installs them into {debian_dir}); ",
    ),
}


def _idx_filenames(is_train: bool) -> tuple[str, str]:
    prefix = "train" if is_train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_file(directory: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _candidate_dirs(spec: _IdxSpec, root: str) -> list[str]:
    """Folders searched in order: root, root/<Name>/raw, root/raw, then the Debian install folder."""
    dirs = []
    if root:
        root = os.path.expanduser(root)
        dirs += [root, os.path.join(root, spec.torchvision_name, "raw"), os.path.join(root, "raw")]
    # the system folder is the fallback, also when root was given but holds nothing
    dirs.append(globals()[spec.debian_attr])
    return dirs


def _locate_idx_files(spec: _IdxSpec, root: str, is_train: bool) -> tuple[tuple[str, str] | None, list[str]]:
    """Paths of (images, labels) from the first folder holding both, and the list of folders searched."""
    names = _idx_filenames(is_train)
    searched = _candidate_dirs(spec, root)
    for directory in searched:
        images, labels = (_find_file(directory, n) for n in names)
        if images and labels:
            return (images, labels), searched
    return None, searched


def _missing_idx_message(spec: _IdxSpec, split: str, searched: list[str], is_train: bool) -> str:
    names = ", ".join(f"{n}[.gz]" for n in _idx_filenames(is_train))
    folders = "\n".join(f"  - {d}" for d in searched)
    hint = spec.install_hint.format(debian_dir=globals()[spec.debian_attr])
    return (
        f"{spec.title} {split!r} split not found. Searched these folders, in order:\n{folders}\n"
        f"Expected files: {names}.\n"
        f"To fix: {hint}or pass --data-dir pointing at a folder with the IDX files "
        f"(or torchvision's {spec.torchvision_name}/raw layout under it), "
        f"or pass --dataset-download with --data-dir to fetch them with torchvision."
    )


def _download_with_torchvision(key: str, root: str, is_train: bool) -> None:
    if not root:
        raise ValueError(f"downloading torch/{key} needs a target folder: pass root (--data-dir)")
    from torchvision.datasets import MNIST, FashionMNIST

    cls = MNIST if key == "mnist" else FashionMNIST
    cls(os.path.expanduser(root), train=is_train, download=True)  # writes <root>/<Name>/raw/*


def load_idx_dataset(key: str, root: str = "", split: str = "train", download: bool = False) -> ArrayImageDataset:
    """MNIST (``key='mnist'``) or Fashion-MNIST (``key='fashion_mnist'``) read from the four IDX files."""
    if key not in _IDX_SPECS:
        raise ValueError(f"unknown IDX dataset {key!r}; expected one of {sorted(_IDX_SPECS)}")
    spec = _IDX_SPECS[key]
    is_train = _is_train_split(split)
    found, searched = _locate_idx_files(spec, root, is_train)
    if found is None and download:
        _download_with_torchvision(key, root, is_train)
        found, searched = _locate_idx_files(spec, root, is_train)
    if found is None:
        raise FileNotFoundError(_missing_idx_message(spec, split, searched, is_train))
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{found[0]} / {found[1]}: expected uint8 images (N, H, W) and N labels, "
            f"got images {images.dtype}{images.shape} and labels {labels.shape}"
        )
    return ArrayImageDataset(images, labels.tolist(), spec.classes, root=os.path.dirname(found[0]))


# ---------------------------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------------------------


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
    if key.startswith("torch/") and key[len("torch/"):] in _IDX_SPECS:
        return load_idx_dataset(key[len("torch/"):], root=root, split=split, download=download)

    from timm.data import create_dataset

    return create_dataset(
        name, root=root, split=split, is_training=is_training, download=download, seed=seed, **timm_kwargs
    )


# ---------------------------------------------------------------------------------------------------------------
# Targets and class counts
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Class-balanced subsets
# ---------------------------------------------------------------------------------------------------------------


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
