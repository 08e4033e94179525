"""What a trained teacher hands out: its identity and its top-K lists. Shared by the soft-label
precompute and the teacher service, so both produce the same outputs."""

from __future__ import annotations

from pathlib import Path

import torch

from recdata.atomic import sha256_file
from recdata.checkpoint import WEIGHTS_FILE


def teacher_digest(checkpoint_dir: Path) -> str:
    """Identity of a teacher checkpoint: the sha256 of its trained weights."""
    return sha256_file(Path(checkpoint_dir) / WEIGHTS_FILE)


def topk_with_history_masked(scores: torch.Tensor, history: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-K (descending) over items 1..N, history items excluded when given."""
    scores = scores.float().clone()
    scores[:, 0] = -torch.inf
    if history is not None:
        scores.scatter_(1, history, -torch.inf)
        scores[:, 0] = -torch.inf
    values, items = scores.topk(k, dim=1)
    return items, values
