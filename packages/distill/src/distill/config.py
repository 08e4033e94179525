"""The `distill` config group: where the teacher's labels come from and the DLLM2Rec objective."""

from __future__ import annotations

from dataclasses import dataclass

from distill.losses import CONSISTENCY_FORMS, RANK_AVERAGES, RANK_FORMS
from runkit.config import BOOLEAN, Schema, at_least, checked, integer, one_of, retired

SOURCES = ("precomputed", "service")


@dataclass
class DistillConfig:
    # teacher checkpoints/best; null = the newest teacher run
    teacher_checkpoint_path: str | None = None
    # soft_labels.parquet | the BentoML teacher
    teacher_source: str = checked("precomputed", one_of(SOURCES))
    teacher_url: str = "http://127.0.0.1:3000"
    request_timeout: float = checked(300.0, at_least(0, strict=True))  # seconds per service request
    # seconds a failing request is retried (a restart: 15-25 s)
    retry_budget: float = checked(120.0, at_least(0))
    max_retries: int | None = retired(
        "service requests are retried for distill.retry_budget seconds; set that "
        "instead (distill.max_retries=null clears it, e.g. in an older run's config)"
    )
    # labels fetched from the service, kept per job so a rerun fetches only what it lacks;
    # null = <paths.cache_dir>/service_soft_labels
    service_cache_dir: str | None = None
    # histories per teacher forward (precompute) and per service request: equal batches make
    # precomputed and served labels bitwise identical
    teacher_batch_size: int = checked(16, integer(1))
    soft_labels_dir: str | None = None  # null = <teacher run>/soft_labels_<samples>_k<K>
    # all | last_n_per_user=N: the prefixes the teacher labels
    soft_label_samples: str = "last_n_per_user=1"
    # the teacher's top-K never holds a history item
    mask_history_in_topk: bool = checked(True, BOOLEAN)
    candidate_topk: int = checked(10, integer(1))  # K of the teacher's ranked list
    lam: float = checked(0.7, at_least(0))  # total = CE + lam * ranking distillation
    # pointwise (original DLLM2Rec) | listwise
    ranking_loss: str = checked("pointwise", one_of(RANK_FORMS))
    # all: mean over every training sample, those without a list adding 0 (the paper's per-sample
    # objective) | labeled: mean over samples with a list; equal when every sample has one
    rank_loss_average: str = checked("all", one_of(RANK_AVERAGES))
    gamma_position: float = checked(0.3, at_least(0))
    gamma_confidence: float = checked(0.5, at_least(0))
    gamma_consistency: float = checked(0.1, at_least(0))
    # normalised (w_s sums to 1 over the agreeing items) | original (1 per agreeing item, as the
    # DLLM2Rec code)
    consistency_weight: str = checked("normalised", one_of(CONSISTENCY_FORMS))
    # the student's top-K for consistency skips history
    consistency_masks_history: bool = checked(True, BOOLEAN)
    # position weight exp(-rank / lambda_position)
    lambda_position: float = checked(1.0, at_least(0, strict=True))
    # collaborative embedding distillation: e_i + ed_weight * Linear(t_i)
    ed_weight: float = checked(0.3, at_least(0))


SCHEMAS = [Schema("distill", "distill", DistillConfig)]
