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


@pytest.fixture
def timm_factory_not_called(monkeypatch):
    """Fail the test if timm's dataset factory is reached."""
    import timm.data

    def refuse(*args, **kwargs):
        raise AssertionError("timm's create_dataset must not be called")

    monkeypatch.setattr(timm.data, "create_dataset", refuse)


@pytest.mark.parametrize("name", ["", "folder", "torch/image_folder", "torch/cifar10"])
def test_a_missing_data_dir_for_timm_datasets_is_a_one_line_error(tmp_path, name, timm_factory_not_called):
    typo = tmp_path / "no" / "such" / "dir"
    with pytest.raises(FileNotFoundError) as info:
        create_lap_dataset(name, root=str(typo), split="train")
    msg = str(info.value)
    assert msg.startswith(f"--data-dir {typo} does not exist (for --dataset {name!r}); to fix: ") and "\n" not in msg
    assert ("--dataset-download" in msg) == (name == "torch/cifar10")  # only torchvision's sets download


def test_an_image_folder_needs_a_data_dir(timm_factory_not_called):
    with pytest.raises(FileNotFoundError, match=r"^--dataset '' reads an image folder: pass --data-dir"):
        create_lap_dataset("", split="train")


def test_downloads_and_caches_may_name_a_folder_that_does_not_exist_yet(tmp_path, monkeypatch):
    import timm.data

    calls = []
    monkeypatch.setattr(timm.data, "create_dataset", lambda name, root, **kw: calls.append((name, root)))
    create_lap_dataset("torch/cifar10", root=str(tmp_path / "new"), download=True)
    create_lap_dataset("hfds/some/set", root=str(tmp_path / "cache"))
    assert calls == [("torch/cifar10", str(tmp_path / "new")), ("hfds/some/set", str(tmp_path / "cache"))]


def test_digits_ignore_a_data_dir_and_record_it(tmp_path):
    ds = create_lap_dataset("sklearn/digits", root=str(tmp_path / "no" / "such" / "dir"), split="train")
    assert len(ds) > 1000
    (source,) = ds.sources
    assert source["kind"] == "sklearn-bundled" and "ignored" in source["note"] and str(tmp_path) in source["note"]
