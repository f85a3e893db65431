"""What a trained network does to the data: energy profiles, particle trajectories, transport efficiency
(:mod:`.measure`), the plotting helper every command uses (:mod:`.plotting`) and the statistics behind
``timm-lap compare`` (:mod:`.stats`). Needs the ``analysis`` extra (POT, matplotlib) for the optimal-transport
and plotting parts.
"""
from .measure import *  # noqa: F403  (the public names of timm_lap.analysis before it became a package)
from .measure import __all__ as __all__
