"""Where does timm-lap's eager GPU overhead go? Per-variant breakdown of one training step.

For each variant (same model, data and settings as ``timm-lap bench``): wall time per step with a sync after
every step and over back-to-back steps (as a real loop runs), the host time to enqueue a step, forward /
backward / optimizer GPU time from CUDA events, and a ``torch.profiler`` table of the heaviest kernels.

    python -m benchmarks.gpu_profile --out DIR [--models resnet50 --img-size 224 --batch-size 128]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

import timm
import torch

from benchmarks.gpu_timing import pipelined_step, synced_steps
from timm_lap.cli.bench import build_parser, build_variant, model_kwargs, variant_settings


def _events_breakdown(v, steps: int) -> dict[str, float]:
    """Median GPU milliseconds of forward, backward and optimizer step (CUDA events, no host timing)."""
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    optimizer = v.optimizer
    for _ in range(steps):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        ev[0].record()
        loss = v.forward_loss()
        ev[1].record()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ev[2].record()
        optimizer.step()
        ev[3].record()
        torch.cuda.synchronize()
        for i, key in enumerate(parts):
            parts[key].append(ev[i].elapsed_time(ev[i + 1]))
    return {k: statistics.median(x) for k, x in parts.items()}


def _kernel_table(v, steps: int, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            v.step()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    try:
        return averages.table(sort_by="self_device_time_total", row_limit=rows)
    except (AttributeError, KeyError, ValueError):  # torch versions before the 'device' names
        return averages.table(sort_by="self_cuda_time_total", row_limit=rows)


def profile_variant(v, args: argparse.Namespace) -> dict:
    for _ in range(args.warmup):
        v.step()
    enqueue, synced = synced_steps(v.step, args.repeats)
    pipelined = pipelined_step(v.step, args.repeats)
    return {"step_ms_synced_median": 1e3 * statistics.median(synced), "step_ms_synced_min": 1e3 * min(synced),
            "step_ms_synced_max": 1e3 * max(synced), "step_ms_pipelined": 1e3 * pipelined,
            "host_enqueue_ms_median": 1e3 * statistics.median(enqueue),
            "gpu_ms": _events_breakdown(v, args.repeats),
            "kernels": _kernel_table(v, 2, args.rows)}


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--out", required=True, help="folder for profile.json and kernels_<variant>.txt")
    parser.add_argument("--rows", type=int, default=25, help="kernels listed per variant")
    parser.set_defaults(device="cuda", models=["resnet50"], img_size=224, batch_size=128, amp=True,
                        channels_last=True, repeats=10, warmup=5,
                        variants=["vanilla", "timm_lap", "timm_lap_notaps", "timm_lap_torch"])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_profile.py needs a CUDA device")
    os.makedirs(args.out, exist_ok=True)
    device = torch.device("cuda")
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "timm": timm.__version__,
                    "settings": {k: v for k, v in vars(args).items()}, "models": {}}
    for name in args.models:
        state = timm.create_model(name, num_classes=args.num_classes, **model_kwargs(name, args)).state_dict()
        report["models"][name] = {}
        for variant in args.variants:
            v = build_variant(name, variant, args, device, state)
            with variant_settings(variant):
                res = profile_variant(v, args)
            with open(os.path.join(args.out, f"kernels_{name}_{variant}.txt"), "w") as f:
                f.write(res.pop("kernels"))
            report["models"][name][variant] = res
            print(name, variant, json.dumps(res), flush=True)
            del v
            torch.cuda.empty_cache()
    with open(os.path.join(args.out, "profile.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
