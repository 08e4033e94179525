"""Leave-one-out-by-time split keys, counts and limit_data_rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recdata.errors import UserError
from recdata.splits import SPLITS, check_limit, split_counts, split_keys


def brute_force_keys(lengths, split):
    keys = []
    for user, length in enumerate(lengths, start=1):
        if split == "train":
            keys += [(user, t) for t in range(1, length - 2)]  # t in 1..L-3
        elif split == "valid" and length >= 2:
            keys.append((user, length - 2))
        elif split == "test" and length >= 1:
            keys.append((user, length - 1))
    return keys


def as_pairs(keys):
    assert keys.user_ids.dtype == keys.positions.dtype == torch.int64
    return list(zip(keys.user_ids.tolist(), keys.positions.tolist(), strict=True))


def test_hand_made_keys():
    lengths = [4, 3, 6, 5]
    assert as_pairs(split_keys(lengths, "train")) == [
        (1, 1),
        (3, 1),
        (3, 2),
        (3, 3),
        (4, 1),
        (4, 2),
    ]
    assert as_pairs(split_keys(lengths, "valid")) == [(1, 2), (2, 1), (3, 4), (4, 3)]
    assert as_pairs(split_keys(lengths, "test")) == [(1, 3), (2, 2), (3, 5), (4, 4)]
    assert split_counts(np.array(lengths)) == {"train": 6, "valid": 4, "test": 4}


def test_every_position_is_in_exactly_one_split_except_the_first():
    lengths = [3, 4, 9]
    seen = []
    for split in SPLITS:
        seen += as_pairs(split_keys(lengths, split))
    expected = [(u, t) for u, length in enumerate(lengths, 1) for t in range(1, length)]
    assert sorted(seen) == expected  # position 0 never has a history, so it is never a target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keys_equal_brute_force_on_random_lengths(seed):
    lengths = np.random.default_rng(seed).integers(0, 40, size=200)  # includes users < 3
    for split in SPLITS:
        keys = split_keys(lengths, split)
        assert as_pairs(keys) == brute_force_keys(lengths.tolist(), split)
        assert len(keys) == split_counts(lengths)[split]


@pytest.mark.parametrize("limit", [1, 2, 5, 7, 1000])
def test_limit_data_rows_caps_each_split_to_its_first_keys(limit):
    lengths = [6, 3, 8, 2, 5]
    for split in SPLITS:
        full = brute_force_keys(lengths, split)
        assert as_pairs(split_keys(lengths, split, limit)) == full[:limit]
        assert full == sorted(full)  # "first" means (user_id, position) order
    assert as_pairs(split_keys(lengths, "train", -1)) == brute_force_keys(lengths, "train")


@pytest.mark.parametrize("bad", [0, -2, -100])
def test_invalid_limit_is_a_user_error(bad):
    with pytest.raises(UserError, match=rf"limit_data_rows must be -1 .* got {bad}"):
        split_keys([5, 5], "train", bad)
    with pytest.raises(UserError):
        check_limit(bad)
    assert check_limit(-1) == -1 and check_limit(3) == 3


def test_unknown_split():
    with pytest.raises(UserError, match="unknown split 'dev'; expected one of train, valid, test"):
        split_keys([4], "dev")
