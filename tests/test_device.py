"""resolve_device: one rule for every command."""
import pytest
import torch

from timm_lap.device import resolve_device


def test_default_is_cuda_when_there_is_one_else_cpu():
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_names_the_fix():
    with pytest.raises(ValueError, match=r"timm-lap train: --device cuda:1 .*no CUDA device .*use --device cpu"):
        resolve_device("cuda:1", "timm-lap train")


def test_not_a_device_name():
    with pytest.raises(ValueError, match=r"--device 'gpu0' is not a device name"):
        resolve_device("gpu0")
