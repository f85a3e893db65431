"""timm_lap.hooks.HookCollector: what named modules saw, per call, and nothing left behind after remove()."""
import pytest
import torch
import torch.nn as nn

from timm_lap.hooks import HookCall, HookCollector


class Twice(nn.Module):
    """Runs ``inner`` twice: two calls of one module in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 3)
        self.outer = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.inner(self.inner(x)))


class KeywordOnly(nn.Module):
    def forward(self, *, x: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
        return x * scale


class CallsKeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = KeywordOnly()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x=x + 1)


class InPlace(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(3)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_records_inputs_and_outputs_of_the_named_modules_per_call():
    model = Twice()
    x = torch.randn(2, 3)
    with HookCollector(outputs={"inner": model.inner, "outer": model.outer}, inputs={"inner": model.inner}) as hooks:
        out = model(x)
    assert [c.name for c in hooks.calls] == ["inner", "inner", "outer"]
    first, second, last = hooks.calls
    assert first.input is x and torch.equal(first.output, model.inner(x))
    assert second.input is first.output and last.input is None  # "outer" is in outputs only
    assert last.output is out
    assert first.index < second.index < last.index
    assert hooks.of("inner") == [first, second] and hooks.of("nothing") == []


def test_remove_really_removes_every_hook():
    model = Twice()
    before = _hook_count(model)
    hooks = HookCollector(outputs={"inner": model.inner, "outer": model.outer}, inputs={"inner": model.inner},
                          early_inputs=True, clear_on=model)
    assert _hook_count(model) > before
    hooks.remove()
    assert _hook_count(model) == before
    model(torch.randn(1, 3))
    assert hooks.calls == []
    hooks.remove()  # twice is harmless


def test_context_manager_removes_the_hooks_and_keeps_the_calls():
    model = Twice()
    with HookCollector(outputs={"outer": model.outer}) as hooks:
        assert isinstance(hooks, HookCollector)
        model(torch.randn(1, 3))
    assert _hook_count(model) == 0 and len(hooks.calls) == 1
    model(torch.randn(1, 3))
    assert len(hooks.calls) == 1


def test_context_manager_removes_the_hooks_on_an_error():
    model = Twice()
    with pytest.raises(RuntimeError), HookCollector(outputs={"outer": model.outer}):
        model(torch.randn(1, 4))  # wrong width
    assert _hook_count(model) == 0


def test_keyword_only_inputs_are_found():
    model = CallsKeywordOnly()
    x = torch.randn(2, 3)
    for early in (False, True):
        with HookCollector(outputs={"block": model.block}, inputs={"block": model.block}, early_inputs=early) as h:
            out = model(x)
        (call,) = h.calls
        torch.testing.assert_close(call.input, x + 1)
        assert call.output is out


def test_early_inputs_are_taken_before_the_module_changes_them():
    model = nn.Sequential(InPlace())
    late, early = (HookCollector(inputs={"0": model[0]}, keep=torch.clone, early_inputs=e) for e in (False, True))
    x = torch.ones(2)
    model(x)
    late.remove()
    early.remove()
    assert torch.equal(early.calls[0].input, torch.ones(2))
    assert torch.equal(late.calls[0].input, torch.full((2,), 3.0))


def test_early_calls_are_numbered_at_their_start():
    outer = nn.Sequential(nn.Linear(3, 3))  # a module that contains another: starts before, ends after it
    with HookCollector(outputs={"outer": outer, "inner": outer[0]}, inputs={"outer": outer, "inner": outer[0]},
                       early_inputs=True) as hooks:
        outer(torch.randn(1, 3))
    assert [c.name for c in hooks.calls] == ["inner", "outer"]  # finish order
    assert [c.name for c in sorted(hooks.calls, key=lambda c: c.index)] == ["outer", "inner"]


def test_keep_applies_to_inputs_and_outputs_at_hook_time():
    model = Twice()
    with HookCollector(outputs={"inner": model.inner}, inputs={"inner": model.inner}, keep=lambda t: t.shape) as h:
        model(torch.randn(4, 3))
    assert [(c.input, c.output) for c in h.calls] == [(torch.Size([4, 3]), torch.Size([4, 3]))] * 2


def test_clear_on_keeps_only_the_latest_forward():
    model = Twice()
    with HookCollector(outputs={"outer": model.outer}, clear_on=model) as hooks:
        model(torch.randn(1, 3))
        x = torch.randn(1, 3)
        out = model(x)
    assert [c.output for c in hooks.calls] == [out]


def test_a_subclass_keeps_what_it_wants():
    class Shapes(HookCollector):
        def __init__(self, modules: dict[str, nn.Module]) -> None:
            self.shapes: list[tuple[str, torch.Size]] = []
            super().__init__(outputs=modules)

        def on_call(self, call: HookCall) -> None:
            self.shapes.append((call.name, call.output.shape))

    model = Twice()
    with Shapes({"outer": model.outer}) as hooks:
        model(torch.randn(5, 3))
    assert hooks.shapes == [("outer", torch.Size([5, 3]))] and hooks.calls == []


def test_one_name_for_two_modules_is_an_error():
    model = Twice()
    with pytest.raises(ValueError, match="two different modules"):
        HookCollector(outputs={"m": model.inner}, inputs={"m": model.outer})
    assert _hook_count(model) == 0
