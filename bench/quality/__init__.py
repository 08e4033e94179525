"""Quality experiments: `uv run python -m bench.quality.<name> --help` (and distill_search.sh)."""
