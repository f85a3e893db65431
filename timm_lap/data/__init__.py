"""Datasets for ``timm-lap train``: bundled digits, IDX files (MNIST, Fashion-MNIST), timm's factory, and
seeded class-balanced subsets, hold-outs and label noise."""
from .datasets import *  # noqa: F403  (the public names of timm_lap.data before it became a package)
from .datasets import __all__ as __all__
