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
            "dataset.limit_data_rows must be -1 (all samples) or a "
            f"positive count, got {limit_data_rows}"
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
        raise UserError(
            f"sample selection must be 'all' or 'last_n_per_user=N' (N >= 1), got {spec!r}"
        )
    n = int(value)
    last = torch.zeros(int(keys.user_ids.max()) + 1 if len(keys) else 1, dtype=torch.int64)
    last.scatter_reduce_(0, keys.user_ids, keys.positions, reduce="amax")
    keep = keys.positions > last[keys.user_ids] - n
    return SampleKeys(keys.user_ids[keep], keys.positions[keep])
