"""What a trained teacher hands out: its identity and its top-K lists. Shared by the soft-label
precompute and the teacher service, so both produce the same outputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from recdata.atomic import sha256_file
from recdata.windows import readout_mask, readout_positions, trim_padding_columns
from runkit.checkpoint import WEIGHTS_FILE, read_card
from runkit.chunking import blocks

DIGEST_HEADER = "x-teacher-digest"  # the teacher service names its teacher_digest in every response


def teacher_digest(checkpoint_dir: Path) -> str:
    """Identity of a teacher checkpoint: the sha256 of its trained weights and of the architecture
    its card rebuilds them into (e.g. the student mix chosen after training changes the scores,
    not the weights)."""
    checkpoint_dir = Path(checkpoint_dir)
    hparams = json.dumps(read_card(checkpoint_dir).get("hparams", {}), sort_keys=True)
    identity = f"{sha256_file(checkpoint_dir / WEIGHTS_FILE)}\n{hparams}"
    return hashlib.sha256(identity.encode()).hexdigest()


def topk_with_history_masked(
    scores: torch.Tensor, history: torch.Tensor | None, k: int, never: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-K (descending) over items 1..N, history items excluded when given, and
    the `never` items ((N+1,) bool, e.g. the cold-item protocol's) always."""
    scores = scores.float().clone()
    scores[:, 0] = -torch.inf
    if history is not None:
        scores.scatter_(1, history, -torch.inf)
        scores[:, 0] = -torch.inf
    if never is not None:
        scores.masked_fill_(never, -torch.inf)
    values, items = scores.topk(k, dim=1)
    return items, values


def first_occurrences(full_history: torch.Tensor, num_items: int) -> torch.Tensor:
    """(B, N+1): the 0-based position of each item's first occurrence in each row's history
    (left-padded, oldest first), a large value for items it lacks. Item i is in the history
    items[:p] of a key at position p iff first[i] < p."""
    rows, width = full_history.shape
    lengths = (full_history > 0).sum(1, keepdim=True)
    positions = torch.arange(width).expand(rows, width) - (width - lengths)
    positions = torch.where(full_history > 0, positions, torch.iinfo(torch.int64).max)
    first = torch.full((rows, num_items + 1), torch.iinfo(torch.int64).max, dtype=torch.int64)
    return first.scatter_reduce_(1, full_history, positions, reduce="amin")


@torch.no_grad()
def window_topk(
    teacher,
    windows: torch.Tensor,
    read: torch.Tensor,
    positions: torch.Tensor,
    full_history: torch.Tensor | None,
    k: int,
    device="cpu",
    budget: int | None = None,
    never: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """The teacher's top-K of every read-out key of a window batch, one causal pass per window:
    (rows, positions, items, scores), row-major over ``read`` (B, L) bool, where ``rows`` is each
    key's window and ``positions`` (B, L) the key position each column predicts;
    ``full_history`` excludes each key's own history (None ranks every item). Scores are computed
    a block of windows at a time when the whole batch's positions x items exceed `budget`
    (runkit.chunking). Shared by precompute-soft-labels and the service, so both give the same
    numbers for the same batches. ``never`` ((N+1,) bool) items are never listed (the cold-item
    protocol's)."""
    columns = teacher.student.config.num_items + 1
    rows = read.nonzero()[:, 0]
    first = first_occurrences(full_history, columns - 1) if full_history is not None else None
    items, values = [], []
    for block in blocks(len(windows), windows.shape[1] * columns, budget):
        scores = teacher.score_all_positions(windows[block].to(device)).float().cpu()[read[block]]
        mine = (rows >= block.start) & (rows < block.stop)
        if never is not None:
            scores.masked_fill_(never, -torch.inf)
        block_items, block_values = topk_excluding_history(
            scores, rows[mine], positions[read][mine], first, k
        )
        items.append(block_items), values.append(block_values)
    return rows, positions[read], torch.cat(items), torch.cat(values)


def topk_excluding_history(
    scores: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    first: torch.Tensor | None,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K (items, scores) of read-out rows: the key at position p of window ``rows[m]``;
    ``first`` (:func:`first_occurrences` of each window's whole prefix items[:end], which may
    start before the window) excludes the items of the key's own history items[:p]. None ranks
    every item."""
    scores = scores.clone()
    scores[:, 0] = -torch.inf
    if first is not None:
        scores.masked_fill_(first[rows] < positions.unsqueeze(1), -torch.inf)
    values, items = scores.topk(k, dim=1)
    return items, values


def window_batch(
    histories: list[list[int]], first_positions: list[int], width: int
) -> dict[str, torch.Tensor]:
    """The window batch :class:`recdata.datamodule.WindowTrainDataset` builds, from each window's
    whole prefix items[:end] and its first read-out key: ``history`` (the last ``width`` items,
    left-padded, all-padding columns dropped), ``read`` (B, L) bool and ``positions`` (B, L) (the
    key position each column's readout predicts), and ``full_history`` (the prefixes,
    left-padded)."""
    ends = torch.tensor([len(h) for h in histories])
    full = torch.zeros(len(histories), max(int(ends.max()), width), dtype=torch.long)
    for r, h in enumerate(histories):
        full[r, full.shape[1] - len(h) :] = torch.tensor(h, dtype=torch.long)
    windows = full[:, -width:]
    positions = readout_positions(ends, width)
    read = readout_mask(positions, torch.tensor(first_positions), windows)
    batch = {
        "history": windows,
        "read": read,
        "positions": positions,
        "full_history": full[:, -max(int(ends.max()), 1) :],
    }
    return trim_padding_columns(batch, ("history", "read", "positions"))
