"""Does distillation help? Baseline SASRec vs the DLLM2Rec-distilled SASRec on ML-100K.

    uv run python bench/distill.py [--teacher PATH] [--epochs N] [--samples SPEC] [--seed S]
                                   [--no-ablations] [--soft-labels DIR] [hydra overrides...]

With the newest `ilora-teacher` under result/ (or --teacher), computes the teacher's soft labels
with `precompute-soft-labels` unless valid ones already exist, then trains the baseline student
and the distilled student as child processes with the same seed, epochs and overrides, and
prints test NDCG@10 / HR@10 (full ranking, history masked) of both and the distilled/baseline
ratio (target >= 1.05). With ablations on (default) it adds one distilled run per ablation:
no ranking loss (lam=0), no embedding loss (ed_weight=0), one importance weight alone
(position / confidence / consistency), and the listwise ranking loss.
Extra arguments (Hydra overrides, e.g. dataset.limit_data_rows=300) go to every child.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the `distill` package: move its directory behind the installed
# packages, so `import distill` finds the package and `_runner` is still found here.
BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]
from _runner import read_metrics, run_measured  # noqa: E402

TARGET_RATIO = 1.05
ABLATIONS = [  # (row name, distill overrides); "full" is the main distilled run
    ("no ranking loss (lam=0)", ["distill.lam=0"]),
    ("no embedding loss (ed_weight=0)", ["distill.ed_weight=0"]),
    ("position weight only", ["distill.gamma_confidence=0", "distill.gamma_consistency=0"]),
    ("confidence weight only", ["distill.gamma_position=0", "distill.gamma_consistency=0"]),
    ("consistency weight only", ["distill.gamma_position=0", "distill.gamma_confidence=0"]),
    ("listwise ranking loss", ["distill.ranking_loss=listwise"]),
]


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--teacher", type=Path, help="teacher checkpoints/best (default: newest under --result-dir)"
    )
    parser.add_argument(
        "--result-dir",
        type=Path,
        default=Path("result"),
        help="where to look for the newest teacher",
    )
    parser.add_argument(
        "--epochs", type=int, help="train.max_epochs of both students (default: the config's)"
    )
    parser.add_argument(
        "--samples",
        default="last_n_per_user=1",
        help="distill.soft_label_samples (all | last_n_per_user=N)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--ablations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the ablation table",
    )
    parser.add_argument(
        "--soft-labels", type=Path, help="soft-label directory (default: next to the teacher run)"
    )
    parser.add_argument(
        "--out", type=Path, help="directory for the runs and logs (default: a new temp dir)"
    )
    args, overrides = parser.parse_known_args()
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        parser.error(
            f"unrecognised arguments {bad} (extra arguments must be Hydra overrides key=value)"
        )
    return args, overrides


def override_value(overrides: list[str], key: str, default: str) -> str:
    for o in overrides:
        if o.lstrip("+").split("=", 1)[0] == key:
            return o.split("=", 1)[1]
    return default


def soft_labels_dir(teacher: Path, spec: str, overrides: list[str]) -> Path:
    """Precompute's default directory; overrides that change which samples or lists are scored
    (dataset.*, distill.*) add a suffix, so the bench never reuses labels of another setting."""
    from omegaconf import OmegaConf

    from distill.precompute import soft_labels_dir as default_dir

    k = override_value(overrides, "distill.candidate_topk", "10")
    cfg = OmegaConf.create(
        {"distill": {"soft_labels_dir": None, "soft_label_samples": spec, "candidate_topk": k}}
    )
    path = default_dir(cfg, teacher)
    relevant = sorted(o for o in overrides if o.lstrip("+").startswith(("dataset.", "distill.")))
    if relevant:
        path = path.with_name(
            f"{path.name}_{hashlib.sha256(' '.join(relevant).encode()).hexdigest()[:8]}"
        )
    return path


def valid_soft_labels(directory: Path, teacher: Path, spec: str, k: int) -> bool:
    from distill.soft_labels import SoftLabelError, read_soft_labels
    from ilora.inference import teacher_digest

    card = json.loads((teacher / "card.json").read_text())
    try:
        labels = read_soft_labels(
            directory,
            fingerprint=card["data"]["fingerprint"],
            teacher=teacher_digest(teacher),
            min_k=k,
        )
    except SoftLabelError:
        return False
    return labels.card.get("samples") == spec


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def main() -> None:
    args, overrides = parse_args()
    from recdata.runs import find_newest_checkpoint

    teacher = (
        args.teacher or find_newest_checkpoint(args.result_dir, ("ilora-teacher",))
    ).resolve()
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-distill-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    soft = (args.soft_labels or soft_labels_dir(teacher, args.samples, overrides)).resolve()
    k = int(override_value(overrides, "distill.candidate_topk", "10"))
    common = [f"paths.result_dir={out}", "trainer.enable_progress_bar=false", f"seed={args.seed}",
              f"distill.teacher_checkpoint_path={teacher}", f"distill.soft_labels_dir={soft}",
              f"distill.soft_label_samples='{args.samples}'", *overrides]  # fmt: skip
    if args.epochs is not None:
        common.append(f"train.max_epochs={args.epochs}")

    def child(name: str, command: str, *extra: str) -> tuple[float, str]:
        cmd = ["uv", "run", "--frozen", command, f"hydra.run.dir={out / name}", *common, *extra]
        print(
            f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[3:5])} ...",
            file=sys.stderr,
            flush=True,
        )
        seconds, _, run_dir = run_measured(cmd, out / f"{name}.log")
        return seconds, run_dir

    if valid_soft_labels(soft, teacher, args.samples, k):
        soft_note = "reused"
    else:
        seconds, _ = child("precompute", "precompute-soft-labels")
        soft_note = f"precomputed in {seconds:.0f} s"
    soft_card = json.loads((soft / "card.json").read_text())

    runs: list[tuple[str, float, str]] = []
    seconds, run_dir = child("baseline", "train-student")
    runs.append(("baseline student", seconds, run_dir))
    seconds, run_dir = child("distilled", "distill")
    runs.append(("distilled (full)", seconds, run_dir))
    if args.ablations:
        for index, (name, extra) in enumerate(ABLATIONS):
            seconds, run_dir = child(f"ablation_{index}", "distill", *extra)
            runs.append((name, seconds, run_dir))

    masked = {name: read_metrics(run_dir)["metrics_masked"] for name, _, run_dir in runs}
    base, full = masked["baseline student"], masked["distilled (full)"]
    teacher_card = json.loads((teacher / "card.json").read_text())
    teacher_test = teacher_card.get("metrics", {}).get("test", {})
    print(f"teacher                 {teacher} (test NDCG@10 {teacher_test.get('ndcg@10', float('nan')):.4f}, "
          f"trained on limit_data_rows={teacher_card['data'].get('limit_data_rows')})")  # fmt: skip
    print(
        f"soft labels             {soft} ({soft_card['num_samples']} samples {soft_card['samples']}, K={soft_card['k']}, {soft_note})"
    )
    print(
        f"runs                    {out} (seed {args.seed}, epochs {args.epochs or 'config'}, overrides {overrides or 'none'})"
    )
    print(f"baseline   test NDCG@10 / HR@10 (masked)  {base['ndcg@10']:.4f} / {base['hr@10']:.4f}")
    print(f"distilled  test NDCG@10 / HR@10 (masked)  {full['ndcg@10']:.4f} / {full['hr@10']:.4f}")
    r = ratio(full["ndcg@10"], base["ndcg@10"])
    verdict = "met" if r >= TARGET_RATIO else "NOT met"
    print(
        f"distilled / baseline    NDCG@10 {r:.3f}  HR@10 {ratio(full['hr@10'], base['hr@10']):.3f}   (target NDCG@10 >= {TARGET_RATIO}: {verdict})"
    )
    print()
    print(
        f"{'run':<34} {'NDCG@10':>8} {'HR@10':>8} {'ratio':>7} {'best ep':>8} {'wall s':>7}  run_dir"
    )
    for name, seconds, run_dir in runs:
        m = masked[name]
        card = json.loads((Path(run_dir) / "checkpoints" / "best" / "card.json").read_text())
        print(f"{name:<34} {m['ndcg@10']:8.4f} {m['hr@10']:8.4f} {ratio(m['ndcg@10'], base['ndcg@10']):7.3f} "
              f"{card['metrics']['epoch'] + 1:8d} {seconds:7.0f}  {run_dir}")  # fmt: skip
    print(
        "ratio = NDCG@10 / baseline NDCG@10; metrics: full ranking over all items, history masked"
    )


if __name__ == "__main__":
    main()
