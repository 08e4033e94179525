"""The cold-item protocol: held-out items appear in no training input or target, only as valid or
test targets; the view is a dataset of its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recdata.cold import cold_item_mask, hold_out
from recdata.contract import load_prepared
from recdata.datamodule import SequentialDataModule
from recdata.errors import UserError
from recdata.testing import make_prepared

SEQUENCES = [
    [1, 2, 3, 4, 5, 6],  # 5 = valid, 6 = test
    [3, 1, 2, 7, 8],
    [5, 2, 1],  # 2 of 3 cold below: left with one item, dropped
    [7, 8, 9, 10, 1, 2, 3],
]


def test_held_out_items_stay_only_as_valid_or_test_targets(tmp_path):
    dataset = load_prepared(make_prepared(tmp_path, SEQUENCES))
    cold = np.zeros(dataset.num_items + 1, dtype=bool)
    cold[[2, 5, 8]] = True
    view = hold_out(dataset, cold, "random:0.3")
    sequences = [view.sequence(u).tolist() for u in range(1, view.num_users + 1)]
    assert sequences == [[1, 3, 4, 5, 6], [3, 1, 7, 8], [7, 9, 10, 1, 2, 3]]
    assert view.user_raw_ids == ["1", "2", "4"]
    assert view.fingerprint != dataset.fingerprint and view.meta["cold_items"]["dropped_users"] == 1
    assert hold_out(dataset, cold, "random:0.3").fingerprint == view.fingerprint  # reproducible


def test_random_and_newest_choose_reproducibly(tmp_path):
    dataset = load_prepared(make_prepared(tmp_path, SEQUENCES))
    first = cold_item_mask(dataset, "random:0.3", seed=1)
    assert first.sum() == 3 and not first[0]
    assert np.array_equal(first, cold_item_mask(dataset, "random:0.3", seed=1))
    assert not np.array_equal(first, cold_item_mask(dataset, "random:0.3", seed=2))
    # make_prepared gives the t-th item of every user the timestamp T0 + 100 t: item 6 is first
    # seen at t = 5, then items 4 and 10 at t = 3 (a tie, broken by item id)
    newest = cold_item_mask(dataset, "newest:0.2", seed=0)
    assert np.flatnonzero(newest).tolist() == [4, 6]
    with pytest.raises(UserError, match="dataset.cold_items must be none, random:F or newest:F"):
        cold_item_mask(dataset, "oldest:0.1")


def test_the_datamodule_trains_on_no_held_out_item_and_slices_them(tmp_path):
    sequences = [[(u * 3 + t) % 30 + 1 for t in range(12)] for u in range(20)]
    data = make_prepared(tmp_path, sequences)
    dm = SequentialDataModule(
        data, max_seq_len=8, batch_size=4, num_candidates=0, cold_items="random:0.2", cold_seed=3
    )
    dm.setup()
    held = dm.held_out_items
    assert held is not None and int(held.sum()) == 6
    for batch in dm.train_dataloader():
        assert not held[batch["history"]].any() and not held[batch["targets"]].any()
    test = next(iter(dm.loader("test")))
    cold_targets = held[test["target"]]
    assert cold_targets.any()  # some test targets are held out: the cold slice
    groups = dm.slices.of(test["user_id"].numpy(), test["target"].numpy())
    assert np.array_equal(groups["cold"], cold_targets.numpy())
    assert torch.equal(torch.from_numpy(dm.slices.item_group == 2), held)
