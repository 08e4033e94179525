"""Shared by the benchmarks and experiments (``from bench.runner import ...``): run a pipeline
command as a child process and measure its wall time and peak RSS, read its metrics and card."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def run_measured(
    cmd: list[str], log_path: Path, env: dict | None = None
) -> tuple[float, float, str]:
    """(seconds, peak RSS of the largest child in GiB, run_dir printed on the last line)."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    seconds = time.perf_counter() - started
    log_path.with_suffix(".out").write_text(proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log_path}")
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    run_dir = proc.stdout.strip().splitlines()[-1].removeprefix("run_dir: ")
    return seconds, peak_gib, run_dir


def read_metrics(run_dir: str) -> dict:
    from runkit.evaluation import read_metrics as read_metrics_file

    return read_metrics_file(Path(run_dir) / "test_metrics.json")


def best_card(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "checkpoints" / "best" / "card.json").read_text())


def child_env(parallel: int) -> dict:
    """Split the cores between parallel children (oversubscribed threads make both slower).
    Results do not depend on the thread count: the runs are deterministic per seed."""
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def run_all(jobs: list[tuple[str, str, list[str]]], child, parallel: int) -> dict:
    """Run (job name, command, overrides) children, `parallel` at a time -> {name: child's
    result}."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {name: pool.submit(child, name, command, *extra) for name, command, extra in jobs}
        return {name: future.result() for name, future in futures.items()}
