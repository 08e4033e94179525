"""Small prepared datasets for tests of every package (synthetic, or a slice of real ML-100K)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from recdata.prepare import build_contract, ensure_prepared
from recdata.sources import dataset_spec


def write_recbole_raw(raw_dir: Path, sequences: Sequence[Sequence[int]], titles: dict[int, str] | None = None) -> Path:
    """Write user sequences (raw item ids, chronological) in the RecBole ml-100k layout."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user, seq in enumerate(sequences, start=1):
        lines += [f"{user}\t{item}\t{1 + (user + t) % 5}\t{883_612_800 + 100 * t}" for t, item in enumerate(seq)]
    (raw_dir / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    items = sorted({i for seq in sequences for i in seq})
    titles = titles or {}
    item_lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    item_lines += [f"{i}\t{titles.get(i, f'Movie {i}')}\t1995\tDrama" for i in items]
    (raw_dir / "ml-100k.item").write_text("\n".join(item_lines) + "\n")
    return raw_dir


def make_prepared(root: Path, sequences: Sequence[Sequence[int]], titles: dict[int, str] | None = None) -> Path:
    """A prepared dataset directory built from the given sequences (through the real prepare)."""
    raw = write_recbole_raw(Path(root) / "raw", sequences, titles)
    out = Path(root) / "processed"
    build_contract(dataset_spec("ml-100k"), raw, out)
    return out


def real_ml100k(root: Path, cache_dir: Path) -> Path:
    """The embedded MovieLens-100K, prepared under `root` (fetched from the recbole wheel)."""
    return ensure_prepared("ml-100k", Path(root) / "ml-100k", Path(root) / "processed" / "ml-100k", cache_dir)


def cyclic_sequences(num_users: int = 10, cycle: int = 40, length: int = 14, step: int = 4) -> list[list[int]]:
    """Deterministic next-item rule (item i -> i+1 mod cycle). Users start `step` apart around
    the cycle, so every valid/test transition also occurs in another user's training part and a
    model can learn HR@1 = 1."""
    return [[(u * step + t) % cycle + 1 for t in range(length)] for u in range(num_users)]


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

    child = multiprocessing.get_context("fork").Process(target=_cli_child, args=(main, overrides, str(log)))
    child.start()
    return child


def _cli_child(main, overrides: list[str], log: str) -> None:
    import sys

    import torch

    sys.stdout = sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 (lives as long as the child)
    torch.set_num_threads(1)  # OpenMP pools do not survive fork; stay single-threaded
    run_cli(main, overrides)


def kill_after_first_epoch(main, overrides: list[str], run_dir: Path, log: Path, timeout: float = 240) -> None:
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
        raise AssertionError(f"the run was not killed mid-training (exit {child.exitcode}):\n{Path(log).read_text()[-3000:]}")


def tiny_run_overrides(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """Hydra overrides for a seconds-long run of any trainer on a tiny prepared dataset."""
    return [
        f"dataset.processed_dir={data}", f"hydra.run.dir={run_dir}", f"paths.result_dir={run_dir.parent}",
        "student.hidden_size=32", "student.num_blocks=1", "student.num_heads=1", "student.dropout=0.0",
        "student.max_seq_len=16", "train.batch_size=4", "train.lr=0.01", "eval.ks=[1,5]", "train.monitor=ndcg@5",
        "eval.mask_history=false", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        *extra,
    ]  # fmt: skip
