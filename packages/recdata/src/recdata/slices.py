"""Slices of the evaluation samples where an LLM is expected to pay, defined on train data only.

* target popularity: an item's training interactions (every item of a user's sequence before its
  valid and test items) rank the catalogue; the `head_fraction` most popular items are **head**,
  the rest **tail** (LLM-ESR's split: 20% / 80%), and items held out by the cold-item protocol are
  **cold** (no training interaction at all, by construction);
* user history: a user whose training sequence is at most the `short_quantile` quantile of all
  users' training lengths is **short**, else **long**.

A sample belongs to the group of its target and the group of its user; every metric is reported
on each group, so a gain on rare items or short histories is not averaged away by the popular
items most targets are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recdata.contract import PreparedDataset

ITEM_GROUPS = ("head", "tail", "cold")
USER_GROUPS = ("short", "long")


@dataclass(frozen=True)
class Slices:
    item_group: np.ndarray  # (N+1,) int8 index into ITEM_GROUPS (row 0, padding, unused)
    user_group: np.ndarray  # (U+1,) int8 index into USER_GROUPS (row 0 unused)
    head_fraction: float
    short_quantile: float
    short_max_length: int  # the longest training sequence that counts as short

    def describe(self) -> dict:
        counts = np.bincount(self.item_group[1:], minlength=len(ITEM_GROUPS))
        users = np.bincount(self.user_group[1:], minlength=len(USER_GROUPS))
        return {
            "popularity": f"head = the {self.head_fraction:.0%} most popular items by training "
            "interactions, tail = the rest, cold = held out of training",
            "history": f"short = users with at most {self.short_max_length} training interactions "
            f"(the {self.short_quantile:.0%} quantile), long = the rest",
            "items": {g: int(c) for g, c in zip(ITEM_GROUPS, counts, strict=True)},
            "users": {g: int(c) for g, c in zip(USER_GROUPS, users, strict=True)},
        }

    def of(self, user_ids: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """{group name: bool mask} of samples (by their user and target item)."""
        items, users = self.item_group[targets], self.user_group[user_ids]
        masks = {g: items == i for i, g in enumerate(ITEM_GROUPS)}
        masks |= {g: users == i for i, g in enumerate(USER_GROUPS)}
        return {
            g: m for g, m in masks.items() if g != "cold" or self.item_group[1:].max(initial=0) == 2
        }


def training_item_counts(dataset: PreparedDataset) -> np.ndarray:
    """(N+1,) interactions of each item in the training part of every sequence (all but its last
    two items, the valid and test targets)."""
    lengths = dataset.lengths
    position = np.arange(len(dataset.items)) - np.repeat(dataset.offsets[:-1], lengths)
    in_train = position < np.repeat(lengths - 2, lengths)
    return np.bincount(dataset.items[in_train], minlength=dataset.num_items + 1)


def sample_slices(
    dataset: PreparedDataset,
    *,
    head_fraction: float = 0.2,
    short_quantile: float = 0.5,
    cold: np.ndarray | None = None,
) -> Slices:
    """The slices of `dataset` (`cold`: (N+1,) bool, the items the cold-item protocol holds out)."""
    counts = training_item_counts(dataset)
    cold = np.zeros(dataset.num_items + 1, dtype=bool) if cold is None else cold
    warm = np.flatnonzero(~cold[1:]) + 1
    # most popular first, ties by item id: deterministic
    ranked = warm[np.lexsort((warm, -counts[warm]))]
    head = ranked[: int(np.ceil(head_fraction * len(ranked)))]
    item_group = np.ones(dataset.num_items + 1, dtype=np.int8)
    item_group[head] = 0
    item_group[cold] = 2
    train_lengths = np.maximum(dataset.lengths - 2, 0)
    short_max = (
        int(np.quantile(train_lengths, short_quantile, method="lower")) if len(train_lengths) else 0
    )
    user_group = np.concatenate([[0], (train_lengths > short_max).astype(np.int8)])
    return Slices(item_group, user_group, head_fraction, short_quantile, short_max)
