"""Does distillation help? Baseline SASRec vs the DLLM2Rec-distilled SASRec on ML-100K.

    uv run python -m bench.quality.distill [--teacher PATH] [--epochs N] [--samples SPEC]
                                           [--seeds S ...] [--parallel J] [--no-ablations]
                                           [--soft-labels DIR] [overrides...]

With the newest `ilora-teacher` under result/ (or --teacher), computes the teacher's soft labels
with `precompute-soft-labels` unless valid ones already exist, then trains the baseline student
and the distilled student as child processes with the same seed, epochs and overrides, and
prints test NDCG@10 / HR@10 (full ranking, history masked) of both and the distilled/baseline
ratio (target >= 1.05). With several --seeds every row is the mean over seeds (± SD), with the
per-user paired difference to the same seed's baseline: on ML-100K's 943 test users one seed's
NDCG@10 moves by ~5% between seeds, as much as the effect being measured.
With ablations on (default) it adds one distilled run per ablation: no ranking loss (lam=0),
no embedding loss (ed_weight=0), one importance weight alone (position / confidence /
consistency), and the listwise ranking loss.
Extra arguments (Hydra overrides, e.g. dataset.limit_data_rows=300) go to every child.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.runner import child_env, read_metrics, run_all, run_measured

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
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality.distill", description=__doc__.split("\n\n")[0]
    )
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
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[42],
        help="one baseline and one distilled run (and ablations) per seed; the table gives the "
        "mean",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="children run at once, each with cores/parallel threads (2 on a 2-core machine is "
        "~1.3x faster)",
    )
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


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def per_user(run_dir: str, metric: str = "ndcg@10"):
    """Per-user test metric (key order) from the run's test_predictions.parquet."""
    from compare.stats import per_sample, read_predictions

    return per_sample(read_predictions(Path(run_dir)), metric)


def plan_runs(ablations: bool) -> list[tuple[str, str, list[str]]]:
    """(row name, command, extra overrides) per run type, in table order."""
    rows = [("baseline student", "train-student", []), ("distilled (full)", "distill", [])]
    if ablations:
        rows += [(name, "distill", extra) for name, extra in ABLATIONS]
    return rows


def main() -> None:
    args, overrides = parse_args()
    from runkit.runs import find_newest_checkpoint

    teacher = (
        args.teacher or find_newest_checkpoint(args.result_dir, ("ilora-teacher",))
    ).resolve()
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-distill-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    soft = (args.soft_labels or soft_labels_dir(teacher, args.samples, overrides)).resolve()
    k = int(override_value(overrides, "distill.candidate_topk", "10"))
    common = [
        f"paths.result_dir={out}",
        "trainer.enable_progress_bar=false",
        f"distill.teacher_checkpoint_path={teacher}",
        f"distill.soft_labels_dir={soft}",
        f"distill.soft_label_samples='{args.samples}'",
        *overrides,
    ]
    if args.epochs is not None:
        common.append(f"train.max_epochs={args.epochs}")
    env = child_env(args.parallel)

    def child(name: str, command: str, *extra: str) -> tuple[float, str]:
        cmd = ["uv", "run", "--frozen", command, f"hydra.run.dir={out / name}", *common, *extra]
        print(
            f"[{time.strftime('%H:%M:%S')}] {name}: {command} {' '.join(extra)}",
            file=sys.stderr,
            flush=True,
        )
        seconds, _, run_dir = run_measured(cmd, out / f"{name}.log", env)
        return seconds, run_dir

    if valid_soft_labels(soft, teacher, args.samples, k):
        soft_note = "reused"
    else:
        seconds, _ = child("precompute", "precompute-soft-labels", f"seed={args.seeds[0]}")
        soft_note = f"precomputed in {seconds:.0f} s"
    soft_card = json.loads((soft / "card.json").read_text())

    rows = plan_runs(args.ablations)
    jobs = [
        (f"{index}_seed{seed}", command, [*extra, f"seed={seed}"])
        for index, (_, command, extra) in enumerate(rows)
        for seed in args.seeds
    ]
    done = run_all(jobs, child, args.parallel)
    runs = {
        name: [done[f"{index}_seed{seed}"] for seed in args.seeds]
        for index, (name, _, _) in enumerate(rows)
    }
    report(teacher, soft, soft_card, soft_note, out, args, overrides, runs)


def report(teacher, soft, soft_card, soft_note, out, args, overrides, runs) -> None:
    masked = {
        name: [read_metrics(run_dir)["metrics_masked"] for _, run_dir in rs]
        for name, rs in runs.items()
    }
    teacher_card = json.loads((teacher / "card.json").read_text())
    teacher_test = teacher_card.get("metrics", {}).get("test", {})
    print(
        f"teacher                 {teacher} (test NDCG@10 "
        f"{teacher_test.get('ndcg@10', float('nan')):.4f}, trained on "
        f"limit_data_rows={teacher_card['data'].get('limit_data_rows')})"
    )
    print(
        f"soft labels             {soft} ({soft_card['num_samples']} samples "
        f"{soft_card['samples']}, K={soft_card['k']}, {soft_note})"
    )
    print(
        f"runs                    {out} (seeds {args.seeds}, epochs {args.epochs or 'config'}, "
        f"overrides {overrides or 'none'})"
    )
    base_ndcg = [m["ndcg@10"] for m in masked["baseline student"]]
    base_mean = mean_sd(base_ndcg)[0]
    from compare.stats import paired_difference

    base_users = [per_user(run_dir) for _, run_dir in runs["baseline student"]]
    print()
    print(
        f"{'run':<34} {'NDCG@10':>15} {'HR@10':>7} {'ratio':>6} "
        f"{'paired diff ± SE [95% CI]':>36}  {'per-seed ratio':<20} {'wall s':>6}"
    )
    for name, rs in runs.items():
        ndcg = [m["ndcg@10"] for m in masked[name]]
        mean, sd = mean_sd(ndcg)
        hr = mean_sd([m["hr@10"] for m in masked[name]])[0]
        diff = paired_difference(base_users, [per_user(run_dir) for _, run_dir in rs])
        per_seed = " ".join(f"{ratio(a, b):.3f}" for a, b in zip(ndcg, base_ndcg, strict=True))
        seconds = sum(s for s, _ in rs) / len(rs)
        print(
            f"{name:<34} {mean:8.4f}±{sd:.4f} {hr:7.4f} {ratio(mean, base_mean):6.3f} "
            f"{diff.text():>36}  {per_seed:<20} {seconds:6.0f}"
        )
    full = mean_sd([m["ndcg@10"] for m in masked["distilled (full)"]])[0]
    verdict = "met" if ratio(full, base_mean) >= TARGET_RATIO else "NOT met"
    print(
        f"distilled / baseline NDCG@10 (mean over seeds) {ratio(full, base_mean):.3f} "
        f"(target >= {TARGET_RATIO}: {verdict})"
    )
    print(
        "NDCG@10 mean±SD over seeds; ratio = mean / baseline mean; paired diff = per-user NDCG@10 "
        "difference to the baseline of the same seed, averaged over seeds per user, then over "
        "users (± SE, bootstrap 95% interval over users)"
    )
    print("metrics: test split, full ranking over all items, history masked")


if __name__ == "__main__":
    main()
