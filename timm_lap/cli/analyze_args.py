"""Command-line flags of ``timm-lap analyze``: ``parse_args(argv)`` -> the checked options (``SystemExit`` if bad).

Stdlib only, so ``timm-lap analyze --help`` and argument errors answer before torch and timm load.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from .parsing import CliParser

__all__ = ["PROG", "SMALL_DATASETS", "build_parser", "parse_args"]

PROG = "timm-lap analyze"
# The datasets with 1-channel input defaults (timm_lap.cli.train.DATASET_INPUT_DEFAULTS; a test keeps them equal).
SMALL_DATASETS = ("sklearn/digits", "torch/mnist", "torch/fashion_mnist")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog=PROG, description="Write a markdown report (energy profile, transport efficiency, "
                                         "trajectories, accuracy) on a timm model and a dataset split.")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="timm model name, as trained (default: the timm-lap train checkpoint's, with its "
                        "--model-kwargs)")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="timm checkpoint (timm-lap train last.pth.tar / model_best.pth.tar) or a state_dict file "
                        "(default: none, the freshly initialised model)")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="'sklearn/digits', 'torch/mnist', 'torch/fashion_mnist' or any timm dataset "
                        "('' = ImageFolder under --data-dir; default: the checkpoint's)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="dataset root folder (default: the checkpoint's)")
    p.add_argument("--dataset-download", action="store_true", default=False, help="download the dataset if missing")
    p.add_argument("--split", default=None, metavar="NAME",
                   help="split to analyse (default: the checkpoint's val split, else 'validation')")
    p.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="classifier outputs (default: the checkpoint's, else the dataset's)")
    p.add_argument("--in-chans", type=int, default=None, metavar="N",
                   help=f"input channels (default: the checkpoint's; 1-channel input defaults for "
                        f"{', '.join(SMALL_DATASETS)})")
    p.add_argument("--img-size", type=int, default=None, metavar="N", help="square input size (default: the model's)")
    p.add_argument("--input-size", type=int, nargs=3, default=None, metavar="N",
                   help="input as C H W (default: the checkpoint's, else the model's or the dataset's)")
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN",
                   help="per-channel normalisation mean (default: the checkpoint's, else the model's)")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="STD",
                   help="per-channel normalisation std (default: the checkpoint's, else the model's)")
    p.add_argument("--crop-pct", type=float, default=None, metavar="PCT",
                   help="centre-crop fraction (default: the checkpoint's, else the model's)")
    p.add_argument("--interpolation", default=None, metavar="NAME",
                   help="resize interpolation (default: the checkpoint's, else the model's)")
    p.add_argument("-b", "--batch-size", type=int, default=128, metavar="N", help="evaluation batch size")
    p.add_argument("--n", type=int, default=1000, metavar="N", help="points for the transport efficiency")
    p.add_argument("--max-batches", type=int, default=None, metavar="N",
                   help="batches for the energy profile (default: all)")
    p.add_argument("-j", "--workers", type=int, default=2, metavar="N", help="data loading processes")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=42, metavar="S", help="seeds the model initialisation and the dataset")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="folder for report.md and the plots (default: ./output/analyze/<model>)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check ``argv`` (``SystemExit`` with the flag's help on a bad value)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "n", "max_batches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 1, got {value}")
    if args.workers < 0:
        parser.error(f"argument -j/--workers: must be >= 0, got {args.workers}")
    return args
