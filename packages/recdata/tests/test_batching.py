"""Left-padded windows, targets, history masks and the sequence-mode training rows, each
against a brute-force Python construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recdata_testkit import SEQUENCES, write_random_prepared

from recdata.batching import SequenceStore, history_mask
from recdata.contract import load_prepared
from recdata.datamodule import UserSequenceDataset
from recdata.splits import split_keys


def padded(values, width):
    values = list(values)[-width:] if width else []
    return [0] * (width - len(values)) + values


def test_window_on_the_small_dataset(small_prepared):
    store = SequenceStore(small_prepared)
    users = torch.tensor([1, 2, 3, 2])
    ends = torch.tensor([2, 5, 1, 0])
    got = store.window(users, ends, 3)
    assert got.tolist() == [[0, 2, 1], [2, 6, 5], [0, 0, 4], [0, 0, 0]]
    assert store.targets(torch.tensor([1, 2, 3]), torch.tensor([3, 4, 4])).tolist() == [7, 5, 3]
    assert store.lengths.tolist() == [0, 4, 5, 5]


@pytest.mark.parametrize("seed", [0, 1])
def test_window_equals_brute_force(random_prepared, seed):
    ds, store = random_prepared, SequenceStore(random_prepared)
    rng = np.random.default_rng(seed)
    users = rng.integers(1, ds.num_users + 1, size=300)
    ends = np.array([rng.integers(0, ds.lengths[u - 1] + 1) for u in users])
    for width in (1, 4, 17, 64):
        got = store.window(torch.as_tensor(users), torch.as_tensor(ends), width)
        assert got.dtype == torch.int64 and got.shape == (len(users), width)
        want = [
            padded(ds.sequence(u)[:e].tolist(), width) for u, e in zip(users, ends, strict=True)
        ]
        assert got.tolist() == want
        # the last real item is at column -1 whenever the prefix is non-empty
        nonempty = ends > 0
        last = [ds.sequence(u)[e - 1] for u, e in zip(users[nonempty], ends[nonempty], strict=True)]
        assert got[torch.as_tensor(nonempty), -1].tolist() == last


def test_targets_full_history_and_user_item_mask(random_prepared):
    ds, store = random_prepared, SequenceStore(random_prepared)
    keys = split_keys(ds.lengths, "test")
    users, positions = keys.user_ids, keys.positions
    assert store.targets(users, positions).tolist() == [ds.sequence(u)[-1] for u in users.tolist()]
    full = store.full_history(users, positions)
    width = int(positions.max())
    assert full.tolist() == [padded(ds.sequence(u)[:-1].tolist(), width) for u in users.tolist()]

    mask = store.user_item_mask(users)
    assert mask.shape == (len(users), ds.num_items + 1) and mask[:, 0].all()
    for row, user in enumerate(users.tolist()):
        assert set(torch.nonzero(mask[row, 1:]).flatten().add(1).tolist()) == set(
            ds.sequence(user).tolist()
        )


def test_history_mask_excludes_history_never_padding_or_kept_target():
    history = torch.tensor([[0, 0, 3, 5], [2, 2, 4, 1], [0, 0, 0, 0]])
    keep = torch.tensor([5, 9, 7])  # row 0 target 5 is in its own history (a repeat)
    mask = history_mask(history, num_items=9, keep=keep)
    assert mask.shape == (3, 10) and not mask[:, 0].any()
    assert [torch.nonzero(r).flatten().tolist() for r in mask] == [[3], [1, 2, 4], []]
    assert torch.nonzero(history_mask(history, 9)[0]).flatten().tolist() == [3, 5]


def brute_force_pairs(ds, keys):
    """(user, position) -> (prefix items, target) of every train prefix sample."""
    return {
        (u, t): (ds.sequence(u)[:t].tolist(), int(ds.sequence(u)[t]))
        for u, t in zip(keys.user_ids.tolist(), keys.positions.tolist(), strict=True)
    }


@pytest.mark.parametrize(("max_seq_len", "limit"), [(64, -1), (5, -1), (1, -1), (8, 37)])
def test_sequence_rows_cover_exactly_the_train_prefix_samples(tmp_path, max_seq_len, limit):
    # repeated items allowed: the pairing must not rely on items being distinct
    lengths = np.random.default_rng(5).integers(3, 40, size=25)
    ds = load_prepared(
        write_random_prepared(tmp_path / "d", lengths.tolist(), 30, seed=3, distinct=False)
    )
    store = SequenceStore(ds)
    keys = split_keys(ds.lengths, "train", limit)
    expected = brute_force_pairs(ds, keys)
    dataset = UserSequenceDataset(store, keys, max_seq_len)
    batch = dataset.__getitems__(list(range(len(dataset))))
    assert set(batch) == {"user_id", "history", "targets", "target_positions"}
    inputs, targets = batch["history"], batch["targets"]
    assert inputs.shape == targets.shape == (len(dataset), max_seq_len)
    assert torch.equal(inputs == 0, targets == 0)  # targets are 0 exactly where inputs pad
    assert torch.equal(batch["target_positions"] == 0, targets == 0)

    got = {}
    for row, user in enumerate(batch["user_id"].tolist()):
        real = torch.nonzero(targets[row]).flatten().tolist()
        end = max(t for (u, t) in expected if u == user)  # last train position of this user
        for col in real:
            position = end - max_seq_len + col + 1  # the target's index in the sequence
            assert batch["target_positions"][row, col] == position  # the sample key of that target
            prefix_window = inputs[row, : col + 1].tolist()  # what a causal model sees
            got[(user, position)] = (prefix_window, int(targets[row, col]))
    # the same (prefix, target) pairs, truncated to the last max_seq_len items of the prefix
    kept = {k for k in expected if k[1] > max(t for (u, t) in expected if u == k[0]) - max_seq_len}
    assert set(got) == kept
    for key, (prefix_window, target) in got.items():
        prefix, want_target = expected[key]
        assert target == want_target
        assert prefix_window == padded(prefix, len(prefix_window))
    if max_seq_len >= 40:
        assert set(got) == set(expected)  # no truncation: every train sample exactly once
    assert sorted(set(batch["user_id"].tolist())) == sorted({u for u, _ in expected})


def test_sequence_rows_on_the_small_dataset(small_prepared):
    keys = split_keys(small_prepared.lengths, "train")
    dataset = UserSequenceDataset(SequenceStore(small_prepared), keys, 4)
    batch = dataset.__getitems__([0, 1, 2])
    assert batch["user_id"].tolist() == [1, 2, 3]
    # user 1: train targets at position 1 only; users 2/3: positions 1 and 2
    assert batch["history"].tolist() == [[0, 0, 0, 2], [0, 0, 1, 3], [0, 0, 4, 2]]
    assert batch["targets"].tolist() == [[0, 0, 0, 1], [0, 0, 3, 2], [0, 0, 2, 7]]
    assert SEQUENCES[2][1:3] == [3, 2] and SEQUENCES[3][1:3] == [2, 7]
    single = dataset[1]
    assert single["history"].tolist() == [0, 0, 1, 3] and int(single["user_id"]) == 2
