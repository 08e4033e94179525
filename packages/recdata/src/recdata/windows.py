"""Window arithmetic, one home: overlapping windows over each user's training prefixes (the
sequence-mode teacher reads out every key of a window in one causal pass), and which column of a
window batch predicts which key.

Column c of a window whose input ends at ``end`` (items[end - width : end], left-padded) holds
item ``end - width + c``; its readout predicts the key at position ``end - width + 1 + c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recdata.errors import UserError
from recdata.splits import SampleKeys


def readout_positions(ends: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width): the key position each column's readout predicts."""
    return ends.unsqueeze(1) - width + 1 + torch.arange(width)


def readout_mask(
    positions: torch.Tensor, first_positions: torch.Tensor, history: torch.Tensor
) -> torch.Tensor:
    """(B, width) bool: the columns read out -- real items from each window's first key on."""
    return (positions >= first_positions.unsqueeze(1)) & (history > 0)


def trim_padding_columns(
    batch: dict[str, torch.Tensor], keys: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Drop the leading columns that are padding in every row (left-padded ``history``)."""
    real = (batch["history"] > 0).any(0).nonzero()
    start = int(real[0]) if len(real) else batch["history"].shape[1] - 1
    return {k: v[:, start:] if k in keys else v for k, v in batch.items()}


@dataclass
class WindowPlan:
    """Overlapping windows over each user's training prefixes, so that one causal pass per window
    reads out every training key exactly once (the sequence-mode teacher).

    Window w has input items[ends[w] - width : ends[w]] of user ``user_ids[w]`` and reads out the
    keys (user_id, p) for p in ``first_positions[w] .. ends[w]`` (the state at item p-1 scores
    item p). Consecutive windows of a user end ``stride`` apart and the last one ends at the
    user's last training key, so every key is read with at least ``width - stride + 1`` items of
    context (all of its history while it is shorter than ``width``)."""

    user_ids: torch.Tensor  # (W,) int64
    ends: torch.Tensor  # (W,) int64: the last key read out; inputs end just before it
    first_positions: torch.Tensor  # (W,) int64
    width: int
    stride: int

    def __len__(self) -> int:
        return len(self.user_ids)

    def lengths(self) -> torch.Tensor:
        """Items in each window's input."""
        return self.ends.clamp(max=self.width)

    def take(self, index: torch.Tensor) -> WindowPlan:
        return WindowPlan(
            self.user_ids[index],
            self.ends[index],
            self.first_positions[index],
            self.width,
            self.stride,
        )

    def longest_first(self) -> WindowPlan:
        """The same windows, longest first (ties in plan order): batches of similar lengths."""
        return self.take(torch.argsort(self.lengths(), descending=True, stable=True))

    def holding(self, keys: SampleKeys, starts: torch.Tensor, size: int) -> WindowPlan:
        """Only the windows that read out at least one of ``keys`` (flat indices as in
        :meth:`SampleKeys.flat_mask`)."""
        counts = torch.cat(
            [torch.zeros(1, dtype=torch.int64), keys.flat_mask(starts, size).cumsum(0)]
        )
        base = starts[self.user_ids]
        inside = counts[base + self.ends + 1] - counts[base + self.first_positions]
        return self.take(inside > 0)


def plan_windows(keys: SampleKeys, width: int, stride: int | None = None) -> WindowPlan:
    """Windows covering the training keys 1..P_u of every user of ``keys`` (P_u = the user's
    largest position in ``keys``), in (user_id, end) order. ``stride`` defaults to width // 2."""
    stride = max(width // 2, 1) if stride is None else stride
    if width < 1 or not 1 <= stride <= width:
        raise UserError(
            f"windows need width >= 1 and 1 <= stride <= width, got width={width}, stride={stride}"
        )
    if len(keys) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return WindowPlan(empty, empty, empty, width, stride)
    users, inverse = torch.unique(keys.user_ids, return_inverse=True)
    last = torch.zeros(len(users), dtype=torch.int64).scatter_reduce_(
        0, inverse, keys.positions, reduce="amax", include_self=False
    )
    counts = 1 + torch.div((last - width).clamp(min=0) + stride - 1, stride, rounding_mode="floor")
    user_ids = torch.repeat_interleave(users, counts)
    k = torch.arange(len(user_ids)) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    last_of = torch.repeat_interleave(last, counts)
    ends = torch.minimum(width + k * stride, last_of)
    first = torch.where(k == 0, 1, width + (k - 1) * stride + 1)
    return WindowPlan(user_ids, ends, first, width, stride)
