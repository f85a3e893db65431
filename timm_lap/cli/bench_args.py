"""Command-line flags of ``timm-lap bench``: ``parse_args(argv)`` -> the checked options (``SystemExit`` if bad).

Stdlib only, so ``timm-lap bench --help`` and argument errors answer before torch and timm load.
``build_parser(parser)`` adds the flags to a given parser (the GPU scripts of benchmarks/ extend it).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from .parsing import CliParser

__all__ = ["CASES", "DEFAULT_MODELS", "DEFAULT_VARIANTS", "MIN_RELIABLE_REPEATS", "VARIANTS", "build_parser",
           "parse_args"]

DEFAULT_MODELS = ("resnet18", "resnet50", "convnext_atto", "vit_tiny_patch16_224")
VARIANTS = (
    "vanilla", "bare_hook", "timm_lap", "timm_lap_sample", "timm_lap_ungrouped", "timm_lap_grouped", "timm_lap_taps",
    "timm_lap_notaps", "timm_lap_torch", "naive",
)
DEFAULT_VARIANTS = ("vanilla", "timm_lap", "naive")
CASES = ("per-block", "paper", "models")
MIN_RELIABLE_REPEATS = 5  # fewer timing samples: the report says its ratios are unreliable

DESCRIPTION = ("Overhead benchmark: step time, saved activations and (CUDA) peak memory of timm-lap against vanilla "
               "training and a naive regulariser, the variants interleaved in one process.")
VARIANTS_HELP = ("variants of the paper and models cases (vanilla is always added); bare_hook: hooks that only keep "
                 "references; timm_lap_sample: transport from a quarter of each batch; timm_lap_ungrouped: one "
                 "autograd node per block; timm_lap_grouped: taps off, blocks grouped (CUDA too); "
                 "timm_lap_taps/_notaps: gradient taps forced on/off; timm_lap_torch: no fused CUDA kernels")


def _add_workload_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, metavar="CASE",
                   help="per-block: 40 tiny blocks, batch 4, 1 thread; paper: preact_flat9 w16 at b32 and "
                        "preact_resnet56 at b64; models: --models at --img-size/--batch-size; choices: "
                        + ", ".join(CASES))
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL",
                   help="timm model names of the models case")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS, metavar="VARIANT",
                   help=VARIANTS_HELP)
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="batch size of the models case")
    p.add_argument("--img-size", type=int, default=64, metavar="PX", help="image size of the models case")
    p.add_argument("--num-classes", type=int, default=10, metavar="N", help="classes of the models case")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device to time on (cpu, cuda, cuda:1, ...)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads of the paper and models cases (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=15, metavar="N",
                   help=f"timed samples per variant; under {MIN_RELIABLE_REPEATS} the ratios are flagged unreliable")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed samples per variant first")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for models and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile every variant (no saved-bytes column)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report to FILE as JSON")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The flags of ``timm-lap bench``, added to ``parser`` (a new :class:`CliParser` when None)."""
    parser = parser or CliParser(prog="timm-lap bench", description=DESCRIPTION)
    _add_workload_flags(parser)
    _add_run_flags(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check ``argv``; ``variants`` comes back with ``vanilla`` first (every ratio is against it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, least in (("--threads", args.threads, 1), ("--repeats", args.repeats, 1),
                               ("--warmup", args.warmup, 0), ("--batch-size", args.batch_size, 1),
                               ("--img-size", args.img_size, 1), ("--num-classes", args.num_classes, 1)):
        if value is not None and value < least:
            parser.error(f"{flag} must be >= {least}, got {value}")
    if "vanilla" not in args.variants:
        args.variants = ["vanilla", *args.variants]
    return args
