import importlib.util
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn as nn

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
