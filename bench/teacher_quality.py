"""Does the teacher beat its own student? The sequence-mode teacher and its controls on ML-100K.

    uv run python bench/teacher_quality.py --student result/<run>/checkpoints/best
        [--runs main random-llm no-title-projector no-residual prefix longer] [--out DIR]
        [--prefix-steps N] [--threads T] [overrides...]

Each run is `train-teacher experiment=cpu_demo` as a child process on the same student, with:
  main                 the CPU preset (sequence mode, its own query, student mix chosen on valid, 1 epoch)
  random-llm           the same LLM shape with random weights (does the pretrained LLM help?)
  no-title-projector   item tokens without the LLM's title state
  residual             the student's state plus an LLM correction (starts as the student), no mix
  prefix               prefix mode (iLoRA's prompt) for --prefix-steps steps: the same wall time
  longer               the main teacher trained 4x longer (4 epochs), outside the demo budget
Printed per run: the learning curve (valid NDCG@10 after each epoch, from TensorBoard; main and
longer validate the starting point too), test NDCG@10 / HR@10 (full ranking, history masked), the ratio to the student,
the paired per-user difference to the student with its SE and bootstrap 95% interval (target:
ratio >= 1.05 and difference > 2 SE), and the wall time of the whole command. Extra arguments
are Hydra overrides for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.append(str(BENCH))
from _runner import read_metrics, run_measured  # noqa: E402

RUNS = {
    "main": ["train.validate_at_start=true"],  # the curve's starting point (the demo skips it)
    "random-llm": ["teacher.llm_random_init=true"],
    "no-title-projector": ["teacher.use_title_projector=false"],
    "residual": ["teacher.residual_student_state=true", "teacher.student_mix=0"],
    "prefix": ["teacher.prompt_mode=prefix", "train.limit_val_batches=1.0"],
    "longer": ["train.max_epochs=4", "train.validate_at_start=true"],
}
TARGET_RATIO = 1.05


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, required=True, help="the student's checkpoints/best")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--prefix-steps", type=int, default=40,
                        help="train.max_steps of the prefix run (pick it to match main's training time)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="OMP threads per child (default: all cores)")
    parser.add_argument("--out", type=Path, help="directory for the runs and logs (default: a new temp dir)")
    args, overrides = parser.parse_known_args()
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        parser.error(f"unrecognised arguments {bad} (extra arguments must be Hydra overrides key=value)")
    return args, overrides


def learning_curve(run_dir: Path, tag: str = "valid/ndcg@10") -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def compare(student_run: Path, run_dir: Path) -> dict:
    from recdata.stats import paired_difference, per_sample, read_predictions

    student, teacher = read_predictions(student_run), read_predictions(run_dir)
    return {m: paired_difference([per_sample(student, m)], [per_sample(teacher, m)]) for m in ("ndcg@10", "hr@10")}


def main() -> None:
    args, overrides = parse_args()
    student = args.student.resolve()
    student_run = student.parent.parent
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-teacher-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    base = read_metrics(str(student_run))["metrics_masked"]
    print(f"student {student}: test NDCG@10 {base['ndcg@10']:.4f}, HR@10 {base['hr@10']:.4f}")
    print(f"runs in {out}; overrides {overrides or 'none'}\n")
    for name in args.runs:
        extra = RUNS[name] + ([f"train.max_steps={args.prefix_steps}"] if name == "prefix" else [])
        cmd = ["uv", "run", "--frozen", "train-teacher", "experiment=cpu_demo", "trainer.enable_progress_bar=false",
               f"teacher.rec_model_checkpoint_path={student}", f"hydra.run.dir={out / name}", *extra, *overrides]  # fmt: skip
        seconds, peak, run_dir = run_measured(cmd, out / f"{name}.log", env)
        report(name, Path(run_dir), student_run, base, seconds, peak)


def report(name: str, run_dir: Path, student_run: Path, base: dict, seconds: float, peak: float) -> None:
    test = read_metrics(str(run_dir))["metrics_masked"]
    diffs = compare(student_run, run_dir)
    curve = " -> ".join(f"{v:.4f}@{s}" for s, v in learning_curve(run_dir))
    card = json.loads((run_dir / "checkpoints" / "best" / "card.json").read_text())["metrics"]
    ratio = test["ndcg@10"] / base["ndcg@10"]
    beyond = diffs["ndcg@10"].significant()
    print(f"[{name}] run {run_dir}, {seconds:.0f} s wall, peak RSS {peak:.1f} GiB")
    print(f"    valid NDCG@10 by step: {curve}  (best: step {card.get('global_step')}, epoch {card.get('epoch')})")
    print(f"    test NDCG@10 {test['ndcg@10']:.4f} (x{ratio:.3f} the student), HR@10 {test['hr@10']:.4f}")
    print(f"    paired per-user difference to the student: NDCG@10 {diffs['ndcg@10'].text()}, "
          f"HR@10 {diffs['hr@10'].text()}")  # fmt: skip
    verdict = "met" if ratio >= TARGET_RATIO and beyond and diffs["ndcg@10"].mean > 0 else "NOT met"
    print(f"    target (x{TARGET_RATIO} and difference > 2 SE): {verdict}\n", flush=True)


if __name__ == "__main__":
    main()
