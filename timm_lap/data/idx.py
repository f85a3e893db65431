"""``torch/mnist`` and ``torch/fashion_mnist``: read straight from the four IDX files (plain or gzip), looked up
in the data folder given and torchvision's ``<Name>/raw`` layout under it, or, when no folder is given, in a
Debian package's install folder. A folder given that lacks the files is an error, never a silent fallback.

The Debian folders are module constants read at call time, so setting ``timm_lap.data.idx.DEBIAN_MNIST_DIR``
(or monkeypatching it in a test) moves the fallback.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np

from .arrays import ArrayImageDataset, is_train_split
from .digits import DIGIT_CLASSES
from .provenance import Source, file_source

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "DEBIAN_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "IDX_DATASETS",
    "load_idx_dataset",
    "read_idx",
]

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
DEBIAN_MNIST_DIR = "/usr/share/datasets/mnist"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


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


def _gunzip_if_needed(raw: bytes) -> bytes:
    """``raw`` gunzipped when it starts with the gzip magic bytes (whatever the file's name)."""
    return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw


def _parse_idx(buf: bytes, path: str) -> np.ndarray:
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


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (plain or gzip-compressed) into a numpy array of its stored shape."""
    with open(path, "rb") as f:
        return _parse_idx(_gunzip_if_needed(f.read()), path)


def _read_idx_recorded(path: str, kind: str, split: str) -> tuple[np.ndarray, Source]:
    """:func:`read_idx` of ``path`` and the record of the file (sha256 of the bytes as stored, read once)."""
    with open(path, "rb") as f:
        raw = f.read()
    return _parse_idx(_gunzip_if_needed(raw), path), file_source(path, kind, raw, split=split)


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

IDX_DATASETS: tuple[str, ...] = tuple(_IDX_SPECS)  # the keys load_idx_dataset accepts


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
    """Folders searched in order: root, root/<Name>/raw, root/raw when a root is given, else the Debian folder."""
    if root:
        return [root, os.path.join(root, spec.torchvision_name, "raw"), os.path.join(root, "raw")]
    return [globals()[spec.debian_attr]]


def _locate_idx_files(spec: _IdxSpec, root: str, is_train: bool) -> tuple[tuple[str, str] | None, list[str]]:
    """Paths of (images, labels) from the first folder holding both, and the list of folders searched."""
    names = _idx_filenames(is_train)
    searched = _candidate_dirs(spec, root)
    for directory in searched:
        images, labels = (_find_file(directory, n) for n in names)
        if images and labels:
            return (images, labels), searched
    return None, searched


def _missing_idx_message(spec: _IdxSpec, root: str, split: str, searched: list[str], is_train: bool) -> str:
    """One line: what was looked for where, and how to fix it."""
    names = " and ".join(f"{n}[.gz]" for n in _idx_filenames(is_train))
    debian_dir = globals()[spec.debian_attr]
    install = spec.install_hint.format(debian_dir=debian_dir)
    download = "add --dataset-download to fetch them there with torchvision"
    layout = f"(or torchvision's {spec.torchvision_name}/raw layout under it)"
    if not root:
        return (f"{spec.title} {split!r} split not found: no {names} in the system folder {debian_dir}; to fix: "
                f"{install + 'or ' if install else ''}pass --data-dir pointing at a folder holding the four IDX "
                f"files {layout}, or --data-dir with --dataset-download to fetch them with torchvision")
    fixes = [f"point --data-dir at a folder holding the four IDX files {layout}", download]
    if os.path.isdir(debian_dir):
        fixes.insert(0, f"drop --data-dir to use the system copy at {debian_dir}")
    elif install:
        fixes.insert(0, f"{install}then drop --data-dir")
    where = (f"--data-dir {root} does not exist" if not os.path.exists(root)
             else f"--data-dir {root} holds no {names} (searched {', '.join(searched)})")
    return f"{spec.title} {split!r} split not found: {where}; to fix: {', or '.join(fixes)}"


def _download_with_torchvision(key: str, root: str, is_train: bool) -> None:
    if not root:
        raise ValueError(f"downloading torch/{key} needs a target folder: pass root (--data-dir)")
    from torchvision.datasets import MNIST, FashionMNIST

    cls = MNIST if key == "mnist" else FashionMNIST
    cls(root, train=is_train, download=True)  # writes <root>/<Name>/raw/*


def load_idx_dataset(key: str, root: str = "", split: str = "train", download: bool = False) -> ArrayImageDataset:
    """MNIST (``key='mnist'``) or Fashion-MNIST (``key='fashion_mnist'``) read from the four IDX files.

    Searched in ``root`` (and its torchvision layouts) when given, else in the Debian install folder; files not
    found there are a one-line ``FileNotFoundError``. The dataset's ``sources`` hold the files' sha256."""
    if key not in _IDX_SPECS:
        raise ValueError(f"unknown IDX dataset {key!r}; expected one of {sorted(_IDX_SPECS)}")
    spec = _IDX_SPECS[key]
    is_train = is_train_split(split)
    root = os.path.expanduser(root) if root else ""
    found, searched = _locate_idx_files(spec, root, is_train)
    if found is None and download:
        _download_with_torchvision(key, root, is_train)
        found, searched = _locate_idx_files(spec, root, is_train)
    if found is None:
        raise FileNotFoundError(_missing_idx_message(spec, root, split, searched, is_train))
    (images, image_source), (labels, label_source) = (
        _read_idx_recorded(found[0], "idx-images", split), _read_idx_recorded(found[1], "idx-labels", split))
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{found[0]} / {found[1]}: expected uint8 images (N, H, W) and N labels, "
            f"got images {images.dtype}{images.shape} and labels {labels.shape}"
        )
    return ArrayImageDataset(images, labels.tolist(), spec.classes, root=os.path.dirname(found[0]),
                             sources=[image_source, label_source])
