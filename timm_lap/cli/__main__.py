"""``python -m timm_lap.cli``: the ``timm-lap`` command."""
import sys

from . import main

sys.exit(main())
