import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_lap.ops.energy import block_energy, reference_energy


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_fused_p2_matches_reference_value_and_grads(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    sc = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    fused = block_energy(out, sc, 2.0)
    out_r = out.detach().clone().requires_grad_()
    sc_r = sc.detach().clone().requires_grad_()
    ref = reference_energy(out_r, sc_r, 2.0)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)
    fused.backward()
    ref.backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(out.grad, out_r.grad, **tol)
    torch.testing.assert_close(sc.grad, sc_r.grad, **tol)
    assert out.grad.dtype == dtype


def test_energy_is_float32_mean_of_all_elements():
    out = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16)
    sc = torch.zeros_like(out)
    assert block_energy(out, sc).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert block_energy(out, sc, p=1.0).item() == pytest.approx(10 / 4)
    assert block_energy(out, sc).dtype == torch.float32


@pytest.mark.parametrize("p", [1.0, 1.5, 3.0])
def test_other_p_uses_reference(p):
    out = torch.randn(3, 5, requires_grad=True)
    sc = torch.randn(3, 5)
    e = block_energy(out, sc, p)
    expected = (out.detach() - sc).abs().pow(p).mean()
    torch.testing.assert_close(e.detach(), expected)
    e.backward()
    assert torch.isfinite(out.grad).all()


def test_fused_saves_no_new_tensor():
    out = torch.randn(4, 8, requires_grad=True) * 1.0
    sc = torch.randn(4, 8, requires_grad=True) * 1.0
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        block_energy(out, sc)
    ptrs = {t.untyped_storage().data_ptr() for t in saved}
    assert ptrs <= {out.untyped_storage().data_ptr(), sc.untyped_storage().data_ptr()}


_TRITON_SCRIPT = """
import torch
from timm_lap.ops import triton_kernels as k
from timm_lap.ops.energy import reference_energy
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    for shape in [(3, 5), (2, 8, 9, 9), (5000,)]:
        o, s = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
        if len(shape) == 4:
            o, s = (t.contiguous(memory_format=torch.channels_last) for t in (o, s))
        assert k.supports(o, s)
        o2, s2 = o.clone().requires_grad_(), s.clone().requires_grad_()
        ref = reference_energy(o2, s2)
        (ref * 0.7).backward()
        torch.testing.assert_close(k.squared_displacement_mean(o, s), ref.detach(), rtol=1e-5, atol=1e-6)
        go, gs = k.squared_displacement_mean_backward(o, s, torch.tensor(0.7), True, True)
        tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-5)
        torch.testing.assert_close(go, o2.grad, **tol)
        torch.testing.assert_close(gs, s2.grad, **tol)
        assert go.stride() == o.stride()
go, gs = k.squared_displacement_mean_backward(o, s, torch.tensor(1.0), False, True)
assert go is None and gs.shape == s.shape
assert not k.supports(torch.zeros(4, 4), torch.zeros(4, 4).t())
for dtype in (torch.float32, torch.bfloat16):
    g = torch.randn(2, 8, 9, 9).to(dtype).contiguous(memory_format=torch.channels_last)
    pairs = [tuple(torch.randn(2, 8, 9, 9).to(dtype).contiguous(memory_format=torch.channels_last) for _ in range(2))
             for _ in range(3)]
    scalars = [torch.tensor(0.5), torch.tensor(2.0), torch.tensor(-1.0)]
    for count in (1, 2, 3):  # one pass for one or two terms, chained beyond
        terms = [(o, s, c, (-1) ** i * 0.25) for i, ((o, s), c) in enumerate(zip(pairs[:count], scalars))]
        expected = g.float() + sum(k_ * c.float() * (o.float() - s.float()) for o, s, c, k_ in terms)
        got = k.add_terms(g, terms)
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
        torch.testing.assert_close(got.float(), expected, **tol)
        assert got.dtype == dtype and got.stride() == g.stride()
print("ok")
"""


def test_fused_cuda_kernels_in_the_triton_interpreter():
    """The Triton kernels used on CUDA, run on the CPU by Triton's interpreter."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    done = subprocess.run(
        [sys.executable, "-c", _TRITON_SCRIPT], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
