"""timm_lap.data.digits: the bundled scikit-learn digits, their fixed split and transforms."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from timm_lap.data import (
    create_lap_dataset,
    dataset_num_classes,
)


def test_digits_split_sizes_and_stratification(digits):
    train, val = digits
    assert len(train) + len(val) == 1797
    assert len(val) == pytest.approx(0.25 * 1797, abs=1)
    assert set(train.targets) == set(val.targets) == set(range(10))
    assert dataset_num_classes(train) == 10


def test_digits_split_is_fixed_across_calls_and_seeds(digits):
    train, val = digits
    again = create_lap_dataset("sklearn/digits", split="validation", seed=123)
    assert np.array_equal(again.data, val.data) and again.targets == val.targets
    other_train = create_lap_dataset("sklearn/digits", split="train", seed=7, root="/ignored", batch_size=8)
    assert np.array_equal(other_train.data, train.data) and other_train.targets == train.targets


@pytest.mark.parametrize("split", ["validation", "val", "test", "eval"])
def test_digits_eval_split_synonyms(split, digits):
    assert create_lap_dataset("sklearn/digits", split=split).targets == digits[1].targets


def test_digits_items_are_8x8_grayscale_and_transform_applies(digits):
    train, _ = digits
    img, target = train[0]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (8, 8)
    assert isinstance(target, int) and target == train.targets[0]
    assert train.data.dtype == np.uint8 and train.data.max() == 255  # 0..16 scans rescaled to 0..255
    ds = create_lap_dataset("sklearn/digits", split="train")
    assert ds.transform is None
    ds.transform = lambda im: np.asarray(im).sum()
    ds.target_transform = lambda t: t + 100
    value, target = ds[0]
    assert value == int(ds.data[0].astype(np.int64).sum())
    assert target == ds.targets[0] + 100
