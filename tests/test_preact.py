"""Paper-shaped pre-activation ResNets: registry, timm conventions, and the LAP variants' energies."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_lap
from timm_lap.preact import PREACT_ARCHS, PreActBlock, PreActResNet

EXPECTED_BLOCKS = {"preact_flat9": 9, "preact_resnet20": 9, "preact_resnet56": 27}


@pytest.mark.parametrize("arch", PREACT_ARCHS)
@pytest.mark.parametrize("in_chans,size", [(1, 28), (3, 32)])
def test_shapes_for_one_and_three_channels(arch, in_chans, size):
    model = timm.create_model(arch, in_chans=in_chans, num_classes=7)
    out = model(torch.randn(2, in_chans, size, size))
    assert out.shape == (2, 7)
    feats = model.forward_features(torch.randn(2, in_chans, size, size))
    assert feats.shape[1] == model.num_features
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


def test_registered_with_timm_and_lap_variants():
    for arch in PREACT_ARCHS:
        assert timm.is_model(arch) and timm.is_model(arch + "_lap")
        assert arch + "_lap" in timm_lap.list_lap_models()
    cfg = timm.create_model("preact_resnet20").pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["classifier"] == "head.fc"
    assert timm.create_model("preact_flat9").pretrained_cfg["input_size"][1:] == (28, 28)


def test_flat9_shape_and_width_kwargs():
    model = timm.create_model("preact_flat9")
    assert len(model.blocks) == 9 and all(b.shortcut is None for b in model.blocks)
    assert {b.conv1.out_channels for b in model.blocks} == {32}
    assert model.stem.stride == (2, 2)
    narrow = timm.create_model("preact_flat9", width=16, depth=5)
    assert len(narrow.blocks) == 5 and narrow.num_features == 16


def test_resnet56_projections_between_stages():
    model = timm.create_model("preact_resnet56")
    projected = [i for i, b in enumerate(model.blocks) if b.shortcut is not None]
    assert projected == [9, 18]
    assert [model.blocks[i].shortcut.stride for i in projected] == [(2, 2), (2, 2)]
    assert [f["num_chs"] for f in model.feature_info] == [16, 32, 64]


def test_reset_classifier_drop_path_and_grad_checkpointing():
    model = timm.create_model("preact_resnet20", drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob for b in model.blocks if not isinstance(b.drop_path, torch.nn.Identity)]
    assert rates and max(rates) == pytest.approx(0.2)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    ref = timm.create_model("preact_resnet20").eval()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = ref(x)
    ref.set_grad_checkpointing(True)
    ref.train()
    torch.testing.assert_close(ref.eval()(x), out)


def test_bad_shape_arguments_are_clear():
    with pytest.raises(ValueError, match="same length"):
        PreActResNet(depths=(3, 3), widths=(16,))
    with pytest.raises(ValueError, match=">= 1"):
        PreActResNet(depths=(0,), widths=(16,))


def _reference_energies(model: PreActResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Block by block: the displacement of a pre-activation block is its residual branch, written out here."""
    energies = []
    h = model.stem(x)
    for block in model.blocks:
        pre = F.relu(block.bn1(h))
        shortcut = h if block.shortcut is None else block.shortcut(pre)
        residual = block.conv2(F.relu(block.bn2(block.conv1(pre))))
        energies.append((residual.float() ** 2).mean())
        h = shortcut + residual
    return energies


@pytest.mark.parametrize("arch", PREACT_ARCHS)
def test_lap_variant_tracks_exactly_the_blocks_and_matches_reference(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch + "_lap", in_chans=1, num_classes=10)
    tracker = timm_lap.get_tracker(model)
    assert tracker.blocks == [f"blocks.{i}" for i in range(EXPECTED_BLOCKS[arch])]
    assert not tracker.skipped
    reference = copy.deepcopy(model)  # same weights; BN in train mode uses batch statistics in both
    x = torch.randn(4, 1, 28, 28)
    model.train()
    model(x)
    got = tracker.per_block()
    want = _reference_energies(reference.train(), x)
    assert list(got) == tracker.blocks
    torch.testing.assert_close(torch.stack(list(got.values())), torch.stack(want).detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(tracker.transport_cost().detach(), torch.stack(want).sum().detach(),
                               rtol=1e-5, atol=1e-7)


def test_block_with_projection_uses_preactivated_shortcut():
    block = PreActBlock(4, 8, stride=2)
    x = torch.randn(2, 4, 8, 8)
    pre = F.relu(block.bn1(x))
    want = block.shortcut(pre) + block.conv2(F.relu(block.bn2(block.conv1(pre))))
    torch.testing.assert_close(block(x), want)
