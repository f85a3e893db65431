"""timm_lap.data.idx: reading IDX files (plain or gzip), the layouts they are found in, the Debian copies, and the
errors for a data folder that is missing or lacks the files (never a silent fallback to the system copy)."""
from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest
from conftest import write_idx, write_idx_split

from timm_lap.data import (
    FASHION_MNIST_CLASSES,
    create_lap_dataset,
    dataset_num_classes,
    read_idx,
)
from timm_lap.data import idx as idx_module


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


def _fake_system_dir(monkeypatch, directory) -> None:
    """A Debian-style install folder holding a 3-sample train split, standing in for the system copy."""
    write_idx_split(directory, "train", np.full((3, 2, 2), 7, np.uint8), np.array([1, 2, 3], np.uint8), True)
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST_DIR", str(directory))


def test_missing_idx_files_error_lists_searched_dirs(tmp_path, no_system_dirs):
    with pytest.raises(FileNotFoundError) as info:
        create_lap_dataset("torch/fashion_mnist", root=str(tmp_path), split="validation")
    msg = str(info.value)
    assert "\n" not in msg  # one line
    for directory in (tmp_path, tmp_path / "FashionMNIST" / "raw", tmp_path / "raw"):
        assert str(directory) in msg
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert f"apt-get install dataset-fashion-mnist (installs them into {no_system_dirs / 'fashion-mnist'})" in msg
    assert "--data-dir" in msg and "--dataset-download" in msg


def test_a_data_dir_without_the_files_does_not_fall_back_to_the_system_copy(tmp_path, monkeypatch):
    system = tmp_path / "system"
    _fake_system_dir(monkeypatch, system)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"--data-dir {re.escape(str(empty))} holds no train-images") as info:
        create_lap_dataset("torch/fashion_mnist", root=str(empty), split="train")
    assert str(system) not in str(info.value).split("to fix:")[0]  # the system folder was not searched
    assert f"drop --data-dir to use the system copy at {system}" in str(info.value)
    assert len(create_lap_dataset("torch/fashion_mnist", split="train")) == 3  # without a root: the system copy


def test_a_mistyped_data_dir_is_a_one_line_error(tmp_path, monkeypatch):
    system = tmp_path / "system"
    _fake_system_dir(monkeypatch, system)
    typo = tmp_path / "no" / "such" / "dir"
    with pytest.raises(FileNotFoundError) as info:
        create_lap_dataset("torch/fashion_mnist", root=str(typo), split="train")
    msg = str(info.value)
    assert msg.startswith(f"Fashion-MNIST 'train' split not found: --data-dir {typo} does not exist; to fix: ")
    assert "\n" not in msg and f"drop --data-dir to use the system copy at {system}" in msg
    assert "point --data-dir at a folder holding the four IDX files" in msg and "--dataset-download" in msg
    assert not typo.exists()


def test_download_into_a_data_dir_that_does_not_exist_yet(tmp_path, monkeypatch, no_system_dirs):
    target = tmp_path / "new"

    def fake_download(key, root, is_train):  # what torchvision writes: <root>/<Name>/raw/*
        write_idx_split(os.path.join(root, "MNIST", "raw"), "train", np.zeros((2, 3, 3), np.uint8),
                        np.array([4, 5], np.uint8), False)

    monkeypatch.setattr(idx_module, "_download_with_torchvision", fake_download)
    train = create_lap_dataset("torch/mnist", root=str(target), split="train", download=True)
    assert train.targets == [4, 5] and train.root == str(target / "MNIST" / "raw")


def test_missing_mnist_without_root_searches_system_dir(no_system_dirs):
    with pytest.raises(FileNotFoundError) as info:
        create_lap_dataset("torch/mnist", split="train")
    msg = str(info.value)
    assert "\n" not in msg
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
