"""The Python half of `bash bench/gpu/check.sh --dry-run`, in one process (importing torch,
Lightning and transformers is most of its time): the CUDA tests the GPU run selects are
collected (so they import) and are not none, then the benchmark's code runs at toy sizes.

    python -m bench.gpu.dry_run TEST_FILE...
"""

from __future__ import annotations

import sys

import pytest


class Selection:
    """pytest plugin: the node ids a collection selected."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def pytest_collection_finish(self, session) -> None:
        self.ids = [item.nodeid for item in session.items]


def main(tests: list[str]) -> int:
    if not tests or tests[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if tests else 2
    # -s: modules imported while collecting keep the real stderr for their logs
    selection = Selection()
    code = pytest.main(
        ["--collect-only", "-q", "-s", "-m", "cuda", "-p", "no:cacheprovider", *tests],
        plugins=[selection],
    )
    if code != 0 or not selection.ids:
        print(
            f"error: collecting the CUDA tests of {' '.join(tests)} gave exit {code}, "
            f"{len(selection.ids)} selected"
        )
        return 1
    print(
        f"{len(selection.ids)} CUDA tests selected\n\n== benchmark code at toy sizes (CPU, fp32)",
        flush=True,
    )
    from bench.gpu import bench as gpu_bench

    gpu_bench.run(gpu_bench.DRY)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
