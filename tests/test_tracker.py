import copy
import gc
import weakref

import pytest
import timm
import torch
import torch.nn as nn
from conftest import ResidualMLP
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.utils import ModelEmaV3

import timm_lap
from timm_lap.ops.grouped_energy import grouping
from timm_lap.tracker import get_tracker


def reference_transport(model: ResidualMLP, x: torch.Tensor, p: float) -> torch.Tensor:
    """Hand-written: run the blocks one by one and sum mean(|x_{k+1} - x_k|^p)."""
    h = model.stem(x)
    wide = torch.promote_types(h.dtype, torch.float32)
    total = torch.zeros((), dtype=wide)
    for block in model.blocks:
        nxt = block(h)
        total = total + (nxt.to(wide) - h.to(wide)).abs().pow(p).mean()
        h = nxt
    return total


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(1, 12),
    depth=st.integers(1, 5),
    batch=st.integers(1, 6),
    p=st.sampled_from([2.0, 1.0, 1.5, 3.0]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    zero=st.booleans(),
)
def test_random_residual_stacks(width, depth, batch, p, dtype, zero):
    model = ResidualMLP(width=width, depth=depth, zero=zero).to(dtype)
    x = torch.randn(batch, 4, dtype=dtype)
    with timm_lap.track(model, p=p) as tracker:
        model(x)
        cost = tracker.transport_cost()
        assert cost.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert cost.item() >= 0
        if zero:
            assert cost.item() == 0.0
        with torch.no_grad():
            ref = reference_transport(model, x, p)
        torch.testing.assert_close(cost.detach(), ref, rtol=1e-5, atol=1e-7)
        assert list(tracker.per_block()) == [f"blocks.{i}" for i in range(depth)]


def test_gradient_equals_reference_gradient():
    model = ResidualMLP(width=6, depth=4)
    x = torch.randn(5, 4)
    tracker = timm_lap.track(model)
    model(x)
    tracker.transport_cost().backward()
    params = [p for p in model.parameters() if p.grad is not None]
    assert len(params) == len(list(model.stem.parameters())) + len(list(model.blocks.parameters()))
    got = [p.grad.clone() for p in params]
    model.zero_grad()
    reference_transport(model, x, 2.0).backward()
    for g, p in zip(got, params):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


def _resnet(**kw):
    model = timm.create_model("resnet18", num_classes=4, **kw)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3)
    return model


def test_each_forward_starts_a_fresh_account():
    model = ResidualMLP()
    tracker = timm_lap.track(model)
    x = torch.randn(4, 4)
    model(x)
    first = tracker.transport_cost().item()
    model(x)
    assert tracker.transport_cost().item() == pytest.approx(first, rel=1e-6)  # not 2 * first
    model(x * 5)
    with torch.no_grad():
        expected = reference_transport(model, x * 5, 2.0).item()
    assert tracker.transport_cost().item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(first, rel=1e-2)


def test_records_only_in_training_with_autograd_unless_track_eval():
    model = _resnet()
    tracker = timm_lap.track(model)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    model(x)
    assert tracker.per_block() == {} and tracker.transport_cost().item() == 0.0
    model.train()
    with torch.no_grad():
        model(x)
    assert tracker.per_block() == {}
    tracker.remove()
    tracker = timm_lap.track(model, track_eval=True)
    model.eval()
    with torch.no_grad():
        model(x)
    assert len(tracker.per_block()) == 8 and not tracker.transport_cost().requires_grad


def _checkpointing_results(model, tracker, x):
    results = []
    for ckpt in (False, True):
        model.set_grad_checkpointing(ckpt)
        model.zero_grad()
        out = model(x)
        cost = tracker.transport_cost()
        (cost + out.sum()).backward()
        results.append((cost.item(), [p.grad.clone() for p in model.parameters()]))
    return results


def test_gradient_checkpointing_gives_same_transport_and_gradients():
    """One node per block (grouping off): checkpointing changes nothing, to float32 rounding of one order."""
    model = _resnet()
    tracker = timm_lap.track(model)
    with grouping(0):
        results = _checkpointing_results(model, tracker, torch.randn(2, 3, 32, 32))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_with_grouping_gives_same_transport_and_gradients():
    """Checkpointed blocks get their own nodes, the others are grouped: equal up to float32 reassociation.

    (This batch-2 resnet18 is ill-conditioned: its float32 and float64 gradients differ by about 4 %.)
    """
    model = _resnet()
    tracker = timm_lap.track(model)
    results = _checkpointing_results(model, tracker, torch.randn(2, 3, 32, 32))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_bf16_autocast_gives_float32_energies():
    model = _resnet()
    tracker = timm_lap.track(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 32, 32))
        cost = tracker.transport_cost()
    assert cost.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in tracker.per_block().values())
    cost.backward()


@pytest.mark.parametrize("make_copy", ["deepcopy", "ema"])
def test_copies_never_write_into_the_original(make_copy):
    model = _resnet()
    tracker = timm_lap.track(model)
    x = torch.randn(2, 3, 32, 32)
    model(x)
    before = tracker.per_block()
    copy_model = copy.deepcopy(model) if make_copy == "deepcopy" else ModelEmaV3(model, decay=0.5).module
    copy_tracker = get_tracker(copy_model)
    assert copy_tracker is not None and copy_tracker is not tracker
    copy_model.train()
    copy_model(x * 3)
    after = tracker.per_block()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert copy_tracker.transport_cost().item() != pytest.approx(tracker.transport_cost().item())
    copy_tracker.remove()
    model(x)
    assert len(tracker.per_block()) == 8  # the original's hooks are still in place


def test_remove_restores_bit_identical_outputs_and_frees_the_model():
    model = _resnet()
    plain = copy.deepcopy(model)
    tracker = timm_lap.track(model)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    plain.train()
    model(x)
    plain(x)
    tracker.remove()
    assert get_tracker(model) is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    model.eval()
    plain.eval()
    assert torch.equal(model(x), plain(x))
    ref = weakref.ref(model)
    del model
    assert ref() is None  # no reference cycle: freed without the garbage collector
    gc.collect()


def test_context_manager_removes_hooks():
    model = ResidualMLP()
    with timm_lap.track(model) as tracker:
        assert get_tracker(model) is tracker
    assert tracker.removed and get_tracker(model) is None


def test_tracking_is_idempotent_and_refuses_conflicting_settings():
    model = ResidualMLP()
    tracker = timm_lap.track(model)
    assert timm_lap.track(model) is tracker
    assert timm_lap.get_tracker(model) is tracker
    with pytest.raises(ValueError, match=r"already tracked .*remove\(\)"):
        timm_lap.track(model, p=1.0)


def test_wrappers_are_unwrapped():
    model = ResidualMLP()
    tracker = timm_lap.track(model)
    assert get_tracker(nn.DataParallel(model)) is tracker


@pytest.mark.parametrize("p", [0, -1.0, float("nan"), float("inf"), "2"])
def test_bad_p_is_rejected(p):
    with pytest.raises(ValueError, match="p must be a finite number > 0"):
        timm_lap.track(ResidualMLP(), p=p)


def test_tracker_used_after_remove_raises():
    model = ResidualMLP()
    tracker = timm_lap.track(model)
    tracker.remove()
    with pytest.raises(RuntimeError, match=r"was removed .*track\(model\)"):
        tracker.transport_cost()
    with pytest.raises(RuntimeError, match="was removed"):
        tracker.per_block()


def test_reentrant_checkpointing_is_reported():
    from torch.utils.checkpoint import checkpoint

    class Net(ResidualMLP):
        def forward(self, x):
            h = self.stem(x)
            h = checkpoint(self.blocks, h, use_reentrant=True)
            return self.head(h)

    model = Net()
    timm_lap.track(model)
    with pytest.warns(UserWarning, match="reentrant"):
        model(torch.randn(3, 4, requires_grad=True))


def test_torch_compile_records_the_same_transport():
    model = ResidualMLP(width=8, depth=3)
    tracker = timm_lap.track(model)
    x = torch.randn(4, 4)
    model(x)
    eager = tracker.transport_cost().detach().clone()
    compiled = torch.compile(model, backend="eager")
    compiled(x)
    assert get_tracker(compiled) is tracker
    torch.testing.assert_close(tracker.transport_cost().detach(), eager)


class _TinyStepBlock(nn.Module):
    """A residual block whose displacement is 1e-9 of its input: float32 rounding of the input would swamp it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1e-9 * self.fc(x)


class _TinyStepBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_TinyStepBlock(6) for _ in range(4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


@pytest.mark.parametrize("p,budget", [(2.0, 2**30), (2.0, 0), (1.5, 2**30)])
def test_float64_models_keep_float64_precision(p, budget):
    from timm_lap.ops.grouped_energy import grouping

    model = _TinyStepBlocks().double().train()
    x = 1e3 * torch.randn(5, 6, dtype=torch.float64)
    tracker = timm_lap.track(model, p=p)
    with grouping(budget):
        model(x)
        cost = tracker.transport_cost()
        cost.backward()
    grads = [q.grad.clone() for q in model.parameters()]
    model.zero_grad()
    h, want = x, torch.zeros((), dtype=torch.float64)
    for block in model.blocks:
        nxt = block(h)
        want = want + (nxt - h).abs().pow(p).mean()
        h = nxt
    want.backward()
    assert cost.dtype == torch.float64
    torch.testing.assert_close(cost.detach(), want.detach(), rtol=1e-9, atol=0)
    for got, ref in zip(grads, (q.grad for q in model.parameters())):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-30)


def test_float64_convnext_energies_match_a_float64_reference():
    """timm ConvNeXt's layer scale starts at 1e-6: its displacements are tiny against the activations."""
    model = timm.create_model("convnext_atto", num_classes=3).double().train()
    tracker = timm_lap.track(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model(x)
    got = tracker.per_block()
    stage = model.stages[0]
    h = model.stem(x)
    with torch.no_grad():
        h = stage.downsample(h)
        block = stage.blocks[0]
        want = (block(h) - h).square().mean()
    name = next(n for n in got if n.endswith("stages.0.blocks.0"))
    torch.testing.assert_close(got[name], want, rtol=1e-9, atol=0)


# ---------------------------------------------------------------------------- in-place changes after a block
class _ReluAfterBlocks(nn.Module):
    """A model that changes its last block's output in place (as F.relu(..., inplace=True) models do)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ResidualMLP(width=6, depth=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner.blocks(self.inner.stem(x))
        return self.inner.head(torch.nn.functional.relu(h, inplace=True))


def _reference_block_energies(model: _ReluAfterBlocks, x: torch.Tensor) -> torch.Tensor:
    h = model.inner.stem(x)
    total = torch.zeros(())
    for block in model.inner.blocks:
        nxt = block(h)
        total = total + (nxt - h).square().mean()
        h = nxt
    return total


@pytest.mark.parametrize("budget", [2**30, 0])
def test_in_place_change_after_a_block_trains_and_is_measured_from_a_copy(budget):
    from timm_lap.ops.grouped_energy import grouping

    torch.manual_seed(0)
    model = _ReluAfterBlocks().train()
    loss_fn = timm_lap.LeastActionLoss(torch.nn.CrossEntropyLoss(), model, weight=1.0)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    with grouping(budget):
        with pytest.warns(UserWarning, match=r"'inner\.blocks\.2' \(output\) in place .*measures a copy"):
            loss_fn(model(x), y).backward()  # untracked, this model trains: tracked, it must too
        first = loss_fn.transport.clone()
        model.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        want = _reference_block_energies(model, x)
    torch.testing.assert_close(loss_fn.transport, want)  # exact from the second forward on
    assert first < want  # the first forward left the changed block out, as the warning says
    model.zero_grad()
    (torch.nn.CrossEntropyLoss()(model(x), y) + _reference_block_energies(model, x)).backward()
    for g, ref in zip(got, (p.grad for p in model.parameters())):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)


def test_in_place_change_after_the_forward_says_what_to_change():
    model = ResidualMLP(width=3, depth=2)
    model.head = torch.nn.Identity()  # the model output is the last block's output
    tracker = timm_lap.track(model)
    out = model(torch.randn(4, 4))
    loss = tracker.transport_cost() + out.relu_().sum()
    with pytest.raises(RuntimeError, match=r"timm_lap: a tracked block's output .*out-of-place"):
        loss.backward()
