import pytest
import torch
import torch.nn as nn
from conftest import ResidualMLP
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

import timm_lap


def _setup(**kw):
    model = ResidualMLP()
    return model, torch.randn(6, 4), torch.randint(0, 3, (6,))


@pytest.mark.parametrize(
    "criterion",
    [nn.CrossEntropyLoss(), LabelSmoothingCrossEntropy(0.1), lambda out, y: (out.logsumexp(1) - out[:, 0]).mean()],
    ids=["ce", "label_smoothing", "callable"],
)
def test_loss_is_task_plus_transport_over_lam(criterion):
    model, x, y = _setup()
    loss_fn = timm_lap.LeastActionLoss(criterion, model)
    out = model(x)
    loss = loss_fn(out, y)
    tracker = timm_lap.get_tracker(model)
    expected = criterion(out, y) + tracker.transport_cost() / 1.0
    torch.testing.assert_close(loss, expected)
    assert loss_fn.lam.item() == 1.0
    assert not loss_fn.task_loss.requires_grad and not loss_fn.transport.requires_grad
    torch.testing.assert_close(loss_fn.transport, tracker.transport_cost().detach())
    loss.backward()
    assert model.blocks[0].fc1.weight.grad is not None


def test_soft_target_mixup_targets():
    model, x, _ = _setup()
    soft = torch.softmax(torch.randn(6, 3), dim=1)
    loss_fn = timm_lap.LeastActionLoss(SoftTargetCrossEntropy(), model)
    out = model(x)
    torch.testing.assert_close(loss_fn(out, soft), SoftTargetCrossEntropy()(out, soft) + loss_fn.transport)


def test_fixed_weight_mode():
    model, x, y = _setup()
    loss_fn = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model, weight=0.25)
    out = model(x)
    loss = loss_fn(out, y)
    torch.testing.assert_close(loss, loss_fn.task_loss + 0.25 * loss_fn.transport)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="fixed weight"):
        timm_lap.MultiplierScheduler(opt, loss_fn)


def test_accepts_a_tracker():
    model, x, y = _setup()
    tracker = timm_lap.track(model, p=1.0)
    loss_fn = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), tracker)
    assert loss_fn.tracker is tracker
    loss_fn(model(x), y)


def test_non_scalar_loss_is_rejected():
    model, x, y = _setup()
    loss_fn = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(reduction="none"), model)
    with pytest.raises(ValueError, match=r"must return a scalar tensor; got \(6,\).*reduction='mean'"):
        loss_fn(model(x), y)


def test_bad_arguments():
    model = ResidualMLP()
    with pytest.raises(TypeError, match="criterion must be callable"):
        timm_lap.LeastActionLoss(3, model)
    with pytest.raises(TypeError, match="needs the model"):
        timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), "model")
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model, weight=-1)


def test_eval_forward_has_no_transport_and_does_not_feed_the_multiplier():
    model, x, y = _setup()
    loss_fn = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = timm_lap.MultiplierScheduler(opt, loss_fn)
    model.eval()
    with torch.no_grad():
        loss = loss_fn(model(x), y)
    assert loss_fn.transport.item() == 0.0
    torch.testing.assert_close(loss, loss_fn.task_loss)
    opt.step()
    assert sched.lam.item() == 1.0  # nothing observed: no update


# ---------------------------------------------------------------------------- reliability (issue 10)
def test_wrapping_a_tracked_model_uses_its_tracker():
    import timm

    model = timm.create_model("resnet10t_lap", num_classes=3, lap_p=1.0)
    loss_fn = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    assert loss_fn.tracker is timm_lap.get_tracker(model) and loss_fn.tracker.p == 1.0
    other = ResidualMLP()
    tracker = timm_lap.track(other, track_eval=True)
    assert timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), other).tracker is tracker
    with pytest.raises(ValueError, match="already tracked"):
        timm_lap.track(model, p=2.0)  # an explicit, conflicting track() call is still an error
    with pytest.raises(ValueError, match="differs from the model's tracker"):
        timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model, sample=0.5)


def _lam_after_one_step(validate: bool) -> float:
    torch.manual_seed(0)
    model, x, y = _setup()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    multiplier = timm_lap.MultiplierScheduler(optimizer, loss_fn)
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    if validate:  # a validation pass in eval mode, without torch.no_grad(), as user loops often do
        model.eval()
        loss_fn(model(torch.randn(6, 4)), y)
        model.train()
    optimizer.step()
    return multiplier.lam.item()


def test_eval_mode_losses_do_not_reach_the_multiplier():
    assert _lam_after_one_step(validate=True) == _lam_after_one_step(validate=False) > 1.0


def test_two_forwards_then_their_losses_each_get_their_own_transport():
    model, x1, y = _setup()
    x2 = torch.randn(6, 4)
    tracker = timm_lap.track(model)
    model(x1)
    e1 = tracker.transport_cost().detach()
    model(x2)
    e2 = tracker.transport_cost().detach()
    assert not torch.allclose(e1, e2)
    loss_fn = timm_lap.LeastActionLoss(lambda out, target: out.sum() * 0, model, weight=1.0)
    o1, o2 = model(x1), model(x2)  # two views, then the losses
    torch.testing.assert_close(loss_fn(o1, y).detach(), e1)
    torch.testing.assert_close(loss_fn(o2, y).detach(), e2)
    torch.testing.assert_close(sum(tracker.per_block(o1).values()), e1)
    assert tracker.transport_cost(torch.zeros(1)).detach() == e2  # an unknown output: the latest forward
