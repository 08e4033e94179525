"""Does the teacher beat its own student? The sequence-mode teacher and its controls on ML-100K.

    uv run python -m bench.quality.teacher --student result/<run>/checkpoints/best [...]
        [--seeds S ...]
        [--runs main two-epochs three-epochs random-llm no-title-projector residual prefix longer]
        [--parallel J] [--out DIR] [--prefix-steps N] [--threads T] [overrides...]

Each run is `train-teacher experiment=cpu_demo` as a child process on the same student, with:
  main                 the CPU preset (sequence mode, its own query, student mix chosen on valid,
                       1 epoch)
  two-epochs           the main teacher for 2 epochs (the issue's 12-minute training budget, not
  three-epochs         the demo's 20 minutes end to end), or 3 epochs
  random-llm           the same LLM shape with random weights (does the pretrained LLM help?)
  no-title-projector   item tokens without the LLM's title state
  residual             the student's state plus an LLM correction (starts as the student), no mix
  prefix               prefix mode (iLoRA's prompt) for --prefix-steps steps: the same wall time
  longer               the main teacher trained 4x longer (4 epochs), outside the demo budget
With several --seeds, give one --student per seed (in the same order): each teacher is trained
with `seed=S` on the student of seed S, and every run also gets a pooled row (the per-user
difference averaged over seeds, then over users).
Printed per run and seed: the learning curve (valid NDCG@10 after each epoch, from TensorBoard;
main and longer validate the starting point too), test NDCG@10 / HR@10 (full ranking, history
masked), the ratio to the student, the paired per-user difference to the student with its SE
and bootstrap 95% interval (target: ratio >= 1.05 and difference > 2 SE), and the wall time of
the whole command. Extra arguments are Hydra overrides for every run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.runner import child_env, read_metrics, run_all, run_measured

RUNS = {
    "main": ["train.validate_at_start=true"],  # the curve's starting point (the demo skips it)
    "random-llm": ["teacher.llm_random_init=true"],
    "no-title-projector": ["teacher.use_title_projector=false"],
    "residual": ["teacher.residual_student_state=true", "teacher.student_mix=0"],
    "prefix": ["teacher.prompt_mode=prefix", "train.limit_val_batches=1.0"],
    "two-epochs": ["train.max_epochs=2"],
    "three-epochs": ["train.max_epochs=3"],
    "longer": ["train.max_epochs=4", "train.validate_at_start=true"],
}
TARGET_RATIO = 1.05


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality.teacher", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--student",
        type=Path,
        nargs="+",
        required=True,
        help="the student's checkpoints/best, one per --seeds entry",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[42], help="teacher seeds, one per --student"
    )
    parser.add_argument(
        "--parallel", type=int, default=1, help="runs at once, each with cores/parallel threads"
    )
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument(
        "--prefix-steps",
        type=int,
        default=40,
        help="train.max_steps of the prefix run (pick it to match main's training time)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="OMP threads per child (default: cores/parallel)"
    )
    parser.add_argument(
        "--out", type=Path, help="directory for the runs and logs (default: a new temp dir)"
    )
    args, overrides = parser.parse_known_args()
    if len(args.student) != len(args.seeds):
        parser.error(
            f"{len(args.seeds)} seeds need as many students (each teacher learns from its seed's "
            f"student), got {len(args.student)}"
        )
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        parser.error(
            f"unrecognised arguments {bad} (extra arguments must be Hydra overrides key=value)"
        )
    return args, overrides


def learning_curve(run_dir: Path, tag: str = "valid/ndcg@10") -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def compare(student_runs: list[Path], run_dirs: list[Path]) -> dict:
    """{metric: paired difference to the students}, pooled over seeds when there are several."""
    from compare.stats import paired_difference, per_sample, read_predictions

    students, teachers = (
        [read_predictions(s) for s in student_runs],
        [read_predictions(r) for r in run_dirs],
    )
    return {
        m: paired_difference(
            [per_sample(s, m) for s in students], [per_sample(t, m) for t in teachers]
        )
        for m in ("ndcg@10", "hr@10")
    }


def main() -> None:
    args, overrides = parse_args()
    student_runs = {
        seed: s.resolve().parent.parent for seed, s in zip(args.seeds, args.student, strict=True)
    }
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-teacher-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = child_env(args.parallel)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    for seed, run in student_runs.items():
        base = read_metrics(str(run))["metrics_masked"]
        print(
            f"student seed {seed} {run}: test NDCG@10 "
            f"{base['ndcg@10']:.4f}, HR@10 {base['hr@10']:.4f}"
        )
    print(f"runs in {out}; overrides {overrides or 'none'}\n", flush=True)

    def child(job: str, name: str, seed: str) -> tuple[float, float, Path]:
        extra = RUNS[name] + ([f"train.max_steps={args.prefix_steps}"] if name == "prefix" else [])
        student = student_runs[int(seed)] / "checkpoints" / "best"
        cmd = [
            "uv",
            "run",
            "--frozen",
            "train-teacher",
            "experiment=cpu_demo",
            "trainer.enable_progress_bar=false",
            f"seed={seed}",
            f"teacher.rec_model_checkpoint_path={student}",
            f"hydra.run.dir={out / job}",
            *extra,
            *overrides,
        ]
        seconds, peak, run_dir = run_measured(cmd, out / f"{job}.log", env)
        return seconds, peak, Path(run_dir)

    jobs = [(f"{name}_seed{seed}", name, [str(seed)]) for name in args.runs for seed in args.seeds]
    done = run_all(jobs, child, args.parallel)
    for name in args.runs:
        runs = {seed: done[f"{name}_seed{seed}"] for seed in args.seeds}
        for seed, (seconds, peak, run_dir) in runs.items():
            report(
                f"{name}, seed {seed}",
                [run_dir],
                [student_runs[seed]],
                f"{seconds:.0f} s wall, peak RSS {peak:.1f} GiB",
            )
        if len(runs) > 1:
            report(
                f"{name}, pooled over seeds {args.seeds}",
                [r for _, _, r in runs.values()],
                list(student_runs.values()),
                "means over seeds",
            )


def mean_metric(run_dirs: list[Path], metric: str) -> float:
    return sum(read_metrics(str(r))["metrics_masked"][metric] for r in run_dirs) / len(run_dirs)


def report(title: str, run_dirs: list[Path], student_runs: list[Path], cost: str) -> None:
    diffs = compare(student_runs, run_dirs)
    ndcg, hr = mean_metric(run_dirs, "ndcg@10"), mean_metric(run_dirs, "hr@10")
    ratio = ndcg / mean_metric(student_runs, "ndcg@10")
    print(f"[{title}] {run_dirs[0] if len(run_dirs) == 1 else ''} {cost}")
    if len(run_dirs) == 1:
        card = json.loads((run_dirs[0] / "checkpoints" / "best" / "card.json").read_text())[
            "metrics"
        ]
        curve = " -> ".join(f"{v:.4f}@{s}" for s, v in learning_curve(run_dirs[0]))
        print(
            f"    valid NDCG@10 by step: {curve}  (best: step "
            f"{card.get('global_step')}, epoch {card.get('epoch')})"
        )
    print(f"    test NDCG@10 {ndcg:.4f} (x{ratio:.3f} the student), HR@10 {hr:.4f}")
    print(
        f"    paired per-user difference to the student: NDCG@10 {diffs['ndcg@10'].text()}, "
        f"HR@10 {diffs['hr@10'].text()}"
    )
    verdict = (
        "met"
        if ratio >= TARGET_RATIO and diffs["ndcg@10"].significant() and diffs["ndcg@10"].mean > 0
        else "NOT met"
    )
    print(f"    target (x{TARGET_RATIO} and difference > 2 SE): {verdict}\n", flush=True)


if __name__ == "__main__":
    main()
