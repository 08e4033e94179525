"""DLLM2Rec objective: importance-aware ranking distillation + collaborative embedding distillation.

Pure, vectorised torch (no Lightning, no I/O). Shapes: B batch, K teacher top-K, N items,
columns of a score matrix are item ids 0..N where **column 0 is padding and never an item**.

Cross-entropy is deliberately *not* computed here: the student owns its CE (which positions,
label smoothing, ...) and passes the scalar to :class:`DLLM2RecLoss`, so the baseline and the
distilled student share exactly the same supervised term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runkit.vectors import standardise_rows

RANK_FORMS = ("pointwise", "listwise")
# What the ranking loss is averaged over when only some samples have a teacher list:
# "labeled": the samples that have one (each gets the same ranking weight as with full coverage);
# "all": every supervised sample, those without a list adding 0 (the paper's per-sample
# objective; with full coverage both are the same).
RANK_AVERAGES = ("labeled", "all")
# The consistency weight w_s: "normalised" (1/|agreeing| on each item also in the student's top-K,
# so its mass is gamma_consistency whenever any item agrees) or "original" (1 per agreeing item,
# unnormalised, as in the DLLM2Rec code: its mass grows with the overlap).
CONSISTENCY_FORMS = ("normalised", "original")


def _normalise_rows(x: Tensor) -> Tensor:
    """x / row-sum; rows summing to 0 stay 0 (guarded division, never NaN)."""
    total = x.sum(dim=-1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, x / safe, torch.zeros_like(x))


def _mask_padding_column(scores: Tensor) -> Tensor:
    """Copy of scores with column 0 at -inf so padding is never ranked or given probability."""
    pad = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
    pad[0] = True
    return scores.masked_fill(pad, float("-inf"))


def _valid(items: Tensor, valid_mask: Tensor | None) -> Tensor:
    # Item 0 is padding by contract, so it is invalid whatever the caller's mask says.
    valid = items != 0
    return valid if valid_mask is None else valid & valid_mask.to(torch.bool)


def position_weights(valid: Tensor, lambda_position: float = 1.0) -> Tensor:
    """w_p ∝ exp(-rank / lambda_p), rank = slot 0..K-1 of the descending teacher list."""
    rank = torch.arange(valid.shape[-1], device=valid.device, dtype=torch.float32)
    w = torch.exp(-rank / lambda_position).expand(valid.shape)
    return _normalise_rows(w * valid)


def confidence_weights(topk_scores: Tensor, valid: Tensor) -> Tensor:
    """w_c = softmax of the teacher scores over its valid top-K (higher score -> more weight)."""
    z = topk_scores.float().masked_fill(~valid, float("-inf"))
    m = z.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all-invalid row: avoid inf-inf
    return _normalise_rows(torch.exp(z - m))  # exp(-inf) = 0 on invalid slots


def consistency_weights(
    topk_items: Tensor, student_scores: Tensor, valid: Tensor, form: str = "normalised"
) -> Tensor:
    """w_s = 1 where the teacher item is also in the student's top-K (padding excluded),
    normalised per row or, ``form="original"``, left as 1 per agreeing item."""
    if form not in CONSISTENCY_FORMS:
        raise ValueError(f"consistency form must be one of {CONSISTENCY_FORMS}, got {form!r}")
    k = min(topk_items.shape[-1], student_scores.shape[-1] - 1)
    student_topk = _mask_padding_column(student_scores.detach()).topk(k, dim=-1).indices
    hit = ((topk_items.unsqueeze(-1) == student_topk.unsqueeze(-2)).any(dim=-1) & valid).float()
    return _normalise_rows(hit) if form == "normalised" else hit  # no overlap -> all zeros, not NaN


@torch.no_grad()  # weights are targets, not learned: no gradient path into them
def importance_weights(
    teacher_topk_items: Tensor,
    teacher_topk_scores: Tensor,
    student_scores: Tensor,
    *,
    gamma_position: float = 0.3,
    gamma_confidence: float = 0.5,
    gamma_consistency: float = 0.1,
    lambda_position: float = 1.0,
    valid_mask: Tensor | None = None,
    consistency: str = "normalised",
    consistency_scores: Tensor | None = None,
) -> Tensor:
    """(B,K) DLLM2Rec importance weights: normalise(g_p w_p + g_c w_c + g_s w_s) per row.

    ``consistency_scores`` (default ``student_scores``): the student scores whose top-K defines
    the consistency set, e.g. with the history masked like the teacher's list.

    Slots that are invalid (``valid_mask`` False or item id 0) get weight 0 before every
    normalisation; rows with no positive weight come out all zero.
    """
    _check_topk(teacher_topk_items, teacher_topk_scores, student_scores)
    if lambda_position <= 0:
        raise ValueError(f"lambda_position must be > 0, got {lambda_position}")
    gammas = (gamma_position, gamma_confidence, gamma_consistency)
    if min(gammas) < 0:
        raise ValueError(f"gamma_* must be >= 0, got {gammas}")
    valid = _valid(teacher_topk_items, valid_mask)
    w = (
        gamma_position * position_weights(valid, lambda_position)
        + gamma_confidence * confidence_weights(teacher_topk_scores, valid)
        + gamma_consistency
        * consistency_weights(
            teacher_topk_items,
            student_scores if consistency_scores is None else consistency_scores,
            valid,
            consistency,
        )
    )
    return _normalise_rows(w)


def ranking_distillation_loss(
    student_scores: Tensor,
    teacher_topk_items: Tensor,
    weights: Tensor,
    negative_items: Tensor | None = None,
    form: str = "pointwise",
) -> Tensor:
    """Scalar weighted ranking-distillation loss, averaged over the batch.

    pointwise (original DLLM2Rec): -sum_k w_k [log σ(s_k) + log σ(-s_neg_k)], with one sampled
      negative per teacher slot: ``negative_items`` is (B,K) and column k pairs with item k.
    listwise: -sum_k w_k log softmax(s)[item_k], softmax over items 1..N (padding excluded).
    """
    if form not in RANK_FORMS:
        raise ValueError(f"form must be one of {RANK_FORMS}, got {form!r}")
    if teacher_topk_items.shape != weights.shape:
        raise ValueError(
            f"weights {tuple(weights.shape)} must match teacher_topk_items "
            f"{tuple(teacher_topk_items.shape)}"
        )
    weights = weights.detach()
    if form == "pointwise":
        if negative_items is None or negative_items.shape != teacher_topk_items.shape:
            got = None if negative_items is None else tuple(negative_items.shape)
            raise ValueError(
                f"pointwise form needs negative_items of shape {tuple(teacher_topk_items.shape)} "
                f"(one negative per teacher item), got {got}"
            )
        pos = student_scores.gather(1, teacher_topk_items)
        neg = student_scores.gather(1, negative_items)
        per_slot = F.logsigmoid(pos) + F.logsigmoid(-neg)
    else:
        log_p = F.log_softmax(_mask_padding_column(student_scores), dim=-1)
        per_slot = log_p.gather(1, teacher_topk_items)
    # where(): zero-weight slots (e.g. padding item 0 at -inf) must not turn 0 * -inf into NaN.
    weighted = torch.where(weights > 0, weights * per_slot, torch.zeros_like(per_slot))
    return -weighted.sum(dim=-1).mean()


def sample_negatives(
    history_or_seen: Tensor,
    num_items: int,
    count: int,
    generator: torch.Generator | None = None,
    *,
    rounds: int = 4,
    never: Tensor | None = None,
) -> Tensor:
    """(B,count) negatives drawn i.i.d. uniformly from 1..N minus the row's items (0 = padding).

    Vectorised rejection sampling for ``rounds`` rounds; entries still colliding are then drawn
    exactly from each row's allowed set (multinomial over a dense mask, only for those rows).
    Negatives may repeat within a row (independent draws, as in the original). ``never`` ((N+1,)
    bool): items no row may draw (the cold-item protocol's).
    """
    if num_items < 1 or count < 0:
        raise ValueError(f"need num_items >= 1 and count >= 0, got {num_items}, {count}")
    seen = history_or_seen.long()
    if seen.numel() and (seen.min() < 0 or seen.max() > num_items):
        raise ValueError(f"history_or_seen ids must lie in 0..{num_items}")
    device, batch = seen.device, seen.shape[0]
    draws = torch.randint(1, num_items + 1, (batch, count), generator=generator, device=device)

    never = None if never is None else never.to(device)

    def colliding(x: Tensor) -> Tensor:
        hit = (x.unsqueeze(-1) == seen.unsqueeze(-2)).any(dim=-1)
        return hit if never is None else hit | never[x]

    bad = colliding(draws)
    for _ in range(rounds):
        if not bad.any():
            return draws
        fresh = torch.randint(1, num_items + 1, draws.shape, generator=generator, device=device)
        draws = torch.where(bad, fresh, draws)
        bad = colliding(draws)
    rows = bad.any(dim=-1).nonzero(as_tuple=True)[0]
    if rows.numel() == 0:
        return draws
    # Fallback: rows with a tiny allowed set would keep colliding; sample them exactly.
    allowed = torch.ones(rows.numel(), num_items + 1, dtype=torch.bool, device=device)
    allowed[:, 0] = False
    allowed.scatter_(1, seen[rows], False)
    if never is not None:
        allowed &= ~never
    if not allowed.any(dim=-1).all():
        raise ValueError("a row excludes every item 1..N: no negative can be drawn")
    exact = torch.multinomial(allowed.float(), count, replacement=True, generator=generator)
    draws[rows] = torch.where(bad[rows], exact, draws[rows])
    return draws


class CollaborativeEmbeddingDistillation(nn.Module):
    """Item table e_i + ed_weight * Linear(t_i) with t_i the frozen teacher item embedding.

    Applied at train and eval time; :meth:`fold` bakes it into a plain table for export, so the
    distilled student serves as an ordinary SASRec. The teacher table is a non-persistent buffer
    (rebuilt from ``item_embeddings.safetensors``), keeping checkpoints student-sized.
    """

    def __init__(self, teacher_item_embeddings: Tensor, dim: int, ed_weight: float = 0.3):
        super().__init__()
        if teacher_item_embeddings.dim() != 2:
            raise ValueError("teacher_item_embeddings must be (N+1, H_llm)")
        self.register_buffer(
            "teacher_items", standardise_rows(teacher_item_embeddings), persistent=False
        )
        self.proj = nn.Linear(teacher_item_embeddings.shape[1], dim)
        # Zero init: training starts exactly at the plain student and learns how much of the
        # teacher's item geometry helps, instead of starting from a large shared offset.
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.ed_weight = float(ed_weight)

    def forward(self, student_item_table: Tensor) -> Tensor:
        if student_item_table.shape[0] != self.teacher_items.shape[0]:
            raise ValueError(
                f"student table has {student_item_table.shape[0]} rows, teacher embeddings "
                f"{self.teacher_items.shape[0]}: both must be N+1 (same data fingerprint)"
            )
        if self.ed_weight == 0:
            return student_item_table  # exact identity, no projection noise
        delta = self.ed_weight * self.proj(self.teacher_items)
        # Row 0 is padding: the bias would make it non-zero, so the delta is zeroed there.
        keep = torch.ones_like(delta[:, :1])
        keep[0] = 0
        return student_item_table + delta * keep

    @torch.no_grad()
    def fold(self, student_item_table: Tensor) -> Tensor:
        """Folded (N+1,d) table for export: same values as forward, detached."""
        return self.forward(student_item_table).detach().clone()


@dataclass
class DLLM2RecLoss:
    """total = ce + lam * L_rank. ``ce`` comes from the student (see module docstring)."""

    lam: float = 0.7
    gamma_position: float = 0.3
    gamma_confidence: float = 0.5
    gamma_consistency: float = 0.1
    lambda_position: float = 1.0
    form: str = "pointwise"
    average: str = "all"
    consistency: str = "normalised"

    def __post_init__(self) -> None:
        if self.consistency not in CONSISTENCY_FORMS:
            raise ValueError(
                f"consistency must be one of {CONSISTENCY_FORMS}, got {self.consistency!r}"
            )
        if self.form not in RANK_FORMS:
            raise ValueError(f"form must be one of {RANK_FORMS}, got {self.form!r}")
        if self.average not in RANK_AVERAGES:
            raise ValueError(f"average must be one of {RANK_AVERAGES}, got {self.average!r}")

    def __call__(
        self,
        ce: Tensor,
        student_scores: Tensor,
        teacher_topk_items: Tensor,
        teacher_topk_scores: Tensor,
        negative_items: Tensor | None = None,
        valid_mask: Tensor | None = None,
        num_samples: int | None = None,
        consistency_scores: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Returns scalars {"ce", "rank", "total"} for logging; backward on "total".

        ``num_samples``: how many samples the CE was averaged over, of which these B rows are
        the ones with a teacher list (default B); used by ``average="all"``."""
        weights = importance_weights(
            teacher_topk_items,
            teacher_topk_scores,
            student_scores,
            gamma_position=self.gamma_position,
            gamma_confidence=self.gamma_confidence,
            gamma_consistency=self.gamma_consistency,
            lambda_position=self.lambda_position,
            valid_mask=valid_mask,
            consistency=self.consistency,
            consistency_scores=consistency_scores,
        )
        rank = ranking_distillation_loss(
            student_scores, teacher_topk_items, weights, negative_items, self.form
        )
        labeled = teacher_topk_items.shape[0]
        total_samples = labeled if num_samples is None else num_samples
        if total_samples < labeled:
            raise ValueError(
                f"num_samples ({total_samples}) < rows with a teacher list ({labeled})"
            )
        if self.average == "all":
            rank = rank * (labeled / total_samples)
        return {"ce": ce, "rank": rank, "total": ce + self.lam * rank}


def _check_topk(items: Tensor, scores: Tensor, student_scores: Tensor) -> None:
    if items.dim() != 2 or items.shape != scores.shape:
        raise ValueError(
            f"teacher_topk_items {tuple(items.shape)} and teacher_topk_scores "
            f"{tuple(scores.shape)} must both be (B,K)"
        )
    if student_scores.dim() != 2 or student_scores.shape[0] != items.shape[0]:
        raise ValueError(
            f"student_scores {tuple(student_scores.shape)} must be (B,N+1) with B={items.shape[0]}"
        )
