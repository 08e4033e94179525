"""Ranking metrics on tensors.

Tie rule: ties count against the target. A target's rank is the number of other items whose
score is >= its own (0-based), so a model that gives every item the same score ranks every
target last among its ties and scores 0, never 1. A NaN target score ranks last. Padding
(column 0) is never ranked.
"""

from __future__ import annotations

import math

import torch

DEFAULT_KS = (5, 10, 20)
# the candidate protocol's metric: the target ranked first among its stored candidates
CANDIDATE_METRIC = "hr@1_of_20"


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """0-based full-ranking rank of each target among items 1..N (excluded items not ranked)."""
    scores = scores.detach().float().clone()
    scores[:, 0] = -torch.inf
    if exclude is not None:
        scores.masked_fill_(exclude, -torch.inf)
    target_scores = scores.gather(1, targets.view(-1, 1))
    at_least = (scores >= target_scores).sum(1) - 1  # minus the target itself
    # NaN target: last among the ranked items (padding and excluded items are not ranked).
    worst = (~scores.isneginf()).sum(1) - 1
    return torch.where(target_scores.squeeze(1).isnan(), worst, at_least)


def ndcg_per_sample(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k of each sample from its 0-based target rank (one relevant item: 1/log2(rank+2))."""
    ranks = ranks.double()
    return torch.where(ranks < k, 1.0 / torch.log2(ranks + 2.0), 0.0)


def ranking_metrics(ranks: torch.Tensor, ks=DEFAULT_KS) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"hr@{k}"] = (ranks < k).double().mean().item() if len(ranks) else math.nan
        out[f"ndcg@{k}"] = ndcg_per_sample(ranks, k).mean().item() if len(ranks) else math.nan
    return out


def candidate_hits_at_1(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the target (column 0 of `candidates`) strictly beats every other candidate."""
    cand = scores.detach().float().gather(1, candidates)
    return (cand[:, 1:] < cand[:, :1]).all(1)
