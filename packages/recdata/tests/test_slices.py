"""Slices on train data only: target popularity (head/tail/cold) and user history (short/long)."""

from __future__ import annotations

import numpy as np

from recdata.contract import load_prepared
from recdata.slices import sample_slices, training_item_counts
from recdata.testing import make_prepared

# raw item ids are dense ids here (1..N in ascending order); the last two items of each user are
# its valid and test targets and never count as training interactions
SEQUENCES = [
    [1, 2, 3, 9, 9],  # items 9 only in valid/test
    [1, 2, 4, 5, 6, 7, 8],
    [1, 3, 2, 10],
    [2, 1, 5, 6, 7, 8, 3, 4, 1, 2],
]


def test_training_counts_leave_out_each_users_valid_and_test_items(tmp_path):
    dataset = load_prepared(make_prepared(tmp_path, SEQUENCES))
    counts = training_item_counts(dataset)
    # training parts: [1,2,3] [1,2,4,5,6] [1,3] [2,1,5,6,7,8,3,4]
    expected = np.zeros(dataset.num_items + 1, dtype=np.int64)
    for item in [1, 2, 3, 1, 2, 4, 5, 6, 1, 3, 2, 1, 5, 6, 7, 8, 3, 4]:
        expected[item] += 1
    np.testing.assert_array_equal(counts, expected)


def test_head_is_the_most_popular_fraction_ties_by_id_and_history_splits_at_the_quantile(tmp_path):
    dataset = load_prepared(make_prepared(tmp_path, SEQUENCES))
    slices = sample_slices(dataset, head_fraction=0.2, short_quantile=0.5)
    # 10 items -> 2 head items: item 1 (4 training interactions), then 2 and 3 tie at 3: item 2
    assert np.flatnonzero(slices.item_group == 0).tolist() == [1, 2]
    assert set(np.flatnonzero(slices.item_group[1:] == 1) + 1) == set(range(3, 11))
    # training lengths 3, 5, 2, 8 -> the lower median is 3: users 1 and 3 are short
    assert slices.short_max_length == 3
    assert slices.user_group[1:].tolist() == [0, 1, 0, 1]
    masks = slices.of(np.array([1, 2, 4]), np.array([9, 1, 10]))
    assert masks["head"].tolist() == [False, True, False] and masks["tail"].tolist() == [
        True,
        False,
        True,
    ]
    assert masks["short"].tolist() == [True, False, False] and "cold" not in masks


def test_cold_items_are_their_own_group_and_out_of_the_head(tmp_path):
    dataset = load_prepared(make_prepared(tmp_path, SEQUENCES))
    cold = np.zeros(dataset.num_items + 1, dtype=bool)
    cold[[1, 9]] = True
    slices = sample_slices(dataset, head_fraction=0.2, cold=cold)
    assert np.flatnonzero(slices.item_group == 2).tolist() == [1, 9]
    assert np.flatnonzero(slices.item_group == 0).tolist() == [2, 3]  # the head of the warm items
    assert slices.of(np.array([1]), np.array([9]))["cold"].tolist() == [True]
    assert slices.describe()["items"] == {"head": 2, "tail": 6, "cold": 2}
