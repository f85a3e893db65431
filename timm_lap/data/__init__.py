"""Datasets for ``timm-lap train``: bundled digits, IDX files (MNIST, Fashion-MNIST), timm's factory, and
seeded class-balanced subsets, hold-outs and label noise.

One job per module: :mod:`.arrays` (the in-memory dataset class and split names), :mod:`.digits`, :mod:`.idx`,
:mod:`.factory` (``create_lap_dataset``), :mod:`.targets` (labels and class counts), :mod:`.subsets` and
:mod:`.provenance` (``describe_sources``: the files a dataset was read from).
The old module ``timm_lap.data.datasets`` is an alias of this package (see :mod:`timm_lap.compat`).
"""
from .arrays import ArrayImageDataset
from .digits import DIGIT_CLASSES, load_digits_dataset
from .factory import create_lap_dataset
from .idx import DEBIAN_FASHION_MNIST_DIR, DEBIAN_MNIST_DIR, FASHION_MNIST_CLASSES, load_idx_dataset, read_idx
from .provenance import describe_sources
from .subsets import BalancedSubset, class_balanced_subset, holdout_split, index_subset
from .targets import dataset_num_classes, dataset_targets

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
    "describe_sources",
    "holdout_split",
    "index_subset",
    "load_digits_dataset",
    "load_idx_dataset",
    "read_idx",
]

# Public in the old timm_lap.data.datasets but never in its __all__: importable from here (so the old path keeps
# them) without changing what ``from timm_lap.data import *`` gives.
from .subsets import RelabelledSubset as RelabelledSubset
from .subsets import with_label_noise as with_label_noise
