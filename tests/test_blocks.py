"""Block discovery: every supported family's energies equal a hand-written reference."""
import pytest
import timm
import torch
import torch.nn as nn
from conftest import ResidualMLP
from timm.models import byobnet, convnext, regnet, resnet, resnetv2

import timm_lap
from timm_lap.blocks import find_blocks, select_blocks

# name -> (timm.create_model kwargs, input shape)
FAMILIES = {
    "resnet18": (dict(model_name="resnet18"), (2, 3, 32, 32)),
    "resnet26": (dict(model_name="resnet26"), (2, 3, 32, 32)),
    "seresnext26d_32x4d": (dict(model_name="seresnext26d_32x4d"), (2, 3, 32, 32)),
    "resnetv2_18": (dict(model_name="resnetv2_18"), (2, 3, 32, 32)),
    "resnetv2_50": (dict(model_name="resnetv2_50"), (2, 3, 32, 32)),
    "convnext_atto": (dict(model_name="convnext_atto"), (2, 3, 32, 32)),
    "vit": (dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3), (2, 3, 32, 32)),
    "swin": (
        dict(model_name="swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=24,
             depths=(2, 2), num_heads=(2, 2)),
        (2, 3, 32, 32),
    ),
    "efficientnet_b0": (dict(model_name="efficientnet_b0"), (2, 3, 32, 32)),
    "mobilenetv3_small_050": (dict(model_name="mobilenetv3_small_050"), (2, 3, 32, 32)),
    "regnetx_002": (dict(model_name="regnetx_002"), (2, 3, 32, 32)),
    "regnety_002": (dict(model_name="regnety_002"), (2, 3, 32, 32)),
    "regnetz_005": (dict(model_name="regnetz_005"), (2, 3, 32, 32)),
}


def reference_shortcut(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hand-written: where each family's forward takes its shortcut from."""
    if isinstance(block, (resnet.BasicBlock, resnet.Bottleneck, resnetv2.Bottleneck)):
        return x if block.downsample is None else block.downsample(x)
    if isinstance(block, (resnetv2.PreActBasic, resnetv2.PreActBottleneck)):
        return x if block.downsample is None else block.downsample(block.norm1(x))
    if isinstance(block, regnet.PreBottleneck):
        return block.downsample(block.norm1(x))
    if isinstance(block, regnet.Bottleneck):
        return block.downsample(x)
    if isinstance(block, (byobnet.BasicBlock, byobnet.BottleneckBlock, byobnet.EdgeBlock, byobnet.DarkBlock)):
        return block.shortcut(x)
    if isinstance(block, convnext.ConvNeXtBlock):
        return block.shortcut(x)
    return x  # ViT, Swin, EfficientNet/MobileNet skip blocks: identity


def _perturb(model: nn.Module) -> None:
    # Zero-init-last would make many displacements exactly 0: give every block a real residual.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.rand_like(p) * 0.5 + 0.1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_energies_equal_hand_written_reference(family):
    kwargs, shape = FAMILIES[family]
    model = timm.create_model(num_classes=5, **kwargs)
    _perturb(model)
    model.eval()
    tracker = timm_lap.track(model, track_eval=True)
    assert tracker.blocks, family
    io = {}
    handles = [
        dict(model.named_modules())[name].register_forward_hook(
            lambda m, a, o, name=name: io.__setitem__(name, (m, a[0].clone(), o.clone()))
        )
        for name in tracker.blocks
    ]
    x = torch.randn(shape)
    with torch.no_grad():
        model(x)
        got = tracker.per_block()
        for h in handles:
            h.remove()
        for name in tracker.blocks:
            block, inp, out = io[name]
            ref = (out.float() - reference_shortcut(block, inp).float()).pow(2).mean()
            torch.testing.assert_close(got[name], ref, rtol=1e-6, atol=1e-6,
                                       msg=lambda m, name=name: f"{family}:{name}: {m}")
    assert set(got) == set(tracker.blocks)
    assert any(v > 0 for v in got.values())


def test_efficientnet_blocks_without_skip_are_listed_with_reason():
    model = timm.create_model("efficientnet_b0", num_classes=3)
    _, skipped = find_blocks(model)
    assert skipped and all("has_skip=False" in r for r in skipped.values())


def test_regnetz_blocks_without_shortcut_are_skipped():
    model = timm.create_model("regnetz_005", num_classes=3)
    blocks, skipped = find_blocks(model)
    assert any("no residual" in r for r in skipped.values())
    assert not set(skipped) & {b.name for b in blocks}


def test_downsample_blocks_hook_their_projection():
    blocks, _ = find_blocks(timm.create_model("resnet18"))
    by_name = {b.name: b for b in blocks}
    assert by_name["layer2.0"].shortcut is by_name["layer2.0"].module.downsample
    assert by_name["layer1.0"].shortcut is None


def test_user_written_residual_blocks_are_found():
    model = ResidualMLP(depth=3)
    blocks, _ = find_blocks(model)
    assert [b.name for b in blocks] == ["blocks.0", "blocks.1", "blocks.2"]


def test_non_residual_model_raises_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match=r"found no residual block in Sequential .*blocks="):
        timm_lap.track(model)
    with pytest.raises(ValueError, match="found no residual block in VGG"):
        timm_lap.track(timm.create_model("vgg11", num_classes=3))


def test_block_named_like_a_block_without_addition_is_not_residual():
    class ConvBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    model = nn.Sequential(ConvBlock(), ConvBlock())
    with pytest.raises(ValueError, match="adds nothing"):
        timm_lap.track(model)


def test_blocks_argument_accepts_names_globs_and_modules():
    model = timm.create_model("resnet18")
    assert [s.name for s in select_blocks(model, "layer1.*")] == ["layer1.0", "layer1.1"]
    assert [s.name for s in select_blocks(model, ["layer4.1", "layer2.0"])] == ["layer2.0", "layer4.1"]
    spec = select_blocks(model, [model.layer3[0]])[0]
    assert spec.name == "layer3.0" and spec.shortcut is model.layer3[0].downsample
    tracker = timm_lap.track(model, blocks=["layer1.*", model.layer4[1]])
    assert tracker.blocks == ["layer1.0", "layer1.1", "layer4.1"]


def test_blocks_argument_errors_name_the_problem():
    model = timm.create_model("resnet18")
    with pytest.raises(ValueError, match=r"'nope\.\*' matches no module of ResNet.*layer1"):
        select_blocks(model, "nope.*")
    with pytest.raises(ValueError, match="not a submodule of ResNet"):
        select_blocks(model, nn.Linear(2, 2))
    with pytest.raises(TypeError, match="module names, name globs or modules"):
        select_blocks(model, [3])


def test_explicit_block_with_shape_change_is_dropped_with_warning():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3)
    tracker = timm_lap.track(model, blocks=["patch_embed", "blocks.*"])
    model.train()
    with pytest.warns(UserWarning, match="not tracking block 'patch_embed'"):
        model(torch.randn(2, 3, 32, 32))
    assert tracker.blocks == ["blocks.0", "blocks.1"]
    assert "differs from its shortcut shape" in tracker.skipped["patch_embed"]


# ---------------------------------------------------------------------------- projections named proj (issue 10)
def test_torchvision_regnet_proj_blocks_are_tracked_with_their_projection():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.regnet_y_400mf().train()
    tracker = timm_lap.track(model)
    model(torch.randn(2, 3, 64, 64))
    assert tracker.skipped == {} and len(tracker.per_block()) == len(tracker.blocks) == 16
    block = model.trunk_output.block1[0]  # the first block of a stage projects its input
    assert block.proj is not None
    seen = {}
    handle = block.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    model(torch.randn(2, 3, 64, 64))
    handle.remove()
    with torch.no_grad():
        want = (seen["out"] - block.proj(seen["x"])).square().mean()
    torch.testing.assert_close(tracker.per_block()["trunk_output.block1.block1-0"], want)


class _WeirdBlock(nn.Module):
    """A residual block whose projection has a name no rule knows."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.widen = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.widen(x) + self.body(x)


class _WeirdNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = _WeirdBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@pytest.mark.parametrize("blocks", [
    lambda m: [("layer", "widen")],  # relative name
    lambda m: [("layer", "layer.widen")],  # full name
    lambda m: [(m.layer, m.layer.widen)],  # modules
    lambda m: {"layer": "widen"},  # a mapping
])
def test_blocks_can_name_a_projection(blocks):
    model = _WeirdNet().train()
    tracker = timm_lap.track(model, blocks=blocks(model))
    x = torch.randn(3, 4)
    model(x)
    with torch.no_grad():
        want = model.layer.body(x).square().mean()
    torch.testing.assert_close(tracker.transport_cost().detach(), want)


def test_bad_projection_selectors_are_clear_errors():
    model = _WeirdNet()
    with pytest.raises(ValueError, match="no module 'nope'"):
        timm_lap.track(model, blocks=[("layer", "nope")])
    with pytest.raises(TypeError, match=r"a pair is \(block, projection\)"):
        timm_lap.track(model, blocks=[("layer", "widen", "x")])
    with pytest.raises(ValueError, match="is not a submodule"):
        timm_lap.track(model, blocks=[("layer", nn.Linear(1, 1))])
