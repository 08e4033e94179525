"""runkit: the run infrastructure every trainer shares (runs, configs, checkpoints, recipe,
evaluation)."""

__version__ = "0.1.0"
