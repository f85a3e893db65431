"""Grouped energies: one autograd node for many blocks, equal to the per-block reference."""
import copy

import pytest
import torch
import torch.nn as nn
from conftest import ResidualMLP
from hypothesis import given, settings
from hypothesis import strategies as st

import timm_lap
from timm_lap.cli.bench import TinyResidualStack, saved_activation_bytes
from timm_lap.ops import grouped_energy
from timm_lap.ops.energy import reference_energy
from timm_lap.ops.grouped_energy import grouped_energies, grouping, grouping_budget, set_grouping_budget


@pytest.fixture(params=["stacked", "foreach", "per-tensor"], autouse=True)
def group_path(request, monkeypatch):
    """Every test runs three times: small groups stacked into one tensor, the _foreach_ path, and the
    block-by-block path of large CPU tensors."""
    if request.param != "stacked":
        monkeypatch.setattr(grouped_energy, "STACK_MAX_NUMEL", 0)
    if request.param == "per-tensor":
        monkeypatch.setattr(grouped_energy, "PER_TENSOR_MIN_NUMEL", 0)
    return request.param


def _leaves(n, shape=(3, 5), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(n)]


def _check_against_reference(pool, out_idx, sc_idx, weights):
    """Value and gradients of sum_k w_k E_k, grouped vs one reference energy per pair."""
    outs, scs = [pool[i] for i in out_idx], [pool[i] for i in sc_idx]
    got = grouped_energies(outs, scs)
    assert got.dtype == torch.float32 and got.shape == (len(outs),)
    want = torch.stack([reference_energy(o, s) for o, s in zip(outs, scs)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    grads_got = torch.autograd.grad((got * weights).sum(), pool, allow_unused=True)
    grads_want = torch.autograd.grad((want * weights).sum(), pool, allow_unused=True)
    for a, b in zip(grads_got, grads_want):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chain_of_blocks_shares_each_tensor_once():
    pool = _leaves(6)
    _check_against_reference(pool, [1, 2, 3, 4, 5], [0, 1, 2, 3, 4], torch.ones(5))


def test_independent_pairs_and_widely_shared_tensors():
    pool = _leaves(5)
    # tensor 0 is the shortcut of three blocks and the output of one; tensor 4 appears twice as an output
    _check_against_reference(pool, [1, 2, 3, 0, 4, 4], [0, 0, 0, 2, 3, 3], torch.tensor([1.0, 2, 3, 4, 5, 6]))


@settings(max_examples=30, deadline=None)
@given(
    pool_size=st.integers(2, 6),
    pairs=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_random_sharing_patterns(pool_size, pairs, seed):
    pool = _leaves(pool_size, seed=seed)
    out_idx = [a % pool_size for a, _ in pairs]
    sc_idx = [b % pool_size for _, b in pairs]
    weights = torch.rand(len(pairs), generator=torch.Generator().manual_seed(seed)) + 0.5
    _check_against_reference(pool, out_idx, sc_idx, weights)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes_reduce_in_float32_or_wider_and_return_their_dtype(dtype):
    pool = _leaves(4, dtype=dtype)
    got = grouped_energies(pool[1:], pool[:-1])
    want = torch.stack([reference_energy(o, s) for o, s in zip(pool[1:], pool[:-1])])
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got.sum(), pool)
    assert all(g.dtype == dtype for g in grads)
    # Each tensor's terms are combined in float32 and rounded once (autograd would round each term).
    wide = [p.detach().to(torch.promote_types(dtype, torch.float32)).requires_grad_() for p in pool]
    wide_energy = torch.stack([reference_energy(o, s) for o, s in zip(wide[1:], wide[:-1])])
    for a, b in zip(grads, torch.autograd.grad(wide_energy.sum(), wide)):
        torch.testing.assert_close(a, b.to(dtype))


def test_inputs_without_grad_get_none_and_the_rest_still_flows():
    x = torch.randn(4, 3)  # a raw input: the first block's shortcut
    h = torch.randn(4, 3, requires_grad=True)
    (g,) = torch.autograd.grad(grouped_energies([h], [x]).sum(), [h])
    torch.testing.assert_close(g, 2 * (h - x) / h.numel())


def test_saves_only_references_to_its_inputs():
    pool = _leaves(5)
    mids = [p * 1 for p in pool]  # non-leaves, as block outputs are
    inputs = {m.untyped_storage().data_ptr() for m in mids}
    saved = set()

    def pack(t):
        saved.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        grouped_energies(mids[1:], mids[:-1])
    assert saved and saved <= inputs


def test_in_place_change_after_the_forward_is_an_error():
    pool = _leaves(3)
    mids = [p * 1 for p in pool]
    e = grouped_energies(mids[1:], mids[:-1])
    with torch.no_grad():
        mids[1].add_(1)
    with pytest.raises(RuntimeError, match="changed in place after the model.s forward"):
        e.sum().backward()


def test_the_path_follows_size_dtype_and_shape(group_path):
    small = [p * 1 for p in _leaves(4)]
    node = grouped_energies(small[1:], small[:-1]).grad_fn
    assert node._raw_saved_tensors  # the node saves its inputs whichever path it takes
    assert grouped_energy._stackable(small) == (group_path == "stacked")
    assert grouped_energy._per_tensor(small) == (group_path == "per-tensor")
    assert grouped_energy._per_tensor([torch.zeros(32, 16, 14, 14)] * 2)  # a paper-shaped block: block by block
    assert not grouped_energy._stackable([torch.zeros(5000), torch.zeros(5000)])  # large: foreach
    assert not grouped_energy._stackable([torch.zeros(3), torch.zeros(4)])  # mixed shapes
    assert not grouped_energy._stackable([torch.zeros(3, dtype=torch.float64)] * 2)


def test_norms_measured_at_the_blocks_give_the_same_energies_and_are_used(group_path):
    pool = [p * 1 for p in _leaves(5)]
    outs, scs = pool[1:], pool[:-1]
    early = [grouped_energy.displacement_norm(o, s) if i % 2 else None for i, (o, s) in enumerate(zip(outs, scs))]
    want = torch.stack([reference_energy(o, s) for o, s in zip(outs, scs)])
    torch.testing.assert_close(grouped_energies(outs, scs, norms=early), want, rtol=1e-5, atol=1e-7)
    if group_path != "stacked":  # a given norm is trusted, not measured again (the stacked path measures all)
        marked = grouped_energies(outs, scs, norms=[torch.tensor(2.0)] * len(outs))
        torch.testing.assert_close(marked, torch.full((4,), 4.0 / outs[0].numel()))


def test_a_chain_is_numbered_in_order_so_the_stacked_path_uses_slices():
    pool = [p * 1 for p in _leaves(5)]
    node = grouped_energies(pool[1:], pool[:-1]).grad_fn
    assert node.indices == ((1, 2, 3, 4), (0, 1, 2, 3))  # the outputs 1..4, the shortcuts 0..3


def test_mismatched_lists_are_a_clear_error():
    with pytest.raises(ValueError, match="as many outputs as shortcuts"):
        grouped_energies([torch.zeros(1)], [])


# ----------------------------------------------------------------------------- budget switch
def test_budget_switch_validates_and_the_context_restores():
    before = grouping_budget()
    with grouping(0):
        assert grouping_budget() == 0
    assert grouping_budget() == before
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="budget must be an int >= 0"):
            set_grouping_budget(bad)


@pytest.mark.parametrize("raw,message", [("lots", "whole number of bytes"), ("-5", ">= 0")])
def test_budget_from_the_environment(monkeypatch, raw, message):
    from timm_lap.ops import switches as config

    monkeypatch.setenv("TIMM_LAP_GROUP_BYTES", raw)
    with pytest.raises(ValueError, match=f"TIMM_LAP_GROUP_BYTES must be .*{message}"):
        config._budget_from_env()
    monkeypatch.setenv("TIMM_LAP_GROUP_BYTES", "1024")
    assert config._budget_from_env() == 1024
    monkeypatch.delenv("TIMM_LAP_GROUP_BYTES")
    assert config._budget_from_env() == 32 * 2**20


# ----------------------------------------------------------------------------- through the tracker
def _transport_and_grads(model, x, budget):
    model.zero_grad()
    tracker = timm_lap.get_tracker(model)
    with grouping(budget):
        out = model(x)
        cost = tracker.transport_cost()
        groups = len(tracker._energies)
        per_block = tracker.per_block()
        (cost + out.square().mean()).backward()
    return cost.detach(), per_block, [p.grad.clone() for p in model.parameters()], groups


def test_budget_decides_the_number_of_nodes_not_the_result():
    torch.manual_seed(0)
    model = TinyResidualStack(depth=12, width=6).train()
    timm_lap.track(model)
    x = torch.randn(5, 6)
    one_node = 8 * 5 * 6  # bytes a block adds to its group
    results = {budget: _transport_and_grads(model, x, budget) for budget in (0, one_node * 4, 2**30)}
    assert [results[b][3] for b in (0, one_node * 4, 2**30)] == [12, 3, 1]
    cost, per_block, grads, _ = results[0]
    for budget in (one_node * 4, 2**30):
        torch.testing.assert_close(results[budget][0], cost)
        assert list(results[budget][1]) == list(per_block) == [f"blocks.{i}" for i in range(12)]
        for a, b in zip(results[budget][2], grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_block_called_twice_adds_both_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = ResidualMLP(width=4, depth=1).blocks[0]

        def forward(self, x):
            return self.block(self.block(x))

    model = Twice().train()
    tracker = timm_lap.track(model, blocks=["block"])
    x = torch.randn(3, 4)
    model(x)
    with torch.no_grad():
        h = model.block(x)
        want = reference_energy(h, x) + reference_energy(model.block(h), h)
    torch.testing.assert_close(tracker.per_block()["block"], want)
    torch.testing.assert_close(tracker.transport_cost().detach(), want)


def test_two_forwards_then_one_backward_count_both():
    torch.manual_seed(0)
    model = TinyResidualStack(depth=5, width=4).train()
    loss_fn = timm_lap.LeastActionLoss(lambda out, y: out.square().mean(), model, weight=1.0)
    xs = [torch.randn(3, 4), torch.randn(3, 4)]
    results = []
    for budget in (0, 2**30):
        model.zero_grad()
        with grouping(budget):
            total = sum(loss_fn(model(x), None) for x in xs)
            total.backward()
        results.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_copies_do_not_carry_pending_blocks():
    model = TinyResidualStack(depth=3, width=4).train()
    tracker = timm_lap.track(model)
    tracker._pending.append(("blocks.0", torch.zeros(1), torch.zeros(1)))
    clone = copy.deepcopy(model)
    assert clone._timm_lap_tracker._pending == [] and clone._timm_lap_tracker._energies == []


def test_grouping_keeps_saved_bytes_of_tracked_resnet():
    """The group node saves references to block outputs autograd keeps anyway: nothing new."""
    import timm

    model = timm.create_model("resnet18", num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)
    vanilla = saved_activation_bytes(lambda: model(x).sum())
    timm_lap.track(model)
    tracked = saved_activation_bytes(lambda: model(x).sum() + timm_lap.get_tracker(model).transport_cost())
    assert tracked / vanilla <= 1.02


def test_a_bad_environment_value_fails_at_first_use_not_at_import(monkeypatch, tmp_path):
    import subprocess
    import sys

    env = {**__import__("os").environ, "TIMM_LAP_GROUP_BYTES": "lots"}
    code = ("import timm, timm_lap\n"
            "m = timm.create_model('resnet10t_lap', num_classes=2)\n"
            "m(__import__('torch').randn(2, 3, 32, 32))\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "TIMM_LAP_GROUP_BYTES must be a whole number of bytes" in result.stderr
    assert 'File "<string>", line 3' in result.stderr  # raised by the forward: import and create_model worked


def test_switches_are_functions_and_context_managers():
    from timm_lap.ops import switches as config

    with config.fused(False):
        assert not config.fused_enabled()
        with config.grad_taps(True):
            assert config.grad_taps_mode() is True
    assert config.fused_enabled() and config.grad_taps_mode() is None
    with pytest.raises(TypeError, match="set_fused takes True or False"):
        config.set_fused(1)
    with pytest.raises(TypeError, match="set_grad_taps takes None, True or False"):
        config.set_grad_taps("on")
