"""Wall-clock times of the README's commands on this machine, as the README states them.

    python -m benchmarks.quickstart_times                      # demo + fast tests -> benchmarks/results/quickstart/
    python -m benchmarks.quickstart_times --commands demo fashion_mnist full_tests

Each command runs in a fresh subprocess (output to a file, as in CI or under ``nohup``); the JSON records the command
line, its exit status and seconds, and the machine: CPU model, cores this process may use, memory, the 1-minute load
average before and after (a busy machine makes every time an upper bound), Python, torch and the git commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "results", "quickstart", "times.json")

# The README's commands, without their `pip install` part (the environment is already installed). {tmp}: a scratch
# folder for outputs, so a measurement never overwrites a user's ./output.
# The test runs leave out the one test that compares the README with this file's numbers: it cannot pass while
# they are being measured.
README_TEST = "tests/test_benchmarks.py::test_the_readme_states_the_committed_quickstart_times"
COMMANDS: dict[str, str] = {
    "demo": "timm-lap demo --output {tmp}/demo",
    "fast_tests": f"python -m pytest -m 'not slow' -q -p no:cacheprovider --deselect {README_TEST}",
    "full_tests": f"python -m pytest -q -p no:cacheprovider --deselect {README_TEST}",
    "fashion_mnist": ("timm-lap train --dataset torch/fashion_mnist --model resnet18_lap --train-subset 1000 "
                      "--epochs 30 --eval-interval 10 --output {tmp}/train --experiment fashion"),
}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def machine() -> dict[str, Any]:
    """The machine the times were measured on."""
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpu": _cpu_model(), "cores": len(os.sched_getaffinity(0)), "memory_gib": _memory_gib(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "git_commit": commit or None}


def time_command(name: str, command: str, tmp: str) -> dict[str, Any]:
    """Run ``command`` in the repository root with its output to a log file; its seconds, status and load."""
    line = command.format(tmp=tmp)
    log = os.path.join(tmp, f"{name}.log")
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as f:
        status = subprocess.run(line, shell=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    with open(log) as f:
        tail = f.read().strip().splitlines()[-1:] or [""]
    return {"name": name, "command": line.replace(tmp, "<tmp>"), "returncode": status, "seconds": round(seconds, 1),
            "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2),
            "last_line": tail[0][:300]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quickstart_times", description=__doc__.split("\n")[0])
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=["demo", "fast_tests"],
                        help="which commands to time, in order (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"measured_by": "python -m benchmarks.quickstart_times " + shlex.join(
        ["--commands", *args.commands]), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
        "runs": []}
    with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
        for name in args.commands:
            print(f"{name}: {COMMANDS[name].format(tmp='<tmp>')}", flush=True)
            run = time_command(name, COMMANDS[name], tmp)
            report["runs"].append(run)
            print(f"  exit {run['returncode']} after {run['seconds']:.0f} s (load {run['load_1min_before']} -> "
                  f"{run['load_1min_after']}): {run['last_line']}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"written to {args.out}")
    if any(run["returncode"] != 0 for run in report["runs"]):
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
