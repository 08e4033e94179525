"""Speed and memory of each pipeline step: `uv run python -m bench.speed.<name> --help`."""
