"""`distill`: train a fresh SASRec with the DLLM2Rec objective."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from distill.losses import DLLM2RecLoss
from distill.module import DistillModule
from distill.precompute import resolve_teacher_path, soft_labels_dir, training_keys
from distill.soft_labels import SoftLabels, read_soft_labels
from ilora.inference import teacher_digest
from recdata.errors import UserError
from runkit.checkpoint import WEIGHTS_FILE, CheckpointError
from runkit.data import build_datamodule
from runkit.entry import hydra_entry
from runkit.recipe import run_training, seed_run
from sasrec.train import student_config

log = logging.getLogger(__name__)


def load_labels(cfg: DictConfig, dm) -> SoftLabels:
    d = cfg.distill
    keys = training_keys(dm, d.soft_label_samples)
    if d.teacher_source == "service":
        from distill.teacher_client import fetch_soft_labels

        expected, expected_from = expected_teacher(cfg)
        labels = fetch_soft_labels(
            d.teacher_url,
            dm,
            keys,
            k=d.candidate_topk,
            batch_size=d.teacher_batch_size,
            timeout=d.request_timeout,
            retry_budget=d.retry_budget,
            mask_history=d.mask_history_in_topk,
            samples=d.soft_label_samples,
            cache_dir=service_cache_dir(cfg),
            expected_digest=expected,
            expected_from=expected_from,
        )
        source = d.teacher_url
    else:
        teacher_path = resolve_teacher_path(cfg)
        source = soft_labels_dir(cfg, teacher_path)
        labels = read_soft_labels(
            source,
            fingerprint=dm.fingerprint,
            teacher=teacher_digest(teacher_path),
            min_k=d.candidate_topk,
        )
    labels.check(dm.num_items, str(source))  # bad ids are refused here, not deep inside training
    labels = labels.aligned_to(keys)
    if labels.k > d.candidate_topk:
        labels = SoftLabels(
            labels.user_ids,
            labels.positions,
            labels.topk_items[:, : d.candidate_topk],
            labels.topk_scores[:, : d.candidate_topk],
            labels.item_embeddings,
            labels.card,
        )
    return labels


def expected_teacher(cfg: DictConfig) -> tuple[str | None, str]:
    """The digest the served teacher must have, and where that expectation comes from: the
    configured teacher checkpoint, else the newest teacher run here (the one precomputed mode would
    use), else none (the service's teacher is taken as it is)."""
    try:
        path = resolve_teacher_path(cfg)
    except CheckpointError as error:
        log.info(
            "no teacher checkpoint to check the service against (%s): using the teacher it serves",
            error,
        )
        return None, ""
    if not (path / WEIGHTS_FILE).is_file():
        raise UserError(
            f"teacher checkpoint {path} has no {WEIGHTS_FILE} to check the teacher service against"
        )
    where = (
        "distill.teacher_checkpoint_path"
        if cfg.distill.teacher_checkpoint_path
        else "the newest teacher run"
    )
    return teacher_digest(path), f"{path}, {where}"


def service_cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.distill.service_cache_dir or Path(cfg.paths.cache_dir) / "service_soft_labels")


def build_module(cfg: DictConfig, dm, labels: SoftLabels) -> DistillModule:
    d = cfg.distill
    loss = DLLM2RecLoss(
        lam=d.lam,
        gamma_position=d.gamma_position,
        gamma_confidence=d.gamma_confidence,
        gamma_consistency=d.gamma_consistency,
        lambda_position=d.lambda_position,
        form=d.ranking_loss,
        average=d.rank_loss_average,
        consistency=d.consistency_weight,
    )
    return DistillModule(
        student_config(cfg, dm.num_items),
        labels=labels,
        store=dm.store,
        loss=loss,
        ed_weight=d.ed_weight,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        seed=cfg.seed,
        provenance={k: v for k, v in labels.card.items() if k != "created_at"},
        consistency_masks_history=d.consistency_masks_history,
    )


@hydra_entry("run_distill")
def main(cfg: DictConfig) -> None:
    seed_run(cfg)
    dm = build_datamodule(cfg, max_seq_len=cfg.student.max_seq_len)
    labels = load_labels(cfg, dm)
    log.info(
        "distilling %d teacher top-%d lists (%s)",
        len(labels.user_ids),
        labels.k,
        labels.card.get("source"),
    )
    seed_run(cfg)  # the student's initial weights match the baseline's for the same seed
    run_training(cfg, build_module(cfg, dm, labels), dm)


if __name__ == "__main__":
    main()
