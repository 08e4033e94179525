"""Vectorised batch construction from flat sequences: left-padded windows, no Python loops."""

from __future__ import annotations

import torch

from recdata.contract import PreparedDataset

# elements of one rows x items block of scores or masks (256 MiB in fp32): steps that need a value
# per item for many rows at once work in blocks of this size, so memory stays bounded as the
# catalogue grows (runkit.chunking)
ITEM_BLOCK_BUDGET = 2**26


class SequenceStore:
    """Flat item tensor plus per-user start offsets, indexed directly by user_id."""

    def __init__(self, dataset: PreparedDataset):
        self.items = torch.as_tensor(dataset.items, dtype=torch.int64)
        offsets = torch.as_tensor(dataset.offsets, dtype=torch.int64)
        # starts[user_id] = first flat index of that user; index 0 unused (user ids start at 1)
        self.starts = torch.cat([offsets[:1], offsets[:-1]])
        self.lengths = torch.cat([torch.zeros(1, dtype=torch.int64), offsets[1:] - offsets[:-1]])
        self.num_items = dataset.num_items

    def window(self, user_ids: torch.Tensor, ends: torch.Tensor, width: int) -> torch.Tensor:
        """items[end-width:end] of each user, left-padded with 0 where the window starts early.

        The last real item is always at column -1, so models gather the state at index -1.
        """
        starts = self.starts[user_ids]
        index = (starts + ends).unsqueeze(1) - width + torch.arange(width)
        valid = index >= starts.unsqueeze(1)
        return torch.where(valid, self.items[index.clamp(min=0)], 0)

    def targets(self, user_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.items[self.starts[user_ids] + positions]

    def full_history(self, user_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The whole prefix items[:position] (for history masking), left-padded to the longest."""
        width = max(int(positions.max()), 1) if len(positions) else 1
        return self.window(user_ids, positions, width)

    def user_item_mask(self, user_ids: torch.Tensor) -> torch.Tensor:
        """(B, N+1) bool: every item the user ever interacted with (for candidate sampling)."""
        lengths = self.lengths[user_ids]
        seqs = self.window(user_ids, lengths, max(int(lengths.max()), 1))
        mask = torch.zeros(len(user_ids), self.num_items + 1, dtype=torch.bool)
        mask.scatter_(1, seqs, True)
        mask[:, 0] = True  # padding is never a candidate
        return mask


def history_mask(
    full_history: torch.Tensor, num_items: int, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, N+1) bool mask of items in each row's history; the `keep` items are never masked."""
    mask = torch.zeros(
        full_history.shape[0], num_items + 1, dtype=torch.bool, device=full_history.device
    )
    mask.scatter_(1, full_history, True)
    mask[:, 0] = False
    if keep is not None:
        mask[torch.arange(len(keep)), keep] = False
    return mask
