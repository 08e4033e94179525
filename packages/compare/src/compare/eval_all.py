"""`eval-all`: the baseline student, the distilled student and the teacher on one test split
under one protocol.

Checkpoints come from `eval.{baseline,distilled,teacher}_checkpoint_path`, or, when null, the
newest complete run of that kind under `paths.result_dir`. A model whose checkpoint is missing or
does not fit the data is reported as an error entry; the others are still evaluated (exit code 0
if at least one model was evaluated, else 2). An expensive model (the LLM teacher) whose run
already holds its test predictions under exactly this protocol is not run again (`compare.reuse`).

Writes into the run directory: all_evaluation_results.{json,md,png}, predictions_<model>.parquet
and config.yaml; prints the Markdown table, then `run_dir: <path>`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
from omegaconf import DictConfig

from compare.models import MODELS, ComparedModel, history_window, resolve_model
from compare.plots import render_chart
from compare.report import ratio_k, render_markdown
from compare.reuse import expected_protocol, reuse_stored_result
from compare.stats import in_slice, mean_interval, paired_difference, per_sample
from recdata.atomic import atomic_file, write_json
from recdata.datamodule import SequentialDataModule
from recdata.errors import UserError
from runkit.checkpoint import check_card
from runkit.data import build_datamodule, dataset_fingerprint
from runkit.device import resolve_device
from runkit.entry import announce_run_dir, hydra_entry, hydra_run_dir
from runkit.evaluation import EvalResult, evaluate
from runkit.kinds import checkpoint_kind
from runkit.recipe import eval_protocol, save_config, seed_run

log = logging.getLogger(__name__)
RESULTS_JSON, RESULTS_MD, RESULTS_PNG = (
    "all_evaluation_results.json",
    "all_evaluation_results.md",
    "all_evaluation_results.png",
)


def evaluate_model(
    cfg: DictConfig, target: ComparedModel, dm: SequentialDataModule, device: str, expected: dict
) -> tuple[EvalResult, str]:
    """(result, "evaluated" | "reused"); raises on a checkpoint that cannot be evaluated."""
    check_card(
        target.card,
        target.path,
        kinds=(target.kind,),
        fingerprint=dm.fingerprint,
        num_items=dm.num_items,
    )
    kind = checkpoint_kind(target.kind)
    batch_size = None
    if kind.expensive:  # an LLM: its run's own test result when it fits, small batches otherwise
        if cfg.eval_all.reuse_teacher_predictions:
            result, why = reuse_stored_result(target.path, target.card, expected, dm.keys["test"])
            if result is not None:
                return result, "reused"
            target.reuse_declined = why
            log.info(
                "%s: not reusing its stored test predictions: %s; evaluating it", target.key, why
            )
        batch_size = cfg.eval_all.teacher_eval_batch_size
    score = kind.load_scorer(
        target.path,
        dm.dataset,
        device=device,
        cache_dir=Path(cfg.paths.cache_dir),
        precision=cfg.teacher.precision,
    )
    result = evaluate(
        score,
        dm.loader("test", batch_size=batch_size),
        dm.num_items,
        ks=tuple(int(k) for k in cfg.eval.ks),
        mask_history=bool(cfg.eval.mask_history),
        progress=bool(cfg.trainer.enable_progress_bar),
        extra_protocol=eval_protocol(cfg, dm),
        slices=dm.slices,
    )
    return result, "evaluated"


def ok_entry(target: ComparedModel, result: EvalResult, source: str) -> dict:
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


def error_entry(target: ComparedModel, message: str) -> dict:
    if target.reuse_declined:
        message += f" (its stored test predictions were not reused: {target.reuse_declined})"
    return {
        "status": "error",
        "error": message,
        "checkpoint": str(target.path) if target.path else None,
        "kind": target.kind,
    }


def add_uncertainty(entries: dict, results: dict[str, EvalResult], ks) -> None:
    """Each evaluated entry gets the bootstrap 95% interval of its metrics (``ci95``), its metrics
    by slice, and, against the baseline student, the paired per-user difference of NDCG@K and
    HR@K (K = the ratio's K) with its SE and bootstrap 95% interval, overall (``vs_baseline``) and
    on each slice (``vs_baseline_by_slice``)."""
    k = ratio_k(ks)
    base = results.get("baseline_student")
    for key, result in results.items():
        entry = entries[key]
        entry["ci95"] = {
            m: list(mean_interval(per_sample(result.predictions, m))) for m in entry["metrics"]
        }
        if result.metrics_by_slice:
            entry["metrics_by_slice"] = result.metrics_by_slice
        if base is not None and key != "baseline_student":
            entry["vs_baseline"] = versus(base.predictions, result.predictions, k)
            if result.metrics_by_slice:
                entry["vs_baseline_by_slice"] = {
                    group: versus(base.predictions, result.predictions, k, group)
                    for group in result.metrics_by_slice
                }


def versus(base, other, k: int, group: str | None = None) -> dict:
    """Paired per-user differences of NDCG@k and HR@k of `other` to `base` (on one slice group)."""
    keep = slice(None) if group is None else in_slice(base, group)
    return {
        m: paired_difference([per_sample(base, m)[keep]], [per_sample(other, m)[keep]]).to_dict()
        for m in (f"ndcg@{k}", f"hr@{k}")
    }


def run(cfg: DictConfig, run_dir: Path) -> dict:
    seed_run(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    fingerprint = dataset_fingerprint(cfg)
    targets = [resolve_model(cfg, key, kind, option, fingerprint) for key, kind, option in MODELS]
    dm = build_datamodule(cfg, max_seq_len=history_window(cfg, targets))
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
            result, source = evaluate_model(cfg, target, dm, device, expected)
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
    render_chart(
        entries,
        expected["full_ranking"]["ks"],
        run_dir / RESULTS_PNG,
        expected["full_ranking"]["mask_history"],
    )
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
