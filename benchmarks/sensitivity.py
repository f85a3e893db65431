"""Sensitivity of LAP to the multiplier step tau and the initial multiplier lambda0: a preset of
``timm-lap compare`` (digits, resnet10t; every setting and a vanilla reference share seeds and subsets).

    python -m benchmarks.sensitivity --quick
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks import common as C

NAME = "sensitivity"

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"size": 100, "seeds": ["0"], "epochs": 1, "taus": ["1"], "lambda0s": ["0.1", "1"]},
    "quick": {"size": 300, "seeds": ["0-1"], "epochs": 8, "taus": ["0.1", "1", "10"], "lambda0s": ["0.1", "1"]},
    "full": {"size": 300, "seeds": ["0-4"], "epochs": 30, "taus": ["0.1", "1", "10"], "lambda0s": ["0.1", "1"]},
}


def compare_argv(preset: dict[str, Any]) -> list[str]:
    methods = ["vanilla"] + [f"lap:tau={t},lambda0={l0}" for t in preset["taus"] for l0 in preset["lambda0s"]]
    return ["--methods", *methods, "--sizes", f"{preset['size']}:{preset['epochs']}", "--seeds", *preset["seeds"],
            "--title", "LAP sensitivity to tau and lambda0 (resnet10t, digits)", *C.resnet10t_recipe("sklearn/digits")]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    opts = C.preset_parser(__doc__, NAME).parse_args(argv)
    preset = C.resolve_preset(opts, PRESETS)[1]
    return C.run_compare_presets(opts, NAME, {"digits": compare_argv(preset)})


if __name__ == "__main__":
    main()
