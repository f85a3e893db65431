"""Host time of timm-lap's Python per training step on CUDA, next to Python's garbage-collector pauses.

Builds the ``timm-lap bench`` variants (vanilla, timm_lap, timm_lap_notaps: all alive in one process,
as in the benchmark), wraps timm-lap's Python entry points (block hook, energy forward/backward,
gradient taps, loss, multiplier) with timers and records ``gc`` pauses, then reports per-step
milliseconds: wall (synced), pipelined, our Python, GC pauses and GC collections by generation.
``--gc-freeze`` moves everything alive before timing to the permanent generation (``gc.freeze()``).

    python -m benchmarks.gpu_host_time [--gc-freeze] [--json FILE]
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import time

import timm
import torch

from benchmarks.gpu_timing import pipelined_step, synced_steps
from timm_lap import loss, multiplier, tracker
from timm_lap.cli.bench import build_parser, build_variant
from timm_lap.ops import energy, grad_taps

_ACC = {"python_s": 0.0}
_GC = {"pause_s": 0.0, "count": [0, 0, 0], "start": 0.0}


def _timed(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _ACC["python_s"] += time.perf_counter() - t
    return wrapper


def _instrument() -> None:
    # Outermost entry points only, so nothing is counted twice.
    tracker._BlockHook.__call__ = _timed(tracker._BlockHook.__call__)
    tracker.DisplacementTracker._start_pass = _timed(tracker.DisplacementTracker._start_pass)
    tracker.DisplacementTracker._end_pass = _timed(tracker.DisplacementTracker._end_pass)
    grad_taps._TensorTap.__call__ = _timed(grad_taps._TensorTap.__call__)
    for cls in (energy._SquaredDisplacementMean, energy._TappedSquaredDisplacementMean):
        cls.backward = staticmethod(_timed(cls.backward))
    loss.LeastActionLoss.forward = _timed(loss.LeastActionLoss.forward)
    multiplier.MultiplierScheduler._after_optimizer_step = _timed(multiplier.MultiplierScheduler._after_optimizer_step)


def _gc_callback(phase, info) -> None:
    if phase == "start":
        _GC["start"] = time.perf_counter()
    else:
        _GC["pause_s"] += time.perf_counter() - _GC["start"]
        _GC["count"][info["generation"]] += 1


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--gc-freeze", action="store_true")
    parser.set_defaults(device="cuda", models=["resnet50"], img_size=224, batch_size=128, amp=True,
                        channels_last=True, repeats=20, warmup=5, variants=["vanilla", "timm_lap", "timm_lap_notaps"])
    args = parser.parse_args(argv)
    _instrument()
    device = torch.device(args.device)
    name = args.models[0]
    state = timm.create_model(name, num_classes=args.num_classes).state_dict()
    variants = [build_variant(name, v, args, device, state) for v in args.variants]
    for v in variants:
        for _ in range(args.warmup):
            v.step()
    torch.cuda.synchronize()
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    gc.callbacks.append(_gc_callback)
    report = {"device": torch.cuda.get_device_name(), "gc_freeze": args.gc_freeze, "variants": {}}
    for v in variants:
        _ACC["python_s"], _GC["pause_s"], _GC["count"] = 0.0, 0.0, [0, 0, 0]
        _, walls = synced_steps(v.step, args.repeats)
        python_ms = 1e3 * _ACC["python_s"] / args.repeats
        gc_ms, gc_count = 1e3 * _GC["pause_s"] / args.repeats, list(_GC["count"])
        pipelined = pipelined_step(v.step, args.repeats)
        report["variants"][v.name] = {
            "wall_ms_median": 1e3 * statistics.median(walls), "wall_ms_min": 1e3 * min(walls),
            "pipelined_ms": 1e3 * pipelined,
            "timm_lap_python_ms": python_ms, "gc_pause_ms": gc_ms, "gc_collections_by_generation": gc_count}
        print(v.name, json.dumps(report["variants"][v.name]), flush=True)
    gc.callbacks.remove(_gc_callback)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
