"""Leave-one-out-by-time samples keyed by (user_id, position), materialised as tensors once.

For a sequence of length L: test predicts index L-1, valid predicts L-2, train predicts every
index t in 1..L-3. A sample's history is items[:position] of that user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recdata.contract import SPLIT_RULE as SPLIT_RULE
from recdata.contract import split_counts as split_counts
from recdata.errors import UserError

# SPLIT_RULE and split_counts (re-exported above) live in the torch-free contract module, so
# `recdata prepare` never imports torch (~5 s and ~600 MiB).
SPLITS = ("train", "valid", "test")


def check_limit(limit_data_rows: int) -> int:
    if limit_data_rows == 0 or limit_data_rows < -1:
        raise UserError(
            f"dataset.limit_data_rows must be -1 (all samples) or a positive count, got {limit_data_rows}"
        )
    return limit_data_rows


@dataclass
class SampleKeys:
    """The samples of one split, in (user_id, position) order."""

    user_ids: torch.Tensor  # int64 (S,)
    positions: torch.Tensor  # int64 (S,)

    def __len__(self) -> int:
        return len(self.user_ids)

    def head(self, n: int) -> SampleKeys:
        return SampleKeys(self.user_ids[:n], self.positions[:n]) if n >= 0 else self

    def flat_mask(self, starts: torch.Tensor, size: int) -> torch.Tensor:
        """(size + 1,) bool, True at each key's flat item index starts[user_id] + position."""
        mask = torch.zeros(size + 1, dtype=torch.bool)
        mask[starts[self.user_ids] + self.positions] = True
        return mask


def split_keys(lengths: np.ndarray, split: str, limit_data_rows: int = -1) -> SampleKeys:
    """Sample keys of `split` for users 1..U with the given sequence lengths."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    lengths = torch.as_tensor(np.asarray(lengths), dtype=torch.int64)
    users = torch.arange(1, len(lengths) + 1, dtype=torch.int64)
    if split == "test":
        keep = lengths >= 1
        keys = SampleKeys(users[keep], lengths[keep] - 1)
    elif split == "valid":
        keep = lengths >= 2
        keys = SampleKeys(users[keep], lengths[keep] - 2)
    else:
        counts = (lengths - 3).clamp(min=0)
        user_ids = torch.repeat_interleave(users, counts)
        # position within each user's run: 1..count, via a cumulative-count offset trick
        starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        positions = torch.arange(len(user_ids), dtype=torch.int64) - starts + 1
        keys = SampleKeys(user_ids, positions)
    return keys.head(check_limit(limit_data_rows))


def select_samples(keys: SampleKeys, spec: str) -> SampleKeys:
    """A subset of train samples: `all`, or `last_n_per_user=N` (each user's N latest prefixes,
    the ones closest to valid/test; used to bound LLM cost on CPU)."""
    spec = str(spec).strip()
    if spec == "all":
        return keys
    name, _, value = spec.partition("=")
    if name != "last_n_per_user" or not value.isdigit() or int(value) < 1:
        raise UserError(f"sample selection must be 'all' or 'last_n_per_user=N' (N >= 1), got {spec!r}")
    n = int(value)
    last = torch.zeros(int(keys.user_ids.max()) + 1 if len(keys) else 1, dtype=torch.int64)
    last.scatter_reduce_(0, keys.user_ids, keys.positions, reduce="amax")
    keep = keys.positions > last[keys.user_ids] - n
    return SampleKeys(keys.user_ids[keep], keys.positions[keep])


@dataclass
class WindowPlan:
    """Overlapping windows over each user's training prefixes, so that one causal pass per window
    reads out every training key exactly once (the sequence-mode teacher, DESIGN §5).

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
        return WindowPlan(self.user_ids[index], self.ends[index], self.first_positions[index], self.width, self.stride)

    def longest_first(self) -> WindowPlan:
        """The same windows, longest first (ties in plan order): batches of similar lengths."""
        return self.take(torch.argsort(self.lengths(), descending=True, stable=True))

    def holding(self, keys: SampleKeys, starts: torch.Tensor, size: int) -> WindowPlan:
        """Only the windows that read out at least one of ``keys`` (flat indices as in
        :meth:`SampleKeys.flat_mask`)."""
        counts = torch.cat([torch.zeros(1, dtype=torch.int64), keys.flat_mask(starts, size).cumsum(0)])
        base = starts[self.user_ids]
        inside = counts[base + self.ends + 1] - counts[base + self.first_positions]
        return self.take(inside > 0)


def plan_windows(keys: SampleKeys, width: int, stride: int | None = None) -> WindowPlan:
    """Windows covering the training keys 1..P_u of every user of ``keys`` (P_u = the user's
    largest position in ``keys``), in (user_id, end) order. ``stride`` defaults to width // 2."""
    stride = max(width // 2, 1) if stride is None else stride
    if width < 1 or not 1 <= stride <= width:
        raise UserError(f"windows need width >= 1 and 1 <= stride <= width, got width={width}, stride={stride}")
    if len(keys) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return WindowPlan(empty, empty, empty, width, stride)
    users, inverse = torch.unique(keys.user_ids, return_inverse=True)
    last = torch.zeros(len(users), dtype=torch.int64).scatter_reduce_(0, inverse, keys.positions, reduce="amax", include_self=False)
    counts = 1 + torch.div((last - width).clamp(min=0) + stride - 1, stride, rounding_mode="floor")
    user_ids = torch.repeat_interleave(users, counts)
    k = torch.arange(len(user_ids)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    last_of = torch.repeat_interleave(last, counts)
    ends = torch.minimum(width + k * stride, last_of)
    first = torch.where(k == 0, 1, width + (k - 1) * stride + 1)
    return WindowPlan(user_ids, ends, first, width, stride)
