"""``python -m timm_lap.recipes NAME``: print the path of a shipped recipe (no NAME: list them)."""
import sys

from . import names, path

if len(sys.argv) > 1:
    print(path(sys.argv[1]))
else:
    print("\n".join(names()))
