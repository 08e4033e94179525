"""Benchmarks and experiments, run as modules from the repository root (no install, no sys.path
edits): ``uv run python -m bench.<group>.<name> --help``.

- ``bench.speed``: speed and memory of each step (data, student, teacher, teacher service);
- ``bench.quality``: quality experiments (does distillation help, does the teacher beat its
  student);
- ``bench.gpu``: the GPU path on a lent accelerator (``bash bench/gpu/check.sh [--dry-run]``).

Helpers shared by the groups live in :mod:`bench.runner`.
"""
