"""timm_lap.data.provenance: describe_sources names the files a dataset was read from, through the wrappers."""
from __future__ import annotations

import hashlib
import os
from importlib.resources import files

import numpy as np
import pytest
import sklearn
import yaml
from conftest import make_image_folder, write_idx_split
from torch.utils.data import ConcatDataset, Subset

from timm_lap.data import (
    class_balanced_subset,
    create_lap_dataset,
    describe_sources,
    holdout_split,
    index_subset,
    with_label_noise,
)
from timm_lap.data import idx as idx_module

SOURCE_KEYS = {"kind", "path", "bytes", "files", "sha256"}


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _plain(sources: list[dict]) -> None:
    """Every entry a dict of str/int/None that YAML writes and reads back unchanged."""
    for source in sources:
        assert SOURCE_KEYS <= set(source)
        assert all(isinstance(k, str) and (v is None or type(v) in (str, int)) for k, v in source.items())
    assert yaml.safe_load(yaml.safe_dump(sources)) == sources


def test_digits_name_the_bundled_sklearn_file():
    (source,) = describe_sources(create_lap_dataset("sklearn/digits", split="validation"))
    path = str(files("sklearn.datasets.data") / "digits.csv.gz")
    assert source["path"] == os.path.abspath(path) and source["kind"] == "sklearn-bundled"
    assert source["bytes"] == os.path.getsize(path) and source["sha256"] == _sha256(path)
    assert source["sklearn_version"] == sklearn.__version__ and source["split"] == "validation"
    assert source["note"] == "bundled with scikit-learn"
    _plain([source])


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_are_hashed_once_at_load_time(tmp_path, no_system_dirs, compress):
    rng = np.random.default_rng(0)
    write_idx_split(tmp_path, "train", rng.integers(0, 256, (5, 3, 3), dtype=np.uint8),
                    np.arange(5, dtype=np.uint8), compress)
    train = create_lap_dataset("torch/mnist", root=str(tmp_path), split="train")
    suffix = ".gz" if compress else ""
    paths = [tmp_path / f"train-images-idx3-ubyte{suffix}", tmp_path / f"train-labels-idx1-ubyte{suffix}"]
    expected = [{"kind": kind, "path": str(path), "bytes": path.stat().st_size, "files": 1,
                 "sha256": _sha256(path), "split": "train"} for kind, path in zip(("idx-images", "idx-labels"), paths)]
    for path in paths:
        path.unlink()  # describe_sources must not read the files again
    assert describe_sources(train) == expected
    _plain(expected)


def test_wrappers_are_seen_through(tmp_path, no_system_dirs):
    write_idx_split(tmp_path, "train", np.zeros((20, 2, 2), np.uint8), np.arange(20, dtype=np.uint8) % 2, False)
    base = create_lap_dataset("torch/fashion_mnist", root=str(tmp_path), split="train")
    expected = describe_sources(base)
    kept, held = holdout_split(base, 0.25, seed=0)
    wrapped = [Subset(base, [0, 1, 2]), index_subset(base, kept), index_subset(base, held),
               class_balanced_subset(base, 6, seed=1),
               with_label_noise(class_balanced_subset(index_subset(base, kept), 6, seed=1), 0.5, seed=2),
               Subset(Subset(base, [0, 1]), [0])]
    for dataset in wrapped:
        assert describe_sources(dataset) == expected
    assert describe_sources(ConcatDataset([base, Subset(base, [1])])) == expected  # listed once
    assert [s["kind"] for s in expected] == ["idx-images", "idx-labels"]


def test_an_image_folder_is_counted_not_hashed(tmp_path):
    make_image_folder(tmp_path, {"cat": 2, "dog": 3})
    (tmp_path / "train" / "notes.txt").write_text("not an image: timm does not read it")
    ds = create_lap_dataset("", root=str(tmp_path), split="train")
    images = sorted((tmp_path / "train").rglob("*.png"))
    (source,) = describe_sources(Subset(ds, [0, 1]))
    assert source["path"] == str(tmp_path / "train") and source["kind"] == "timm-ImageDataset"
    assert source["files"] == len(images) == 5 and source["bytes"] == sum(p.stat().st_size for p in images)
    assert source["sha256"] is None and "not hashed" in source["note"]
    _plain([source])


def test_a_torchvision_folder_lists_its_samples(tmp_path):
    make_image_folder(tmp_path, {"a": 1, "b": 2})
    (source,) = describe_sources(create_lap_dataset("torch/image_folder", root=str(tmp_path), split="train"))
    assert source["kind"] == "torchvision-ImageFolder" and source["files"] == 3 and source["sha256"] is None
    assert source["path"] == str(tmp_path / "train")


def test_a_dataset_without_files_says_so():
    (source,) = describe_sources([(0, 1), (1, 0)])
    assert source == {"kind": "list", "path": None, "bytes": None, "files": None, "sha256": None,
                      "note": "no files found to describe"}


@pytest.mark.skipif(
    not os.path.isdir(idx_module.DEBIAN_FASHION_MNIST_DIR),
    reason=f"{idx_module.DEBIAN_FASHION_MNIST_DIR} missing: apt-get install dataset-fashion-mnist (CI installs it)",
)
def test_fashion_mnist_from_the_debian_package():
    debian = idx_module.DEBIAN_FASHION_MNIST_DIR
    val = create_lap_dataset("torch/fashion_mnist", split="validation")
    sources = describe_sources(class_balanced_subset(val, 100, seed=0))
    assert [s["path"] for s in sources] == [os.path.join(debian, f"t10k-{k}-idx{n}-ubyte.gz")
                                           for k, n in (("images", 3), ("labels", 1))]
    for source in sources:
        assert source["bytes"] == os.path.getsize(source["path"]) and source["sha256"] == _sha256(source["path"])
    _plain(sources)
