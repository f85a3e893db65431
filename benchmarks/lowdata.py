"""Low-data generalisation on a small timm ResNet: a preset of ``timm-lap compare``.

vanilla vs LAP (tau 1) vs a fixed-weight penalty (W chosen on a part carved from the training split), paired over
seeds, on scikit-learn digits (fixed 25 % test split) and Fashion-MNIST (official 10k test set), resnet10t, SGD +
cosine, short training. Each dataset writes ``<out-dir>/<dataset>/`` (runs.jsonl, summary.md, accuracy_vs_size.png).

    python -m benchmarks.lowdata --quick --datasets digits
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks import common as C

NAME = "lowdata"
DATASETS = {"digits": "sklearn/digits", "fashion_mnist": "torch/fashion_mnist"}
# Validation part carved from each training split for choosing W: digits' split has 1347 images (1000 must remain).
VALIDATION = {"digits": "0.2", "fashion_mnist": "2000"}

PRESETS: dict[str, dict[str, Any]] = {
    # "sizes": dataset -> {training images: epochs}; fewer epochs for larger sets keeps the step count similar.
    "smoke": {"sizes": {"digits": {100: 2}}, "seeds": ["0"], "weights": ["0.1", "1"], "select_seeds": ["100"]},
    "quick": {"sizes": {"digits": {100: 15, 300: 8, 1000: 4},
                        "fashion_mnist": {100: 15, 300: 8, 1000: 4, 5000: 2}},
              "seeds": ["0-4"], "weights": ["0.01", "0.1", "1"], "select_seeds": ["100"]},
    "full": {"sizes": {"digits": {100: 60, 300: 30, 1000: 15},
                       "fashion_mnist": {100: 60, 300: 30, 1000: 15, 5000: 8}},
             "seeds": ["0-9"], "weights": ["0.01", "0.1", "1"], "select_seeds": ["100", "101"]},
}


def compare_argv(preset: dict[str, Any], dataset: str) -> list[str]:
    """The ``timm-lap compare`` options and train flags of one dataset of the preset."""
    sizes = [f"{n}:{e}" for n, e in preset["sizes"][dataset].items()]
    return ["--methods", "vanilla", "lap", "fixed", "--sizes", *sizes, "--seeds", *preset["seeds"],
            "--weights", *preset["weights"], "--select-seeds", *preset["select_seeds"],
            "--val-from-train", VALIDATION[dataset], "--title", f"Low data: resnet10t on {dataset}",
            *C.resnet10t_recipe(DATASETS[dataset])]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = C.preset_parser(__doc__, NAME)
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=None,
                        help="restrict to these datasets (default: all of the preset)")
    opts = parser.parse_args(argv)
    preset = C.resolve_preset(opts, PRESETS)[1]
    datasets = opts.datasets or list(preset["sizes"])
    return C.run_compare_presets(opts, NAME, {ds: compare_argv(preset, ds) for ds in datasets})


if __name__ == "__main__":
    main()
