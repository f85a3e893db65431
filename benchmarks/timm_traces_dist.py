"""Step-for-step traces of timm's ``train.py`` and ``timm-lap train`` (without ``--lap``) under torchrun: two CPU
processes, gloo, one intra-op thread each; ``--dist-bn reduce`` and ``--sync-bn``.

The distributed counterpart of :mod:`benchmarks.timm_traces` (same digits ImageFolder, same backward recorder): each
script is launched with ``python -m torch.distributed.run --standalone --nproc-per-node 2`` running this module's
``worker``, which installs the recorder in its rank and then runs the script (timm's through ``runpy`` from a path,
timm-lap's ``main``). A trace holds every loss each rank handed to ``Tensor.backward`` and rank 0's summary.csv.

timm's ``train.py`` is not part of this repository: give a copy's path with ``--train-py`` or ``TIMM_TRAIN_PY``.
It cannot train on CPU under torchrun as it stands: it wraps the model in DDP with ``device_ids=[device]``, which
DDP rejects for a CPU module. The worker drops ``device_ids`` off CUDA for timm's run (``CPU_DDP_SHIM``), the only
value DDP accepts there and what timm-lap passes; nothing else of timm's script is touched.

    python -m benchmarks.timm_traces_dist compare --train-py /tmp/timm_train_dist/train.py       # both cases
    python -m benchmarks.timm_traces_dist compare --train-py ... --write-fixtures tests/fixtures/timm_traces_dist \\
        --train-py-version 1.0.29.dev0 --train-py-commit <sha>
    python -m benchmarks.timm_traces_dist record --script lap --case dist_bn_reduce --out lap.json [--probe-bn]

Findings (timm 1.0.31, train.py 1.0.29.dev0, torch 2.14.1, CPU): with ``--dist-bn reduce``, every loss of both
ranks of ``timm-lap train`` as shipped (nothing patched) is timm's, bit for bit, and so is the final evaluation;
summary.csv's train_loss differs in the last bits (timm all-reduces a float32 mean, timm-lap a float64 sum). With
``--sync-bn`` neither script can train on the CPU: torch's DDP refuses SyncBatchNorm in a CPU module, so both stop
before the first step with the same torch error.

``--probe-bn`` (timm-lap only) saves, per rank, the BatchNorm running statistics just before and after each
``--dist-bn`` step (``_distribute_bn``, called after every epoch) and the BatchNorm classes of the model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from benchmarks.timm_traces import (
    TIMM_TRAIN_ENV,
    add_shared_flags,
    compare_traces,
    comparison_inputs,
    environment,
    export_digits,
    file_sha256,
    read_summary,
    record_backward,
)

__all__ = [
    "CASES",
    "FIXTURE_DIR",
    "NPROC",
    "CPU_DDP_SHIM",
    "case_argv",
    "record",
    "compare_ranks",
    "outcome",
    "main",
]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURE_DIR = os.path.join(ROOT, "tests", "fixtures", "timm_traces_dist")
NPROC = 2
THREADS = 1  # intra-op threads per process: the reduction order, hence the bits, depends on it
CPU_DDP_SHIM = (
    "timm's train.py passes DDP device_ids=[device]; DDP rejects that for a CPU module, so the worker drops "
    "device_ids off CUDA (ClassificationTask.prepare_distributed), as timm-lap does"
)

# Flags both scripts share. Each rank gets 150 of the 300 training images: 4 steps of 32 per epoch (drop_last).
# Both scripts use timm's prefetching loader (their default on every device; --no-prefetcher was bitwise equal too).
COMMON = (
    "--data-dir {data_dir} --output {output} --experiment {experiment} --model resnet10t --num-classes 10 "
    "--input-size 3 32 32 -b 32 --epochs 2 --warmup-epochs 1 --seed 0 --workers 0 --device cpu "
    "--log-interval 1000 --opt sgd --sched cosine --lr 0.05"
)
CASES: dict[str, str] = {
    "dist_bn_reduce": "--dist-bn reduce",  # timm's default, given explicitly
    "sync_bn": "--sync-bn",  # SyncBatchNorm; timm then skips --dist-bn
    "dist_bn_none": "--dist-bn ''",  # per-rank statistics kept (for the BatchNorm probe; no fixture)
}
FIXTURE_CASES = ("dist_bn_reduce", "sync_bn")


def case_argv(case: str, data_dir: str, output: str, experiment: str) -> list[str]:
    """The flags of ``case`` (shared by both scripts) for one run writing ``output/experiment/summary.csv``."""
    common = [part.format(data_dir=data_dir, output=output, experiment=experiment) for part in shlex.split(COMMON)]
    return common + shlex.split(CASES[case])


def case_command(case: str) -> str:
    return shlex.join(case_argv(case, "DATA_DIR", "OUTPUT", case))


def torchrun_prefix() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={NPROC}"]


# ------------------------------------------------------------------------------------------------- in each rank
@contextlib.contextmanager
def _cpu_ddp_shim() -> Iterator[None]:
    """timm's ClassificationTask wraps the model in DDP with the train script's ``device_ids=[device]``; on a CPU
    module DDP accepts only ``None``."""
    from timm.task.classification import ClassificationTask

    original = ClassificationTask.prepare_distributed

    def prepare_distributed(self: Any, device_ids: list[Any] | None = None, **ddp_kwargs: Any) -> Any:
        if device_ids is not None and all(getattr(d, "type", str(d).split(":")[0]) != "cuda" for d in device_ids):
            device_ids = None
        return original(self, device_ids=device_ids, **ddp_kwargs)

    ClassificationTask.prepare_distributed = prepare_distributed  # type: ignore[method-assign]
    try:
        yield
    finally:
        ClassificationTask.prepare_distributed = original  # type: ignore[method-assign]


def _bn_classes(model: Any) -> list[str]:
    import torch

    return [type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def _probe_bn(probe: dict[str, Any]) -> Iterator[None]:
    """Record in ``probe`` the BatchNorm classes around timm-lap's ``convert_sync_batchnorm`` (``converted``:
    before, after) and the running statistics around every ``_distribute_bn`` (``calls``, once per epoch and EMA
    evaluation: before, after, the model's BatchNorm classes, --dist-bn, --sync-bn)."""
    from timm.utils import unwrap_model

    from timm_lap.cli import train as T

    original_distribute, original_convert = T._distribute_bn, T.convert_sync_batchnorm
    probe.setdefault("converted", [])
    probe.setdefault("calls", [])

    def stats(model: Any) -> dict[str, Any]:
        return {n: b.detach().clone() for n, b in unwrap_model(model).named_buffers() if "running_" in n}

    def distribute_bn(config: Any, model: Any) -> None:
        before = stats(model)
        original_distribute(config, model)
        probe["calls"].append(
            {
                "before": before,
                "after": stats(model),
                "bn_classes": _bn_classes(model),
                "dist_bn": config.args.dist_bn,
                "sync_bn": bool(config.args.sync_bn),
            }
        )

    def convert_sync_batchnorm(model: Any, process_group: Any = None) -> Any:
        before = _bn_classes(model)
        converted = original_convert(model, process_group)
        probe["converted"].append({"before": before, "after": _bn_classes(converted)})
        return converted

    T._distribute_bn, T.convert_sync_batchnorm = distribute_bn, convert_sync_batchnorm
    try:
        yield
    finally:
        T._distribute_bn, T.convert_sync_batchnorm = original_distribute, original_convert


def worker(script: str, argv: Sequence[str], trace_dir: str, train_py: str | None, probe_bn: bool) -> int:
    """One rank of a torchrun job: record its backward losses while running ``script`` with ``argv``. The rank's
    file (``rank<r>.json``: losses, error, environment) is written also when the script fails."""
    import torch

    torch.set_num_threads(THREADS)
    rank = int(os.environ.get("RANK", "0"))
    losses: list[float] = []
    probe: dict[str, Any] = {}
    error = None
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(record_backward(losses))
            if script == "timm":
                if not train_py:
                    raise SystemExit(f"timm's train.py: give --train-py or set {TIMM_TRAIN_ENV}")
                if probe_bn:
                    raise SystemExit("--probe-bn: timm-lap only")
                stack.enter_context(_cpu_ddp_shim())
                saved = sys.argv
                sys.argv = [train_py, *argv]
                stack.callback(setattr, sys, "argv", saved)
                runpy.run_path(train_py, run_name="__main__")
            else:
                if probe_bn:
                    stack.enter_context(_probe_bn(probe))
                from timm_lap.cli.train import main as lap_main

                lap_main(list(argv))
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        with open(os.path.join(trace_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "losses": losses, "error": error, "env": environment()}, f)
        if probe_bn:
            torch.save(probe, os.path.join(trace_dir, f"bn_rank{rank}.pt"))
    return 0


# ------------------------------------------------------------------------------------------------- the launcher
def record(
    script: str,
    case: str,
    data_dir: str,
    work_dir: str,
    train_py: str | None = None,
    probe_bn: bool = False,
    timeout: float = 600,
) -> dict[str, Any]:
    """Run ``script`` ('timm' or 'lap') on ``case`` under torchrun (``NPROC`` gloo processes on the CPU); return the
    trace: per-rank losses (``losses[str(rank)]``), rank 0's summary rows, the final evaluation and, with
    ``probe_bn``, the path of each rank's BatchNorm probe (``bn_probe[str(rank)]``, a ``torch.save`` file)."""
    tag = f"{script}-{case}"
    out_root = os.path.join(work_dir, "runs")
    run_dir = os.path.join(out_root, tag)
    trace_dir = os.path.join(work_dir, "traces", tag)
    for path in (run_dir, trace_dir):  # timm's get_outdir would add a suffix to an existing folder: start clean
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(trace_dir)
    argv = case_argv(case, data_dir, out_root, tag)
    cmd = [
        *torchrun_prefix(),
        "-m",
        "benchmarks.timm_traces_dist",
        "worker",
        "--script",
        script,
        "--trace-dir",
        trace_dir,
        *(["--train-py", train_py] if train_py else []),
        *(["--probe-bn"] if probe_bn else []),
        "--",
        *argv,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(THREADS),
        "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
    }
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = round(time.perf_counter() - started, 1)
    with open(os.path.join(trace_dir, "torchrun.log"), "w") as f:
        f.write(done.stdout + done.stderr)
    ranks = []
    for rank in range(NPROC):
        path = os.path.join(trace_dir, f"rank{rank}.json")
        if os.path.exists(path):
            with open(path) as f:
                ranks.append(json.load(f))
    trace: dict[str, Any] = {
        "script": script,
        "case": case,
        "argv": argv,
        "returncode": done.returncode,
        "losses": {str(r["rank"]): r["losses"] for r in ranks},
        "rank_errors": {str(r["rank"]): r["error"] for r in ranks if r.get("error")},
        "seconds": seconds,
        "env": ranks[0]["env"] if ranks else environment(),
        "log": os.path.join(trace_dir, "torchrun.log"),
    }
    if probe_bn:
        trace["bn_probe"] = {str(r): os.path.join(trace_dir, f"bn_rank{r}.pt") for r in range(NPROC)}
    if done.returncode != 0:
        # torchrun's own report only names the failed ranks: keep rank 0's traceback, else the end of the output
        lines = [line for line in done.stderr.splitlines() if line.startswith("[rank0]:")]
        trace["error"] = "\n".join(lines)[-4000:] if lines else (done.stderr or done.stdout)[-4000:]
        return trace
    summary = read_summary(os.path.join(run_dir, "summary.csv"))
    trace["summary"] = summary
    trace["final_eval"] = {k: summary[-1][k] for k in ("eval_loss", "eval_top1", "eval_top5") if k in summary[-1]}
    return trace


def compare_ranks(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """:func:`benchmarks.timm_traces.compare_traces` per rank, plus the overall largest loss difference and
    whether every rank is bitwise equal."""
    per_rank = {
        rank: compare_traces(
            {"losses": losses, "summary": reference["summary"]},
            {"losses": other["losses"].get(rank, []), "summary": other["summary"]},
        )
        for rank, losses in reference["losses"].items()
    }
    diffs = [r["max_abs_diff"] for r in per_rank.values() if r["max_abs_diff"] is not None]
    final = {
        k: abs(reference["final_eval"][k] - other["final_eval"][k])
        for k in reference["final_eval"]
        if k in other["final_eval"]
    }
    return {
        "per_rank": per_rank,
        "bitwise": all(r["bitwise"] and r["steps"][0] == r["steps"][1] for r in per_rank.values()),
        "max_abs_diff": max(diffs, default=None),
        "final_eval_abs_diff": final,
        "summary_max_abs_diff": next(iter(per_rank.values()))["summary_max_abs_diff"] if per_rank else None,
    }


def outcome(trace: dict[str, Any]) -> dict[str, Any]:
    """What a run came to: ``{"ok": True}``, or the failure (return code, each rank's exception, its steps)."""
    if "error" not in trace:
        return {"ok": True}
    return {
        "ok": False,
        "returncode": trace["returncode"],
        "rank_errors": trace["rank_errors"],
        "steps": {rank: len(losses) for rank, losses in trace["losses"].items()},
    }


def _fixture(
    case: str,
    timm_trace: dict[str, Any],
    lap_trace: dict[str, Any],
    train_py: str,
    version: str | None,
    commit: str | None,
) -> dict[str, Any]:
    both_ok = "error" not in timm_trace and "error" not in lap_trace
    comparison = compare_ranks(timm_trace, lap_trace) if both_ok else None
    launch = shlex.join(torchrun_prefix()[1:])
    return {
        "case": case,
        "nproc": NPROC,
        "backend": "gloo",
        "threads_per_process": THREADS,
        "command": f"OMP_NUM_THREADS={THREADS} python {launch} -m timm_lap.cli.train {case_command(case)}",
        "timm_command": f"OMP_NUM_THREADS={THREADS} python {launch} train.py {case_command(case)}",
        "recorded_with": "python -m benchmarks.timm_traces_dist compare (worker: backward recorder, then the script)",
        "timm_shim": CPU_DDP_SHIM,
        "data": "python -m benchmarks.timm_traces data DATA_DIR (sklearn digits, 30/20 per class, 32x32 PNG)",
        "timm_version": timm_trace["env"]["timm"],
        "torch_version": timm_trace["env"]["torch"],
        "train_py": {"version": version, "commit": commit, "sha256": file_sha256(train_py)},
        "env": timm_trace["env"],
        "outcome": outcome(timm_trace),
        "losses": timm_trace["losses"],
        "summary": timm_trace.get("summary"),
        "final_eval": timm_trace.get("final_eval"),
        "timm_lap_at_recording": {
            "outcome": outcome(lap_trace),
            **(
                {}
                if comparison is None
                else {
                    "bitwise": comparison["bitwise"],
                    "max_abs_diff": comparison["max_abs_diff"],
                    "final_eval_abs_diff": comparison["final_eval_abs_diff"],
                    "summary_max_abs_diff": comparison["summary_max_abs_diff"],
                }
            ),
        },
    }


def compare(args: argparse.Namespace) -> int:
    inputs = comparison_inputs(args, "timm_traces_dist-")
    if inputs is None:
        return 2
    train_py, work_dir, data_dir = inputs
    label = "timm-lap"
    status = 0
    for case in args.cases:
        timm_trace = record("timm", case, data_dir, work_dir, train_py)
        if "error" in timm_trace and not timm_trace["rank_errors"]:  # not the script: the launch failed
            print(f"{case}: timm's train.py did not start:\n{timm_trace['error']}")
            status = 1
            continue
        lap_trace = record("lap", case, data_dir, work_dir)
        if "error" in timm_trace or "error" in lap_trace:
            for name, trace in (("timm", timm_trace), (label, lap_trace)):
                print(f"{case:16s} {name}: {outcome(trace)}")
        else:
            c = compare_ranks(timm_trace, lap_trace)
            for rank, r in c["per_rank"].items():
                print(
                    f"{case:16s} {label} rank {rank}: steps {r['steps']}, bitwise {r['bitwise']}, first diff "
                    f"step {r['first_diff_step']}, max |dloss| {r['max_abs_diff']}"
                )
            print(
                f"{case:16s} final eval |diff| {c['final_eval_abs_diff']}, summary max |diff| "
                f"{c['summary_max_abs_diff']} (timm {timm_trace['seconds']} s, timm-lap {lap_trace['seconds']} s)"
            )
        if args.write_fixtures:
            os.makedirs(args.write_fixtures, exist_ok=True)
            fixture = _fixture(case, timm_trace, lap_trace, train_py, args.train_py_version, args.train_py_commit)
            with open(os.path.join(args.write_fixtures, f"{case}.json"), "w") as f:
                json.dump(fixture, f, indent=1)
                f.write("\n")
    return status


# ------------------------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.timm_traces_dist", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="one rank (run by torchrun): record, then run the script with ARGV")
    w.add_argument("--script", choices=("timm", "lap"), required=True)
    w.add_argument("--trace-dir", required=True)
    w.add_argument("--train-py", default=None)
    w.add_argument("--probe-bn", action="store_true")
    w.add_argument("argv", nargs=argparse.REMAINDER, help="the script's flags, after --")
    r = sub.add_parser("record", help="one trace: torchrun, then collect")
    r.add_argument("--script", choices=("timm", "lap"), required=True)
    r.add_argument("--case", choices=sorted(CASES), required=True)
    r.add_argument("--out", required=True, help="trace JSON file")
    r.add_argument("--probe-bn", action="store_true", help="timm-lap: save BatchNorm statistics around --dist-bn")
    c = sub.add_parser("compare", help="both scripts on each case")
    c.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(FIXTURE_CASES))
    c.add_argument("--write-fixtures", default=None, metavar="DIR", help="write <case>.json fixtures there")
    add_shared_flags(r, c)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "worker":
        rest = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return worker(args.script, rest, args.trace_dir, args.train_py, args.probe_bn)
    if args.command == "compare":
        return compare(args)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="timm_traces_dist-")
    data_dir = export_digits(args.data_dir or os.path.join(work_dir, "digits"))
    trace = record(
        args.script,
        args.case,
        data_dir,
        work_dir,
        args.train_py or os.environ.get(TIMM_TRAIN_ENV),
        args.probe_bn,
    )
    with open(args.out, "w") as f:
        json.dump(trace, f, indent=1)
    return 1 if "error" in trace else 0


if __name__ == "__main__":
    raise SystemExit(main())
