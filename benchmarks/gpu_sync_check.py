"""GPU check: a LAP training step introduces no host-device synchronisation.

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


def check(lap: bool) -> dict:
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
    result = {"variant": "timm_lap" if lap else "vanilla", "synchronised": error is not None, "error": error}
    if lap:
        result["lam"] = float(criterion.lam)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    results = [check(False), check(True)]
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "timm": timm.__version__,
              "results": results, "pass": not results[1]["synchronised"]}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
