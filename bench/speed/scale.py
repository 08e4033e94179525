"""How the pipeline's costs grow with the catalogue: synthetic datasets (recdata.synthetic: Zipf
popularity, clustered items with text) from ML-100K's size up to 50k users / 100k items / 5M
interactions, and for each one

* prepare: `recdata prepare` of its CSV files (seconds, peak RSS of that process);
* student: SASRec (the student preset: batch 128, max_seq_len 200, full-softmax CE) training
  steps timed, the epoch extrapolated from the median step and the epoch's batch count, and the
  peak RSS of the process that ran them;
* eval: full-ranking evaluation of the valid split (every user, all items, history masked) at the
  default eval batch size (seconds, peak RSS);
* labels: teacher soft labels per second: the CPU demo's sequence-mode teacher shape (SmolLM2-135M's
  first 8 layers, random weights: speed does not depend on them) labelling windows of training
  keys, top-10 each, without the title projector (its one pass over every title is a one-off cost
  per catalogue, not per label).

Each measurement is a fresh process (`--worker`), so its peak RSS is its own. The last table gives
each cost's growth exponent: the slope of log(cost) against log(interactions) (prepare, student
epoch, labels) or log(items) (eval), fitted over the sizes run.

    uv run python -m bench.speed.scale [--sizes small,medium,large,xl] [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.speed.data_scale import run_prepare

# (users, items, interactions)
SIZES = {
    "ml100k": (943, 1_682, 100_000),
    "medium": (5_000, 10_000, 500_000),
    "large": (20_000, 40_000, 2_000_000),
    "xl": (50_000, 100_000, 5_000_000),
}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def measure_student(data: Path, steps: int) -> dict:
    import torch

    from recdata.datamodule import SequentialDataModule
    from sasrec.model import SASRecConfig
    from sasrec.module import SASRecModule

    dm = SequentialDataModule(data, max_seq_len=200, batch_size=128, num_candidates=0)
    dm.setup()
    module = SASRecModule(SASRecConfig(num_items=dm.num_items))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    loader = dm.train_dataloader()
    times = []
    for step, batch in enumerate(loader):
        if step == steps + 1:
            break
        started = time.perf_counter()
        loss = module.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up allocations
            times.append(time.perf_counter() - started)
    step_s = statistics.median(times)
    return {
        "step_s": step_s,
        "epoch_s": step_s * len(loader),
        "batches": len(loader),
        "rss_gb": peak_rss_gb(),
    }


def measure_eval(data: Path) -> dict:
    import torch

    from recdata.datamodule import SequentialDataModule
    from runkit.evaluation import evaluate
    from sasrec.model import SASRec, SASRecConfig

    dm = SequentialDataModule(data, max_seq_len=200, eval_batch_size=256, num_candidates=0)
    dm.setup()
    model = SASRec(SASRecConfig(num_items=dm.num_items)).eval()
    started = time.perf_counter()
    with torch.no_grad():
        result = evaluate(
            lambda b: model.score(b["history"]),
            dm.loader("valid"),
            dm.num_items,
            progress=False,
            split="valid",
        )
    return {
        "eval_s": time.perf_counter() - started,
        "users": result.protocol["num_samples"],
        "rss_gb": peak_rss_gb(),
    }


def measure_labels(data: Path, windows: int) -> dict:
    import torch

    from distill.labelling import labelling_units
    from ilora.checkpoint import build_teacher
    from ilora.config import TeacherConfig
    from recdata.datamodule import SequentialDataModule
    from sasrec.model import SASRec, SASRecConfig

    dm = SequentialDataModule(data, max_seq_len=200, num_candidates=0)
    dm.setup()
    student = SASRec(SASRecConfig(num_items=dm.num_items)).eval()
    config = TeacherConfig(
        llm_random_init=True, llm_num_layers=8, use_title_projector=False, max_title_tokens=10
    )
    teacher, _ = build_teacher(config, student, dm.dataset.titles)
    teacher.eval()
    units = labelling_units(
        dm.store, dm.keys["train"], dm.keys["train"], sequence_mode=True, width=200
    )
    # windows from across the epoch's length distribution (longest first), not only the longest
    picks = torch.linspace(0, len(units) - 1, windows).long().tolist()
    labelled, started = 0, time.perf_counter()
    for i in picks:
        users, *_ = units.score(teacher, i, i + 1, 10, True, "cpu")
        labelled += len(users)
    return {
        "labels": labelled,
        "labels_per_s": labelled / (time.perf_counter() - started),
        "rss_gb": peak_rss_gb(),
    }


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.worker == "student":
        out = measure_student(args.data, args.steps)
    elif args.worker == "eval":
        out = measure_eval(args.data)
    else:
        out = measure_labels(args.data, args.windows)
    print(json.dumps(out))


def run_worker(kind: str, data: Path, args) -> dict:
    command = [
        sys.executable,
        "-m",
        "bench.speed.scale",
        "--worker",
        kind,
        "--data",
        str(data),
        "--steps",
        str(args.steps),
        "--windows",
        str(args.windows),
        "--threads",
        str(args.threads),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{kind} on {data} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def prepare(name: str, root: Path, seed: int) -> tuple[Path, dict]:
    from recdata.synthetic import generate

    users, items, interactions = SIZES[name]
    inter, item_file = generate(users, items, interactions, seed, id_style="str").write_csv(
        root / name / "csv"
    )
    out = root / name / "processed"
    seconds, rss, _ = run_prepare(
        [
            "prepare",
            f"scale-{name}",
            "--from",
            str(inter),
            "--items",
            str(item_file),
            "--out",
            str(out),
        ]
    )
    meta = json.loads((out / "meta.json").read_text())
    return out, {"prepare_s": seconds, "prepare_rss_gb": rss / 1e9, **meta["counts"]}


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.speed.scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--sizes", default="ml100k,medium,large,xl", help=f"comma-separated, of {', '.join(SIZES)}"
    )
    parser.add_argument(
        "--steps", type=int, default=8, help="timed student steps per size (after one warm-up)"
    )
    parser.add_argument("--windows", type=int, default=8, help="teacher windows labelled per size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--skip", default="", help="comma-separated measurements to skip: student,eval,labels"
    )
    parser.add_argument("--keep", type=Path, help="keep the generated and prepared data here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("student", "eval", "labels"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    root = args.keep or Path(tempfile.mkdtemp(prefix="scale-"))
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    for name in args.sizes.split(","):
        data, row = prepare(name, root, args.seed)
        for kind in ("student", "eval", "labels"):
            if kind not in skip:
                row |= {f"{kind}_{k}": v for k, v in run_worker(kind, data, args).items()}
        rows.append(row)
        print(f"{name}: {json.dumps(row)}", flush=True)
    print_tables(rows)


def print_tables(rows: list[dict]) -> None:
    def cell(row, key, fmt):
        return fmt.format(row[key]) if key in row else "—"

    print(
        "\n| users | items | interactions | prepare s | prepare GB | student step s "
        "| student epoch s | student GB | eval s | eval GB | labels/s | labels GB |"
    )
    print("|" + "---:|" * 12)
    for r in rows:
        cells = [
            f"{r['users']:,}",
            f"{r['items']:,}",
            f"{r['interactions']:,}",
            cell(r, "prepare_s", "{:.1f}"),
            cell(r, "prepare_rss_gb", "{:.2f}"),
            cell(r, "student_step_s", "{:.3f}"),
            cell(r, "student_epoch_s", "{:.0f}"),
            cell(r, "student_rss_gb", "{:.2f}"),
            cell(r, "eval_eval_s", "{:.1f}"),
            cell(r, "eval_rss_gb", "{:.2f}"),
            cell(r, "labels_labels_per_s", "{:.0f}"),
            cell(r, "labels_rss_gb", "{:.2f}"),
        ]
        print("| " + " | ".join(cells) + " |")
    if len(rows) < 2:
        return
    print("\ngrowth exponent (slope of log cost):")
    inter, items = [r["interactions"] for r in rows], [r["items"] for r in rows]
    for key, xs, against in (
        ("prepare_s", inter, "interactions"),
        ("student_epoch_s", inter, "interactions"),
        ("student_step_s", items, "items"),
        ("eval_eval_s", items, "items"),
        ("labels_labels_per_s", items, "items"),
    ):
        if all(key in r for r in rows):
            print(f"  {key}: {slope(xs, [r[key] for r in rows]):.2f} against {against}")


if __name__ == "__main__":
    main()
