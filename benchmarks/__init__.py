"""Benchmark and study scripts for timm-lap (not shipped in the wheel).

Presets over ``timm-lap compare`` (``lowdata``, ``sensitivity``, ``paper_regime``, ``energy_bias``), the CPU/GPU
overhead and profiling scripts (``overhead``, ``per_tensor_ab``, ``gpu_profile``, ``gpu_host_time``, ``gpu_ablation``,
``gpu_sync_check``) with their shared helpers (``common``, ``gpu_timing``), the shell drivers ``gpu_check.sh`` and
``paper_regime.sh``, and the measured results under ``results/``. Run a script as a module from the repository root,
e.g. ``python -m benchmarks.lowdata --quick`` or ``python -m benchmarks.paper_regime study``; each takes ``--help``.
"""
