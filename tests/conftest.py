import collections
import gzip
import importlib.util
import os
import struct
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from timm_lap.data import create_lap_dataset
from timm_lap.data import idx as idx_module

warnings.filterwarnings("ignore", category=UserWarning, module="timm")


class ResBlock(nn.Module):
    """x + r(x): a plain user-written residual block (no timm)."""

    def __init__(self, width: int, zero: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(width, width)
        if zero:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class ResidualMLP(nn.Module):
    def __init__(self, width: int = 8, depth: int = 4, num_classes: int = 3, zero: bool = False) -> None:
        super().__init__()
        self.stem = nn.Linear(4, width)
        self.blocks = nn.Sequential(*[ResBlock(width, zero) for _ in range(depth)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


ROOT = Path(__file__).resolve().parents[1]


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script that is not part of a package (an example, a benchmark) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------- timm_lap.data tests
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


def counts(labels) -> dict[int, int]:
    return dict(collections.Counter(labels))


def make_image_folder(root, layout: dict[str, int]) -> None:
    for cls, count in layout.items():
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4), color=(i * 40, 0, 0)).save(folder / f"{i}.png")


@pytest.fixture
def no_system_dirs(monkeypatch, tmp_path):
    """Point the Debian install folders at paths that do not exist."""
    missing = tmp_path / "no-such-system-dir"
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST_DIR", str(missing / "fashion-mnist"))
    monkeypatch.setattr(idx_module, "DEBIAN_MNIST_DIR", str(missing / "mnist"))
    return missing


@pytest.fixture(scope="module")
def digits():
    return create_lap_dataset("sklearn/digits", split="train"), create_lap_dataset("sklearn/digits", split="val")


@pytest.fixture
def ten_classes():
    # unequal class sizes (30..57) so balance is not an accident of the input
    labels = [c for c in range(10) for _ in range(30 + 3 * c)]
    return LabelsOnly(np.random.default_rng(0).permutation(labels).tolist())
