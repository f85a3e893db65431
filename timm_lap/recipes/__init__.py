"""Training recipes shipped with the package: timm-style YAML configs for ``timm-lap train -c FILE``.

    timm-lap train -c "$(python -m timm_lap.recipes preact_flat9_digits)" --train-subset 300 --lap  # demo LAP run

``path(name)`` gives a recipe's file; ``flags(name)`` the same settings as command-line flags, for tools that
build ``timm-lap train`` argument lists (``timm-lap compare`` presets).
"""
from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

__all__ = ["flags", "names", "path"]


def names() -> list[str]:
    """The recipes shipped with the package."""
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def path(name: str) -> str:
    """The YAML file of recipe ``name`` (see :func:`names`)."""
    file = resources.files(__name__) / f"{name}.yaml"
    if not file.is_file():
        raise ValueError(f"no timm-lap recipe {name!r}; shipped recipes: {', '.join(names())}.")
    return str(file)


def flags(name: str, **overrides: Any) -> list[str]:
    """Recipe ``name`` (with ``overrides``, by flag name with underscores) as ``timm-lap train`` flags."""
    with open(path(name)) as f:
        settings = {**yaml.safe_load(f), **overrides}
    argv: list[str] = []
    for key, value in settings.items():
        argv.append("--" + key.replace("_", "-"))
        argv += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return argv
