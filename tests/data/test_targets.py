"""timm_lap.data.targets: labels of any dataset, without reading its images."""
from __future__ import annotations

import torch
from conftest import LabelsOnly, NoTargets
from torch.utils.data import Subset

from timm_lap.data import (
    dataset_num_classes,
    dataset_targets,
)


def test_dataset_targets_subset_and_fallback():
    base = LabelsOnly([3, 1, 4, 1, 5])
    assert dataset_targets(Subset(base, [4, 0])) == [5, 3]
    assert dataset_targets(Subset(Subset(base, [1, 2, 3]), [2, 0])) == [1, 1]
    assert dataset_targets(NoTargets([2, 0, 2])) == [2, 0, 2]
    tensor_targets = LabelsOnly([])
    tensor_targets.targets = torch.tensor([1, 2])
    assert dataset_targets(tensor_targets) == [1, 2]
    assert dataset_num_classes(NoTargets([2, 0, 2])) == 3
