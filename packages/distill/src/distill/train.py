"""`distill`: train a fresh SASRec with the DLLM2Rec objective (seed guide §3.3)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from distill.losses import CONSISTENCY_FORMS, RANK_AVERAGES, RANK_FORMS, DLLM2RecLoss
from distill.module import DistillModule
from distill.precompute import resolve_teacher_path, soft_labels_dir, training_keys
from distill.soft_labels import SoftLabels, read_soft_labels
from ilora.inference import teacher_digest
from recdata.checkpoint import WEIGHTS_FILE
from recdata.errors import CheckpointError, UserError
from recdata.runs import hydra_entry
from sasrec.recipe import build_datamodule, run_training, seed_run
from sasrec.train import student_config

log = logging.getLogger(__name__)
SOURCES = ("precomputed", "service")


def check_distill_config(cfg: DictConfig) -> None:
    """Refuse a bad distill.* setting with a one-line UserError before any data or model loads."""
    d = cfg.distill
    if d.teacher_source not in SOURCES:
        raise UserError(f"distill.teacher_source must be one of {', '.join(SOURCES)}, got {d.teacher_source!r}")
    if d.ranking_loss not in RANK_FORMS:
        raise UserError(f"distill.ranking_loss must be one of {', '.join(RANK_FORMS)}, got {d.ranking_loss!r}")
    if d.consistency_weight not in CONSISTENCY_FORMS:
        raise UserError(f"distill.consistency_weight must be one of {', '.join(CONSISTENCY_FORMS)}, got {d.consistency_weight!r}")
    if not isinstance(d.consistency_masks_history, bool):
        raise UserError(f"distill.consistency_masks_history must be true or false, got {d.consistency_masks_history!r}")
    if d.rank_loss_average not in RANK_AVERAGES:
        raise UserError(f"distill.rank_loss_average must be one of {', '.join(RANK_AVERAGES)}, got {d.rank_loss_average!r}")
    if d.get("max_retries") is not None:
        raise UserError(f"distill.max_retries={d.max_retries} is no longer used: service requests are retried for "
                        f"distill.retry_budget seconds (now {d.retry_budget}); set that instead (distill.max_retries=null "
                        "clears it, e.g. in the saved config of an older run)")  # fmt: skip
    for name, low, strict in (("lam", 0, False), ("ed_weight", 0, False), ("gamma_position", 0, False),
                              ("gamma_confidence", 0, False), ("gamma_consistency", 0, False),
                              ("lambda_position", 0, True), ("candidate_topk", 1, False),
                              ("retry_budget", 0, False), ("request_timeout", 0, True)):  # fmt: skip
        value = d[name]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and (value > low if strict else value >= low)
        if not ok:
            raise UserError(f"distill.{name} must be a number {'>' if strict else '>='} {low}, got {value!r}")


def load_labels(cfg: DictConfig, dm) -> SoftLabels:
    d = cfg.distill
    check_distill_config(cfg)
    keys = training_keys(dm, d.soft_label_samples)
    if d.teacher_source == "service":
        from distill.teacher_client import fetch_soft_labels

        expected, expected_from = expected_teacher(cfg)
        labels = fetch_soft_labels(d.teacher_url, dm, keys, k=d.candidate_topk, batch_size=d.teacher_batch_size,
                                   timeout=d.request_timeout, retry_budget=d.retry_budget,
                                   mask_history=d.mask_history_in_topk, samples=d.soft_label_samples,
                                   cache_dir=service_cache_dir(cfg), expected_digest=expected,
                                   expected_from=expected_from)  # fmt: skip
        source = d.teacher_url
    else:
        teacher_path = resolve_teacher_path(cfg)
        source = soft_labels_dir(cfg, teacher_path)
        labels = read_soft_labels(source, fingerprint=dm.fingerprint, teacher=teacher_digest(teacher_path),
                                  min_k=d.candidate_topk)  # fmt: skip
    labels.check(dm.num_items, str(source))  # bad ids are refused here, not deep inside training
    labels = labels.aligned_to(keys)
    if labels.k > d.candidate_topk:
        labels = SoftLabels(labels.user_ids, labels.positions, labels.topk_items[:, : d.candidate_topk],
                            labels.topk_scores[:, : d.candidate_topk], labels.item_embeddings, labels.card)  # fmt: skip
    return labels


def expected_teacher(cfg: DictConfig) -> tuple[str | None, str]:
    """The digest the served teacher must have, and where that expectation comes from: the
    configured teacher checkpoint, else the newest teacher run here (the one precomputed mode would
    use), else none (the service's teacher is taken as it is)."""
    try:
        path = resolve_teacher_path(cfg)
    except CheckpointError as error:
        log.info("no teacher checkpoint to check the service against (%s): using the teacher it serves", error)
        return None, ""
    if not (path / WEIGHTS_FILE).is_file():
        raise UserError(f"teacher checkpoint {path} has no {WEIGHTS_FILE} to check the teacher service against")
    where = "distill.teacher_checkpoint_path" if cfg.distill.teacher_checkpoint_path else "the newest teacher run"
    return teacher_digest(path), f"{path}, {where}"


def service_cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.distill.service_cache_dir or Path(cfg.paths.cache_dir) / "service_soft_labels")


def build_module(cfg: DictConfig, dm, labels: SoftLabels) -> DistillModule:
    d = cfg.distill
    try:
        loss = DLLM2RecLoss(lam=d.lam, gamma_position=d.gamma_position, gamma_confidence=d.gamma_confidence,
                            gamma_consistency=d.gamma_consistency, lambda_position=d.lambda_position, form=d.ranking_loss,
                            average=d.rank_loss_average, consistency=d.consistency_weight)  # fmt: skip
    except ValueError as error:  # e.g. an unknown ranking_loss form: a config error, not a crash
        raise UserError(f"distill: {error}") from None
    return DistillModule(student_config(cfg, dm.num_items), labels=labels, store=dm.store, loss=loss,
                         ed_weight=d.ed_weight, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, seed=cfg.seed,
                         provenance={k: v for k, v in labels.card.items() if k != "created_at"},
                         consistency_masks_history=d.consistency_masks_history)  # fmt: skip


@hydra_entry("run_distill")
def main(cfg: DictConfig) -> None:
    check_distill_config(cfg)
    seed_run(cfg)
    dm = build_datamodule(cfg, max_seq_len=cfg.student.max_seq_len, train_mode="sequence")
    labels = load_labels(cfg, dm)
    log.info("distilling %d teacher top-%d lists (%s)", len(labels.user_ids), labels.k, labels.card.get("source"))
    seed_run(cfg)  # the student's initial weights match the baseline's for the same seed
    run_training(cfg, build_module(cfg, dm, labels), dm)


if __name__ == "__main__":
    main()
