"""GPU check: no host-device synchronisation in a LAP step; fused kernels and gradient taps equal the reference.

Runs one warm-up step (which may move lam to the GPU), then training steps of vanilla and
LAP resnet50 under ``torch.cuda.set_sync_debug_mode('error')`` with bf16 autocast. Writes a
JSON verdict; exits non-zero if LAP synchronises where vanilla does not.
"""
import argparse
import json
import sys

import timm
import torch
import torch.nn as nn

import timm_lap


def step(model, criterion, optimizer, x, y):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = criterion(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def check(lap: bool, taps: bool | None = None) -> dict:
    from timm_lap.ops import switches as config

    config.set_grad_taps(taps)
    torch.manual_seed(0)
    model = timm.create_model("resnet50", num_classes=100).cuda().to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if lap:
        criterion = timm_lap.LeastActionLoss(criterion, model)
        timm_lap.MultiplierScheduler(optimizer, criterion)
    x = torch.randn(32, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (32,), device="cuda")
    step(model, criterion, optimizer, x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step(model, criterion, optimizer, x, y)
        error = None
    except RuntimeError as exc:
        error = str(exc)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    config.set_grad_taps(None)
    variant = "vanilla" if not lap else "timm_lap" + {None: "", True: "_taps", False: "_notaps"}[taps]
    result = {"variant": variant, "synchronised": error is not None, "error": error}
    if lap:
        result["lam"] = float(criterion.lam)
    return result


def check_kernels() -> dict:
    """Fused CUDA energy vs the plain-PyTorch reference: values and gradients."""
    from timm_lap.ops import energy

    worst = {"value_rel": 0.0, "grad_rel": 0.0, "fused_used": energy._fused_kernels(
        torch.zeros(4, device="cuda"), torch.zeros(4, device="cuda")) is not None}
    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for shape in [(7,), (3, 5), (8, 64, 28, 28), (2, 197, 192)]:
            o = torch.randn(shape, device="cuda", generator=g).to(dtype)
            s = torch.randn(shape, device="cuda", generator=g).to(dtype)
            if o.dim() == 4:
                o, s = (t.contiguous(memory_format=torch.channels_last) for t in (o, s))
            o1, s1 = o.clone().requires_grad_(), s.clone().requires_grad_()
            o2, s2 = o.clone().requires_grad_(), s.clone().requires_grad_()
            e1 = energy.block_energy(o1, s1)
            e2 = energy.reference_energy(o2, s2)
            (e1 * 1.5).backward()
            (e2 * 1.5).backward()
            worst["value_rel"] = max(worst["value_rel"], ((e1 - e2).abs() / e2.abs()).item())
            for a, b in ((o1.grad, o2.grad), (s1.grad, s2.grad)):
                rel = ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                worst["grad_rel"] = max(worst["grad_rel"], rel)
    worst["pass"] = worst["value_rel"] < 1e-5 and worst["grad_rel"] < 1e-2
    return worst


def _energy_node(values: torch.Tensor) -> str:
    """The autograd node that computed recorded energies (a per-block energy sits under a reshape)."""
    node = values.grad_fn
    while node.next_functions and "View" in node.name():
        node = node.next_functions[0][0]
    return node.name()


def check_grad_taps() -> dict:
    """Parameter gradients of a LAP step with the gradient taps (the CUDA default) vs without, resnet50 fp32."""
    from timm_lap.ops import switches as config

    grads = {}
    for taps in (True, False):
        config.set_grad_taps(taps)
        torch.manual_seed(0)
        model = timm.create_model("resnet50", num_classes=10).cuda().to(memory_format=torch.channels_last)
        criterion = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model, weight=0.5)
        x = torch.randn(8, 3, 96, 96, device="cuda").contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (8,), device="cuda")
        criterion(model(x), y).backward()
        used = {_energy_node(values) for _, values in criterion.tracker._energies}
        grads[taps] = ({n: p.grad for n, p in model.named_parameters()}, used)
    config.set_grad_taps(None)
    worst = max(((grads[True][0][n] - g).abs().max() / g.abs().max().clamp_min(1e-30)).item()
                for n, g in grads[False][0].items())
    return {"grad_rel": worst, "nodes_with_taps": sorted(grads[True][1]), "nodes_without": sorted(grads[False][1]),
            "pass": worst < 1e-4 and all("Tapped" in u for u in grads[True][1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    results = [check(False), check(True, taps=True), check(True, taps=False)]
    kernels = check_kernels()
    taps = check_grad_taps()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "timm": timm.__version__,
              "results": results, "kernels": kernels, "grad_taps": taps,
              "pass": not any(r["synchronised"] for r in results[1:]) and kernels["pass"] and taps["pass"]}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
