"""What a trained network does to the data: energy profiles, particle trajectories, transport efficiency
(:mod:`.measure`), their figures and the plotting helpers every command uses (:mod:`.plotting`), the markdown
report of ``timm-lap analyze`` (:mod:`.report`) and the statistics behind ``timm-lap compare`` (:mod:`.stats`).
Needs the ``analysis`` extra (POT, matplotlib) for the optimal-transport and plotting parts.
"""
from .measure import energy_profile, same_width_stages, trajectories, transport_efficiency, validation_transport
from .plotting import draw_trajectories, plot_energy_profile, plot_trajectories

__all__ = [  # the public names of timm_lap.analysis before it became a package
    "draw_trajectories",
    "energy_profile",
    "validation_transport",
    "plot_energy_profile",
    "plot_trajectories",
    "same_width_stages",
    "trajectories",
    "transport_efficiency",
]
