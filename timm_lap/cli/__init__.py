"""The ``timm-lap`` command: ``timm-lap train|compare|demo|analyze|bench ...``.

Each command has a light argument module (stdlib only) and a module that runs it: the arguments are parsed
first, so ``--help`` and argument errors answer at once, and torch and timm load only for a real run.
"""
from __future__ import annotations

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    runner: str  # module with main(argv)
    arguments: str  # stdlib-only module with parse_args(argv): help, argument errors
    summary: str


COMMANDS = {
    "train": Command("timm_lap.cli.train", "timm_lap.cli.train_args",
                     "timm's train.py flags plus --lap (least-action training)"),
    "compare": Command("timm_lap.cli.compare", "timm_lap.cli.compare",
                       "paired multi-seed comparison: vanilla vs LAP vs fixed weight on your data"),
    "demo": Command("timm_lap.cli.demo", "timm_lap.cli.demo_args",
                    "vanilla vs LAP on scikit-learn digits: table and plot (the main job)"),
    "analyze": Command("timm_lap.cli.analyze", "timm_lap.cli.analyze_args",
                       "report a trained model's transport: energy profile, trajectories, efficiency"),
    "bench": Command("timm_lap.cli.bench", "timm_lap.cli.bench_args",
                     "overhead benchmark: timm-lap vs vanilla vs a naive regulariser"),
}


def _usage() -> str:
    lines = ["usage: timm-lap COMMAND [ARGS]   (timm-lap COMMAND --help for its flags)", "", "commands:"]
    return "\n".join(lines + [f"  {name:8s} {command.summary}" for name, command in COMMANDS.items()])


def main(argv: list[str] | None = None) -> int:
    """``timm-lap COMMAND ARGS``: parse ARGS with the command's light parser, then run the command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"{_usage()}\n\ntimm-lap: unknown command {argv[0]!r}{hint}", file=sys.stderr)
        return 2
    command = COMMANDS[argv[0]]
    importlib.import_module(command.arguments).parse_args(argv[1:])  # exits here on --help or a bad flag
    importlib.import_module(command.runner).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
