"""The GPU path on a lent accelerator: `bash bench/gpu/check.sh [--dry-run]`."""
