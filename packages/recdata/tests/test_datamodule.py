"""SequentialDataModule batches, the epoch-seeded sampler and the stored candidate sets."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from recdata_testkit import write_ml1m, write_random_prepared

from recdata import candidates as candidates_module
from recdata.batching import SequenceStore
from recdata.candidates import candidates_path, draw_candidates, load_or_draw_candidates
from recdata.contract import load_prepared
from recdata.datamodule import EpochShuffleSampler, SequentialDataModule
from recdata.errors import DataError, UserError
from recdata.prepare import build_contract
from recdata.sources import dataset_spec
from recdata.splits import split_keys


def padded(values, width):
    values = list(values)[-width:]
    return [0] * (width - len(values)) + values


def make_dm(path, **kw):
    kw.setdefault("max_seq_len", 8)
    dm = SequentialDataModule(path, **kw)
    dm.setup()
    return dm


def collect(loader):
    """Concatenate a loader's batches (full_history, whose width is per batch, excepted)."""
    batches = list(loader)
    return {
        k: torch.cat([b[k] for b in batches]) for k in batches[0] if k != "full_history"
    }, batches


def test_eval_batches_have_the_documented_keys_and_values(random_prepared):
    ds = random_prepared
    dm = make_dm(ds.path, eval_batch_size=7)
    assert dm.num_items == ds.num_items and dm.fingerprint == ds.fingerprint
    for split in ("valid", "test"):
        batch, batches = collect(dm.loader(split))
        assert set(batches[0]) == {
            "user_id",
            "position",
            "history",
            "target",
            "full_history",
            "candidates",
        }
        assert len(batches) == -(-ds.num_users // 7)
        keys = split_keys(ds.lengths, split)
        assert torch.equal(batch["user_id"], keys.user_ids)  # key order, not loader luck
        assert torch.equal(batch["position"], keys.positions)
        for i, (u, p) in enumerate(
            zip(keys.user_ids.tolist(), keys.positions.tolist(), strict=True)
        ):
            seq = ds.sequence(u).tolist()
            assert batch["history"][i].tolist() == padded(seq[:p], 8)
            assert int(batch["target"][i]) == seq[p]
        for b in batches:  # the whole prefix, left-padded to the batch's longest, not the window
            width = int(b["position"].max())
            want = [
                padded(ds.sequence(u)[:p].tolist(), width)
                for u, p in zip(b["user_id"].tolist(), b["position"].tolist(), strict=True)
            ]
            assert b["full_history"].tolist() == want
        assert torch.equal(batch["candidates"][:, 0], batch["target"])


def test_train_batches_in_both_modes(random_prepared):
    ds = random_prepared
    seq_dm = make_dm(ds.path, batch_size=16)
    batch, batches = collect(seq_dm.train_dataloader())
    assert set(batches[0]) == {"user_id", "history", "targets", "target_positions"}
    with_train = (np.flatnonzero(ds.lengths > 3) + 1).tolist()  # length-3 users have none
    assert len(with_train) < ds.num_users
    assert sorted(batch["user_id"].tolist()) == with_train

    prefix_dm = make_dm(ds.path, batch_size=64, train_mode="prefixes")
    batch, batches = collect(prefix_dm.train_dataloader())
    assert set(batches[0]) == {"user_id", "position", "history", "target"}
    keys = split_keys(ds.lengths, "train")
    got = sorted(zip(batch["user_id"].tolist(), batch["position"].tolist(), strict=True))
    assert got == list(zip(keys.user_ids.tolist(), keys.positions.tolist(), strict=True))
    for u, p, t in zip(
        batch["user_id"].tolist(), batch["position"].tolist(), batch["target"].tolist(), strict=True
    ):
        assert t == ds.sequence(u)[p]


def test_limit_data_rows_applies_to_every_split_and_the_candidates(random_prepared):
    dm = make_dm(random_prepared.path, limit_data_rows=5, train_mode="prefixes")
    full = make_dm(random_prepared.path)
    for split in ("train", "valid", "test"):
        ds = dm.split_dataset(split)
        assert len(ds) == 5
        assert torch.equal(ds.keys.user_ids, full.keys[split].user_ids[:5])
    for split in ("valid", "test"):
        assert torch.equal(dm.candidates[split], full.candidates[split][:5])


def test_sampler_is_a_function_of_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50)) and len(a) == 50
    assert list(b) == first  # same (seed, epoch)
    a.set_epoch(1)
    second = list(a)
    assert second != first and sorted(second) == list(range(50))
    b.set_epoch(1)
    assert list(b) == second
    b.set_epoch(0)
    assert list(b) == first  # resuming at epoch 0 replays epoch 0
    assert list(EpochShuffleSampler(50, seed=4)) != first


def test_train_loader_order_is_reproducible_per_epoch(random_prepared):
    def epoch_users(epoch):
        loader = make_dm(random_prepared.path, batch_size=8, seed=11).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["user_id"] for b in loader]).tolist()

    assert epoch_users(0) == epoch_users(0)
    assert epoch_users(0) != epoch_users(1)
    assert sorted(epoch_users(2)) == (np.flatnonzero(random_prepared.lengths > 3) + 1).tolist()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"train_mode": "pairs"}, "train_mode must be one of user_sequences, prefixes, windows"),
        ({"max_seq_len": 0}, "max_seq_len must be positive"),
        ({"limit_data_rows": 0}, "limit_data_rows must be -1"),
        ({"limit_data_rows": -3}, "limit_data_rows must be -1"),
    ],
)
def test_bad_settings_are_user_errors(random_prepared, kw, message):
    with pytest.raises(UserError, match=message):
        SequentialDataModule(random_prepared.path, **kw)


def test_no_training_samples_is_a_user_error(tmp_path):
    out = write_random_prepared(tmp_path / "d", [3, 3, 3], 40)  # length 3 -> no train sample
    with pytest.raises(UserError, match="no training samples"):
        make_dm(out, num_candidates=0)


# --- candidates ------------------------------------------------------------------------------


def check_candidates(ds, keys, cands, num_candidates=20):
    store = SequenceStore(ds)
    assert cands.shape == (len(keys), num_candidates) and cands.dtype == torch.int64
    assert torch.equal(cands[:, 0], store.targets(keys.user_ids, keys.positions))
    for row, user in enumerate(keys.user_ids.tolist()):
        negatives = cands[row, 1:].tolist()
        assert len(set(negatives)) == num_candidates - 1  # distinct
        assert 0 not in negatives
        assert all(1 <= n <= ds.num_items for n in negatives)
        assert not set(negatives) & set(ds.sequence(user).tolist())  # never in the full sequence


def test_candidates_properties_and_reload(random_prepared, monkeypatch):
    ds = random_prepared
    first = load_or_draw_candidates(ds, SequenceStore(ds), 20, seed=5)
    for split in ("valid", "test"):
        check_candidates(ds, split_keys(ds.lengths, split), first[split])
    assert not torch.equal(first["valid"][:, 1:], first["test"][:, 1:])

    path = candidates_path(ds, 20, 5)
    table = pq.read_table(path)
    assert table.schema.metadata[b"fingerprint"].decode() == ds.fingerprint
    assert table.column("split").to_pylist() == ["valid"] * ds.num_users + ["test"] * ds.num_users

    def must_not_draw(*args, **kwargs):
        raise AssertionError("candidates were redrawn instead of read from the stored file")

    monkeypatch.setattr(candidates_module, "draw_candidates", must_not_draw)
    again = load_or_draw_candidates(ds, SequenceStore(ds), 20, seed=5)
    dm = make_dm(ds.path, candidate_seed=5)  # the DataModule reads the same stored sets
    for split in ("valid", "test"):
        assert torch.equal(again[split], first[split])
        assert torch.equal(dm.candidates[split], first[split])


def test_candidates_are_redrawn_when_the_fingerprint_changes(tmp_path, monkeypatch):
    # 8 users with 6 items each among 34 (user 1: items 1..6 at t = 0, 10, ..., 50)
    rows = [
        (u, i, 3, 10 * t) for u in range(1, 9) for t, i in enumerate(range(4 * u - 3, 4 * u + 3))
    ]
    movies = {i: (f"M{i}", 2000, ["Drama"]) for i in range(1, 35)}
    out = tmp_path / "p"
    build_contract(dataset_spec("ml-1m"), write_ml1m(tmp_path / "r1", rows, movies), out)
    old = load_prepared(out)
    first = load_or_draw_candidates(old, SequenceStore(old), 20, seed=1)
    stored = candidates_path(old, 20, 1).read_bytes()

    # Re-prepare with user 1's last two interactions swapped in time, keeping the old file.
    rows2 = [(u, i, r, {(1, 5): 60, (1, 6): 50}.get((u, i), t)) for u, i, r, t in rows]
    build_contract(dataset_spec("ml-1m"), write_ml1m(tmp_path / "r2", rows2, movies), out)
    new = load_prepared(out)
    assert new.fingerprint != old.fingerprint
    candidates_path(new, 20, 1).write_bytes(stored)  # a stale file from the old data

    calls = []
    real_draw = candidates_module.draw_candidates
    monkeypatch.setattr(
        candidates_module, "draw_candidates", lambda *a, **k: calls.append(1) or real_draw(*a, **k)
    )
    redrawn = load_or_draw_candidates(new, SequenceStore(new), 20, seed=1)
    assert len(calls) == 2  # valid and test
    check_candidates(new, split_keys(new.lengths, "test"), redrawn["test"])
    assert redrawn["test"][0, 0] == first["valid"][0, 0] != first["test"][0, 0]
    table = pq.read_table(candidates_path(new, 20, 1))
    assert table.schema.metadata[b"fingerprint"].decode() == new.fingerprint


def test_draw_is_seeded_and_uniform_over_unseen_items(random_prepared):
    ds, store = random_prepared, SequenceStore(random_prepared)
    user = torch.full((3000,), 1, dtype=torch.int64)
    target = torch.full((3000,), int(ds.sequence(1)[-1]))
    a = draw_candidates(store, user, target, 20, seed=0, chunk=512)
    assert torch.equal(a, draw_candidates(store, user, target, 20, seed=0, chunk=512))
    assert not torch.equal(a, draw_candidates(store, user, target, 20, seed=1, chunk=512))
    unseen = sorted(set(range(1, ds.num_items + 1)) - set(ds.sequence(1).tolist()))
    counts = np.bincount(a[:, 1:].flatten().numpy(), minlength=ds.num_items + 1)
    assert set(np.flatnonzero(counts).tolist()) == set(unseen)  # every unseen item, nothing else
    p = 19 / len(unseen)  # each unseen item is in a row's sample with this probability
    expected, sigma = 3000 * p, np.sqrt(3000 * p * (1 - p))
    assert np.abs(counts[unseen] - expected).max() < 5 * sigma


def test_too_few_unseen_items_is_a_data_error(tmp_path):
    rows = [(1, i, 3, i) for i in range(1, 26)] + [(2, i, 3, i) for i in range(21, 31)]
    movies = {i: (f"M{i}", 2000, ["Drama"]) for i in range(1, 31)}
    out = tmp_path / "p"  # 30 items; user 1 rated 25 of them, leaving 5 unseen
    build_contract(dataset_spec("ml-1m"), write_ml1m(tmp_path / "r", rows, movies), out)
    ds = load_prepared(out)
    with pytest.raises(
        DataError,
        match="has only 5 unseen items: the candidate protocol cannot draw 19 negatives; "
        "lower eval.num_candidates",
    ):
        load_or_draw_candidates(ds, SequenceStore(ds), 20, seed=0)
