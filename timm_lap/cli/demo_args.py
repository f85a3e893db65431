"""Command-line flags of ``timm-lap demo``: ``parse_args(argv)`` -> the checked options (``SystemExit`` if bad).

Stdlib only, so ``timm-lap demo --help`` and argument errors answer before torch and timm load.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from .parsing import CliParser

__all__ = ["DEFAULT_MODEL", "DEFAULT_RECIPE", "build_parser", "parse_args"]

DEFAULT_MODEL = "preact_flat9"  # one stage of 9 same-width pre-activation blocks: something for analyze to show
DEFAULT_RECIPE = "preact_flat9_digits"  # timm_lap/recipes/preact_flat9_digits.yaml
QUICK_EPOCHS, QUICK_SUBSET = 3, 200


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="timm-lap demo",
                  description="Vanilla vs least-action (LAP) training of a small pre-activation ResNet (one stage "
                              "of 9 same-width blocks) on scikit-learn's digits, on the CPU, no network: a table, a "
                              "plot, two checkpoints.")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="MODEL", help="timm model name")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, metavar="NAME",
                   help="training recipe of timm_lap/recipes (python -m timm_lap.recipes lists them)")
    p.add_argument("--train-subset", type=int, default=300, metavar="N", help="training images (class-balanced)")
    p.add_argument("--epochs", type=int, default=15, metavar="N", help="epochs of each run")
    p.add_argument("--lap-tau", type=float, default=1.0, metavar="T", help="LAP multiplier step: lam += T * task_loss")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the subset, initialisation and order")
    p.add_argument("--output", default="./output/demo", metavar="DIR",
                   help="folder for the two run folders (vanilla/, lap/) and demo.png")
    p.add_argument("--quick", action="store_true",
                   help=f"at most {QUICK_EPOCHS} epochs on {QUICK_SUBSET} images (a smoke test)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check ``argv``; ``--quick`` is applied (``epochs`` and ``train_subset`` capped)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value in (("--train-subset", args.train_subset), ("--epochs", args.epochs)):
        if value < 1:
            parser.error(f"argument {flag}: must be >= 1, got {value}")
    if args.lap_tau < 0:
        parser.error(f"argument --lap-tau: must be >= 0, got {args.lap_tau}")
    from ..recipes import names  # yaml and importlib.resources only

    if args.recipe not in names():
        parser.error(f"argument --recipe: no recipe {args.recipe!r}; shipped recipes: {', '.join(names())}")
    if args.quick:
        args.epochs, args.train_subset = min(args.epochs, QUICK_EPOCHS), min(args.train_subset, QUICK_SUBSET)
    return args
