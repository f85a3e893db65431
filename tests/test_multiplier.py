import math
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from conftest import ResidualMLP

import timm_lap


def _setup(tau=1.0, every=1, lambda0=1.0, lr=0.05):
    model = ResidualMLP()
    loss_fn = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = timm_lap.MultiplierScheduler(opt, loss_fn, tau=tau, every=every, lambda0=lambda0)
    return model, loss_fn, opt, sched


def _batch(i):
    g = torch.Generator().manual_seed(i)
    return torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def _train(model, loss_fn, opt, steps, accum=1, start=0):
    """Returns (lam used at each update, task losses per micro-batch)."""
    lams, tasks = [], []
    for step in range(start, start + steps):
        for micro in range(accum):
            x, y = _batch(step * accum + micro)
            loss = loss_fn(model(x), y) / accum
            loss.backward()
            tasks.append(loss_fn.task_loss.double().item())
        lams.append(loss_fn.lam.item())
        opt.step()
        opt.zero_grad()
    return lams, tasks


@pytest.mark.parametrize("tau,every,lambda0", [(1.0, 1, 1.0), (0.3, 3, 0.1), (10.0, 2, 2.0)])
def test_lam_follows_the_reference_recurrence(tau, every, lambda0):
    model, loss_fn, opt, sched = _setup(tau, every, lambda0)
    lams, tasks = _train(model, loss_fn, opt, steps=9)
    lam, expected = lambda0, []
    for t, task in enumerate(tasks, start=1):
        expected.append(lam)
        if t % every == 0:
            lam = lam + tau * task
    assert lams == pytest.approx(expected, rel=1e-12, abs=0)
    assert sched.lam.item() == pytest.approx(lam, rel=1e-12)
    assert sched.lam.dtype == torch.float64
    assert sched.inverse_lam.item() == pytest.approx(1 / lam, rel=1e-6)


def test_gradient_accumulation_updates_once_with_the_mean():
    model, loss_fn, opt, sched = _setup()
    lams, tasks = _train(model, loss_fn, opt, steps=1, accum=4)
    assert sched.num_updates == 1
    assert sched.lam.item() == pytest.approx(1.0 + sum(tasks) / 4, rel=1e-12)


def test_multiplier_weakens_the_penalty():
    model, loss_fn, opt, sched = _setup(tau=5.0)
    _train(model, loss_fn, opt, steps=3)
    x, y = _batch(100)
    loss = loss_fn(model(x), y)
    torch.testing.assert_close(loss, loss_fn.task_loss + loss_fn.transport / sched.lam.float(), rtol=1e-6, atol=1e-7)


def test_state_dict_round_trip_resumes_the_same_sequence():
    torch.manual_seed(1)
    model, loss_fn, opt, sched = _setup(tau=0.7, every=2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    full, _ = _train(model, loss_fn, opt, steps=8)

    torch.manual_seed(1)
    model2, loss2, opt2, sched2 = _setup(tau=0.7, every=2)
    model2.load_state_dict(init)
    first, _ = _train(model2, loss2, opt2, steps=5)
    state = {"model": model2.state_dict(), "opt": opt2.state_dict(), "lap": sched2.state_dict()}

    model3, loss3, opt3, sched3 = _setup(tau=1.0, every=1)
    model3.load_state_dict(state["model"])
    opt3.load_state_dict(state["opt"])
    sched3.load_state_dict(state["lap"])
    assert (sched3.tau, sched3.every, sched3.num_updates) == (0.7, 2, 5)
    rest, _ = _train(model3, loss3, opt3, steps=3, start=5)
    assert first + rest == full  # exact


def test_non_finite_loss_leaves_lam_unchanged_and_warns_once():
    model, loss_fn, opt, sched = _setup()
    _train(model, loss_fn, opt, steps=1)
    before = sched.lam.clone()
    with pytest.warns(UserWarning, match="non-finite task loss"):
        sched.step(torch.tensor(float("nan")))
    assert torch.equal(sched.lam, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step(torch.tensor(float("inf")))
    assert torch.equal(sched.lam, before)
    sched.step(0.5)
    assert sched.lam.item() == pytest.approx(before.item() + 0.5)


def test_manual_step_and_remove():
    model, loss_fn, opt, sched = _setup(tau=2.0)
    sched.step(torch.tensor(0.25))
    assert sched.lam.item() == pytest.approx(1.5)
    sched.remove()
    assert loss_fn.scheduler is None and loss_fn.lam.item() == 1.0
    _train(model, loss_fn, opt, steps=2)
    assert sched.lam.item() == pytest.approx(1.5)  # detached from the optimizer


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tau=-1.0), "tau must be a finite number >= 0"),
        (dict(tau=float("nan")), "tau must be a finite number >= 0"),
        (dict(every=0), "every must be an integer >= 1"),
        (dict(every=1.5), "every must be an integer >= 1"),
        (dict(lambda0=0.0), "lambda0 must be a finite number > 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    model = ResidualMLP()
    loss_fn = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=match):
        timm_lap.MultiplierScheduler(opt, loss_fn, **kwargs)


def test_one_scheduler_per_loss_and_type_checks():
    model, loss_fn, opt, sched = _setup()
    with pytest.raises(ValueError, match="already has a MultiplierScheduler"):
        timm_lap.MultiplierScheduler(opt, loss_fn)
    with pytest.raises(TypeError, match="must be a timm_lap.LeastActionLoss"):
        timm_lap.MultiplierScheduler(opt, nn.CrossEntropyLoss())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(ResidualMLP())
        loss_fn = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        sched = timm_lap.MultiplierScheduler(opt, loss_fn, tau=0.5)
        tasks = []
        for step in range(5):
            x, y = _batch(1000 * rank + step)  # different data on each rank
            loss_fn(model(x), y).backward()
            tasks.append(loss_fn.task_loss.clone())
            opt.step()
            opt.zero_grad()
        out[rank] = (sched.lam.item(), [t.item() for t in tasks])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_ranks_hold_bit_identical_lam():
    world = 2
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(world, _free_port(), out), nprocs=world, join=True)
        results = dict(out)
    lam0, tasks0 = results[0]
    lam1, tasks1 = results[1]
    assert lam0 == lam1  # bit-identical
    assert tasks0 != tasks1  # the ranks saw different losses...
    expected = 1.0 + 0.5 * sum((a + b) / 2 for a, b in zip(tasks0, tasks1))
    assert lam0 == pytest.approx(expected, rel=1e-6)  # ...and lam used their average
    assert math.isfinite(lam0)


def test_state_is_module_buffers_and_extra_state():
    model = ResidualMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    sched = timm_lap.MultiplierScheduler(opt, loss_fn, tau=0.5, every=2, lambda0=3.0)
    assert isinstance(sched, nn.Module) and loss_fn.multiplier is sched is loss_fn.scheduler
    assert all(m is not sched for m in loss_fn.modules())  # a reference, not a submodule
    sched.step(torch.tensor(2.0))
    state = sched.state_dict()
    assert set(state) == {"lam", "inverse_lam", "pending_sum", "_extra_state"}
    assert state["lam"].dtype == torch.float64 and state["lam"].item() == 4.0
    assert state["_extra_state"] == {"tau": 0.5, "every": 2, "lambda0": 3.0, "num_updates": 0, "pending_count": 0}
    other = timm_lap.MultiplierScheduler(opt, timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model))
    other.load_state_dict(state)
    assert other.lam.item() == 4.0 and other.inverse_lam.item() == 0.25 and (other.tau, other.every) == (0.5, 2)
    flat = {"lam": torch.tensor(7.0, dtype=torch.float64), "tau": 1.0, "every": 1, "lambda0": 1.0, "num_updates": 3,
            "pending_sum": None, "pending_count": 0}  # the 0.1.0 layout
    other.load_state_dict(flat)
    assert other.lam.item() == 7.0 and other.num_updates == 3
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({"lam": torch.tensor(1.0)})
    sched.remove()
    assert loss_fn.multiplier is None and loss_fn.lam.item() == 1.0
