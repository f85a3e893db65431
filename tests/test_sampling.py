"""sample=: an unbiased, seeded estimate of the transport from a part of each batch."""
import math

import pytest
import timm
import torch
import torch.nn as nn
from conftest import ResidualMLP

import timm_lap
from timm_lap.ops.grouped_energy import grouping
from timm_lap.sampling import RowSample, validate_sample


def _exact(model, x, p=2.0):
    tracker = timm_lap.get_tracker(model)
    tracker.remove()
    with timm_lap.track(model, p=p) as exact:
        model.zero_grad()
        model(x)
        cost = exact.transport_cost()
        cost.backward()
        result = cost.detach(), [q.grad.clone() for q in model.parameters() if q.grad is not None]
    timm_lap.track(model, p=p, sample=tracker.sample)
    return result


def _sampled_at(model, x, draw):
    tracker = timm_lap.get_tracker(model)
    tracker._sampler._rng.random = lambda: draw
    model.zero_grad()
    model(x)
    cost = tracker.transport_cost()
    cost.backward()
    return cost.detach(), [q.grad.clone() for q in model.parameters() if q.grad is not None]


@pytest.mark.parametrize("batch,fraction", [(10, 0.25), (8, 0.5), (7, 0.3)])
@pytest.mark.parametrize("p,budget", [(2.0, 2**30), (2.0, 0), (1.5, 2**30)])
def test_average_over_every_chunk_is_the_exact_transport_and_gradient(batch, fraction, p, budget):
    """Each row lies in one chunk, drawn with probability 1/J: the mean over the J draws is exact."""
    model = ResidualMLP(width=5, depth=4).train()
    x = torch.randn(batch, 4)
    timm_lap.track(model, p=p, sample=fraction)
    with grouping(budget):
        want_cost, want_grads = _exact(model, x, p)
        chunks = -(-batch // max(1, math.ceil(fraction * batch)))
        draws = [_sampled_at(model, x, (j + 0.5) / chunks) for j in range(chunks)]
    assert chunks > 1
    costs = torch.stack([c for c, _ in draws])
    assert not torch.allclose(costs, costs[0].expand_as(costs))  # the chunks really differ
    torch.testing.assert_close(costs.mean(), want_cost, rtol=1e-5, atol=1e-7)
    for i, want in enumerate(want_grads):
        mean_grad = torch.stack([g[i] for _, g in draws]).mean(0)
        torch.testing.assert_close(mean_grad, want, rtol=1e-4, atol=1e-6)


def test_many_seeded_draws_average_to_the_exact_transport():
    model = ResidualMLP(width=6, depth=3).train()
    x = torch.randn(16, 4)
    tracker = timm_lap.track(model, sample=0.25, sample_seed=3)
    with torch.no_grad():
        exact = sum(timm_lap.reference_energy(b(h), h) for h, b in _block_inputs(model, x))
    values = []
    for _ in range(400):
        model(x)
        values.append(tracker.transport_cost().detach())
    values = torch.stack(values)
    assert values.std() > 0
    assert abs(values.mean() - exact) < 4 * values.std() / math.sqrt(len(values))


def _block_inputs(model, x):
    h = model.stem(x)
    for block in model.blocks:
        yield h, block
        h = block(h)


def test_draws_are_seeded_and_reseed_restarts_them():
    def draws(tracker, n=5):
        out = []
        for _ in range(n):
            model(x)
            out.append(tracker.transport_cost().item())
        return out

    model = ResidualMLP(width=4, depth=3).train()
    x = torch.randn(12, 4)
    tracker = timm_lap.track(model, sample=0.25, sample_seed=7)
    first = draws(tracker)
    tracker.reseed(7)
    assert draws(tracker) == first
    tracker.reseed(8)
    assert draws(tracker) != first


def test_one_draw_per_forward_for_every_block():
    sampler = RowSample(0.5, seed=0)
    a, b = torch.arange(10.0).reshape(10, 1), torch.zeros(10, 1)
    first = sampler.apply(a, b)
    again = sampler.apply(a, b)
    assert first[0] is again[0] and first[2] == again[2] == 1.0
    other = sampler.apply(torch.arange(4.0).reshape(4, 1), torch.zeros(4, 1))  # same relative position
    assert (first[0][0].item() == 0) == (other[0][0].item() == 0)


def test_sampled_energy_saves_nothing_new():
    model = ResidualMLP(width=8, depth=4).train()
    x = torch.randn(16, 4)
    from timm_lap.cli.bench import saved_activation_bytes

    vanilla = saved_activation_bytes(lambda: model(x).sum())
    tracker = timm_lap.track(model, sample=0.25)
    sampled = saved_activation_bytes(lambda: model(x).sum() + tracker.transport_cost())
    assert sampled == vanilla


def test_blocks_under_gradient_checkpointing_are_measured_exactly():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3).train()
    model.set_grad_checkpointing(True)
    x = torch.randn(4, 3, 32, 32)
    exact = timm_lap.track(model)
    model(x)
    want = exact.transport_cost().item()
    exact.remove()
    sampled = timm_lap.track(model, sample=0.25)
    model(x)
    assert sampled.transport_cost().item() == pytest.approx(want, rel=1e-5)


def test_eval_and_exact_settings():
    assert validate_sample(None) is None and validate_sample(1) is None and validate_sample(0.5) == 0.5
    for bad in (0, -0.1, 1.5, True, "0.5", float("nan")):
        with pytest.raises(ValueError, match="sample must be a fraction of the batch"):
            validate_sample(bad)
    model = ResidualMLP().train()
    tracker = timm_lap.track(model, sample=0.25, track_eval=True)
    x = torch.randn(8, 4)
    model.eval()
    with torch.no_grad():
        model(x)
        first = tracker.transport_cost()
        model(x)
        assert tracker.transport_cost() == first  # eval energies stay exact
    assert "sample=0.25" in repr(tracker)


def test_loss_and_models_take_sample():
    model = ResidualMLP()
    loss = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model, sample=0.5)
    assert loss.tracker.sample == 0.5 and "sample=0.5" in repr(loss)
    with pytest.raises(ValueError, match="differs from the tracker's sample"):
        timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), loss.tracker, sample=0.25)
    lap_model = timm.create_model("resnet10t_lap", num_classes=3, lap_sample=0.25)
    assert timm_lap.get_tracker(lap_model).sample == 0.25


def test_under_torch_compile_blocks_are_measured_exactly_without_graph_breaks():
    import torch._dynamo as dynamo

    model = ResidualMLP(width=4, depth=3).train()
    x = torch.randn(8, 4)
    tracker = timm_lap.track(model)
    model(x)
    exact = tracker.transport_cost().detach()
    tracker.remove()
    tracker = timm_lap.track(model, sample=0.25)
    dynamo.reset()
    explained = dynamo.explain(lambda inp: (model(inp), tracker.transport_cost()))(x)
    assert explained.graph_break_count == 0
    compiled = torch.compile(model, backend="eager")
    compiled(x)
    torch.testing.assert_close(tracker.transport_cost().detach(), exact)
