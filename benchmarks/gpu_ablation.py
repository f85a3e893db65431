"""Ablation of timm-lap's eager GPU cost (resnet50, 224 px, batch 128, bf16 autocast, channels_last).

Modes, each timed as host-enqueue and synced wall milliseconds per step (median of 10 after 3 warm-up):
vanilla; ``hooks_noop`` (a no-op forward hook on every block); ``track_only`` (energies computed in the
forward, not in the loss); ``lap_fixed`` (``LeastActionLoss(weight=0.1)``); ``lap`` (with
``MultiplierScheduler``), then ``lap`` with Python's GC off and with the plain-PyTorch energy; then a
cProfile of 5 ``lap`` steps. Usage: ``python benchmarks/gpu_ablation.py`` (needs CUDA).
"""
import cProfile
import gc
import io
import pstats
import statistics
import time

import timm
import torch
import torch.nn as nn

from timm_lap import track, LeastActionLoss, MultiplierScheduler, energy
dev = torch.device("cuda")
torch.manual_seed(0)
x = torch.randn(128, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,), device=dev)
def build(mode):
    m = timm.create_model("resnet50", num_classes=10).to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    lf = crit
    if mode in ("lap", "lap_fixed", "track_only"):
        if mode == "track_only":
            tr = track(m)
        else:
            lf = LeastActionLoss(crit, m, weight=0.1 if mode == "lap_fixed" else None)
            if mode == "lap":
                MultiplierScheduler(opt, lf)
    if mode == "hooks_noop":
        for mod in m.modules():
            if type(mod).__name__ == "Bottleneck":
                mod.register_forward_hook(lambda *a: None)
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lf(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step
def timeit(step, n=10):
    for _ in range(3): step()
    torch.cuda.synchronize()
    enq, wall = [], []
    for _ in range(n):
        t = time.perf_counter(); step(); enq.append(time.perf_counter() - t); torch.cuda.synchronize(); wall.append(time.perf_counter() - t)
    return round(1e3 * statistics.median(enq), 1), round(1e3 * statistics.median(wall), 1)
for mode in ["vanilla", "hooks_noop", "track_only", "lap_fixed", "lap"]:
    s = build(mode)
    print(mode, "enqueue/wall ms", timeit(s), flush=True)
    if mode == "lap":
        gc.disable(); print("lap gc off", timeit(s), flush=True); gc.enable()
        energy.USE_TRITON = False; print("lap torch energy", timeit(s), flush=True); energy.USE_TRITON = True
        pr = cProfile.Profile(); pr.enable()
        for _ in range(5): s()
        torch.cuda.synchronize(); pr.disable()
        out = io.StringIO(); pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(25); print(out.getvalue()[:6000])
    del s; torch.cuda.empty_cache()
