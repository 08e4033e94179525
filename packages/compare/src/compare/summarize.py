"""`summarize result/ [--out DIR]`: one table of every run under a results tree.

A run is a directory holding the resolved `config.yaml` every command writes at its root
(`result_*/`, Hydra multirun `multirun_*/N/`, or any nesting of these); Hydra's own `.hydra/`
copies and eval-all comparison runs are not runs of a model. Columns: the run directory, the
model kind, the status, every flattened config key whose value differs across runs (paths and
Hydra keys left out), then the test metrics and NDCG@10 / HR@10 on each slice (`ndcg@10[tail]`:
target popularity head/tail/cold, user history short/long; recdata.slices) -- or, with
``--split valid``, the validation metrics of each run's best checkpoint (what a hyperparameter
search ranks on, so test is read once, after the choice). With ``--baseline RUN`` (test split)
more columns give each run's paired per-user difference of NDCG@10 and HR@10 to that run, and of
NDCG@10 on each slice, ± SE [bootstrap 95% interval] (`compare.stats`).
Writes summary.csv and summary.md and prints the Markdown.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from compare.nested import flatten
from recdata.atomic import atomic_file
from recdata.errors import UserError, exit_on_user_error
from recdata.slices import ITEM_GROUPS, USER_GROUPS
from runkit.runs import incomplete_reason

CONFIG, METRICS, CARD = "config.yaml", "test_metrics.json", "card.json"
EVAL_ALL_MARK = "all_evaluation_results.json"
SKIP_PARTS = {".hydra", "checkpoints", "tensorboard"}
IGNORED_PREFIXES = ("paths.", "hydra.")
# values that locate files rather than describe the experiment
IGNORED_SUFFIXES = ("_dir", "_path", ".resume")


@dataclass
class Run:
    path: Path
    name: str
    kind: str = "unknown"
    status: str = "ok"
    config: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    versus: dict[str, str] = field(default_factory=dict)  # "Δ<metric>" -> paired difference text


def _canonical(value) -> str:
    """One text per value, so differing values are told apart strictly (lists kept whole)."""
    return json.dumps(value, sort_keys=True, default=str)


def ignored(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES) or key == "resume"


def find_runs(root: Path) -> list[Path]:
    runs = []
    for config in root.rglob(CONFIG):
        run_dir = config.parent
        rel_parts = run_dir.relative_to(root).parts
        if SKIP_PARTS & set(rel_parts) or (run_dir / EVAL_ALL_MARK).exists():
            continue
        runs.append(run_dir)
    return sorted(runs, key=lambda p: _natural(p.relative_to(root).as_posix()))


def _natural(text: str) -> list:
    """multirun_x/2 before multirun_x/10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _kind_from_card(run_dir: Path) -> str | None:
    for which in ("best", "last"):
        try:
            return json.loads((run_dir / "checkpoints" / which / CARD).read_text())["kind"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def read_valid_metrics(run: Run) -> None:
    """The best checkpoint's validation metrics (what model selection chose it by). A run still
    training (or killed) already has a best checkpoint: its figures are shown, marked incomplete."""
    card_path = run.path / "checkpoints" / "best" / CARD
    if run.status == "ok" and incomplete_reason(run.path) is not None:
        run.status = "incomplete"
    if not card_path.is_file():
        return
    try:
        valid = json.loads(card_path.read_text())["metrics"]["valid"]
        run.metrics = {k: float(v) for k, v in valid.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        run.status = f"unreadable checkpoints/best/{CARD}"


def read_run(run_dir: Path, root: Path, split: str = "test") -> Run:
    run = Run(run_dir, run_dir.relative_to(root).as_posix() or ".")
    try:
        config = yaml.safe_load((run_dir / CONFIG).read_text())
        if not isinstance(config, dict):
            raise ValueError("not a mapping")
        run.config = {k: _canonical(v) for k, v in flatten(config).items() if not ignored(k)}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        run.status = f"unreadable config.yaml ({type(exc).__name__})"
    run.kind = _kind_from_card(run_dir) or run.kind
    if split == "valid":
        read_valid_metrics(run)
        return run
    metrics_path = run_dir / METRICS
    if not metrics_path.is_file():
        run.status = "incomplete" if run.status == "ok" else run.status
        return run
    try:
        payload = json.loads(metrics_path.read_text())
        run.kind = payload.get("model") or run.kind
        run.metrics = {k: float(v) for k, v in payload["metrics"].items()}
        for group, metrics in payload.get("metrics_by_slice", {}).items():
            run.metrics |= {
                f"{m}[{group}]": float(metrics[m]) for m in VERSUS_METRICS if m in metrics
            }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        run.status = f"unreadable {METRICS}"
    return run


def metric_order(name: str) -> tuple:
    """hr@k, ndcg@k by k, then the candidate metric, then anything else."""
    m = re.fullmatch(r"(hr|ndcg)@(\d+)", name)
    if m:
        return (0, int(m.group(2)), m.group(1) != "hr", name)
    return (1, 0, False, name)


def build_table(runs: list[Run]) -> tuple[list[str], list[list[str]], range]:
    """(header, rows, the columns holding metric values)."""
    keys = sorted({k for r in runs for k in r.config})
    readable = [r for r in runs if r.config]
    differing = [k for k in keys if len({r.config.get(k, "<unset>") for r in readable}) > 1]
    metrics = sorted({m for r in runs for m in r.metrics}, key=metric_order)
    versus = sorted({v for r in runs for v in r.versus})
    header = ["run", "kind", "status", *differing, *metrics, *versus]
    rows = []
    for r in runs:
        values = [_plain(r.config[k]) if k in r.config else "" for k in differing]
        scores = [repr(r.metrics[m]) if m in r.metrics else "" for m in metrics]
        rows.append(
            [r.name, r.kind, r.status, *values, *scores, *(r.versus.get(v, "") for v in versus)]
        )
    first_metric = 3 + len(differing)
    return header, rows, range(first_metric, first_metric + len(metrics))


VERSUS_METRICS = ("ndcg@10", "hr@10")
SLICE_GROUPS = (*ITEM_GROUPS, *USER_GROUPS)


def add_paired_differences(runs: list[Run], baseline: Path) -> None:
    """Each complete run's paired per-user difference to the baseline run, on the same test
    users."""
    from compare.stats import in_slice, paired_difference, per_sample, read_predictions

    try:
        base = read_predictions(baseline)
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise UserError(
            f"--baseline {baseline}: no readable test_predictions.parquet ({exc})"
        ) from None
    for run in runs:
        if run.status != "ok":
            continue
        try:
            table = read_predictions(run.path)
        except (OSError, ValueError):  # a run without per-user predictions: no difference to show
            continue
        groups = [
            g
            for g in SLICE_GROUPS
            if "target_group" in table.column_names and in_slice(table, g).any()
        ]
        for metric, group in [(m, None) for m in VERSUS_METRICS] + [("ndcg@10", g) for g in groups]:
            name = f"Δ{metric}" + (f"[{group}]" if group else "")
            try:
                keep = slice(None) if group is None else in_slice(base, group)
                diff = paired_difference(
                    [per_sample(base, metric)[keep]], [per_sample(table, metric)[keep]]
                )
            except ValueError:  # another test split (data, limit_data_rows) than the baseline's
                run.versus[name] = "other test users"
                continue
            run.versus[name] = diff.text()


def _plain(canonical: str) -> str:
    value = json.loads(canonical)
    return value if isinstance(value, str) else canonical


def _md_cell(text: str, is_metric: bool) -> str:
    if is_metric and text:
        value = float(text)
        text = "—" if math.isnan(value) else f"{value:.4f}"
    return text.replace("|", "\\|") or "—"


def render_markdown(
    header: list[str], rows: list[list[str]], numeric: range, root: Path, split: str = "test"
) -> str:
    lines = [
        f"# Runs under {root}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(":--" if i < numeric.start else "--:" for i in range(len(header))) + "|",
    ]
    for row in rows:
        cells = [_md_cell(c, i in numeric) for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    done = sum(1 for r in rows if r[2] == "ok")
    what = "test metrics" if split == "test" else "validation metrics (of the best checkpoint)"
    lines += [
        "",
        f"{len(rows)} runs, {done} with {what}; config columns are the keys that "
        "differ across runs (paths and hydra.* left out).",
    ]
    return "\n".join(lines) + "\n"


def render_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


SPLITS = ("test", "valid")


def summarize(
    root: Path, out: Path | None = None, split: str = "test", baseline: Path | None = None
) -> str:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if baseline is not None and split != "test":
        raise UserError("--baseline compares test predictions: use it with --split test")
    runs = [read_run(p, root, split) for p in find_runs(root)]
    if not runs:
        raise UserError(f"no runs found under {root} (no directory with a {CONFIG})")
    if baseline is not None:
        add_paired_differences(runs, Path(baseline))
    out = Path(out) if out is not None else root
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a directory")
    header, rows, numeric = build_table(runs)
    markdown = render_markdown(header, rows, numeric, root, split)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "summary.csv") as tmp:
        tmp.write_text(render_csv(header, rows))
    with atomic_file(out / "summary.md") as tmp:
        tmp.write_text(markdown)
    return markdown


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="summarize", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results tree, e.g. result/")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write summary.csv and summary.md (default: the results dir)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="test metrics, or the best checkpoint's validation metrics (for searches)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a run dir: add each run's paired per-user NDCG@10/HR@10 difference to it (± SE)",
    )
    args = parser.parse_args(argv)
    markdown = summarize(args.results, args.out, args.split, args.baseline)
    print(markdown, end="")
    print(f"wrote {(args.out or args.results) / 'summary.csv'} and summary.md", file=sys.stderr)


if __name__ == "__main__":
    main()
