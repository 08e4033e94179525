"""Where does the LLM pay? The student, the teacher with item text on its scoring side, its
controls, and the students they distil, compared on every slice (target popularity head/tail/cold,
user history short/long) with paired per-user differences pooled over seeds.

    uv run python -m bench.quality.llm_share --work DIR [--dataset ml-100k | --synthetic U,I,N]
        [--cold random:0.1] [--seeds 42 1 2] [--variants main,random] [--distill main]
        [--parallel 2] [overrides...]

Per seed S: the student (`train-student experiment=cpu_demo seed=S`), one teacher per variant on
that student (`train-teacher ... seed=S`), and for the `--distill` variants their soft labels and
distilled student (same seed). Variants (teacher overrides on top of experiment=cpu_demo):

    main       text on both sides: title projector (input) + text scoring (teacher.text_scoring)
    random     main with random LLM weights (the same architecture and tokenizer)
    inputonly  text on the input side only (the teacher before text scoring)
    notext     no text at all (no title projector, no text scoring; its distillation ed_weight=0)
    deep       main with text states read at all 30 of SmolLM2's layers (the body keeps 8)
    textdrop   main with teacher.text_id_dropout=0.5 (an item's ID row left out of half the
               training steps, so the text part learns to score it alone)
    randomdrop textdrop with random LLM weights
    deepdrop   textdrop with text states read at all 30 layers (deep's control for textdrop)
    textdrop2ep, randomdrop2ep  textdrop and randomdrop trained for two epochs (train.max_epochs=2
               on the teacher only; compared with each other and with the one-epoch textdrop)
    textfast, randomfast  textdrop and randomdrop whose text projector learns at 10x the lr
               (train.text_projector_lr_scale=10; compared with each other and with textdrop)
    textfast2ep, randomfast2ep  textfast and randomfast trained for two epochs (compared with
               each other and with the one-epoch textfast)

The report compares every model with the student (a distilled one: with its baseline, the same
student), and each pretrained teacher (main, textdrop) and the student distilled from it with its
controls that were run (CONTROLS): random weights, text on the input side only, no text, deep text
states.

Runs are kept in DIR (a finished run is not trained again when the command is repeated), so the
plan can be grown one variant or seed at a time. `--synthetic U,I,N` prepares a synthetic dataset
(recdata.synthetic: items in clusters named by their text, users who prefer a few clusters) of U
users, I items and N interactions; it is synthetic, and the text carries its preference structure
by construction. Extra arguments (Hydra overrides) go to every run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench.runner import child_env, run_all, run_measured

VARIANTS = {
    "main": ["teacher.text_scoring=true"],
    "random": ["teacher.text_scoring=true", "teacher.llm_random_init=true"],
    "inputonly": [],
    "notext": ["teacher.use_title_projector=false"],
    "deep": ["teacher.text_scoring=true", "teacher.text_state_layers=30"],
    "textdrop": ["teacher.text_scoring=true", "teacher.text_id_dropout=0.5"],
    "randomdrop": [
        "teacher.text_scoring=true",
        "teacher.text_id_dropout=0.5",
        "teacher.llm_random_init=true",
    ],
    "deepdrop": [
        "teacher.text_scoring=true",
        "teacher.text_id_dropout=0.5",
        "teacher.text_state_layers=30",
    ],
}
# the same teachers with a text projector that learns 10x faster: at the common lr one epoch
# leaves the text part ~1/3 (synthetic) to ~1/8 (ML-100K) of an ID row's norm, its weights at
# about the most Adam can move them in that many steps; 10x lets text reach an ID row's scale
FAST_TEXT = "train.text_projector_lr_scale=10"
VARIANTS |= {"textfast": [*VARIANTS["textdrop"], FAST_TEXT]}
VARIANTS |= {"randomfast": [*VARIANTS["randomdrop"], FAST_TEXT]}
# the same teachers trained for two epochs (the teacher's own train.max_epochs; students and
# distillation keep theirs), to see whether a teacher that leans less on its student shows more
TWO_EPOCHS = ("textdrop", "randomdrop", "textfast", "randomfast")
VARIANTS |= {f"{v}2ep": [*VARIANTS[v], "train.max_epochs=2"] for v in TWO_EPOCHS}
# each pretrained teacher's controls, reported as pretrained - control
CONTROLS = {
    "main": ("random", "inputonly", "notext", "deep"),
    "textdrop": ("randomdrop", "inputonly", "notext", "deepdrop"),
    "textdrop2ep": ("randomdrop2ep", "textdrop"),
    "textfast": ("randomfast", "textdrop"),
    "textfast2ep": ("randomfast2ep", "textfast"),
}
DISTILL_EXTRA = {"notext": ["distill.ed_weight=0"]}
# HR@100 reads the cold slice, where no model here reaches the top 10: a never-seen item's score
# (text alone) has to beat every learnt row, so whether text moves it up at all shows first there.
METRICS = ("ndcg@10", "hr@10", "hr@100")


def command(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


class Plan:
    def __init__(self, args, overrides: list[str]):
        self.work, self.args = args.work, args
        self.common = [
            "experiment=cpu_demo",
            f"paths.result_dir={args.work / 'result'}",
            *overrides,
        ]
        if args.cold:
            self.common += [f"dataset.cold_items={args.cold}"]
        self.manifest_path = args.work / "runs.json"
        self.manifest = (
            json.loads(self.manifest_path.read_text()) if self.manifest_path.is_file() else {}
        )

    def run(self, name: str, cmd: str, *extra: str) -> str:
        """A run's directory, training it unless a finished one is recorded."""
        done = self.manifest.get(name)
        if done and (Path(done) / "run_complete.json").is_file():
            return done
        run_dir = self.work / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        argv = [command(cmd), *self.common, f"hydra.run.dir={run_dir}", *extra]
        seconds, peak, printed = run_measured(
            argv, logs / f"{name}.log", env=child_env(self.args.parallel)
        )
        print(f"{name}: {seconds:.0f} s, peak {peak:.2f} GiB -> {printed}", flush=True)
        self.manifest[name] = printed
        self.manifest_path.write_text(json.dumps(self.manifest, indent=2))
        return printed

    def seed(self, seed: int) -> None:
        student = self.run(f"student_s{seed}", "train-student", f"seed={seed}")
        best = Path(student) / "checkpoints" / "best"
        teachers = [
            (
                v,
                "train-teacher",
                [f"seed={seed}", f"teacher.rec_model_checkpoint_path={best}", *VARIANTS[v]],
            )
            for v in self.args.variants
        ]
        jobs = [(f"teacher_{v}_s{seed}", cmd, extra) for v, cmd, extra in teachers]
        done = run_all(jobs, self.run, self.args.parallel)
        for v in self.args.distill:
            teacher = Path(done[f"teacher_{v}_s{seed}"]) / "checkpoints" / "best"
            labels = [
                f"distill.teacher_checkpoint_path={teacher}",
                *DISTILL_EXTRA.get(v, []),
                f"distill.soft_labels_dir={self.work / 'soft' / f'{v}_s{seed}'}",
            ]
            if not (self.work / "soft" / f"{v}_s{seed}" / "card.json").is_file():
                self.manifest.pop(f"labels_{v}_s{seed}", None)
                run_measured(
                    [command("precompute-soft-labels"), *self.common, *labels],
                    self.work / "logs" / f"labels_{v}_s{seed}.log",
                    env=child_env(1),
                )
            self.run(f"distilled_{v}_s{seed}", "distill", f"seed={seed}", *labels)


def prepare_synthetic(spec: str, work: Path) -> list[str]:
    """Prepare the synthetic dataset once; the overrides that select it."""
    from recdata.synthetic import generate

    users, items, interactions = (int(float(x)) for x in spec.split(","))
    name = f"synthetic-{users}-{items}-{interactions}"
    processed = work / "data" / "processed" / name
    if not (processed / "meta.json").is_file():
        inter, item_file = generate(users, items, interactions, seed=0, id_style="str").write_csv(
            work / "csv"
        )
        out = run_measured_prepare(name, inter, item_file, processed)
        print(out)
    return [f"dataset.name={name}", f"paths.data_dir={work / 'data'}"]


def run_measured_prepare(name: str, inter: Path, items: Path, out: Path) -> str:
    import subprocess

    args = [
        command("recdata"),
        "prepare",
        name,
        "--from",
        str(inter),
        "--items",
        str(items),
        "--out",
        str(out),
    ]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"recdata prepare failed: {result.stderr.strip()}")
    return result.stdout


# -- the report ------------------------------------------------------------------------------------
def predictions(manifest: dict, name: str):
    import pyarrow.parquet as pq

    return pq.read_table(Path(manifest[name]) / "test_predictions.parquet")


def pooled(manifest: dict, seeds, base: str, other: str, group: str | None, metric: str):
    """Paired per-user difference other - base, each user's averaged over the seeds."""
    from compare.stats import in_slice, paired_difference, per_sample

    bases, others = [], []
    for s in seeds:
        b, o = predictions(manifest, f"{base}_s{s}"), predictions(manifest, f"{other}_s{s}")
        keep = slice(None) if group is None else in_slice(b, group)
        bases.append(per_sample(b, metric)[keep])
        others.append(per_sample(o, metric)[keep])
    return (
        paired_difference(bases, others),
        sum(x.mean() for x in others) / len(seeds),
        sum(x.mean() for x in bases) / len(seeds),
    )


def report_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(model, reference) rows of the report, for the runs done on every seed: every model vs the
    student (a distilled one's baseline), then each pretrained teacher and its distilled student
    vs each control that was run."""
    pairs = [(n, "student") for n in names if n != "student"]
    pairs += [
        (f"{model}_{pretrained}", f"{model}_{control}")
        for model in ("teacher", "distilled")
        for pretrained, controls in CONTROLS.items()
        for control in controls
        if {f"{model}_{pretrained}", f"{model}_{control}"} <= set(names)
    ]
    return pairs


def report(work: Path, seeds: list[int]) -> None:
    manifest = json.loads((work / "runs.json").read_text())
    first = predictions(manifest, f"student_s{seeds[0]}")
    groups = [
        None,
        *sorted(
            {*first.column("target_group").to_pylist(), *first.column("history_group").to_pylist()}
        ),
    ]
    names = sorted(
        {
            n.rsplit("_s", 1)[0]
            for n in manifest
            if all(f"{n.rsplit('_s', 1)[0]}_s{s}" in manifest for s in seeds)
        }
    )
    pairs = report_pairs(names)
    for metric in METRICS:
        print(
            f"\n{metric.upper()}, pooled over seeds {', '.join(map(str, seeds))}: mean of the "
            "model (x its reference) and the paired difference ± SE "
            "[bootstrap 95%]; * beyond 2 SE\n"
        )
        print("| model | vs | " + " | ".join(g or "overall" for g in groups) + " |")
        print("|:--|:--|" + "--:|" * len(groups))
        for other, base in pairs:
            cells = []
            for g in groups:
                diff, mean_other, mean_base = pooled(manifest, seeds, base, other, g, metric)
                star = "*" if diff.significant() else ""
                ratio = mean_other / mean_base if mean_base else float("nan")
                cells.append(
                    f"{mean_other:.4f} (x{ratio:.3f}) {diff.mean:+.4f} ± {diff.se:.4f}{star}"
                )
            print(f"| {other} | {base} | " + " | ".join(cells) + " |")
    counts = {
        g: int(sum(1 for v in first.column(c).to_pylist() if v == g))
        for g in groups[1:]
        for c in ("target_group", "history_group")
        if g in first.column(c).to_pylist()
    }
    print(f"\ntest samples per slice: {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality.llm_share", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="runs, soft labels and data live here"
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--dataset", default="ml-100k")
    data.add_argument("--synthetic", help="users,items,interactions of a synthetic dataset")
    parser.add_argument("--cold", help="dataset.cold_items for every run, e.g. random:0.1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument(
        "--variants", default="main,random", help=f"teacher variants, of {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--distill", default="main", help="variants whose teacher is distilled ('' for none)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="teachers trained at once")
    parser.add_argument("--report-only", action="store_true")
    args, overrides = parser.parse_known_args()
    args.variants = [v for v in args.variants.split(",") if v]
    args.distill = [v for v in args.distill.split(",") if v]
    unknown = sorted(set(args.variants + args.distill) - set(VARIANTS))
    if unknown or not set(args.distill) <= set(args.variants):
        parser.error(f"unknown variants {unknown} (or a --distill variant not in --variants)")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        overrides = [*prepare_synthetic(args.synthetic, args.work), *overrides]
    elif args.dataset != "ml-100k":
        overrides = [f"dataset.name={args.dataset}", *overrides]
    if not args.report_only:
        plan = Plan(args, overrides)
        for seed in args.seeds:
            plan.seed(seed)
    report(args.work, args.seeds)


if __name__ == "__main__":
    main()
