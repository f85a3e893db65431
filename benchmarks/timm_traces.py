"""Step-for-step traces of timm's own ``train.py`` and ``timm-lap train`` without ``--lap`` (issue 13, part 3).

Both scripts train on the same small ImageFolder (scikit-learn's bundled digits as 32x32 PNGs, a fixed stratified
split), with the same flags, in a fresh interpreter each. A trace is every loss handed to ``Tensor.backward`` (its
full-precision float) plus summary.csv's per-epoch rows (the last one is the final evaluation).

timm's ``train.py`` is not in the timm wheel and is never part of this repository: give the path of a copy with
``--train-py`` or the environment variable ``TIMM_TRAIN_PY``; it is only run, in-process through ``runpy``.

    python -m benchmarks.timm_traces data /tmp/digits_folder            # the ImageFolder tree
    python -m benchmarks.timm_traces compare --train-py /tmp/timm_train/train.py            # all recipes
    python -m benchmarks.timm_traces compare --train-py ... --recipes sgd_cosine
    python -m benchmarks.timm_traces compare --train-py ... --write-fixtures tests/fixtures/timm_traces \\
        --train-py-version 1.0.29.dev0 --train-py-commit <sha>
    python -m benchmarks.timm_traces record --script lap --recipe sgd_cosine --out lap.json   # one trace

Findings (timm 1.0.31, train.py 1.0.29.dev0, torch 2.14.1, CPU, 1 thread): ``timm-lap train`` as shipped, with
nothing patched, gives timm's trace bit for bit on every recipe (every backward loss, every summary.csv value, the
final evaluation). Both seed once per process, before building the model, so the epochs draw from one continuing
stream (timm-lap's checkpoints carry the random-number state, so its ``--resume`` continues that stream). Two
differences found on the way were real and are fixed in timm-lap: it reseeded every epoch from (seed, epoch), and it
used timm's prefetching loader on CUDA only where timm turns it on on every device. A third hypothesis was refuted:
computing the eval loss inside autocast (timm) or after a float32 cast (timm-lap) makes no difference, since autocast
computes cross-entropy in float32. The fixtures in ``tests/fixtures/timm_traces`` hold timm's traces;
``tests/test_timm_traces.py`` checks timm-lap against them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import runpy
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "TIMM_TRAIN_ENV",
    "RECIPES",
    "FIXTURE_DIR",
    "ENV_KEYS",
    "check_trace",
    "env_differences",
    "export_digits",
    "recipe_argv",
    "record",
    "compare_traces",
    "comparison_inputs",
    "add_shared_flags",
    "file_sha256",
    "read_summary",
    "record_backward",
    "environment",
    "main",
]

TIMM_TRAIN_ENV = "TIMM_TRAIN_PY"
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_DIR = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "timm_traces")
TRAIN_PER_CLASS, VAL_PER_CLASS = 30, 20  # 300 training / 200 validation images
IMAGE_SIZE = 32
THREADS = 1  # intra-op threads of a recording: the reduction order, hence the bits, depends on it
# What the bits of a trace depend on besides the flags: where one of these differs from the fixture's, the trace can
# only be compared within EPOCH0_TOLERANCE (see check_trace).
ENV_KEYS = ("torch", "timm", "cpu_capability", "threads", "machine", "pillow", "numpy")
STEPS_PER_EPOCH = 9  # 300 training images in batches of 32, the last partial one dropped
# Largest |loss difference| allowed over the first epoch when the environment differs (another CPU kernel set or
# library version rounds differently): the first epoch trains at the warm-up lr 1e-5, so rounding differences stay
# near float32 resolution there (bfloat16 autocast: its resolution, 2**-7 near 1) instead of growing.
EPOCH0_TOLERANCE = {"sgd_cosine": 1e-4, "rsb_bce_mixup_lamb": 1e-4, "ema_bf16_accum": 3e-2}

# Flags every recipe shares; {data_dir}, {output} and {experiment} are filled in by recipe_argv.
COMMON = (
    "--data-dir {data_dir} --output {output} --experiment {experiment} --model resnet10t --num-classes 10 "
    "--input-size 3 32 32 -b 32 --epochs 3 --warmup-epochs 1 --seed 0 --workers 0 --device cpu "
    "--log-interval 1000"
)
RECIPES: dict[str, str] = {
    # (a) plain SGD + cosine, timm's defaults otherwise (label smoothing 0.1, random-resized crop, flip, jitter).
    "sgd_cosine": "--opt sgd --sched cosine --lr 0.05",
    # (b) "ResNet strikes back" A3-like: BCE, mixup + cutmix, LAMB, RandAugment, no label smoothing.
    "rsb_bce_mixup_lamb": (
        "--opt lamb --lr 5e-3 --weight-decay 0.02 --sched cosine --bce-loss --bce-target-thresh 0.2 "
        "--mixup 0.1 --cutmix 1.0 --smoothing 0.0 --aa rand-m6-mstd0.5-inc1"
    ),
    # (c) EMA + bfloat16 autocast + gradient accumulation.
    "ema_bf16_accum": (
        "--opt sgd --sched cosine --lr 0.05 --model-ema --model-ema-decay 0.9 --amp --amp-dtype bfloat16 "
        "--grad-accum-steps 2"
    ),
}
# Added to both scripts' flags by --no-prefetcher-both (timm turns its prefetching loader on on any device).
NO_PREFETCHER = "--no-prefetcher"
SUMMARY_KEYS = ("train_loss", "eval_loss", "eval_top1", "eval_top5", "lr")


# ------------------------------------------------------------------------------------------------- the data set
def export_digits(root: str, train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS) -> str:
    """Write scikit-learn's digits as ``root/train/<class>/<index>.png`` and ``root/validation/<class>/...``.

    The split is fixed and stratified without randomness: per class, the first ``train_per_class`` images in the
    data set's order train and the next ``val_per_class`` validate. Each 8x8 image (values 0-16) becomes 8-bit grey
    (round(v * 255 / 16)) enlarged 4x by pixel repetition to 32x32. An existing complete tree is kept.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    marker = os.path.join(root, f"DIGITS_{train_per_class}_{val_per_class}_{IMAGE_SIZE}.done")
    if os.path.exists(marker):
        return root
    digits = load_digits()
    scale = IMAGE_SIZE // 8
    counts: dict[int, int] = {}
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        label = int(label)
        seen = counts.get(label, 0)
        if seen >= train_per_class + val_per_class:
            continue
        counts[label] = seen + 1
        split = "train" if seen < train_per_class else "validation"
        folder = os.path.join(root, split, str(label))
        os.makedirs(folder, exist_ok=True)
        grey = np.rint(image * (255.0 / 16.0)).astype(np.uint8)
        big = np.kron(grey, np.ones((scale, scale), dtype=np.uint8))
        Image.fromarray(big, mode="L").save(os.path.join(folder, f"{index:04d}.png"))
    with open(marker, "w") as f:
        f.write(json.dumps(counts, sort_keys=True))
    return root


# ------------------------------------------------------------------------------------------------- recipes
def recipe_argv(recipe: str, data_dir: str, output: str, experiment: str, extra: Sequence[str] = ()) -> list[str]:
    """The flags of ``recipe`` (shared by both scripts) for one run writing ``output/experiment/summary.csv``."""
    common = [part.format(data_dir=data_dir, output=output, experiment=experiment) for part in shlex.split(COMMON)]
    return common + shlex.split(RECIPES[recipe]) + list(extra)


def recipe_command(recipe: str, extra: Sequence[str] = ()) -> str:
    """The recipe's flags as one line, with placeholders for the data and output folders."""
    return shlex.join(recipe_argv(recipe, "DATA_DIR", "OUTPUT", recipe, extra))


def _record_args(script: str, recipe: str, data_dir: str, out: str, train_py: str | None,
                 extra: Sequence[str] = (), work_dir: str | None = None) -> list[str]:
    """The arguments, after the interpreter, of this tool's ``record`` command for one trace."""
    return ["-m", "benchmarks.timm_traces", "record", "--script", script, "--recipe", recipe, "--data-dir", data_dir,
            *(["--work-dir", work_dir] if work_dir else []), "--out", out,
            *(["--train-py", train_py] if train_py else []), *[f"--extra={e}" for e in extra]]


def record_command(script: str, recipe: str, extra: Sequence[str] = ()) -> str:
    """The command line that records one trace with this tool (placeholders for the paths)."""
    train_py = "TRAIN_PY" if script == "timm" else None
    return shlex.join(["python", *_record_args(script, recipe, "DATA_DIR", f"{script}-{recipe}.json", train_py, extra)])


# ------------------------------------------------------------------------------------------------- recording
@contextlib.contextmanager
def record_backward(losses: list[float]) -> Iterator[None]:
    """Append ``float(self)`` of every tensor handed to ``Tensor.backward`` to ``losses``."""
    import torch

    original = torch.Tensor.backward

    def backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.numel() == 1:
            losses.append(float(self.detach()))
        return original(self, *args, **kwargs)

    torch.Tensor.backward = backward  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.backward = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _argv(argv: Sequence[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = list(argv)
    try:
        yield
    finally:
        sys.argv = saved


def read_summary(path: str) -> list[dict[str, float]]:
    """The columns both scripts write, as numbers, from a summary.csv (timm's or timm-lap's)."""
    from timm_lap.cli.train import read_summary as read_rows

    return [{k: float(row[k]) for k in ("epoch", *SUMMARY_KEYS) if row.get(k) not in (None, "")}
            for row in read_rows(path)]


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def environment() -> dict[str, Any]:
    """What the bits of a CPU trace depend on beyond the flags."""
    import numpy
    import PIL
    import timm
    import torch

    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
    }


def record(
    script: str,
    argv: Sequence[str],
    output_dir: str,
    train_py: str | None = None,
    threads: int = THREADS,
) -> dict[str, Any]:
    """Run ``script`` ('timm': timm's train.py at ``train_py``, through runpy; 'lap': ``timm-lap train``) with the
    flags ``argv`` (which must write ``output_dir/summary.csv``) in this process; return its trace."""
    import torch

    torch.set_num_threads(threads)
    losses: list[float] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(record_backward(losses))
        if script == "timm":
            if not train_py:
                raise ValueError(f"timm's train.py: give --train-py or set {TIMM_TRAIN_ENV}")
            stack.enter_context(_argv([train_py, *argv]))
            runpy.run_path(train_py, run_name="__main__")
        elif script == "lap":
            from timm_lap.cli.train import main as lap_main

            lap_main(list(argv))
        else:
            raise ValueError(f"unknown script {script!r}: 'timm' or 'lap'")
    summary = read_summary(os.path.join(output_dir, "summary.csv"))
    return {
        "script": script,
        "losses": losses,
        "summary": summary,
        "final_eval": {k: summary[-1][k] for k in ("eval_loss", "eval_top1", "eval_top5") if k in summary[-1]},
        "seconds": round(time.perf_counter() - started, 1),
        "env": environment(),
    }


def record_in_subprocess(
    script: str,
    recipe: str,
    data_dir: str,
    work_dir: str,
    train_py: str | None,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """:func:`record` of one recipe in a fresh interpreter (no state shared between the two scripts' runs)."""
    tag = "-".join([script, recipe, *(["x"] if extra else [])])
    out = os.path.join(work_dir, f"{tag}.json")
    cmd = [sys.executable, *_record_args(script, recipe, data_dir, out, train_py, extra, work_dir)]
    done = subprocess.run(cmd, cwd=os.path.dirname(HERE), capture_output=True, text=True)
    if done.returncode != 0:
        return {"script": script, "error": (done.stderr or done.stdout)[-2000:]}
    with open(out) as f:
        return dict(json.load(f))


# ------------------------------------------------------------------------------------------------- comparing
def compare_traces(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Step-by-step comparison: steps, bitwise equality, the first differing step, the largest loss difference, and
    the largest difference of the summary rows."""
    a, b = reference.get("losses", []), other.get("losses", [])
    diffs = [abs(x - y) for x, y in zip(a, b)]
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    rows = list(zip(reference.get("summary", []), other.get("summary", [])))
    summary_diff = {
        k: max((abs(r[k] - o[k]) for r, o in rows if k in r and k in o), default=None) for k in SUMMARY_KEYS
    }
    final_a, final_b = reference.get("final_eval", {}), other.get("final_eval", {})
    return {
        "steps": (len(a), len(b)),
        "bitwise": a == b and len(a) > 0,
        "first_diff_step": first,
        "max_abs_diff": max(diffs, default=None),
        "step0_diff": diffs[0] if diffs else None,
        "summary_max_abs_diff": summary_diff,
        "final_eval_abs_diff": {k: abs(final_a[k] - final_b[k]) for k in final_a if k in final_b},
    }


def env_differences(fixture: dict[str, Any], env: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The ``ENV_KEYS`` whose value in ``env`` differs from the fixture's: (fixture's, this one)."""
    recorded = fixture.get("env", {})
    return {k: (recorded.get(k), env.get(k)) for k in ENV_KEYS if recorded.get(k) != env.get(k)}


def check_trace(fixture: dict[str, Any], trace: dict[str, Any]) -> list[str]:
    """What in ``trace`` (timm-lap's) disagrees with the fixture (timm's trace of the same recipe); empty when it
    agrees.

    In the fixture's environment (``ENV_KEYS``) the comparison is bitwise: every backward loss and every summary.csv
    value. Elsewhere the same arithmetic rounds differently and training amplifies it, so only the first epoch's
    losses are compared, within the recipe's ``EPOCH0_TOLERANCE``.
    """
    problems: list[str] = []
    expected, got = fixture["losses"], trace.get("losses", [])
    if len(got) != len(expected):
        return [f"{len(got)} backward losses, the fixture has {len(expected)}"]
    if env_differences(fixture, trace.get("env", {})):
        tolerance = fixture["tolerance"]["epoch0_other_env"]
        worst = max(abs(a - b) for a, b in zip(expected[:STEPS_PER_EPOCH], got[:STEPS_PER_EPOCH]))
        if worst > tolerance:
            problems.append(f"first epoch: max |loss difference| {worst:.3g} > {tolerance:g}")
        return problems
    differing = [step for step, (a, b) in enumerate(zip(expected, got)) if a != b]
    if differing:
        step = differing[0]
        problems.append(
            f"step {step}: loss {got[step]!r}, timm's {expected[step]!r} (first of {len(differing)} "
            f"differing steps; max |difference| {max(abs(a - b) for a, b in zip(expected, got)):.3g})"
        )
    rows = trace.get("summary", [])
    if len(rows) != len(fixture["summary"]):
        problems.append(f"{len(rows)} summary rows, the fixture has {len(fixture['summary'])}")
    for want, row in zip(fixture["summary"], rows):
        for key, value in want.items():
            if row.get(key) != value:
                problems.append(f"summary epoch {int(want['epoch'])}: {key} {row.get(key)!r}, timm's {value!r}")
    return problems


def _brief(comparison: dict[str, Any]) -> dict[str, Any]:
    return {
        "bitwise": comparison["bitwise"],
        "first_diff_step": comparison["first_diff_step"],
        "max_abs_diff": comparison["max_abs_diff"],
        "summary_max_abs_diff": comparison["summary_max_abs_diff"],
        "final_eval_abs_diff": comparison["final_eval_abs_diff"],
    }


def _fixture(
    recipe: str,
    timm_trace: dict[str, Any],
    lap_trace: dict[str, Any] | None,
    extra: Sequence[str],
    train_py: str,
    version: str | None,
    commit: str | None,
) -> dict[str, Any]:
    return {
        "recipe": recipe,
        "flags": recipe_command(recipe, extra),
        "timm_command": f"python train.py {recipe_command(recipe, extra)}  (run by: "
        f"{record_command('timm', recipe, extra=extra)})",
        "timm_lap_command": record_command("lap", recipe, extra),
        "recorded_with": "python -m benchmarks.timm_traces compare --train-py TRAIN_PY --write-fixtures "
        f"tests/fixtures/timm_traces --train-py-version {version} --train-py-commit {commit}",
        "data": f"python -m benchmarks.timm_traces data DATA_DIR (sklearn digits, {TRAIN_PER_CLASS}/{VAL_PER_CLASS} "
        f"per class, {IMAGE_SIZE}x{IMAGE_SIZE} PNG)",
        "train_py": {
            "source": "huggingface/pytorch-image-models train.py (not in this repository)",
            "version": version,
            "commit": commit,
            "sha256": file_sha256(train_py),
        },
        "library": {"timm": timm_trace["env"]["timm"], "torch": timm_trace["env"]["torch"]},
        "env": timm_trace["env"],
        "tolerance": {
            "same_env": 0.0,
            "epoch0_other_env": EPOCH0_TOLERANCE[recipe],
            "why": "bitwise in the recording environment: timm-lap runs the same arithmetic in the same order as "
            "timm's train.py; elsewhere (other torch/timm/Pillow/NumPy, CPU kernels "
            "or threads) rounding differs and training amplifies it, so only the first epoch (warm-up lr 1e-5) is "
            "compared, within this tolerance",
        },
        "losses": timm_trace["losses"],
        "summary": timm_trace["summary"],
        "final_eval": timm_trace["final_eval"],
        "timm_lap_at_recording": None if lap_trace is None else _brief(compare_traces(timm_trace, lap_trace)),
    }


def _print_comparison(recipe: str, label: str, result: dict[str, Any]) -> None:
    s = result["summary_max_abs_diff"]
    print(
        f"{recipe:22s} {label:10s} steps {result['steps']}, bitwise {result['bitwise']}, first diff step "
        f"{result['first_diff_step']}, step-0 diff {result['step0_diff']}, max |dloss| {result['max_abs_diff']}, "
        f"max |d eval_top1| {s['eval_top1']}, |d eval_loss| {s['eval_loss']}, final eval |diff| "
        f"{result['final_eval_abs_diff']}"
    )


def comparison_inputs(args: argparse.Namespace, prefix: str) -> tuple[str, str, str] | None:
    """(timm's train.py, work folder, digits ImageFolder) of a ``compare`` command, or None (after saying why) when
    timm's script is not given."""
    train_py = args.train_py or os.environ.get(TIMM_TRAIN_ENV)
    if not train_py or not os.path.isfile(train_py):
        print(f"timm's train.py not found: give --train-py or set {TIMM_TRAIN_ENV}", file=sys.stderr)
        return None
    work_dir = args.work_dir or tempfile.mkdtemp(prefix=prefix)
    return train_py, work_dir, export_digits(args.data_dir or os.path.join(work_dir, "digits"))


def compare(args: argparse.Namespace) -> int:
    inputs = comparison_inputs(args, "timm_traces-")
    if inputs is None:
        return 2
    train_py, work_dir, data_dir = inputs
    extra = [NO_PREFETCHER] if args.no_prefetcher_both else []
    for recipe in args.recipes:
        timm_trace = record_in_subprocess("timm", recipe, data_dir, work_dir, train_py, extra=extra)
        if "error" in timm_trace:
            print(f"{recipe}: timm's train.py failed:\n{timm_trace['error']}")
            continue
        lap_trace = record_in_subprocess("lap", recipe, data_dir, work_dir, None, extra=extra)
        lap_ok = "error" not in lap_trace
        if lap_ok:
            _print_comparison(recipe, "timm-lap", compare_traces(timm_trace, lap_trace))
        else:
            print(f"{recipe:22s} {'timm-lap':10s} failed: {lap_trace['error'].strip().splitlines()[-1]}")
        if args.write_fixtures:
            os.makedirs(args.write_fixtures, exist_ok=True)
            fixture = _fixture(
                recipe,
                timm_trace,
                lap_trace if lap_ok else None,
                extra,
                train_py,
                args.train_py_version,
                args.train_py_commit,
            )
            with open(os.path.join(args.write_fixtures, f"{recipe}.json"), "w") as f:
                json.dump(fixture, f, indent=1)
                f.write("\n")
    return 0


# ------------------------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.timm_traces", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="write the digits ImageFolder tree")
    d.add_argument("root")
    r = sub.add_parser("record", help="one trace, in this process")
    r.add_argument("--script", choices=("timm", "lap"), required=True)
    r.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    r.add_argument("--out", required=True, help="trace JSON file")
    c = sub.add_parser("compare", help="both scripts, each recipe, each in a fresh interpreter")
    c.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    c.add_argument(
        "--no-prefetcher-both",
        action="store_true",
        help=f"add {NO_PREFETCHER} to both scripts' flags (timm's prefetcher is on on any device)",
    )
    c.add_argument("--write-fixtures", default=None, metavar="DIR", help="write <recipe>.json fixtures there")
    add_shared_flags(r, c)
    r.add_argument("--extra", action="append", default=[], help="a flag added to the recipe's (repeatable)")
    return p


def add_shared_flags(record_parser: argparse.ArgumentParser, compare_parser: argparse.ArgumentParser) -> None:
    """The flags both trace tools' ``record`` and ``compare`` commands take: timm's script, the data, the folders,
    and (compare) where the train.py copy came from."""
    compare_parser.add_argument("--train-py-version", default=None,
                                help="timm version of the train.py copy (for the fixture)")
    compare_parser.add_argument("--train-py-commit", default=None,
                                help="git commit of the train.py copy (for the fixture)")
    for parser in (record_parser, compare_parser):
        parser.add_argument("--train-py", default=None, help=f"timm's train.py (default: ${TIMM_TRAIN_ENV})")
        parser.add_argument("--data-dir", default=None, help="the digits ImageFolder (written there when missing)")
        parser.add_argument("--work-dir", default=None,
                            help="run folders and traces (default: a new temporary folder)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "data":
        print(export_digits(args.root))
        return 0
    if args.command == "compare":
        return compare(args)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="timm_traces-")
    data_dir = export_digits(args.data_dir or os.path.join(work_dir, "digits"))
    experiment = "-".join([args.script, args.recipe, *(["x"] if args.extra else [])])
    out_root = os.path.join(work_dir, "runs")
    argv_ = recipe_argv(args.recipe, data_dir, out_root, experiment, args.extra)
    run_dir = os.path.join(out_root, experiment)
    if os.path.isdir(run_dir):  # timm's get_outdir would add a suffix: start clean
        import shutil

        shutil.rmtree(run_dir)
    trace = record(args.script, argv_, run_dir, args.train_py or os.environ.get(TIMM_TRAIN_ENV))
    trace["recipe"], trace["argv"] = args.recipe, argv_
    with open(args.out, "w") as f:
        json.dump(trace, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
