"""``sklearn/digits``: scikit-learn's bundled 8x8 handwritten digits, with a fixed stratified split."""

from __future__ import annotations

from importlib.resources import as_file, files

import numpy as np

from .arrays import ArrayImageDataset, is_train_split
from .provenance import Source, file_source

__all__ = ["DIGITS_SPLIT_SEED", "DIGITS_TEST_SIZE", "DIGIT_CLASSES", "digits_source", "load_digits_dataset"]

DIGIT_CLASSES = [
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
]

DIGITS_PACKAGE, DIGITS_FILE = "sklearn.datasets.data", "digits.csv.gz"  # what sklearn's load_digits reads
DIGITS_TEST_SIZE = 0.25
DIGITS_SPLIT_SEED = 0  # fixed on purpose: the held-out split must not move with the run's seed


def digits_source(split: str, ignored_data_dir: str = "") -> Source:
    """``digits_source(split, ignored_data_dir='')``: the record of the csv.gz file in scikit-learn that
    ``load_digits`` reads (path, bytes, sha256, scikit-learn version); a data folder given is noted as ignored."""
    import sklearn

    with as_file(files(DIGITS_PACKAGE) / DIGITS_FILE) as path:
        record = file_source(str(path), "sklearn-bundled", split=split, sklearn_version=sklearn.__version__)
    note = "bundled with scikit-learn"
    record["note"] = f"{note}; data dir {ignored_data_dir!r} ignored" if ignored_data_dir else note
    return record


def load_digits_dataset(split: str = "train", ignored_data_dir: str = "") -> ArrayImageDataset:
    """scikit-learn's 1,797 8x8 digit scans as 0..255 'L' images, with a fixed 75/25 stratified split.

    ``ignored_data_dir`` (the data is bundled) is only recorded in ``sources``."""
    is_train = is_train_split(split)
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
    return ArrayImageDataset(images[idx], labels[idx].tolist(), DIGIT_CLASSES,
                             sources=[digits_source(split, ignored_data_dir)])
