"""Quality and speed of the SASRec student on ML-100K (issue: student acceptance).

    uv run python -m bench.speed.student [hydra overrides...]

Trains with the default config in a child process and prints test NDCG@10 / HR@10 (history
masked and unmasked), epochs to best valid, seconds per epoch, training throughput, total wall
time and peak RSS. References measured on this machine (same split, full ranking, masked):
RecBole 1.2.1 SASRec 0.052 / 0.106 (23 min), SASRec.pytorch 0.0875 / 0.173 (874 s).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from bench.runner import best_card, read_metrics, run_measured


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.speed.student",
        description=__doc__.split("\n\n")[0],
        epilog="extra arguments are Hydra overrides of train-student, e.g. train.max_epochs=1",
    )
    _, overrides = parser.parse_known_args()
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        parser.error(
            f"unrecognised arguments {bad} (extra arguments must be Hydra overrides key=value)"
        )
    out = Path(tempfile.mkdtemp(prefix="bench-student-"))
    cmd = [
        "uv",
        "run",
        "--frozen",
        "train-student",
        f"paths.result_dir={out}",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]
    seconds, peak, run_dir = run_measured(cmd, out / "train.log")
    metrics, card = read_metrics(run_dir), best_card(run_dir)
    log_text = (Path(run_dir) / "train.log").read_text()  # Hydra's per-run log
    epochs = [float(s) for s in re.findall(r"epoch \d+ step \d+ \(([\d.]+)s\)", log_text)]
    train_samples = card["data"].get("train_samples")
    m, u = metrics["metrics_masked"], metrics["metrics_unmasked"]
    print(f"run_dir                 {run_dir}")
    print(
        f"test NDCG@10 / HR@10    masked {m['ndcg@10']:.4f} / {m['hr@10']:.4f}   unmasked "
        f"{u['ndcg@10']:.4f} / {u['hr@10']:.4f}"
    )
    print(f"test HR@1 of 20         {m['hr@1_of_20']:.4f}")
    print(
        f"best epoch              {card['metrics']['epoch'] + 1} of {len(epochs)} run (valid "
        f"ndcg@10 {card['metrics']['valid']['ndcg@10']:.4f})"
    )
    if epochs:
        per_epoch = sorted(epochs)[len(epochs) // 2]
        print(f"seconds per epoch       {per_epoch:.1f} (median, incl. validation)")
        if train_samples:
            print(
                f"training throughput     {train_samples / per_epoch:.0f} samples/s "
                "(prefix samples per epoch / s)"
            )
    print(f"total wall time         {seconds:.0f} s (incl. start-up and test)")
    print(f"peak RSS                {peak:.2f} GiB")
    print("target (masked)         NDCG@10 >= 0.090, HR@10 >= 0.175, < 300 s, < 2 GiB")


if __name__ == "__main__":
    main()
