"""timm_lap.cli.build: the checkpoint reading, dataset, model and eval loader that train and analyze share, and the
one-line errors for unknown model names and pretrained weights that cannot be fetched."""
from __future__ import annotations

import argparse
import difflib
import pickle
import re
import time

import pytest
import timm
import torch
from timm.data import resolve_data_config

from timm_lap.cli import build
from timm_lap.cli.build import build_model, check_model_name, create_dataset, eval_loader, read_checkpoint
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


@pytest.mark.parametrize("flag", ["--model", "--arch"])
def test_an_unknown_model_name_is_one_line_with_the_closest_names(flag, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("create_model must not be called for an unknown name")

    monkeypatch.setattr(build, "create_model", refuse)
    with pytest.raises(ValueError) as info:
        build_model("resnet18_lapp", 1, 10, model_flag=flag)
    msg = str(info.value)
    closest = difflib.get_close_matches("resnet18_lapp", timm.list_models(), n=3, cutoff=0.6)
    assert "resnet18_lap" in closest  # timm-lap's models are registered in timm
    assert msg == f"{flag} resnet18_lapp: no such timm model; closest: {', '.join(closest)} (see timm.list_models())"
    with pytest.raises(ValueError, match=r"^--model qqqqzzzz: no such timm model; no close match \(see timm"):
        check_model_name("qqqqzzzz")
    with pytest.raises(ValueError, match=r"^--model resnet18\.bogus: timm has no pretrained tag 'bogus' for resnet18; "
                                         r"its tags: .*a1_in1k"):
        check_model_name("resnet18.bogus")
    for known in ("resnet18", "resnet18.a1_in1k", "resnet18_lap", "hf-hub:timm/resnet18.a1_in1k"):
        check_model_name(known)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Hugging Face hub offline, an empty weights cache (passed as ``cache_dir``) and no proxy: no network use."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the hub reads the variable when imported
    for var in build.PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    return {"cache_dir": str(tmp_path / "hf-cache")}


def _assert_clear_pretrained_error(msg: str, flag: str = "--model") -> None:
    cfg = timm.models.get_pretrained_cfg("resnet10t")
    assert msg.startswith(f"{flag} resnet10t: cannot load the pretrained weights from Hugging Face hub "
                          f"{cfg.hf_hub_id} (pretrained tag {cfg.tag}): ")
    assert "\n" not in msg and "--initial-checkpoint /path/to/weights.pth" in msg and "HF_HUB_OFFLINE=1" in msg


@pytest.mark.parametrize("how", ["argument", "model_kwargs"])  # model_kwargs: how train.py passed it so far
def test_pretrained_weights_that_cannot_be_fetched_are_one_clear_line(offline, how):
    start = time.monotonic()
    kwargs = {"pretrained": True} if how == "argument" else {}
    model_kwargs = {**offline, **({"pretrained": True} if how == "model_kwargs" else {})}
    with pytest.raises(ValueError) as info:
        build_model("resnet10t", 1, 10, model_kwargs=model_kwargs, **kwargs)
    _assert_clear_pretrained_error(str(info.value))
    assert isinstance(info.value.__cause__, OSError)  # the hub's own error stays chained for --verbose tracebacks
    assert time.monotonic() - start < 5


def test_a_failing_weights_loader_is_reported_the_same_way(offline, monkeypatch):
    import timm.models._builder as timm_builder

    def no_network(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", no_network)
    with pytest.raises(ValueError, match="OSError: \\[Errno -2\\] Name or service not known; to use a local") as info:
        build_model("resnet10t", 3, 10, pretrained=True, model_flag="--arch", model_kwargs=offline)
    _assert_clear_pretrained_error(str(info.value), "--arch")


def test_an_unreachable_weights_host_fails_at_once_without_retries(offline, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(address, timeout):
        assert address[0] == "huggingface.co" and timeout <= build.PROBE_TIMEOUT_S
        raise OSError("Name or service not known")

    def refuse(*args, **kwargs):
        raise AssertionError("create_model must not be called: its downloads would be retried for a minute")

    monkeypatch.setattr(build.socket, "create_connection", unreachable)
    monkeypatch.setattr(build, "create_model", refuse)
    with pytest.raises(ValueError, match="huggingface.co cannot be reached") as info:
        build_model("resnet10t", 1, 10, pretrained=True, model_kwargs=offline)
    _assert_clear_pretrained_error(str(info.value))


def test_a_local_pretrained_file_is_adapted_to_the_model(tmp_path, offline):
    source = timm.create_model("resnet10t")  # 3 input channels, 1000 classes: an ImageNet-shaped file
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet10t", 1, 10, pretrained_file=str(path))
    assert model.conv1[0].in_channels == 1 and model.fc.out_features == 10
    torch.testing.assert_close(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    with pytest.raises(ValueError, match=f"^--model resnet10t: cannot load the pretrained weights from file "
                                         f"{re.escape(str(tmp_path / 'none.pth'))}: no such file$"):
        build_model("resnet10t", 1, 10, pretrained_file=str(tmp_path / "none.pth"))


def test_a_model_without_pretrained_weights_says_so():
    with pytest.raises(ValueError, match="^--model preact_flat9: timm has no pretrained weights for this model; "
                                         "drop --pretrained$"):
        build_model("preact_flat9", 1, 10, pretrained=True, model_kwargs={"width": 4, "depth": 2})
