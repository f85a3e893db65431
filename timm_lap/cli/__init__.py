"""The ``timm-lap`` command: ``timm-lap train|demo|analyze|bench ...``."""
from __future__ import annotations

import sys

COMMANDS = {
    "train": ("timm_lap.cli.train", "timm's train.py flags plus --lap (least-action training)"),
    "compare": ("timm_lap.cli.compare", "paired multi-seed comparison: vanilla vs LAP vs fixed weight on your data"),
    "demo": ("timm_lap.cli.demo", "vanilla vs LAP on scikit-learn digits: table and plot (the main job)"),
    "analyze": ("timm_lap.cli.analyze", "report a trained model's transport: energy profile, trajectories, efficiency"),
    "bench": ("timm_lap.cli.bench", "overhead benchmark: timm-lap vs vanilla vs a naive regulariser"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: timm-lap COMMAND [ARGS]", "", "commands:"]
        lines += [f"  {name:8s} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("\n".join(lines), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ntimm-lap: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module_name, _ = COMMANDS[argv[0]]
    module = __import__(module_name, fromlist=["main"])
    module.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
