"""`eval-all`: the baseline student, the distilled student and the teacher on one test split
under one protocol (seed guide §3.4, DESIGN §4).

Checkpoints come from `eval.{baseline,distilled,teacher}_checkpoint_path`, or, when null, the
newest run of that kind under `paths.result_dir`. A model whose checkpoint is missing or does
not fit the data is reported as an error entry; the others are still evaluated (exit code 0 if
at least one model was evaluated, else 2).

The teacher is expensive: when its run directory already holds `test_metrics.json` and
`test_predictions.parquet` written under exactly this protocol for exactly this checkpoint,
they are reused instead of running the LLM again (see `protocol_mismatch`, `reuse_teacher`).

Writes into the run directory: all_evaluation_results.{json,md,png}, predictions_<model>.parquet
and config.yaml; prints the Markdown table, then `run_dir: <path>`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig

from recdata.atomic import atomic_file, write_json
from recdata.checkpoint import CARD_FILE, check_card, read_card
from recdata.datamodule import SequentialDataModule
from recdata.errors import CheckpointError, UserError
from recdata.evaluation import TIE_RULE, EvalResult, evaluate
from recdata.metrics import ranking_metrics
from recdata.runs import announce_run_dir, find_newest_checkpoint, hydra_entry, hydra_run_dir
from recdata.stats import mean_interval, paired_difference, per_sample
from sasrec.recipe import build_datamodule, eval_protocol, save_config, seed_run

log = logging.getLogger(__name__)

RESULTS_JSON, RESULTS_MD, RESULTS_PNG = (
    "all_evaluation_results.json",
    "all_evaluation_results.md",
    "all_evaluation_results.png",
)
TEACHER_KIND = "ilora-teacher"
# (entry key, checkpoint kind, eval.* option naming its path)
MODELS = (
    ("baseline_student", "sasrec", "baseline_checkpoint_path"),
    ("distilled_student", "sasrec-distilled", "distilled_checkpoint_path"),
    ("teacher_model", TEACHER_KIND, "teacher_checkpoint_path"),
)
CANDIDATE_METRIC = "hr@1_of_20"


@dataclass
class Target:
    key: str
    kind: str
    path: Path | None = None
    card: dict | None = None
    error: str | None = None
    reuse_declined: str | None = None  # why the teacher's stored test predictions were not reused


# -- checkpoints ------------------------------------------------------------------------------
def resolve_checkpoint(configured: str | None, kind: str, result_dir: Path) -> Path:
    """The configured checkpoint directory (a run directory is accepted for its
    checkpoints/best), or the newest of this kind under result_dir."""
    if not configured:
        path = find_newest_checkpoint(result_dir, (kind,))
        log.info("%s: using the newest checkpoint %s", kind, path)
        return path
    path = Path(configured)
    if not (path / CARD_FILE).is_file() and (path / "checkpoints" / "best" / CARD_FILE).is_file():
        return path / "checkpoints" / "best"
    return path


def resolve_target(cfg: DictConfig, key: str, kind: str, option: str) -> Target:
    target = Target(key, kind)
    try:
        target.path = resolve_checkpoint(cfg.eval.get(option), kind, Path(cfg.paths.result_dir))
        if not target.path.exists():
            raise CheckpointError(f"checkpoint {target.path} does not exist (eval.{option})")
        target.card = read_card(target.path)
        check_card(target.card, target.path, kinds=(kind,), fingerprint=None, num_items=None)
    except UserError as error:
        target.error = str(error)
    return target


def history_window(cfg: DictConfig, targets: list[Target]) -> int:
    """The history length fed to every model: at least what each was trained with (each model
    truncates to its own window, so a longer one changes nothing for it)."""
    window = int(cfg.student.max_seq_len)
    for t in targets:
        hp = (t.card or {}).get("hparams", {})
        for part in ("model", "student"):  # a student's own config; the teacher's student
            if isinstance(hp.get(part), dict):
                window = max(window, int(hp[part].get("max_seq_len", 0)))
        if isinstance(hp.get("teacher"), dict):
            window = max(window, int(hp["teacher"].get("max_history", 0)))
    return window


def resolve_device(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


# -- teacher-prediction reuse ---------------------------------------------------------------------
def expected_protocol(cfg: DictConfig, dm: SequentialDataModule) -> dict:
    """Exactly the protocol `evaluate` records for this configuration's test split."""
    return {
        "split": "test",
        "num_samples": len(dm.keys["test"]),
        "full_ranking": {
            "ks": [int(k) for k in cfg.eval.ks],
            "mask_history": bool(cfg.eval.mask_history),
            "ties": TIE_RULE,
        },
        **eval_protocol(cfg, dm),
    }


def metric_names(protocol: dict) -> set[str]:
    names = {f"{m}@{k}" for k in protocol["full_ranking"]["ks"] for m in ("hr", "ndcg")}
    if protocol.get("candidates", {}).get("num"):
        names.add(CANDIDATE_METRIC)
    return names


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _shown(values: dict, key: str) -> str:
    """Canonical text of one value, so the comparison is strict: 1 != 1.0 != true,
    [5, 10] != [10, 5]."""
    return json.dumps(values[key], sort_keys=True) if key in values else "<missing>"


def protocol_mismatch(stored: dict, expected: dict, kind: str = TEACHER_KIND) -> str | None:
    """Why a stored `test_metrics.json` payload was NOT produced under the `expected` protocol
    (same model kind, test split, data fingerprint/size, ks, history masking, candidate sets),
    or None when it was. Every protocol field must be equal; nothing is assumed."""
    if not isinstance(stored, dict):
        return "test_metrics.json is not a JSON object"
    if stored.get("model") != kind:
        return f"test_metrics.json is of a {stored.get('model')!r} model, not {kind!r}"
    if stored.get("split") != "test":
        return f"test_metrics.json is of split {stored.get('split')!r}, not 'test'"
    if not isinstance(stored.get("protocol"), dict):
        return "test_metrics.json records no protocol"
    got, want = flatten(stored["protocol"]), flatten(expected)
    differ = [k for k in sorted(got.keys() | want.keys()) if _shown(got, k) != _shown(want, k)]
    if differ:
        shown = "; ".join(
            f"{k}: stored {_shown(got, k)}, now {_shown(want, k)}" for k in differ[:4]
        )
        return f"protocol differs ({shown})"
    names = metric_names(expected)
    for field in ("metrics", "metrics_unmasked", "metrics_masked"):
        values = stored.get(field)
        if not isinstance(values, dict) or set(values) != names:
            return f"test_metrics.json {field} has {sorted(values or {})}, expected {sorted(names)}"
        if not all(isinstance(v, int | float) for v in values.values()):
            return f"test_metrics.json {field} holds non-numeric values"
    if (stored["metrics_masked"] if expected["full_ranking"]["mask_history"]
            else stored["metrics_unmasked"]) != stored["metrics"]:  # fmt: skip
        return "test_metrics.json metrics do not follow its mask_history"
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _int64(table: pa.Table, column: str) -> torch.Tensor:
    return torch.from_numpy(table.column(column).to_numpy().astype(np.int64))


def predictions_mismatch(table: pa.Table, stored: dict, keys) -> str | None:
    """Why stored per-sample predictions do not belong to these metrics and test samples."""
    protocol = stored["protocol"]
    with_candidates = bool(protocol.get("candidates", {}).get("num"))
    columns = {"user_id", "position", "target", "rank", "rank_unmasked", "topk_items"}
    columns |= {"hit@1_of_20"} if with_candidates else set()
    if not columns <= set(table.column_names):
        return f"test_predictions.parquet lacks {sorted(columns - set(table.column_names))}"
    users, positions = _int64(table, "user_id"), _int64(table, "position")
    if not (torch.equal(users, keys.user_ids) and torch.equal(positions, keys.positions)):
        return "test_predictions.parquet covers other test samples"
    ks = protocol["full_ranking"]["ks"]
    for column, field in (("rank", "metrics"), ("rank_unmasked", "metrics_unmasked")):
        ranks = _int64(table, column) - 1
        again = ranking_metrics(ranks, ks)
        if with_candidates:
            again[CANDIDATE_METRIC] = float(table.column("hit@1_of_20").to_numpy().mean())
        if not all(_close(again[k], stored[field][k]) for k in again):
            return f"test_predictions.parquet does not reproduce test_metrics.json {field}"
    return None


def reuse_teacher(
    ckpt_dir: Path, card: dict, expected: dict, keys
) -> tuple[EvalResult | None, str]:
    """(the stored test result of this teacher checkpoint, "reused") when its run directory
    holds one made under `expected`; else (None, why not)."""
    if ckpt_dir.parent.name != "checkpoints":
        return None, f"{ckpt_dir} is not inside a run's checkpoints/ directory"
    run_dir = ckpt_dir.parent.parent
    metrics_path, predictions_path = (
        run_dir / "test_metrics.json",
        run_dir / "test_predictions.parquet",
    )
    if not (metrics_path.is_file() and predictions_path.is_file()):
        return None, f"{run_dir} has no test_metrics.json + test_predictions.parquet"
    try:
        stored = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"{metrics_path} is unreadable ({exc})"
    reason = protocol_mismatch(stored, expected)
    if reason:
        return None, reason
    if (card.get("metrics") or {}).get("test") != stored["metrics"]:
        return (
            None,
            f"{metrics_path} is not the test result of {ckpt_dir} (card.json metrics.test differs)",
        )
    try:
        table = pq.read_table(predictions_path)
    except (OSError, pa.ArrowException) as exc:
        return None, f"{predictions_path} is unreadable ({exc})"
    reason = predictions_mismatch(table, stored, keys)
    if reason:
        return None, reason
    result = EvalResult(stored["metrics"], stored["metrics_unmasked"], stored["metrics_masked"],
                        stored["protocol"], table)  # fmt: skip
    return result, "reused"


# -- evaluation -----------------------------------------------------------------------------------
def _student_scorer(target: Target, dm: SequentialDataModule, device: str):
    from sasrec.module import load_sasrec

    model, _ = load_sasrec(target.path, fingerprint=dm.fingerprint, num_items=dm.num_items,
                           kinds=(target.kind,))  # fmt: skip
    model.to(device)
    return lambda batch: model.score(batch["history"].to(device)).float().cpu()


def _teacher_scorer(cfg: DictConfig, target: Target, dm: SequentialDataModule, device: str):
    from ilora.checkpoint import load_teacher

    teacher, _ = load_teacher(target.path, dm.dataset, device=device, precision=cfg.teacher.precision,
                              cache_dir=Path(cfg.paths.cache_dir))  # fmt: skip
    return lambda batch: teacher(batch["history"].to(device)).float().cpu()


def evaluate_target(cfg: DictConfig, target: Target, dm: SequentialDataModule, device: str,
                    expected: dict) -> tuple[EvalResult, str]:  # fmt: skip
    """(result, "evaluated" | "reused"); raises on a checkpoint that cannot be evaluated."""
    check_card(target.card, target.path, kinds=(target.kind,), fingerprint=dm.fingerprint,
               num_items=dm.num_items)  # fmt: skip
    batch_size = None
    if target.kind == TEACHER_KIND:
        if cfg.eval_all.reuse_teacher_predictions:
            result, why = reuse_teacher(target.path, target.card, expected, dm.keys["test"])
            if result is not None:
                return result, "reused"
            target.reuse_declined = why
            log.info("teacher: not reusing its stored test predictions: %s; evaluating it", why)
        score = _teacher_scorer(cfg, target, dm, device)
        batch_size = cfg.eval_all.teacher_eval_batch_size
    else:
        score = _student_scorer(target, dm, device)
    result = evaluate(score, dm.loader("test", batch_size=batch_size), dm.num_items,
                      ks=tuple(int(k) for k in cfg.eval.ks), mask_history=bool(cfg.eval.mask_history),
                      progress=bool(cfg.trainer.enable_progress_bar), extra_protocol=eval_protocol(cfg, dm))  # fmt: skip
    return result, "evaluated"


def ok_entry(target: Target, result: EvalResult, source: str) -> dict:
    return {
        "status": "ok",
        "checkpoint": str(target.path),
        "kind": target.kind,
        "source": source,
        "metrics": result.metrics,
        "metrics_unmasked": result.metrics_unmasked,
        "metrics_masked": result.metrics_masked,
        "protocol": result.protocol,
        "predictions": f"predictions_{target.key}.parquet",
        **({"reuse_declined": target.reuse_declined} if target.reuse_declined else {}),
    }


def error_entry(target: Target, message: str) -> dict:
    if target.reuse_declined:
        message += f" (its stored test predictions were not reused: {target.reuse_declined})"
    return {"status": "error", "error": message, "checkpoint": str(target.path) if target.path else None,
            "kind": target.kind}  # fmt: skip


# -- uncertainty ----------------------------------------------------------------------------------
def add_uncertainty(entries: dict, results: dict[str, EvalResult], ks) -> None:
    """Each evaluated entry gets the bootstrap 95% interval of its metrics (``ci95``) and, against
    the baseline student, the paired per-user difference of NDCG@K and HR@K (K = the ratio's K)
    with its SE and bootstrap 95% interval (``vs_baseline``)."""
    k = ratio_k(ks)
    base = results.get("baseline_student")
    for key, result in results.items():
        entry = entries[key]
        entry["ci95"] = {m: list(mean_interval(per_sample(result.predictions, m))) for m in entry["metrics"]}
        if base is not None and key != "baseline_student":
            entry["vs_baseline"] = {m: paired_difference([per_sample(base.predictions, m)],
                                                         [per_sample(result.predictions, m)]).to_dict()
                                    for m in (f"ndcg@{k}", f"hr@{k}")}  # fmt: skip


def _difference_rows(entries: dict, ks) -> list[str]:
    k = ratio_k(ks)
    rows = [(key, e["vs_baseline"]) for key, e in entries.items() if e.get("vs_baseline")]
    if not rows:
        return []
    lines = ["", f"Against the baseline student: paired per-user difference at K={k} (mean ± SE, bootstrap 95% interval; "
             "'yes' when |mean| > 2 SE):", "", f"| model | ΔNDCG@{k} | ΔHR@{k} | beyond 2 SE |", "|:--|--:|--:|:--|"]  # fmt: skip
    for key, diffs in rows:
        cells = [_diff_cell(diffs[f"{m}@{k}"]) for m in ("ndcg", "hr")]
        verdict = "yes" if abs(diffs[f"ndcg@{k}"]["mean"]) > 2 * diffs[f"ndcg@{k}"]["se"] else "no"
        lines.append(f"| {key} | {cells[0]} | {cells[1]} | {verdict} |")
    return lines


def _diff_cell(d: dict) -> str:
    lo, hi = d["ci95"]
    return f"{d['mean']:+.4f} ± {d['se']:.4f} [{lo:+.4f}, {hi:+.4f}]"


# -- reports --------------------------------------------------------------------------------------
def metric_columns(ks) -> list[tuple[str, str]]:
    cols = [(f"{m}@{k}", f"{m.upper()}@{k}") for k in ks for m in ("hr", "ndcg")]
    return [*cols, (CANDIDATE_METRIC, "HR@1 of 20")]


def _fmt(value) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
    )


def ratio_k(ks) -> int:
    """K of the distilled/baseline ratios: 10 when evaluated, else the largest K."""
    return 10 if 10 in ks else max(ks)


def ratios(entries: dict, ks) -> dict[str, float] | None:
    base, dist = entries.get("baseline_student", {}), entries.get("distilled_student", {})
    if base.get("status") != "ok" or dist.get("status") != "ok":
        return None
    k = ratio_k(ks)
    out = {}
    for name in (f"ndcg@{k}", f"hr@{k}"):
        b, d = base["metrics"].get(name), dist["metrics"].get(name)
        out[name] = d / b if b else math.nan
    return out


def _table(entries: dict, field: str, ks) -> list[str]:
    cols = metric_columns(ks)
    lines = ["| model | kind | " + " | ".join(label for _, label in cols) + " | source |",
             "|:--|:--|" + "--:|" * len(cols) + ":--|"]  # fmt: skip
    for key, entry in entries.items():
        if entry["status"] == "ok":
            values = [_fmt(entry[field].get(name)) for name, _ in cols]
            source = entry["source"]
        else:
            values, source = ["—"] * len(cols), "error"
        lines.append(f"| {key} | {entry['kind']} | " + " | ".join(values) + f" | {source} |")
    return lines


def protocol_line(protocol: dict) -> str:
    fr, data, cands = (
        protocol["full_ranking"],
        protocol.get("data", {}),
        protocol.get("candidates", {}),
    )
    masked = "history items masked (unmasked figures below and in the JSON)" if fr["mask_history"] \
        else "history items not masked"  # fmt: skip
    text = (f"Protocol: {protocol['split']} split, {protocol['num_samples']} samples of {data.get('dataset')} "
            f"(fingerprint {str(data.get('fingerprint'))[:12]}…, limit_data_rows {data.get('limit_data_rows')}); "
            f"full ranking over all {data.get('num_items')} items at K = {', '.join(map(str, fr['ks']))}, {masked}; "
            f"ties count against the target")  # fmt: skip
    if cands.get("num"):
        text += (f"; HR@1 of 20 = target ranked first among {cands['num']} stored candidates "
                 f"(target + {cands['num'] - 1} unseen items, seed {cands['seed']})")  # fmt: skip
    return text + "."


def render_markdown(entries: dict, protocol: dict) -> str:
    ks = protocol["full_ranking"]["ks"]
    lines = [
        "# All-model evaluation",
        "",
        *_table(entries, "metrics", ks),
        "",
        protocol_line(protocol),
    ]
    r = ratios(entries, ks)
    if r is not None:
        k = ratio_k(ks)
        shown = ", ".join(f"{n.upper()} ×{f'{v:.3f}' if not math.isnan(v) else 'n/a (baseline is 0)'}"
                          for n, v in r.items())  # fmt: skip
        lines += ["", f"Distilled / baseline at K={k}: {shown}."]
    lines += _difference_rows(entries, ks)
    if protocol["full_ranking"]["mask_history"] and any(
        e["status"] == "ok" for e in entries.values()
    ):
        lines += ["", "Without history masking:", "", *_table(entries, "metrics_unmasked", ks)]
    errors = [(k, e) for k, e in entries.items() if e["status"] != "ok"]
    if errors:
        lines += ["", "Errors:"] + [f"- {k}: {e['error']}" for k, e in errors]
    lines += ["", "Checkpoints:"] + [
        f"- {k}: {e.get('checkpoint') or '—'}" for k, e in entries.items()
    ]
    return "\n".join(lines) + "\n"


def render_chart(entries: dict, ks, path: Path, masked: bool) -> bool:
    """Grouped bars: one group per metric, one colour per evaluated model. False if none."""
    ok = {k: e for k, e in entries.items() if e["status"] == "ok"}
    if not ok:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [
        (n, label) for n, label in metric_columns(ks) if any(n in e["metrics"] for e in ok.values())
    ]
    width = 0.8 / len(ok)
    compared = {k: e["vs_baseline"] for k, e in ok.items() if e.get("vs_baseline")}
    fig, axes = plt.subplots(1, 2 if compared else 1, figsize=(max(6.0, 1.3 * len(cols)) + (4.5 if compared else 0), 4.0),
                             gridspec_kw={"width_ratios": [max(6.0, 1.3 * len(cols)), 4.5]} if compared else None,
                             squeeze=False)  # fmt: skip
    ax = axes[0][0]
    for i, (key, entry) in enumerate(ok.items()):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(cols))]
        values = [entry["metrics"].get(n, math.nan) for n, _ in cols]
        intervals = [entry.get("ci95", {}).get(n, [v, v]) for (n, _), v in zip(cols, values, strict=True)]
        errors = [[v - lo for v, (lo, _) in zip(values, intervals, strict=True)],
                  [hi - v for v, (_, hi) in zip(values, intervals, strict=True)]]  # fmt: skip
        ax.bar(xs, values, width, yerr=errors, capsize=2, label=key, color=plt.get_cmap("tab10")(i))
    ax.set_xticks(range(len(cols)), [label for _, label in cols])
    ax.set_ylabel("score")
    ax.set_title(f"Test split ({'history masked' if masked else 'history not masked'}); 95% bootstrap intervals")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    if compared:
        _difference_panel(axes[0][1], compared, list(ok), plt.get_cmap("tab10"))
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True


def _difference_panel(ax, compared: dict, order: list[str], colours) -> None:
    """Paired per-user difference to the baseline, with its bootstrap 95% interval."""
    names = list(next(iter(compared.values())))
    width = 0.8 / len(compared)
    for i, (key, diffs) in enumerate(compared.items()):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(names))]
        means = [diffs[n]["mean"] for n in names]
        errors = [[m - diffs[n]["ci95"][0] for m, n in zip(means, names, strict=True)],
                  [diffs[n]["ci95"][1] - m for m, n in zip(means, names, strict=True)]]  # fmt: skip
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=key, color=colours(order.index(key)))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), [f"Δ{n.upper()}" for n in names])
    ax.set_title("vs baseline: paired per-user difference")
    ax.grid(axis="y", alpha=0.3)


# -- command --------------------------------------------------------------------------------------
def run(cfg: DictConfig, run_dir: Path) -> dict:
    seed_run(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    targets = [resolve_target(cfg, key, kind, option) for key, kind, option in MODELS]
    dm = build_datamodule(cfg, max_seq_len=history_window(cfg, targets), train_mode="sequence")
    device = resolve_device(cfg.trainer.accelerator)
    expected = expected_protocol(cfg, dm)
    entries: dict[str, dict] = {}
    results: dict[str, EvalResult] = {}
    for target in targets:
        if target.error is not None:
            entries[target.key] = error_entry(target, target.error)
            log.warning("%s: %s", target.key, target.error)
            continue
        try:
            result, source = evaluate_target(cfg, target, dm, device, expected)
        except UserError as error:
            entries[target.key] = error_entry(target, str(error))
            log.warning("%s: %s", target.key, error)
            continue
        except Exception as error:  # one model's failure must not lose the others' results
            log.exception("%s: evaluation failed", target.key)
            entries[target.key] = error_entry(target, f"{type(error).__name__}: {error}")
            continue
        with atomic_file(run_dir / f"predictions_{target.key}.parquet") as tmp:
            pq.write_table(result.predictions, tmp)
        entries[target.key] = ok_entry(target, result, source)
        results[target.key] = result
        log.info("%s (%s, %s): %s", target.key, target.kind, source, result.headline())
    add_uncertainty(entries, results, expected["full_ranking"]["ks"])
    write_json(run_dir / RESULTS_JSON, entries)
    markdown = render_markdown(entries, expected)
    with atomic_file(run_dir / RESULTS_MD) as tmp:
        tmp.write_text(markdown)
    render_chart(entries, expected["full_ranking"]["ks"], run_dir / RESULTS_PNG,
                 expected["full_ranking"]["mask_history"])  # fmt: skip
    return {"entries": entries, "markdown": markdown}


@hydra_entry("run_eval_all")
def main(cfg: DictConfig) -> None:
    run_dir = hydra_run_dir()
    out = run(cfg, run_dir)
    print(out["markdown"], flush=True)
    announce_run_dir(run_dir)
    if not any(e["status"] == "ok" for e in out["entries"].values()):
        raise UserError(f"no model could be evaluated; see {run_dir / RESULTS_JSON}")


if __name__ == "__main__":
    main()
