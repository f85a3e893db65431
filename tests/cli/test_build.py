"""timm_lap.cli.build: the checkpoint reading, dataset, model and eval loader that train and analyze share."""
from __future__ import annotations

import argparse
import pickle
import re

import pytest
import torch
from timm.data import resolve_data_config

from timm_lap.cli.build import build_model, create_dataset, eval_loader, read_checkpoint
from timm_lap.data import dataset_targets


@pytest.mark.parametrize("flag", ["--resume", "--checkpoint"])
@pytest.mark.parametrize("tolerant", [False, True])
def test_a_missing_checkpoint_file_names_the_flag(tmp_path, flag, tolerant):
    missing = tmp_path / "no" / "last.pth.tar"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(f'{flag} {missing}')}: no such checkpoint file$"):
        read_checkpoint(str(missing), flag=flag, tolerant=tolerant)


def test_a_training_checkpoint_reads_with_its_saved_flags(tmp_path):
    path = tmp_path / "last.pth.tar"
    torch.save({"epoch": 2, "args": argparse.Namespace(model="resnet10t"), "state_dict": {"w": torch.ones(2)}}, path)
    for tolerant in (False, True):
        checkpoint = read_checkpoint(str(path), tolerant=tolerant)
        assert checkpoint["epoch"] == 2 and checkpoint["args"].model == "resnet10t"
        torch.testing.assert_close(checkpoint["state_dict"]["w"], torch.ones(2))


def test_tolerant_reading_gives_an_empty_dict_for_what_is_not_a_torch_dict(tmp_path):
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"{}")
    for path in (listed, garbage, weights):
        assert read_checkpoint(str(path), flag="--checkpoint", tolerant=True) == {}
    assert isinstance(read_checkpoint(str(listed)), list)  # strict reading returns what was saved
    with pytest.raises(pickle.UnpicklingError):  # and fails where the file is not a checkpoint
        read_checkpoint(str(garbage))


def test_an_unknown_dataset_is_a_value_error_naming_the_flag(tmp_path):
    with pytest.raises(ValueError, match="^--dataset 'torch/nope': "):
        create_dataset("torch/nope", root=str(tmp_path), split="validation", is_training=False)


def test_weights_that_do_not_fit_name_the_flag(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match=f"^{re.escape(f'--initial-checkpoint {wrong}')} does not fit the model"):
        build_model("resnet10t", 1, 10, weights=str(wrong), flag="--initial-checkpoint")
    model = build_model("resnet10t", 1, 10, model_kwargs={"drop_rate": 0.25})
    assert model.drop_rate == 0.25 and model.fc.out_features == 10 and model.conv1[0].in_channels == 1


def test_the_eval_loader_keeps_the_order_and_the_batch_size():
    dataset = create_dataset("sklearn/digits", split="validation", is_training=False)
    data_config = resolve_data_config({"input_size": (1, 32, 32), "mean": (0.5,), "std": (0.5,)})
    loader = eval_loader(dataset, data_config, 100, 0, torch.device("cpu"))
    assert isinstance(loader.sampler, torch.utils.data.SequentialSampler)  # no shuffling
    assert loader.batch_size == 100 and not loader.drop_last  # every sample, in full batches but the last
    labels = []
    for x, y in loader:
        assert x.shape[1:] == (1, 32, 32) and x.dtype == torch.float32
        labels += y.tolist()
    assert labels == dataset_targets(dataset)
    assert len(loader) == -(-len(dataset) // 100)
