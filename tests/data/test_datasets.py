"""Tests for timm_lap.data (arrays, digits, idx, factory, targets, subsets): built-in datasets, IDX loading,
targets and class-balanced subsets."""

from __future__ import annotations

import collections
import gzip
import os
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import Subset

from timm_lap.data import (
    FASHION_MNIST_CLASSES,
    class_balanced_subset,
    create_lap_dataset,
    dataset_num_classes,
    dataset_targets,
    holdout_split,
    index_subset,
    read_idx,
)
from timm_lap.data import idx as idx_module

# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


class LabelsOnly(torch.utils.data.Dataset):
    """Minimal dataset with a `.targets` list and a writable `transform`."""

    def __init__(self, labels):
        self.targets = list(labels)
        self.transform = None

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return i, self.targets[i]


class NoTargets(torch.utils.data.Dataset):
    """Dataset exposing labels only through __getitem__, to exercise the iterate fallback."""

    def __init__(self, labels):
        self._labels = list(labels)

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        return None, self._labels[i]


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    """Write a uint8 array as an IDX file (optionally gzip-compressed)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        payload = gzip.compress(payload)
    with open(path, "wb") as f:
        f.write(payload)


def write_idx_split(directory, prefix: str, images, labels, compress: bool) -> None:
    os.makedirs(directory, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"), images, compress)
    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, compress)


@pytest.fixture
def no_system_dirs(monkeypatch, tmp_path):
    """Point the Debian install folders at paths that do not exist."""
    missing = tmp_path / "no-such-system-dir"
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST_DIR", str(missing / "fashion-mnist"))
    monkeypatch.setattr(idx_module, "DEBIAN_MNIST_DIR", str(missing / "mnist"))
    return missing


def counts(labels) -> dict[int, int]:
    return dict(collections.Counter(labels))


# ---------------------------------------------------------------------------------------------------------------
# sklearn/digits
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return create_lap_dataset("sklearn/digits", split="train"), create_lap_dataset("sklearn/digits", split="val")


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


def test_unknown_split_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'bogus'.*train.*validation"):
        create_lap_dataset("sklearn/digits", split="bogus")
    with pytest.raises(ValueError, match="unknown split"):
        create_lap_dataset("torch/fashion_mnist", root=str(tmp_path), split="holdout")


# ---------------------------------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    arr = np.random.default_rng(0).integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    path = tmp_path / "x.idx"
    write_idx(path, arr, compress)
    out = read_idx(str(path))
    assert out.shape == (3, 4, 5) and out.dtype == np.uint8
    assert np.array_equal(out, arr)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(str(bad))
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(short))


@pytest.mark.parametrize(
    "name, layout, compress",
    [
        ("torch/fashion_mnist", "", False),
        ("torch/fashion_mnist", "FashionMNIST/raw", True),
        ("torch/fashion_mnist", "raw", True),
        ("torch/mnist", "", True),
        ("torch/mnist", "MNIST/raw", False),
        ("torch/mnist", "raw", False),
    ],
)
def test_idx_dataset_layouts(tmp_path, no_system_dirs, name, layout, compress):
    rng = np.random.default_rng(1)
    tr_img = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    tr_lab = np.array([0, 1, 2, 9, 9, 3], dtype=np.uint8)
    te_img = rng.integers(0, 256, size=(2, 5, 4), dtype=np.uint8)
    te_lab = np.array([7, 4], dtype=np.uint8)
    directory = tmp_path / layout if layout else tmp_path
    write_idx_split(directory, "train", tr_img, tr_lab, compress)
    write_idx_split(directory, "t10k", te_img, te_lab, compress)

    train = create_lap_dataset(name, root=str(tmp_path), split="train", input_img_mode="RGB", repeats=0)
    test = create_lap_dataset(name, root=str(tmp_path), split="test")
    assert len(train) == 6 and len(test) == 2
    assert train.targets == tr_lab.tolist() and test.targets == te_lab.tolist()
    for i in range(6):
        img, target = train[i]
        assert img.mode == "L" and img.size == (4, 5)  # PIL size is (W, H)
        assert np.array_equal(np.asarray(img), tr_img[i]) and target == int(tr_lab[i])
    assert np.array_equal(np.asarray(test[1][0]), te_img[1])
    assert len(train.classes) == 10


def test_idx_class_names(tmp_path, no_system_dirs):
    write_idx_split(tmp_path, "train", np.zeros((1, 2, 2), np.uint8), np.zeros(1, np.uint8), False)
    assert create_lap_dataset("torch/fashion_mnist", root=str(tmp_path)).classes == FASHION_MNIST_CLASSES
    assert create_lap_dataset("torch/mnist", root=str(tmp_path)).classes[3].startswith("3")


def test_idx_mismatched_lengths_raise(tmp_path, no_system_dirs):
    write_idx_split(tmp_path, "train", np.zeros((3, 2, 2), np.uint8), np.zeros(2, np.uint8), False)
    with pytest.raises(ValueError, match="expected uint8 images"):
        create_lap_dataset("torch/mnist", root=str(tmp_path))


def test_missing_idx_files_error_lists_searched_dirs(tmp_path, no_system_dirs):
    with pytest.raises(FileNotFoundError) as info:
        create_lap_dataset("torch/fashion_mnist", root=str(tmp_path), split="validation")
    msg = str(info.value)
    for directory in (tmp_path, tmp_path / "FashionMNIST" / "raw", tmp_path / "raw", no_system_dirs / "fashion-mnist"):
        assert str(directory) in msg
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "--dataset-download" in msg


def test_missing_mnist_without_root_searches_system_dir(no_system_dirs):
    with pytest.raises(FileNotFoundError) as info:
        create_lap_dataset("torch/mnist", split="train")
    msg = str(info.value)
    assert str(no_system_dirs / "mnist") in msg and "train-images-idx3-ubyte" in msg and "--data-dir" in msg


@pytest.mark.skipif(
    not os.path.isdir(idx_module.DEBIAN_FASHION_MNIST_DIR),
    reason=f"{idx_module.DEBIAN_FASHION_MNIST_DIR} missing: apt-get install dataset-fashion-mnist (CI installs it)",
)
def test_fashion_mnist_from_debian_package():
    train = create_lap_dataset("torch/fashion_mnist", split="train")
    val = create_lap_dataset("torch/fashion_mnist", split="validation")
    assert len(train) == 60000 and len(val) == 10000
    assert train.data.dtype == np.uint8 and train.data.shape == (60000, 28, 28)
    assert dataset_num_classes(train) == 10 and sorted(set(val.targets)) == list(range(10))
    img, target = train[0]
    assert img.mode == "L" and img.size == (28, 28) and isinstance(target, int)


# ---------------------------------------------------------------------------------------------------------------
# class_balanced_subset
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def ten_classes():
    # unequal class sizes (30..57) so balance is not an accident of the input
    labels = [c for c in range(10) for _ in range(30 + 3 * c)]
    return LabelsOnly(np.random.default_rng(0).permutation(labels).tolist())


def test_balanced_subset_exact_counts(ten_classes):
    sub = class_balanced_subset(ten_classes, 100, seed=0)
    assert len(sub) == 100 and counts(sub.targets) == {c: 10 for c in range(10)}
    sub = class_balanced_subset(ten_classes, 105, seed=0)
    per_class = counts(sub.targets)
    assert sorted(per_class.values()) == [10] * 5 + [11] * 5
    assert sub.targets == [ten_classes.targets[i] for i in sub.indices]
    assert len(set(sub.indices)) == 105


def test_balanced_subset_small_class_gives_all_it_has():
    ds = LabelsOnly([0] * 2 + [1] * 50 + [2] * 50)
    per_class = counts(class_balanced_subset(ds, 30, seed=3).targets)
    assert per_class == {0: 2, 1: 14, 2: 14}


def test_balanced_subset_is_seeded(ten_classes):
    a = class_balanced_subset(ten_classes, 105, seed=5)
    b = class_balanced_subset(ten_classes, 105, seed=5)
    c = class_balanced_subset(ten_classes, 105, seed=6)
    assert a.indices == b.indices
    assert a.indices != c.indices


def test_balanced_subset_forwards_transform(ten_classes, digits):
    sub = class_balanced_subset(ten_classes, 20)
    fn = lambda x: x  # noqa: E731
    sub.transform = fn
    assert ten_classes.transform is fn and sub.transform is fn
    ten_classes.transform = None
    assert sub.transform is None
    digit_sub = class_balanced_subset(create_lap_dataset("sklearn/digits"), 30, seed=1)
    digit_sub.transform = lambda im: im.size
    assert digit_sub[0][0] == (8, 8)
    assert dataset_num_classes(digit_sub) == 10


def test_balanced_subset_errors(ten_classes):
    with pytest.raises(ValueError, match="smaller than the number of classes \\(10\\)"):
        class_balanced_subset(ten_classes, 9)
    with pytest.raises(ValueError, match="larger than the dataset \\(435 samples\\)"):
        class_balanced_subset(ten_classes, 436)
    with pytest.raises(ValueError, match="at least 1"):
        class_balanced_subset(ten_classes, 0)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=1, max_size=120),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_balanced_subset_property(labels, frac, seed):
    num_classes = len(set(labels))
    n = num_classes + int(frac * (len(labels) - num_classes))
    sub = class_balanced_subset(LabelsOnly(labels), n, seed=seed)
    assert len(sub) == n and len(set(sub.indices)) == n
    assert sub.targets == [labels[i] for i in sub.indices]
    per_class = counts(sub.targets)
    assert set(per_class) == set(labels)  # every class represented
    available = counts(labels)
    assert all(per_class[c] <= available[c] for c in per_class)
    # water filling: classes with samples left differ by at most one, and none holds more than that level + 1
    open_counts = [per_class[c] for c in per_class if per_class[c] < available[c]]
    if open_counts:
        assert max(open_counts) - min(open_counts) <= 1
        assert max(per_class.values()) <= min(open_counts) + 1
    if min(available.values()) >= -(-n // num_classes):
        assert max(per_class.values()) - min(per_class.values()) <= 1


# ---------------------------------------------------------------------------------------------------------------
# holdout_split (--val-from-train)
# ---------------------------------------------------------------------------------------------------------------


def test_holdout_split_fraction_and_count(ten_classes):
    kept, held = holdout_split(ten_classes, 0.2, seed=0)
    assert len(held) == 87 and len(kept) == 435 - 87  # round(0.2 * 435)
    assert sorted(kept + held) == list(range(435))
    per_class, available = counts([ten_classes.targets[i] for i in held]), counts(ten_classes.targets)
    assert all(abs(per_class[c] - 0.2 * available[c]) < 1 for c in available)  # stratified
    _, held40 = holdout_split(ten_classes, 40, seed=0)
    per_class = counts([ten_classes.targets[i] for i in held40])
    assert len(held40) == 40 and all(abs(per_class[c] - 40 / 435 * available[c]) < 1 for c in available)


def test_holdout_split_is_seeded_and_independent_of_subset_stream(ten_classes):
    assert holdout_split(ten_classes, 0.3, seed=1) == holdout_split(ten_classes, 0.3, seed=1)
    assert holdout_split(ten_classes, 0.3, seed=1) != holdout_split(ten_classes, 0.3, seed=2)


def test_holdout_split_keeps_a_sample_of_every_class():
    ds = LabelsOnly([0] * 2 + [1] * 50)
    kept, held = holdout_split(ds, 0.9, seed=0)
    assert counts([ds.targets[i] for i in kept])[0] >= 1 and len(held) == round(0.9 * 52)


@pytest.mark.parametrize("size,match", [(0, "fraction in \\(0, 1\\) or a count"), (2.5, "neither a fraction"),
                                        (434, "at least one sample of each")])
def test_holdout_split_errors(ten_classes, size, match):
    with pytest.raises(ValueError, match=match):
        holdout_split(ten_classes, size)


def test_index_subset_keeps_targets(ten_classes):
    sub = index_subset(ten_classes, [3, 1, 4])
    assert sub.targets == [ten_classes.targets[i] for i in (3, 1, 4)] and len(sub) == 3


# ---------------------------------------------------------------------------------------------------------------
# dataset_targets and timm delegation
# ---------------------------------------------------------------------------------------------------------------


def make_image_folder(root, layout: dict[str, int]) -> None:
    for cls, count in layout.items():
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4), color=(i * 40, 0, 0)).save(folder / f"{i}.png")


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


def test_dataset_targets_subset_and_fallback():
    base = LabelsOnly([3, 1, 4, 1, 5])
    assert dataset_targets(Subset(base, [4, 0])) == [5, 3]
    assert dataset_targets(Subset(Subset(base, [1, 2, 3]), [2, 0])) == [1, 1]
    assert dataset_targets(NoTargets([2, 0, 2])) == [2, 0, 2]
    tensor_targets = LabelsOnly([])
    tensor_targets.targets = torch.tensor([1, 2])
    assert dataset_targets(tensor_targets) == [1, 2]
    assert dataset_num_classes(NoTargets([2, 0, 2])) == 3


def test_with_label_noise_is_seeded_exact_and_never_keeps_the_true_class():
    from timm_lap.data import class_balanced_subset, load_digits_dataset, with_label_noise

    base = class_balanced_subset(load_digits_dataset("train"), 200, seed=3)
    noisy = with_label_noise(base, 0.3, seed=5)
    changed = [i for i, (a, b) in enumerate(zip(base.targets, noisy.targets)) if a != b]
    assert len(changed) == 60
    assert noisy.indices == base.indices and noisy.targets == with_label_noise(base, 0.3, seed=5).targets
    assert noisy.targets != with_label_noise(base, 0.3, seed=6).targets
    assert set(noisy.targets) <= set(base.targets)
    assert with_label_noise(base, 0.0, seed=5).targets == base.targets
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        with_label_noise(base, 1.0)
