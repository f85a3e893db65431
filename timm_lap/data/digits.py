"""``sklearn/digits``: scikit-learn's bundled 8x8 handwritten digits, with a fixed stratified split."""

from __future__ import annotations

import numpy as np

from .arrays import ArrayImageDataset, is_train_split

__all__ = ["DIGITS_SPLIT_SEED", "DIGITS_TEST_SIZE", "DIGIT_CLASSES", "load_digits_dataset"]

DIGIT_CLASSES = [
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
]

DIGITS_TEST_SIZE = 0.25
DIGITS_SPLIT_SEED = 0  # fixed on purpose: the held-out split must not move with the run's seed


def load_digits_dataset(split: str = "train") -> ArrayImageDataset:
    """scikit-learn's 1,797 8x8 digit scans as 0..255 'L' images, with a fixed 75/25 stratified split."""
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
    return ArrayImageDataset(images[idx], labels[idx].tolist(), DIGIT_CLASSES)
