"""Embedding imitation (the earlier guide's "reverse distillation"): the loss and its lambda decay.

With ``use_item_embeddings_head=true`` the teacher scores against a *trainable* copy of the
student's item table. The imitation loss pulls that table back toward its initial copy so the
teacher's item space stays aligned with the student's; its weight ``lambda(t)`` decays over
training::

    schedule = DecaySchedule(lambda0=1.0, lambda_min=0.0, kind="cosine").resolve(
        trainer.estimated_stepping_batches)
    loss = ce + schedule(global_step) * imitation_loss(
        table.weight, initial_table, "mse", rows=items)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ilora.config import DECAY_TYPES, IMITATION_LOSSES
from recdata.errors import UserError

# exponential decay needs lambda_min > 0; a zero floor is lifted to this fraction of lambda0
EXP_FLOOR = 1e-8


class ImitationConfigError(UserError, ValueError):
    """An unknown loss/decay name or a bad horizon: a ValueError that the CLIs also report
    cleanly."""


def _check_name(kind: str, allowed: tuple[str, ...], what: str) -> None:
    if kind not in allowed:
        raise ImitationConfigError(
            f"unknown {what} {kind!r}; expected one of: {', '.join(allowed)}"
        )


def _select_rows(n: int, rows: Tensor | None, device: torch.device) -> Tensor:
    """Item ids to compare: all of 1..n-1, or the unique non-padding ids of ``rows``."""
    if rows is None:
        return torch.arange(1, n, device=device)
    # unique: a batch repeats items; duplicates would over-weight them and, for the contrastive
    # loss, put the same item in two columns (two "correct" answers for one row)
    ids = torch.unique(rows.reshape(-1).to(device=device, dtype=torch.long))
    return ids[ids != 0]


def _contrastive(cur: Tensor, ref: Tensor, temperature: float) -> Tensor:
    # InfoNCE: each item's current vector must pick out its own initial vector among all references
    logits = F.normalize(cur, dim=-1) @ F.normalize(ref, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(cur), device=cur.device))


def imitation_loss(
    current: Tensor,
    reference: Tensor,
    kind: str,
    temperature: float = 0.1,
    rows: Tensor | None = None,
) -> Tensor:
    """Distance between the trainable item table ``current`` (N, d) and its initial copy.

    Row 0 (padding) is always excluded. ``rows`` restricts the comparison to those item ids
    (deduplicated) -- the contrastive kind builds a ``len(rows)^2`` logit matrix, so pass the
    batch's items on large catalogues. ``reference`` is detached: only ``current`` is pulled.
    An empty selection gives a zero that is still attached to ``current``'s graph.
    """
    _check_name(kind, IMITATION_LOSSES, "imitation loss")
    if current.shape != reference.shape or current.dim() != 2:
        raise ImitationConfigError(
            f"current and reference must be the same (N, d) shape, got "
            f"{tuple(current.shape)} and {tuple(reference.shape)}"
        )
    if kind == "contrastive" and temperature <= 0:
        raise ImitationConfigError(f"temperature must be > 0, got {temperature}")
    ids = _select_rows(current.shape[0], rows, current.device)
    if ids.numel() == 0:
        return current.sum() * 0.0
    cur = current[ids]
    ref = reference.detach()[ids].to(cur.dtype)
    if kind == "mse":
        return F.mse_loss(cur, ref)
    if kind == "l1":
        return F.l1_loss(cur, ref)
    if kind == "huber":
        return F.huber_loss(cur, ref, delta=1.0)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(cur, ref, dim=-1).mean()
    return _contrastive(cur, ref, temperature)


def decayed_lambda(
    step: int, total_steps: int, lambda0: float, lambda_min: float, kind: str
) -> float:
    """lambda at optimizer ``step`` of a ``total_steps`` horizon; p = min(step / total_steps, 1).

    Every kind except "none" starts at ``lambda0`` and ends *exactly* at ``lambda_min`` (p >= 1).
    exponential (``l0 * (lmin / l0) ** p``) lifts ``lambda_min`` to ``EXP_FLOOR * lambda0`` for
    p < 1 so ``lambda_min = 0`` is allowed: it then falls to ~1e-8 * l0 and is 0 only at the end.
    ``lambda0 == 0`` disables the term: 0 for every kind.
    """
    _check_name(kind, DECAY_TYPES, "decay type")
    if total_steps < 1:
        raise ImitationConfigError(f"total_steps must be >= 1, got {total_steps}")
    if lambda0 < 0 or lambda_min < 0:
        raise ImitationConfigError(
            f"lambda0 and lambda_min must be >= 0, got {lambda0}, {lambda_min}"
        )
    if lambda0 == 0:
        return 0.0
    if kind == "none":
        return float(lambda0)
    p = min(max(step, 0) / total_steps, 1.0)
    if kind == "linear":
        return lambda0 - (lambda0 - lambda_min) * p
    if kind == "cosine":
        return lambda_min + (lambda0 - lambda_min) * (1.0 + math.cos(math.pi * p)) / 2.0
    if p >= 1.0:  # exponential: land exactly on lambda_min, even when it is 0
        return float(lambda_min)
    floor = max(lambda_min, EXP_FLOOR * lambda0)
    return lambda0 * (floor / lambda0) ** p


@dataclass(frozen=True)
class DecaySchedule:
    """``decay_steps=None`` means "the run's real total optimizer steps": call ``resolve`` with
    Lightning's ``trainer.estimated_stepping_batches`` (not ``max_steps``, which is -1 by
    default)."""

    lambda0: float
    lambda_min: float = 0.0
    kind: str = "none"
    decay_steps: int | None = None

    def __post_init__(self) -> None:
        _check_name(self.kind, DECAY_TYPES, "decay type")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ImitationConfigError(f"decay_steps must be >= 1, got {self.decay_steps}")
        # fail at construction, not at the first training step
        decayed_lambda(0, 1, self.lambda0, self.lambda_min, self.kind)

    def resolve(self, total_steps: int | float) -> DecaySchedule:
        """A copy with the horizon fixed; an explicit ``decay_steps`` wins over ``total_steps``."""
        if self.decay_steps is not None:
            return self
        # estimated_stepping_batches is a float ('inf' for an unbounded run)
        if not math.isfinite(total_steps) or total_steps < 1:
            raise ImitationConfigError(
                "total_steps must be a finite number >= 1 (set teacher.imitation_decay_steps for "
                f"an unbounded run), got {total_steps}"
            )
        return dataclasses.replace(self, decay_steps=int(total_steps))

    def __call__(self, step: int) -> float:
        if self.decay_steps is None:
            raise ImitationConfigError(
                "DecaySchedule has no horizon: call resolve(total_steps) first"
            )
        return decayed_lambda(step, self.decay_steps, self.lambda0, self.lambda_min, self.kind)
