"""Overhead benchmark: timm-lap against vanilla and a naive reference-style regulariser.

Three cases (``--cases``): ``per-block`` (a stack of 40 tiny residual blocks, batch 4, one thread: what
timm-lap costs per block, beside a hook that only keeps references), ``paper`` (the paper's deep,
narrow networks: 9 same-width pre-activation blocks of 16 channels at 28 px, batch 32, and a CIFAR-style
pre-activation ResNet-56 at batch 64), ``models`` (``--models``, timm names). Measures, in one process,
with the variants interleaved:
- saved-activation bytes of one training forward (unique storages packed by autograd);
- step time (forward + backward + optimizer step), median and min-max over repetitions;
- on CUDA, peak memory (``torch.cuda.max_memory_allocated``).

``naive`` is the obvious eager implementation: residual tensors ``out - shortcut`` kept for
``mean(|r| ** p)`` and ``lam += tau * loss.item()`` every step (a host-device sync).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import timm
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..blocks import find_blocks
from ..hooks import HookCall, HookCollector
from ..loss import LeastActionLoss
from ..multiplier import MultiplierScheduler
from ..ops.switches import fused, fused_enabled, grad_taps, grad_taps_mode, grouping
from ..tracker import track

__all__ = ["saved_activation_bytes", "run_benchmark", "main", "build_variant", "model_kwargs", "variant_settings"]

DEFAULT_MODELS = ("resnet18", "resnet50", "convnext_atto", "vit_tiny_patch16_224")
VARIANTS = (
    "vanilla", "bare_hook", "timm_lap", "timm_lap_sample", "timm_lap_ungrouped", "timm_lap_grouped", "timm_lap_taps",
    "timm_lap_notaps", "timm_lap_torch", "naive",
)
SAMPLE_FRACTION = 0.25  # the timm_lap_sample variant
DEFAULT_VARIANTS = ("vanilla", "timm_lap", "naive")
CASES = ("per-block", "paper", "models")
PER_BLOCK_DEPTH = 40


def saved_activation_bytes(step: Callable[[], object]) -> int:
    """Bytes of the unique storages autograd saves for backward while ``step()`` runs."""
    storages: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[(t.device, s.data_ptr())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


class NaiveLAP(HookCollector):
    """Reference-code style regulariser, kept as the baseline to beat: each block's forward hook keeps the
    residual ``out - shortcut`` (the block's input, or its projection shortcut's output), cleared at every
    forward of the model; :meth:`loss` adds ``mean(|r| ** p)`` of each and syncs ``lam`` with the host."""

    def __init__(self, model: nn.Module, tau: float = 1.0, p: float = 2.0) -> None:
        self.residuals: list[torch.Tensor] = []
        self.lam = 1.0
        self.tau = tau
        self.p = p
        specs, _ = find_blocks(model)
        self._block_of = {f"{spec.name}:shortcut": spec.name for spec in specs if spec.shortcut is not None}
        self._shortcut_out: dict[str, torch.Tensor] = {}  # block name -> its projection shortcut's output
        identity = {spec.name: spec.module for spec in specs if spec.shortcut is None}
        shortcuts = {f"{spec.name}:shortcut": spec.shortcut for spec in specs if spec.shortcut is not None}
        super().__init__(outputs={**{spec.name: spec.module for spec in specs}, **shortcuts}, inputs=identity,
                         clear_on=model)

    def on_call(self, call: HookCall) -> None:
        block = self._block_of.get(call.name)
        if block is not None:  # a projection shortcut ran (inside its block): keep its output for the block
            self._shortcut_out[block] = call.output
            return
        shortcut = call.input if call.input is not None else self._shortcut_out.pop(call.name)  # inputs: identity
        if call.output.shape == shortcut.shape:
            self.residuals.append(call.output - shortcut)

    def clear(self) -> None:
        super().clear()
        self.residuals.clear()

    def loss(self, task: torch.Tensor) -> torch.Tensor:
        transport = sum(r.float().abs().pow(self.p).mean() for r in self.residuals)
        self.lam += self.tau * task.item()
        return task + transport / self.lam


class BareHook(HookCollector):
    """The floor for any hook-based regulariser: forward hooks that only keep references to each block's
    input and output (no arithmetic, no autograd node), cleared at every forward of the model."""

    def __init__(self, model: nn.Module) -> None:
        blocks = {spec.name: spec.module for spec in find_blocks(model)[0]}
        super().__init__(outputs=blocks, inputs=blocks, clear_on=model)

    @property
    def kept(self) -> list[HookCall]:
        """This forward's block calls (input and output references)."""
        return self.calls


@contextlib.contextmanager
def variant_settings(variant: str):
    """The energy switches for a variant, restored afterwards.

    ``timm_lap``: the defaults; ``timm_lap_sample``: ``sample=0.25`` (set at tracking, not here);
    ``timm_lap_ungrouped``: one autograd node per block (no grouping, as in
    earlier releases); ``timm_lap_grouped``: taps off, so blocks are grouped on CUDA too;
    ``timm_lap_taps`` / ``timm_lap_notaps``: gradient taps forced on / off, one node per block;
    ``timm_lap_torch``: the plain-PyTorch energy instead of the fused CUDA kernels.
    """
    taps = {"timm_lap_taps": True, "timm_lap_notaps": False, "timm_lap_grouped": False}.get(variant, grad_taps_mode())
    ungrouped = variant in ("timm_lap_ungrouped", "timm_lap_taps", "timm_lap_notaps")
    with contextlib.ExitStack() as stack:
        stack.enter_context(fused(fused_enabled() and variant != "timm_lap_torch"))
        stack.enter_context(grad_taps(taps))
        if ungrouped:
            stack.enter_context(grouping(0))
        yield


@dataclass
class Variant:
    name: str
    model: nn.Module
    step: Callable[[], torch.Tensor]  # forward + backward + optimizer step
    forward_loss: Callable[[], torch.Tensor]  # the training forward alone (for saved-activation bytes)
    optimizer: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)


class TinyResidualStack(nn.Module):
    """``depth`` blocks ``x + Linear(width, width)(x)`` and a linear head: almost no arithmetic per block,
    so a step's time is the per-block fixed cost of whatever runs around the blocks."""

    def __init__(self, depth: int = PER_BLOCK_DEPTH, width: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_TinyBlock(width) for _ in range(depth)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class _TinyBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        with torch.no_grad():
            self.fc.weight.mul_(0.1)  # 40 blocks stay finite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x)


@dataclass
class ModelSpec:
    """One benchmarked network: how to create it and the input it trains on."""

    label: str
    create: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # one sample
    batch_size: int
    num_classes: int
    steps_per_sample: int = 1  # steps timed together (tiny steps are shorter than the timer's noise)
    threads: int | None = None  # torch threads while this spec runs (None: leave as is)


def model_kwargs(name: str, args: argparse.Namespace) -> dict:
    """Extra ``create_model`` kwargs: transformers need the benchmark's image size at construction."""
    return {"img_size": args.img_size} if "vit" in name or "swin" in name else {}


def timm_spec(name: str, args: argparse.Namespace) -> ModelSpec:
    """A timm model by name at the benchmark's image size, batch size and number of classes."""
    return ModelSpec(
        name, lambda: timm.create_model(name, num_classes=args.num_classes, **model_kwargs(name, args)),
        (3, args.img_size, args.img_size), args.batch_size, args.num_classes,
    )


def per_block_spec() -> ModelSpec:
    """The per-block case: 40 tiny blocks, batch 4, one thread, 20 steps per timing sample."""
    return ModelSpec(f"tiny_residual_x{PER_BLOCK_DEPTH}", TinyResidualStack, (8,), 4, 4, steps_per_sample=20, threads=1)


def paper_specs() -> list[ModelSpec]:
    """The paper's shapes: 9 same-width blocks of 16 channels on 28 px, batch 32; ResNet-56 at batch 64."""
    return [
        ModelSpec("preact_flat9 (w16, 28px, b32)",
                  lambda: timm.create_model("preact_flat9", num_classes=10, width=16, in_chans=1), (1, 28, 28), 32, 10,
                  steps_per_sample=2),
        ModelSpec("preact_resnet56 (32px, b64)", lambda: timm.create_model("preact_resnet56", num_classes=10),
                  (3, 32, 32), 64, 10),
    ]


def build_variant(
    name: str | ModelSpec, variant: str, args: argparse.Namespace, device: torch.device, state: dict
) -> Variant:
    """One variant of a benchmarked network (same weights ``state``), ready to ``step()``."""
    spec = timm_spec(name, args) if isinstance(name, str) else name
    model = spec.create()
    model.load_state_dict(state)
    model.to(device).train()
    if args.channels_last and len(spec.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss()
    lap = variant.startswith("timm_lap")
    tracker = track(model, sample=SAMPLE_FRACTION if variant == "timm_lap_sample" else None) if lap else None
    naive = NaiveLAP(model) if variant == "naive" else None
    if variant == "bare_hook":
        BareHook(model)
    runner = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    lap_loss = LeastActionLoss(criterion, tracker) if tracker is not None else None
    if lap_loss is not None:
        MultiplierScheduler(optimizer, lap_loss)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec.batch_size, *spec.input_shape, generator=g).to(device)
    if args.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (spec.batch_size,), generator=g).to(device)
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    )

    def forward_loss() -> torch.Tensor:
        with amp:
            out = runner(x)
            if lap_loss is not None:
                return lap_loss(out, y)
            task = criterion(out, y)
            return naive.loss(task) if naive is not None else task

    def step() -> torch.Tensor:
        with variant_settings(variant):
            loss = forward_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return loss

    return Variant(variant, model, step, forward_loss, optimizer)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _threads(n: int | None):
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def bench_model(
    name: str | ModelSpec, args: argparse.Namespace, device: torch.device, variants: list[str] | None = None
) -> dict:
    spec = timm_spec(name, args) if isinstance(name, str) else name
    with _threads(spec.threads):
        return _bench_spec(spec, args, device, variants or args.variants)


def _bench_spec(spec: ModelSpec, args: argparse.Namespace, device: torch.device, variant_names: list[str]) -> dict:
    torch.manual_seed(0)
    state = spec.create().state_dict()
    variants = [build_variant(spec, v, args, device, state) for v in variant_names]
    result: dict = {"model": spec.label, "batch_size": spec.batch_size, "threads": torch.get_num_threads(),
                    "steps_per_sample": spec.steps_per_sample}
    if not args.compile:
        saved = {v.name: saved_activation_bytes(v.forward_loss) for v in variants}
        result["saved_bytes"] = saved
    for v in variants:  # warm-up (and compilation)
        for _ in range(args.warmup * spec.steps_per_sample):
            v.step()
    _sync(device)
    if device.type == "cuda":
        peak = {}
        for v in variants:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            v.step()
            _sync(device)
            peak[v.name] = torch.cuda.max_memory_allocated(device)
        result["peak_memory"] = peak
    for _ in tqdm(range(args.repeats), desc=spec.label, leave=False, disable=not sys.stderr.isatty()):
        for v in variants:  # interleaved: drift hits every variant alike
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(spec.steps_per_sample):
                v.step()
            _sync(device)
            v.times.append((time.perf_counter() - t0) / spec.steps_per_sample)
    result["time_s"] = {
        v.name: {"median": statistics.median(v.times), "min": min(v.times), "max": max(v.times)} for v in variants
    }
    base = result["time_s"]["vanilla"]["median"]
    result["time_ratio"] = {v.name: result["time_s"][v.name]["median"] / base for v in variants}
    if "saved_bytes" in result:
        result["saved_bytes_ratio"] = {
            k: b / result["saved_bytes"]["vanilla"] for k, b in result["saved_bytes"].items()
        }
    if "peak_memory" in result:
        result["peak_memory_ratio"] = {
            k: b / result["peak_memory"]["vanilla"] for k, b in result["peak_memory"].items()
        }
    n_blocks = len(find_blocks(variants[0].model)[0])
    result["blocks"] = n_blocks
    result["us_per_block"] = {
        v.name: 1e6 * (result["time_s"][v.name]["median"] - base) / n_blocks for v in variants if v.name != "vanilla"
    }
    return result


PER_BLOCK_VARIANTS = ["vanilla", "bare_hook", "timm_lap", "timm_lap_ungrouped"]


def run_benchmark(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    env = {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
        "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "func")},
    }
    results = []
    for case in args.cases:
        if case == "per-block":
            results.append({"case": case, **bench_model(per_block_spec(), args, device, PER_BLOCK_VARIANTS)})
        elif case == "paper":
            results += [{"case": case, **bench_model(spec, args, device)} for spec in paper_specs()]
        else:
            results += [{"case": case, **bench_model(name, args, device)} for name in args.models]
    return {"env": env, "results": results}


SPREAD_WARNING = 0.25  # (max - min) / median of a variant's step times above which its ratio is flagged


def timing_spread(t: dict) -> float:
    """``(max - min) / median`` of one variant's step times (``result['time_s'][variant]``)."""
    return (t["max"] - t["min"]) / t["median"] if t["median"] > 0 else math.inf


def spread_warnings(report: dict, limit: float = SPREAD_WARNING) -> list[str]:
    """One line per model and variant whose timing spread exceeds ``limit``: its ratio is not to be trusted."""
    lines = []
    for r in report["results"]:
        for name, t in r["time_s"].items():
            spread = timing_spread(t)
            if spread > limit:
                lines.append(f"warning: {r['model']} {name}: step times spread {t['min'] * 1e3:.3f}-"
                             f"{t['max'] * 1e3:.3f} ms ({spread:.0%} of the median), so its ratio is unreliable; "
                             "rerun on a quieter machine or with more --repeats")
    return lines


def format_table(report: dict) -> str:
    """The results as an aligned table (columns sized to their widest cell), then any spread warnings."""
    header = ["model", "variant", "time ms (median [min-max])", "x vanilla", "us/block", "saved x", "peak x"]
    rows = []
    for r in report["results"]:
        for name, t in r["time_s"].items():
            per_block = r.get("us_per_block", {}).get(name)
            saved = r.get("saved_bytes_ratio", {}).get(name)
            peak = r.get("peak_memory_ratio", {}).get(name)
            rows.append([
                r["model"], name, f"{t['median'] * 1e3:.3f} [{t['min'] * 1e3:.3f}-{t['max'] * 1e3:.3f}]",
                f"{r['time_ratio'][name]:.3f}", "" if per_block is None else f"{per_block:.1f}",
                "" if saved is None else f"{saved:.3f}", "" if peak is None else f"{peak:.3f}",
            ])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # text columns left-aligned, numbers right-aligned
        return " ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(header), "-" * (sum(widths) + len(widths) - 1), *map(line, rows)]
    lines.append("us/block: (variant - vanilla) median step time / tracked blocks, fixed per-step costs included")
    return "\n".join(lines + spread_warnings(report))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="timm-lap bench", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES,
                        help="per-block: 40 tiny blocks, batch 4, 1 thread (variants vanilla, bare_hook, timm_lap, "
                             "timm_lap_ungrouped); paper: preact_flat9 w16 at b32 and preact_resnet56 at b64; "
                             "models: --models at --img-size/--batch-size (default: all three)")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="timm model names for the models case")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS,
                        help="for the paper and models cases; bare_hook: hooks that only keep references; "
                             "timm_lap_sample: the transport estimated from a quarter of each batch (sample=0.25); "
                             "timm_lap_ungrouped: one autograd node per block; timm_lap_grouped: taps off, "
                             "blocks grouped (on CUDA too); timm_lap_taps/_notaps: gradient taps forced on/off, "
                             "one node per block; timm_lap_torch: without the fused CUDA kernels "
                             "(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the paper and models cases (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=32, help="models case (default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=64, help="models case (default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=10, help="models case (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timing samples per variant (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed samples first (default: %(default)s)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile every variant")
    parser.add_argument("--json", default=None, help="write the report here as JSON")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    if "vanilla" not in args.variants:
        args.variants = ["vanilla", *args.variants]
    report = run_benchmark(args)
    print(format_table(report))
    print(f"# {report['env']['device']}, torch {report['env']['torch']}, {report['env']['threads']} threads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"# JSON written to {args.json}")
    return report


if __name__ == "__main__":
    main()
