"""Hyperparameter sweeps on Ray Tune: sweep files (``tuning/*.yaml``), the trial trainable, the
objectives, and the exports. Importing this package does not import Ray."""

from .sweep import Sweep, SweepPlan, load_sweep, parse_sweep, plan_sweep

__all__ = ["Sweep", "SweepPlan", "load_sweep", "parse_sweep", "plan_sweep"]
