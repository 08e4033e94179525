"""Window plans (every training key read out exactly once, with at least width - stride + 1 items
of context), the window training rows, length-grouped batches and key-ordered evaluation output,
each against a brute-force construction."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from recdata_testkit import write_random_prepared
from torch.utils.data import DataLoader

from recdata.batching import SequenceStore
from recdata.contract import load_prepared
from recdata.datamodule import LengthGroupedSampler, SequentialDataModule, WindowTrainDataset
from recdata.errors import UserError
from recdata.splits import select_samples, split_keys
from recdata.windows import plan_windows
from runkit.evaluation import evaluate


@pytest.fixture
def long_prepared(tmp_path):
    """Users from 3 to 45 items, so windows of a few items cut most of them several times."""
    lengths = [3, 4, 5, 9, 16, 17, 23, 30, 45, 12]
    return load_prepared(write_random_prepared(tmp_path / "long", lengths, num_items=60, seed=3))


def brute_force_readouts(plan):
    """(user, key position) -> (window index, context length) for every window's readouts."""
    out = {}
    for w, (user, end, first) in enumerate(
        zip(plan.user_ids.tolist(), plan.ends.tolist(), plan.first_positions.tolist(), strict=True)
    ):
        start = max(end - plan.width, 0)
        for p in range(first, end + 1):
            assert (user, p) not in out, f"key {(user, p)} read out twice"
            out[(user, p)] = (w, p - start)
    return out


@pytest.mark.parametrize(("width", "stride"), [(4, 2), (4, 4), (5, 1), (8, None), (100, None)])
def test_every_training_key_is_read_out_exactly_once(long_prepared, width, stride):
    keys = split_keys(long_prepared.lengths, "train")
    plan = plan_windows(keys, width, stride)
    readouts = brute_force_readouts(plan)
    assert set(readouts) == set(zip(keys.user_ids.tolist(), keys.positions.tolist(), strict=True))
    stride = stride or width // 2
    for (_, p), (_, context) in readouts.items():
        assert context == p if p <= width else width - stride + 1 <= context <= width
    last = {u: max(p for uu, p in readouts if uu == u) for u, _ in readouts}
    for user, end in zip(plan.user_ids.tolist(), plan.ends.tolist(), strict=True):
        assert end <= last[user]
    assert {
        u: e for u, e in zip(plan.user_ids.tolist(), plan.ends.tolist(), strict=True)
    } == last  # last window ends at the last key


def test_bad_window_shapes_are_refused(long_prepared):
    keys = split_keys(long_prepared.lengths, "train")
    for width, stride in ((0, None), (4, 5), (4, 0)):
        with pytest.raises(UserError, match="windows need width >= 1"):
            plan_windows(keys, width, stride)


def test_window_rows_hold_the_right_inputs_targets_and_keys(long_prepared):
    store = SequenceStore(long_prepared)
    keys = split_keys(long_prepared.lengths, "train")
    plan = plan_windows(keys, 6, 3)
    dataset = WindowTrainDataset(store, plan)
    batch = dataset.__getitems__(list(range(len(plan))))
    seen = Counter()
    for row in range(len(plan)):
        user, end = int(plan.user_ids[row]), int(plan.ends[row])
        seq = long_prepared.sequence(user).tolist()
        history = batch["history"][row].tolist()
        real = [i for i in history if i]
        assert real == seq[max(end - 6, 0) : end] and history[-1] == seq[end - 1]
        for col, (target, position) in enumerate(
            zip(
                batch["targets"][row].tolist(), batch["target_positions"][row].tolist(), strict=True
            )
        ):
            if target:
                # the item before the target
                assert seq[position] == target and history[col] == seq[position - 1]
                seen[(user, position)] += 1
    assert set(seen) == set(zip(keys.user_ids.tolist(), keys.positions.tolist(), strict=True))
    assert set(seen.values()) == {1}


def test_a_selection_reads_out_only_its_keys_from_the_windows_that_hold_them(long_prepared):
    dm = SequentialDataModule(
        long_prepared.path,
        max_seq_len=5,
        num_candidates=0,
        train_mode="windows",
        train_samples="last_n_per_user=2",
    )
    dm.setup()
    dataset = dm.train_dataset()
    batch = dataset.__getitems__(list(range(len(dataset))))
    got = {
        (int(u), int(p))
        for u, row in zip(batch["user_id"], batch["target_positions"], strict=True)
        for p in row
        if p
    }
    wanted = select_samples(split_keys(long_prepared.lengths, "train"), "last_n_per_user=2")
    assert got == set(zip(wanted.user_ids.tolist(), wanted.positions.tolist(), strict=True))
    assert int((batch["targets"] > 0).sum()) == len(wanted)
    assert ((batch["targets"] > 0).sum(1) > 0).all()  # no window without a selected key


def test_window_batches_drop_columns_that_are_padding_in_every_row(long_prepared):
    dataset = WindowTrainDataset(
        SequenceStore(long_prepared), plan_windows(split_keys(long_prepared.lengths, "train"), 40)
    )
    short = [i for i in range(len(dataset)) if dataset.lengths()[i] <= 3]
    batch = dataset.__getitems__(short)
    assert batch["history"].shape[1] == int(dataset.lengths()[short].max())
    assert (batch["history"][:, 0] > 0).any()


def test_length_grouped_batches_are_a_seeded_permutation_of_similar_lengths():
    lengths = torch.randint(1, 200, (1000,), generator=torch.Generator().manual_seed(0))
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(1000)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    spread = [
        int(lengths[first[i : i + 8]].max() - lengths[first[i : i + 8]].min())
        for i in range(0, 1000, 8)
    ]
    random_spread = [
        int(lengths[i : i + 8].max() - lengths[i : i + 8].min()) for i in range(0, 1000, 8)
    ]
    assert sum(spread) * 5 < sum(random_spread)  # padding mostly gone
    fixed = list(LengthGroupedSampler(lengths, batch_size=8, shuffle=False))
    assert [int(lengths[i]) for i in fixed] == sorted(lengths.tolist(), reverse=True)


def test_length_grouped_loader_batches_stay_similar_when_the_count_is_not_a_multiple_of_the_batch():
    """1,003 windows end in a short batch; the DataLoader's runs of 8 must still be the sampler's
    batches, not straddle a long one and a short one (ML-100K's 1,164 windows did, and 22% of the
    teacher's padded columns were padding)."""
    lengths = torch.randint(1, 200, (1003,), generator=torch.Generator().manual_seed(0))
    for epoch in range(3):
        sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
        sampler.set_epoch(epoch)
        loader = DataLoader(range(1003), batch_size=8, sampler=sampler)
        spreads = [int(lengths[b].max() - lengths[b].min()) for b in loader]
        assert len(spreads) == 126 and max(spreads) <= 30, sorted(spreads)[-3:]


def test_evaluation_output_is_in_key_order_whatever_the_loader_order(long_prepared):
    """Length-ordered evaluation batches give the same metrics and the same predictions file."""
    by_key = SequentialDataModule(
        long_prepared.path, max_seq_len=8, num_candidates=0, eval_batch_size=3
    )
    by_length = SequentialDataModule(
        long_prepared.path, max_seq_len=8, num_candidates=0, eval_batch_size=3, eval_order="length"
    )
    by_key.setup(), by_length.setup()
    table = torch.randn(61, 4, generator=torch.Generator().manual_seed(1))

    def score(batch):
        return (
            batch["history"].float() @ torch.ones(8, 61) * 0.01
            + table[batch["history"][:, -1]] @ table.T
        )

    order = [int(b["user_id"][0]) for b in by_length.loader("test")]
    assert order != sorted(order)
    a = evaluate(score, by_key.loader("test"), 60, progress=False)
    b = evaluate(score, by_length.loader("test"), 60, progress=False)
    assert a.metrics == b.metrics and a.predictions.equals(b.predictions)
    assert a.predictions.column("user_id").to_pylist() == sorted(
        a.predictions.column("user_id").to_pylist()
    )
