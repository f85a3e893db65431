"""Gradient taps: same gradients as the plain energy node, one hook per tensor, nothing kept after backward."""
import copy

import pytest
import timm
import torch
import torch.nn as nn

from timm_lap import LeastActionLoss, track
from timm_lap.ops import energy
from timm_lap.ops import switches as config
from timm_lap.ops.grad_taps import TapRegistry


@pytest.fixture
def taps_on():
    with config.grad_taps(True):
        yield


def assert_same_grads(actual: dict, expected: dict) -> None:
    """Equal up to float32 rounding (the taps add the energy term before rounding, autograd after)."""
    assert actual.keys() == expected.keys()
    for name in expected:
        scale = expected[name].abs().max().item()
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6 * scale, msg=name)


def _grads(model_name: str, taps: bool, checkpointing: bool = False, weight: float = 0.5,
           forwards: int = 1):
    with config.grad_taps(taps):
        return _grads_with_current_taps(model_name, checkpointing, weight, forwards)


def _grads_with_current_taps(model_name: str, checkpointing: bool, weight: float, forwards: int):
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=5).train()
    if checkpointing:
        model.set_grad_checkpointing(True)
    loss_fn = LeastActionLoss(nn.CrossEntropyLoss(), model, weight=weight)
    total = 0
    for i in range(forwards):
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i))
        total = total + loss_fn(model(x), torch.tensor([0, 1, 2, 3]))
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_name", ["resnet18", "resnet26d", "convnext_atto"])
def test_taps_give_the_same_gradients(model_name):
    assert_same_grads(_grads(model_name, True), _grads(model_name, False))


def test_taps_with_gradient_checkpointing_and_two_forwards():
    assert_same_grads(_grads("resnet18", True, checkpointing=True, forwards=2),
                      _grads("resnet18", False, checkpointing=True, forwards=2))


def test_taps_change_gradients_only_through_the_energy():
    """Weight 0 (the energy is in the graph with a zero factor) equals no regulariser at all."""
    zero = _grads("resnet18", True, weight=0.0)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=5).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    nn.CrossEntropyLoss()(model(x), torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(zero[name], p.grad, rtol=1e-6, atol=1e-8, msg=name)


def test_energy_outside_the_loss_leaves_gradients_alone(taps_on):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=5).train()
    reference = copy.deepcopy(model)
    tracker = track(model)
    x = torch.randn(4, 3, 32, 32)
    model(x).sum().backward()  # the energies were recorded, but the loss does not use them
    assert tracker.transport_cost().item() > 0
    reference(x).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-8, msg=name)


def test_one_hook_per_tensor_and_nothing_kept_after_backward(taps_on):
    registry = TapRegistry()
    x = torch.randn(3, 4, requires_grad=True)
    h1 = x * 2          # block 1: x -> h1
    h2 = h1 + 1         # block 2: h1 -> h2 (h1 is out of block 1 and shortcut of block 2)
    t1 = registry.attach(h1, x)
    t2 = registry.attach(h2, h1)
    assert len(registry._taps) == 3 and t1.users == 2 and t2.users == 2
    e = energy._TappedSquaredDisplacementMean.apply(h1, x, t1) + energy._TappedSquaredDisplacementMean.apply(h2, h1, t2)
    (e + h2.sum()).backward()
    assert t1.out is None and t2.out is None and t1.grad is None  # references dropped
    xr = x.detach().clone().requires_grad_()
    h1r = xr * 2
    h2r = h1r + 1
    (energy.reference_energy(h1r, xr) + energy.reference_energy(h2r, h1r) + h2r.sum()).backward()
    torch.testing.assert_close(x.grad, xr.grad)


def test_in_place_change_after_the_forward_is_an_error(taps_on):
    model = nn.Sequential(nn.Linear(4, 4))
    registry = TapRegistry()
    x = torch.randn(2, 4, requires_grad=True)
    out = model(x)
    e = energy._TappedSquaredDisplacementMean.apply(out, x, registry.attach(out, x))
    with torch.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="changed in place after the model.s forward"):
        e.backward()


def test_tracker_copies_get_their_own_registry(taps_on):
    model = timm.create_model("resnet18", num_classes=5).train()
    tracker = track(model)
    model(torch.randn(2, 3, 32, 32))
    clone = copy.deepcopy(model)
    assert clone._timm_lap_tracker._taps is not tracker._taps


def test_tracker_routes_training_energies_through_taps(taps_on):
    model = timm.create_model("resnet18", num_classes=5).train()
    tracker = track(model)
    model(torch.randn(2, 3, 32, 32))
    assert all("Tapped" in _node_names(e) for _, e in tracker._energies)
    config.set_grad_taps(False)
    model(torch.randn(2, 3, 32, 32))
    assert not any("Tapped" in _node_names(e) for _, e in tracker._energies)


def _node_names(energies: torch.Tensor) -> str:
    """The autograd node behind a recorded energy (a per-block energy sits under a reshape)."""
    node = energies.grad_fn
    names = [node.name()]
    while node.next_functions and "View" in node.name():
        node = node.next_functions[0][0]
        names.append(node.name())
    return " ".join(names)
