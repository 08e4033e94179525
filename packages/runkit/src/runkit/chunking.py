"""Bounded memory when scores over every item are needed: rows x items blocks of at most
LOGITS_BUDGET elements.

A batch's (rows x N+1) score matrix grows with the catalogue: 25,600 training positions of a
128-user batch over 100k items are 2.6e9 floats (10 GiB). Steps that need it cut the rows into
blocks; in training each block runs under activation checkpointing, so its scores are freed after
its loss and recomputed for the backward pass. Below the budget (ML-100K: 25,600 x 1,683 = 4.3e7)
the callers take their unchunked path, so results there are exactly what they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from recdata.batching import ITEM_BLOCK_BUDGET

LOGITS_BUDGET = ITEM_BLOCK_BUDGET  # elements of one block of scores (256 MiB in fp32)


def rows_per_block(columns: int, budget: int | None = None) -> int:
    """How many rows of `columns` scores fit in one block."""
    return max(1, (budget or LOGITS_BUDGET) // max(columns, 1))


def fits(rows: int, columns: int, budget: int | None = None) -> bool:
    return rows * columns <= (budget or LOGITS_BUDGET)


def blocks(rows: int, columns: int, budget: int | None = None) -> Iterator[slice]:
    step = rows_per_block(columns, budget)
    for lo in range(0, rows, step):
        yield slice(lo, min(lo + step, rows))


def checkpointed_sum(
    block_loss: Callable[..., torch.Tensor],
    tensors: tuple[torch.Tensor, ...],
    columns: int,
    budget: int | None = None,
) -> torch.Tensor:
    """sum over row blocks of ``block_loss(*block_of_each_tensor)`` (a scalar per block), each
    block under activation checkpointing: peak memory is one block of scores, not all of them."""
    total = tensors[0].new_zeros(())
    for rows in blocks(len(tensors[0]), columns, budget):
        total = total + checkpoint(block_loss, *(t[rows] for t in tensors), use_reentrant=False)
    return total


def blocked_cross_entropy(
    scores_of: Callable[..., torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    targets: torch.Tensor,
    columns: int,
    budget: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``scores_of(*inputs)`` (rows x `columns` scores) against `targets`:
    one matrix when it fits the budget, else summed over checkpointed row blocks."""
    if fits(len(targets), columns, budget):
        return F.cross_entropy(scores_of(*inputs), targets)

    def block_sum(*block: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(scores_of(*block[:-1]), block[-1], reduction="sum")

    return checkpointed_sum(block_sum, (*inputs, targets), columns, budget) / len(targets)
