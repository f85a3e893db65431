"""timm_lap.data.factory: create_lap_dataset's splits and its delegation to timm's factory."""
from __future__ import annotations

import pytest
from conftest import counts, make_image_folder

from timm_lap.data import (
    class_balanced_subset,
    create_lap_dataset,
    dataset_num_classes,
    dataset_targets,
)


def test_unknown_split_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'bogus'.*train.*validation"):
        create_lap_dataset("sklearn/digits", split="bogus")
    with pytest.raises(ValueError, match="unknown split"):
        create_lap_dataset("torch/fashion_mnist", root=str(tmp_path), split="holdout")


def test_timm_image_folder_delegation_and_targets(tmp_path, monkeypatch):
    make_image_folder(tmp_path, {"cat": 2, "dog": 3})
    ds = create_lap_dataset("", root=str(tmp_path), split="train", batch_size=4, input_img_mode="RGB")
    from timm.data import ImageDataset

    assert isinstance(ds, ImageDataset) and len(ds) == 5
    img, target = ds[0]
    assert img.size == (4, 4) and target == 0
    expected = [t for _, t in ds.reader.samples]
    assert sorted(expected) == [0, 0, 1, 1, 1]

    def no_loading(self, index):
        raise AssertionError("dataset_targets must not load images")

    monkeypatch.setattr(ImageDataset, "__getitem__", no_loading)
    assert dataset_targets(ds) == expected
    assert dataset_num_classes(ds) == 2
    sub = class_balanced_subset(ds, 4, seed=0)
    assert counts(sub.targets) == {0: 2, 1: 2}
