"""The real MovieLens-100K shipped in the recbole 1.2.1 wheel (fetched once per session)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from recdata.batching import SequenceStore
from recdata.candidates import load_or_draw_candidates
from recdata.parse import _parse_interaction_lines, _read_lines, parse_raw
from recdata.splits import split_keys

pytestmark = pytest.mark.slow

# The fingerprint every ML-100K checkpoint and soft-label file records. If this changes, all
# of them are invalidated: change it only on purpose.
ML100K_FINGERPRINT = "c8feaf3197f5a2a114390cf322d49434e0cf7ab140d9bad770929f92346eeca5"


def test_counts_splits_and_fingerprint(ml100k_prepared):
    ds = ml100k_prepared
    counts = ds.meta["counts"]
    assert (counts["users"], counts["items"], counts["interactions"]) == (943, 1682, 100000)
    assert counts["dropped_users"] == 0 and ds.meta["source"]["layout"] == "recbole"
    assert ds.meta["split"]["samples"] == {"train": 97171, "valid": 943, "test": 943}
    for split, n in (("train", 97171), ("valid", 943), ("test", 943)):
        assert len(split_keys(ds.lengths, split)) == n
    assert ds.fingerprint == ML100K_FINGERPRINT
    assert ds.items.min() == 1 and ds.items.max() == 1682


def test_titles_years_genres(ml100k_prepared):
    table = pq.read_table(ml100k_prepared.path / "items.parquet").to_pylist()
    items = {row["raw_id"]: row for row in table}
    assert (items["1"]["title"], items["1"]["year"]) == ("Toy Story", 1995)
    assert items["1"]["genres"] == ["Animation", "Children's", "Comedy"]
    assert items["12"]["title"] == "The Usual Suspects"
    assert items["1682"]["title"] == "Scream of Stone (Schrei aus Stein)"
    assert not [row["title"] for row in table if row["title"].endswith(", The")]
    assert sum(row["year"] is None for row in table) <= 2  # 267 "unkonwn"; 1412 has year "V"


def test_fast_parse_equals_the_line_loop(ml100k_raw):
    _, fast, _ = parse_raw(ml100k_raw, ("recbole",))
    path = ml100k_raw / "ml-100k.inter"
    slow = _parse_interaction_lines(path, _read_lines(path, "utf-8")[1:], "\t", "x", 2)
    for name in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))


def test_candidates_on_real_data(ml100k_prepared):
    ds = ml100k_prepared
    cands = load_or_draw_candidates(ds, SequenceStore(ds), 20, seed=2024)["test"]
    assert cands.shape == (943, 20)
    for user in (1, 500, 943):
        row = cands[user - 1].tolist()
        assert row[0] == ds.sequence(user)[-1]
        assert len(set(row[1:])) == 19 and not set(row[1:]) & set(ds.sequence(user).tolist())
