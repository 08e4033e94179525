"""Test helpers for every trainer's command: run a Hydra entry point in-process or in a forked
child a test can kill, and the overrides of a seconds-long run on a tiny prepared dataset."""

from __future__ import annotations

from pathlib import Path


def run_cli(main, overrides: list[str]) -> None:
    """Run a Hydra entry point in-process, as `<command> <overrides>` would from a shell."""
    import sys

    argv = sys.argv
    sys.argv = ["prog", *overrides]
    try:
        main()
    finally:
        sys.argv = argv


def fork_cli(main, overrides: list[str], log: Path):
    """`<command> <overrides>` in a forked child process, its output in `log`: a real process a
    test can kill, without the ~10-20 s of imports a fresh interpreter spends. Run the parent on
    one thread (the `one_thread` fixture) so both compute bit for bit alike."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(
        target=_cli_child, args=(main, overrides, str(log))
    )
    child.start()
    return child


def _cli_child(main, overrides: list[str], log: str) -> None:
    import sys

    import torch

    # SIM115: no with block, the file lives as long as the child
    sys.stdout = sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115
    torch.set_num_threads(1)  # OpenMP pools do not survive fork; stay single-threaded
    run_cli(main, overrides)


def kill_after_first_epoch(
    main, overrides: list[str], run_dir: Path, log: Path, timeout: float = 240
) -> None:
    """Start a run in a child process and SIGKILL it as soon as its first resume checkpoint
    (checkpoints/last.ckpt) exists, i.e. during its second epoch."""
    import os
    import signal
    import time

    child = fork_cli(main, overrides, log)
    deadline = time.monotonic() + timeout
    while child.is_alive() and time.monotonic() < deadline:
        if (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
            os.kill(child.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    child.join(timeout=60)
    if child.exitcode != -signal.SIGKILL:
        raise AssertionError(
            f"the run was not killed mid-training (exit {child.exitcode}):\n"
            f"{Path(log).read_text()[-3000:]}"
        )


def tiny_run_overrides(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """Hydra overrides for a seconds-long run of any trainer on a tiny prepared dataset."""
    return [
        f"dataset.processed_dir={data}",
        f"hydra.run.dir={run_dir}",
        f"paths.result_dir={run_dir.parent}",
        "student.hidden_size=32",
        "student.num_blocks=1",
        "student.num_heads=1",
        "student.dropout=0.0",
        "student.max_seq_len=16",
        "train.batch_size=4",
        "train.lr=0.01",
        "eval.ks=[1,5]",
        "train.monitor=ndcg@5",
        "eval.mask_history=false",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
        *extra,
    ]
