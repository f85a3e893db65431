"""Performance contracts: saved activations, no host-device sync, no graph breaks."""
import traceback
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

import timm_lap
from timm_lap.blocks import find_blocks
from timm_lap.cli.bench import BareHook, NaiveLAP, saved_activation_bytes

PACKAGE_DIR = str(Path(timm_lap.__file__).parent)
HOST_READS = {"item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"}


def _training_forward(model, lap_loss=None, naive=None, batch=16, size=64):
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    criterion = nn.CrossEntropyLoss()

    def run():
        out = model(x)
        if lap_loss is not None:
            return lap_loss(out, y)
        task = criterion(out, y)
        return naive.loss(task) if naive is not None else task

    return run


@pytest.mark.parametrize("name,limit", [("resnet18", 1.02), ("resnet50", 1.05)])
def test_saved_activation_bytes_ratio(name, limit):
    model = timm.create_model(name, num_classes=10).train()
    vanilla = saved_activation_bytes(_training_forward(model))
    naive_model = timm.create_model(name, num_classes=10).train()
    naive = saved_activation_bytes(_training_forward(naive_model, naive=NaiveLAP(naive_model)))
    lap = saved_activation_bytes(_training_forward(model, timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)))
    assert lap / vanilla <= limit
    assert naive / vanilla > lap / vanilla  # the naive way really keeps more


class _HostReadRecorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            frames = [f.filename for f in traceback.extract_stack()[:-1]]
            self.calls.append((name, any(f.startswith(PACKAGE_DIR) for f in frames)))
        return func(*args, **(kwargs or {}))


def _one_training_step(model, criterion, optimizer, x, y):
    loss = criterion(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_training_step_reads_nothing_back_to_the_host():
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    vanilla = timm.create_model("resnet18", num_classes=10)
    opt = torch.optim.SGD(vanilla.parameters(), lr=0.01)
    _one_training_step(vanilla, nn.CrossEntropyLoss(), opt, x, y)
    with _HostReadRecorder() as rec_vanilla:
        _one_training_step(vanilla, nn.CrossEntropyLoss(), opt, x, y)

    model = timm.create_model("resnet18", num_classes=10)
    criterion = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    timm_lap.MultiplierScheduler(opt, criterion, tau=1.0)
    _one_training_step(model, criterion, opt, x, y)  # first step may place lam on the device
    with _HostReadRecorder() as rec:
        for _ in range(2):
            _one_training_step(model, criterion, opt, x, y)
    assert [c for c in rec.calls if c[1]] == []  # nothing from timm_lap
    assert len(rec.calls) == 2 * len(rec_vanilla.calls)


def test_naive_keeps_every_blocks_residual_of_the_latest_forward():
    model = timm.create_model("resnet18", num_classes=10).eval()  # eval: a shortcut run again gives the same
    specs = find_blocks(model)[0]
    seen = {}
    for spec in specs:
        spec.module.register_forward_hook(lambda m, a, o, name=spec.name: seen.__setitem__(name, (a[0], o)))
    naive = NaiveLAP(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        model(x)
        expected = [o - (s.shortcut(i) if s.shortcut is not None else i) for s in specs for i, o in [seen[s.name]]]
    assert len(naive.residuals) == len(specs) == 8 and any(s.shortcut is not None for s in specs)
    for residual, want in zip(naive.residuals, expected):
        torch.testing.assert_close(residual, want)
    naive.remove()
    model(x)
    assert len(naive.residuals) == 8  # no hook left: nothing cleared, nothing added


def test_bare_hook_keeps_references_only():
    model = timm.create_model("resnet18", num_classes=10).train()
    outputs = {}
    for spec in find_blocks(model)[0]:
        spec.module.register_forward_hook(lambda m, a, o, name=spec.name: outputs.__setitem__(name, (a[0], o)))
    bare = BareHook(model)
    for _ in range(2):
        model(torch.randn(2, 3, 32, 32))
    assert [c.name for c in bare.kept] == list(outputs)  # the latest forward's calls, one per block
    for call in bare.kept:  # the very tensors the blocks saw: no copy, no arithmetic
        assert call.input is outputs[call.name][0] and call.output is outputs[call.name][1]


def test_the_recorder_sees_a_sync():
    with _HostReadRecorder() as rec:
        NaiveLAP(nn.Sequential()).loss(torch.tensor(1.0, requires_grad=True))
    assert ("item", True) in rec.calls


def test_tracking_adds_no_graph_break():
    import torch._dynamo as dynamo

    model = timm.create_model("resnet18", num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    vanilla = dynamo.explain(model)(x)
    tracker = timm_lap.track(model)
    dynamo.reset()
    tracked = dynamo.explain(lambda inp: (model(inp), tracker.transport_cost()))(x)
    assert tracked.graph_break_count == vanilla.graph_break_count == 0
    assert tracked.graph_count == vanilla.graph_count


@pytest.mark.slow
def test_compiled_matches_eager_loss_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10).train()
    criterion = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    # eval-free comparison: BatchNorm running stats change, the loss and gradients must not differ
    loss = criterion(model(x), y)
    loss.backward()
    eager = (loss.detach(), criterion.transport, [p.grad.clone() for p in model.parameters()])
    model.zero_grad()
    compiled = torch.compile(model)
    loss = criterion(compiled(x), y)
    loss.backward()
    torch.testing.assert_close(loss.detach(), eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(criterion.transport, eager[1], rtol=1e-5, atol=1e-5)
    for g, ref in zip((p.grad for p in model.parameters()), eager[2]):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5)


def test_bench_cli_smoke(tmp_path, capsys):
    from timm_lap.cli.bench import main

    out = tmp_path / "bench.json"
    report = main(["--cases", "models", "--models", "resnet10t", "--repeats", "2", "--warmup", "1",
                   "--batch-size", "4", "--img-size", "32", "--json", str(out)])
    assert out.exists()
    row = report["results"][0]
    assert set(row["time_s"]) == {"vanilla", "timm_lap", "naive"}
    assert row["saved_bytes_ratio"]["timm_lap"] < row["saved_bytes_ratio"]["naive"]
    assert "timm_lap" in capsys.readouterr().out


def test_bench_per_block_case_reports_microseconds_per_block(capsys):
    from timm_lap.cli.bench import PER_BLOCK_DEPTH, main

    report = main(["--cases", "per-block", "--repeats", "5", "--warmup", "1"])
    (row,) = report["results"]
    assert row["case"] == "per-block" and row["threads"] == 1 and row["blocks"] == PER_BLOCK_DEPTH
    assert set(row["us_per_block"]) == {"bare_hook", "timm_lap", "timm_lap_ungrouped"}
    # Grouping is what makes the per-block cost small: one node per block costs several times more.
    assert row["time_s"]["timm_lap"]["median"] < row["time_s"]["timm_lap_ungrouped"]["median"]
    assert "us/block" in capsys.readouterr().out


def test_paper_specs_are_the_papers_shapes():
    from timm_lap.cli.bench import paper_specs

    flat, deep = paper_specs()
    assert (flat.input_shape, flat.batch_size, deep.input_shape, deep.batch_size) == ((1, 28, 28), 32, (3, 32, 32), 64)
    flat_model, deep_model = flat.create(), deep.create()
    assert len(find_blocks(flat_model)[0]) == 9 and flat_model.num_features == 16
    assert len(find_blocks(deep_model)[0]) == 27
    assert flat_model(torch.randn(2, *flat.input_shape)).shape == (2, 10)


def _report(naive_min: float, naive_max: float) -> dict:
    def times(median, lo, hi):
        return {"median": median, "min": lo, "max": hi}

    return {"results": [{
        "model": "resnet18", "time_s": {"vanilla": times(0.19, 0.185, 0.2), "timm_lap": times(0.2, 0.195, 0.21),
                                        "naive": times(1.2, naive_min, naive_max)},
        "time_ratio": {"vanilla": 1.0, "timm_lap": 1.05, "naive": 6.3},
        "us_per_block": {"timm_lap": 1250.0, "naive": 126250.0},
        "saved_bytes_ratio": {"vanilla": 1.0, "timm_lap": 1.0, "naive": 1.31}}]}


def test_table_columns_line_up_whatever_the_widths_and_a_wide_spread_is_flagged():
    from timm_lap.cli.bench import format_table

    text = format_table(_report(0.19, 1.738))
    header, rule, *rows = text.splitlines()
    rows = [r for r in rows if r.startswith("resnet18")]
    assert [r.split()[1] for r in rows] == ["vanilla", "timm_lap", "naive"]
    # every column ends at the header's column end: right-aligned numbers line up under their titles
    for title in ("x vanilla", "us/block", "saved x"):
        end = header.index(title) + len(title)
        for row in rows[1:] if title == "us/block" else rows:  # vanilla has no us/block
            assert row[end - 1] != " " and (end == len(row) or row[end] == " "), (title, row)
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "resnet18 naive" in warnings[0] and "190.000-1738.000 ms" in warnings[0]
    assert not [line for line in format_table(_report(1.15, 1.25)).splitlines() if line.startswith("warning:")]
